"""`flenwheel character create --spec`, `flenwheel sheet` and `flenwheel enrich` as a user runs them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

from patience import HANG_S

FLENWHEEL = Path(sys.executable).parent / "flenwheel"


def cli(*args: object) -> subprocess.CompletedProcess[str]:
    environment = {
        k: v for k, v in os.environ.items() if not k.startswith(("FLENWHEEL_", "FAL_", "REPLICATE_"))
    }
    return subprocess.run(
        [str(FLENWHEEL), *map(str, args)], capture_output=True, text=True, env=environment, timeout=HANG_S
    )


def ok_json(*args: object) -> dict:
    result = cli(*args, "--json")
    assert result.returncode == 0, result.stderr + result.stdout
    return json.loads(result.stdout)


def test_spec_character_sheet_and_enrichment(tmp_path: Path) -> None:
    root = tmp_path / "project"
    ok_json("init", root)
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({"name": "Mara", "gender_presentation": "woman", "hair_colour": "auburn"}))
    created = ok_json("--project", root, "character", "create", "mara", "--spec", spec)
    assert (created["token"], created["class_word"]) == ("ohwx_mara", "woman")
    bad = cli("--project", root, "character", "create", "x", "--spec", tmp_path / "missing.yaml")
    assert bad.returncode != 0 and "cannot read spec" in bad.stderr and "Traceback" not in bad.stderr

    printed = cli("--project", root, "sheet-config", "mara")  # the defaults, as YAML to edit
    assert printed.returncode == 0 and yaml.safe_load(printed.stdout)["candidates"] == 4, printed.stderr
    sheet_file = tmp_path / "sheet.yaml"
    sheet_file.write_text("anchors: [{id: front}]")
    refused = cli("--project", root, "sheet-config", "mara", sheet_file)
    assert (
        refused.returncode != 0 and "anchors.0.prompt" in refused.stderr and "Traceback" not in refused.stderr
    )
    sheet_file.write_text(
        yaml.safe_dump(
            {
                "candidates": 2,
                "image": {"width": 64, "height": 64, "steps": 2},
                "anchors": [{"id": "front", "prompt": "standing"}],
                "variations": [{"id": "smile", "anchor": "front", "prompt": "smiling", "strength": 0.4}],
            }
        )
    )
    stored = ok_json("--project", root, "sheet-config", "mara", sheet_file)
    assert stored["candidates"] == 2 and [a["id"] for a in stored["anchors"]] == ["front"]
    assert not (root / "characters").exists()  # in the store, where a worker on any host reads it
    waiting = ok_json("--project", root, "sheet", "mara")
    assert waiting["variations"]["skipped"] == 1 and len(waiting["anchors"]["candidates"]) == 2
    chosen = waiting["anchors"]["candidates"][1]["image"]["asset_id"]
    picked = ok_json("--project", root, "sheet", "mara", "--pick", f"front={chosen}")
    assert picked["anchors"]["reused"] == 2
    [smile] = picked["variations"]["outcomes"]
    assert smile["status"] == "not measurable" and smile["image"]["kind"] == "variation"

    enriched = ok_json("--project", root, "enrich", "mara", "--per-source", "1")
    assert {o["source_asset_id"] for o in enriched["outcomes"]} == {chosen, smile["image"]["asset_id"]}
    assert all(o["image"]["kind"] == "enriched" for o in enriched["outcomes"])
    table = cli("--project", root, "sheet", "mara", "--pick-auto")
    assert table.returncode == 0 and "not measurable" in table.stdout and "draws no faces" in table.stderr
