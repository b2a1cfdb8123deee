"""`flenwheel evaluate` as a user runs it, on the built-in tiny model (which draws no faces, so its pick is
only recommended), and `flenwheel activate` / `deactivate`, with which the user decides."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from flenwheel.config import Settings
from flenwheel.store.project import Project

from checkpoint_runs import add_run, character_with_dataset, tiny_lora_file
from patience import HANG_S

FLENWHEEL = Path(sys.executable).parent / "flenwheel"


def cli(*args: object) -> subprocess.CompletedProcess[str]:
    environment = {
        k: v for k, v in os.environ.items() if not k.startswith(("FLENWHEEL_", "FAL_", "REPLICATE_"))
    }
    return subprocess.run(
        [str(FLENWHEEL), *map(str, args)], capture_output=True, text=True, env=environment, timeout=HANG_S
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project where lisa has dataset v1 and a finished run with two tiny-model LoRA checkpoints."""
    root = tmp_path_factory.mktemp("evaluate") / "project"
    project = Project.init(Settings(project=root, workers=2))
    try:
        character_with_dataset(project)
        loras = [tiny_lora_file(root.parent / f"e{seed}.safetensors", seed) for seed in (1, 2)]
        add_run(project, "lisa", [("epoch1", loras[0]), ("epoch2", loras[1])], [(1, 0.3), (2, 0.25)])
    finally:
        project.close()
    return root


def test_evaluate_prints_json_with_the_pick_the_advice_and_the_report(trained: Path) -> None:
    result = cli(
        "--project", trained, "evaluate", "lisa", "--strengths", "1.0", "--prompts", "quick", "--json"
    )
    assert result.returncode == 0, result.stderr + result.stdout
    outcome = json.loads(result.stdout)
    assert (outcome["checkpoints"], outcome["strengths"], outcome["prompts"], outcome["images"]) == (
        2,
        [1.0],
        6,
        12,
    )
    assert outcome["selection"]["measured"] is False and outcome["selection"]["strength"] == 1.0
    assert outcome["decision"]["activated"] is False and outcome["decision"]["rule"] == "not_measured"
    assert [item["code"] for item in outcome["advice"]] == ["no_faces"]
    assert "draws no faces" in outcome["note"]
    assert (
        outcome["report"].endswith("reports/lisa-run1-evaluation.html") and Path(outcome["report"]).is_file()
    )

    # The same evaluation again (tables this time) draws nothing new and prints the table and the report.
    again = cli("--project", trained, "evaluate", "lisa", "1", "--strengths", "1.0", "--prompts", "quick")
    assert again.returncode == 0, again.stderr
    assert "step 100 (epoch 1) ◀" in again.stdout and "selected:" in again.stdout
    assert "No face was found in any of the 12 evaluation images" in again.stdout
    assert "recommended, not activated (not measurable):" in again.stdout
    assert "to use it anyway: flenwheel activate lisa 1 --strength 1.0" in again.stdout
    assert "prompt adherence: not measured" in again.stdout and "report:" in again.stdout
    assert "12 image(s) were already scored" in again.stderr


def test_the_user_activates_and_deactivates_a_checkpoint(trained: Path) -> None:
    on = cli("--project", trained, "activate", "lisa", "run1:step200", "--strength", "0.8")
    assert on.returncode == 0, on.stderr + on.stdout
    assert "activated checkpoint 2 (run 1, step 200, epoch 2) at strength 0.8 for lisa" in on.stdout
    assert (
        "studio mode: lora: checkpoint 2 (run 1, step 200, epoch 2) at strength 0.8, activated by the user"
        in (" ".join(on.stdout.split()))
    )

    latest = cli("--project", trained, "activate", "lisa", "latest", "--json")
    assert latest.returncode == 0, latest.stderr
    assert json.loads(latest.stdout)["active"]["id"] == 2 and json.loads(latest.stdout)["strength"] == 1.0

    wrong = cli("--project", trained, "activate", "lisa", "run1:step999", "--json")
    assert wrong.returncode == 2
    error = json.loads(wrong.stdout)["error"]
    assert (
        "'run1:step999' names no checkpoint of 'lisa'" in error
        and "1 (run1:step100), 2 (run1:step200)" in error
    )

    off = cli("--project", trained, "deactivate", "lisa")
    assert off.returncode == 0, off.stderr
    text = " ".join(off.stdout.split())
    assert "deactivated checkpoint 2 (run 1, step 200, epoch 2) at strength 1" in text
    assert "studio mode: identity_reference: no LoRA is active (the user deactivated checkpoint 2" in text


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("evaluate", "nobody"), "No character named 'nobody'"),
        (("evaluate", "lisa", "7"), "'lisa' has no run 7: train one with `flenwheel train lisa`"),
        (("evaluate", "lisa", "--strengths", "strong"), "give numbers separated by commas"),
        (("evaluate", "lisa", "--prompts", "some"), "--prompts 'some': use all or quick"),
    ],
)
def test_evaluate_errors_say_what_to_do(trained: Path, args: tuple[str, ...], message: str) -> None:
    result = cli("--project", trained, *args, "--json")
    assert result.returncode == 2
    assert message in json.loads(result.stdout)["error"]
