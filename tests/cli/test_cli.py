"""The `flenwheel` command as a user runs it: the installed script in a subprocess, real photos, fresh projects.

Many tests here pin behaviour first found wrong by trying the CLI as a careless user (odd names, links,
parallel runs, huge files, bad settings), and fixed since.
"""

from __future__ import annotations

import json
import os
import re
import resource
import shutil
import sqlite3
import subprocess
import sys
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from patience import HANG_S
from photos import FACES, LISA, london

FLENWHEEL = Path(sys.executable).parent / "flenwheel"
REPO = Path(__file__).resolve().parents[2]
DEMO_PHOTOS = REPO / "examples" / "demo-photos"
COMMANDS = ["init", "character", "ingest", "curate", "review", "caption", "dataset", "demo"]
GIB = 2**30


def _environment(extra: dict[str, str] | None) -> dict[str, str]:
    """The caller's environment without FLENWHEEL_* settings (so a developer's own project or database URL
    never leaks in), UTF-8 output, plus `extra`."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("FLENWHEEL_")}
    env["PYTHONIOENCODING"] = "utf-8"
    env.update(extra or {})
    return env


def run_cli(
    *args: object,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    preexec_fn: Callable[[], None] | None = None,
    timeout: float = HANG_S,
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(FLENWHEEL), *(str(arg) for arg in args)],
        cwd=cwd,
        env=_environment(env),
        preexec_fn=preexec_fn,
        capture_output=True,
        text=True,
        encoding="utf-8",
        errors="replace",
        timeout=timeout,
        check=False,
    )


def run_parallel(commands: Sequence[Sequence[object]]) -> list[subprocess.CompletedProcess[str]]:
    """Start every command at once, then wait for all of them."""
    processes = [
        subprocess.Popen(
            [str(FLENWHEEL), *(str(arg) for arg in command)],
            env=_environment(None),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            encoding="utf-8",
            errors="replace",
        )
        for command in commands
    ]
    results = []
    for command, process in zip(commands, processes, strict=True):
        stdout, stderr = process.communicate(timeout=HANG_S)
        results.append(subprocess.CompletedProcess(command, process.returncode, stdout, stderr))
    return results


def no_traceback(result: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in result.stdout + result.stderr, result.stderr


def ok(*args: object, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    result = run_cli(*args, **kwargs)
    no_traceback(result)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def ok_json(*args: object, **kwargs: Any) -> Any:
    return json.loads(ok(*args, "--json", **kwargs).stdout)


def clean_error(result: subprocess.CompletedProcess[str]) -> str:
    """A failed command prints one line, `error: …`, on stderr and exits 2; returns the message."""
    no_traceback(result)
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), result.stderr
    return lines[0]


def json_error(result: subprocess.CompletedProcess[str]) -> dict[str, str]:
    """A failed command with --json prints {"error": …, "type": …} on stdout and exits 2."""
    no_traceback(result)
    assert result.returncode == 2, result.stdout + result.stderr
    document = json.loads(result.stdout)
    assert set(document) == {"error", "type"}, document
    return document


def by_name(entries: list[dict[str, Any]], key: str) -> dict[str, dict[str, Any]]:
    return {Path(entry[key]).name: entry for entry in entries}


def copy_project(root: Path, target: Path) -> Path:
    shutil.copytree(root, target)
    return target


# --------------------------------------------------------------------------------------------------------------
# The whole flow, each step with --json, shared by the tests below (every step is a real CLI call).


@dataclass(frozen=True)
class Flow:
    root: Path
    photos: Path
    init: dict[str, Any]
    create: dict[str, Any]
    ingest: dict[str, Any]
    curate: dict[str, Any]
    reviewed_id: int
    review: dict[str, Any]
    curate_after_review: dict[str, Any]
    build: dict[str, Any]
    export_dir: Path
    export: dict[str, Any]


@pytest.fixture(scope="module")
def flow(tmp_path_factory: pytest.TempPathFactory) -> Flow:
    base = tmp_path_factory.mktemp("flow")
    photos = base / "photos"
    photos.mkdir()
    for photo in LISA[:5]:
        shutil.copy(photo, photos / f"lisa_{photo.name}")
    shutil.copy(london(1), photos / "london_001.jpg")
    (photos / "broken.jpg").write_bytes(b"this is a text file, not a JPEG\n")
    root = base / "project"
    project = ["--project", root]

    init = ok_json("init", root)
    create = ok_json(*project, "character", "create", "lisa", "--token", "ohwx", "--class", "woman")
    ingested = ok_json(*project, "ingest", "lisa", photos)
    curated = ok_json(*project, "curate", "lisa")
    reviewed_id = next(d["asset_id"] for d in curated["decisions"] if Path(d["file"]).name == "lisa_3.jpg")
    review = ok_json(*project, "review", "lisa", reviewed_id, "--label", "reject", "--reason", "eyes closed")
    curate_after_review = ok_json(*project, "curate", "lisa")
    build = ok_json(*project, "dataset", "build", "lisa")
    export_dir = base / "exports" / "kohya"
    export = ok_json(*project, "dataset", "export", "lisa", "--format", "kohya", "--out", export_dir)
    return Flow(
        root,
        photos,
        init,
        create,
        ingested,
        curated,
        reviewed_id,
        review,
        curate_after_review,
        build,
        export_dir,
        export,
    )


def test_help_lists_every_command() -> None:
    result = ok("--help")
    for command in COMMANDS:
        assert re.search(rf"^\W*{command}\s{{2,}}\S", result.stdout, re.MULTILINE), command


def test_init_creates_the_project_where_asked(flow: Flow) -> None:
    assert flow.init["project"] == str(flow.root.resolve())
    assert (flow.root / "flenwheel.db").is_file()
    assert Path(flow.init["blobs"]).is_dir()


def test_character_create_reports_token_and_class(flow: Flow) -> None:
    assert flow.create["name"] == "lisa"
    assert flow.create["token"] == "ohwx"
    assert flow.create["class_word"] == "woman"


def test_ingest_lists_every_file_with_its_status(flow: Flow) -> None:
    files = by_name(flow.ingest["files"], "path")
    assert sorted(files) == sorted(p.name for p in flow.photos.iterdir())
    for name in [f"lisa_{p.name}" for p in LISA[:5]] + ["london_001.jpg"]:
        assert files[name]["status"] == "added", files[name]
        assert isinstance(files[name]["asset_id"], int)
    broken = files["broken.jpg"]
    assert broken["status"] == "rejected"
    assert broken["reason"] == "not_an_image"
    assert "not an image" in broken["detail"]


def test_curate_gives_every_asset_a_label_and_the_facts_behind_it(flow: Flow) -> None:
    assert flow.curate["analysed_now"] == 6
    decisions = by_name(flow.curate["decisions"], "file")
    assert len(decisions) == 6
    for decision in decisions.values():
        assert {"label", "reason", "identity_distance", "angle", "shot"} <= set(decision)
        assert decision["reason"]
        assert isinstance(decision["identity_distance"], float)
        assert decision["angle"] and decision["shot"]
    for photo in LISA[:5]:
        lisa = decisions[f"lisa_{photo.name}"]
        assert lisa["label"] == "good", lisa
        assert lisa["identity_distance"] <= flow.curate["threshold"]
    other = decisions["london_001.jpg"]
    assert other["label"] == "reject"
    assert "another person" in other["reason"]
    assert [Path(path).name for path, _code, _detail in flow.curate["ingest_rejections"]] == ["broken.jpg"]


def test_review_label_wins_over_curate(flow: Flow) -> None:
    assert flow.review == {"asset_id": flow.reviewed_id, "label": "reject", "reason": "eyes closed"}
    assert flow.curate_after_review["analysed_now"] == 0
    decision = next(d for d in flow.curate_after_review["decisions"] if d["asset_id"] == flow.reviewed_id)
    assert (decision["label"], decision["decided_by"], decision["reason"]) == (
        "reject",
        "user",
        "eyes closed",
    )


def test_dataset_build_snapshots_the_good_images_with_a_composition_report(flow: Flow) -> None:
    assert flow.build["created"] is True
    assert flow.build["version"] == "v1"
    assert flow.build["images"] == 4
    kept = {item["asset_id"] for item in flow.build["items"]}
    good = {
        d["asset_id"] for d in flow.curate_after_review["decisions"] if d["label"] == "good"
    }  # the user's reject and the other person are left out
    assert kept == good
    assert flow.reviewed_id not in kept
    targets = flow.build["composition"]["targets"]
    assert targets
    for target in targets:
        assert set(target) == {"target", "actual", "met"}
    assert all("ohwx" in item["caption"] for item in flow.build["items"])


def test_dataset_export_writes_a_kohya_folder(flow: Flow) -> None:
    assert flow.export["version"] == "v1"
    assert flow.export["images"] == 4
    config_path = flow.export_dir / "dataset_config.toml"
    assert str(config_path.resolve()) in flow.export["files"]
    config = tomllib.loads(config_path.read_text(encoding="utf-8"))
    subset = config["datasets"][0]["subsets"][0]
    image_dir = Path(subset["image_dir"])
    assert image_dir.is_relative_to(flow.export_dir.resolve())
    images = sorted(p for p in image_dir.iterdir() if p.suffix != ".txt")
    assert len(images) == 4
    for image in images:
        assert "ohwx" in image.with_suffix(".txt").read_text(encoding="utf-8")
    metadata = json.loads((flow.export_dir / "metadata.json").read_text(encoding="utf-8"))
    assert metadata["dataset_version"] == "v1"
    assert len(metadata["images"]) == 4


def test_project_from_env_var_or_current_folder(flow: Flow, tmp_path: Path) -> None:
    from_env = ok_json("dataset", "show", "lisa", cwd=tmp_path, env={"FLENWHEEL_PROJECT": str(flow.root)})
    assert from_env["version"] == "v1"
    from_cwd = ok_json("character", "list", cwd=flow.root)
    assert [c["name"] for c in from_cwd] == ["lisa"]
    assert from_cwd[0]["assets"] == 6


# --------------------------------------------------------------------------------------------------------------
# Errors: one clear line, exit code 2, the fix named; with --json a JSON object.


def _unknown_character(flow: Flow, _tmp: Path) -> list[object]:
    return ["--project", flow.root, "curate", "bob"]


def _missing_project(_flow: Flow, tmp: Path) -> list[object]:
    return ["--project", tmp / "no-such-project", "curate", "lisa"]


def _invalid_token(flow: Flow, _tmp: Path) -> list[object]:
    return ["--project", flow.root, "character", "create", "maya", "--token", "two words", "--class", "woman"]


def _export_into_non_empty_folder(flow: Flow, tmp: Path) -> list[object]:
    out = tmp / "my-exports"
    out.mkdir()
    (out / "keep.txt").write_text("my own notes\n")
    return ["--project", flow.root, "dataset", "export", "lisa", "--format", "kohya", "--out", out]


def _review_unknown_label(flow: Flow, _tmp: Path) -> list[object]:
    return ["--project", flow.root, "review", "lisa", flow.reviewed_id, "--label", "meh"]


ERRORS: dict[str, tuple[Callable[[Flow, Path], list[object]], str, list[str]]] = {
    "unknown character": (
        _unknown_character,
        "CharacterNotFound",
        ["'bob'", "Known characters: lisa", "flenwheel character create bob"],
    ),
    "missing project": (_missing_project, "ProjectNotFound", ["flenwheel init"]),
    "invalid token": (_invalid_token, "InvalidInput", ["'two words'", "trigger token"]),
    "export into non-empty folder": (_export_into_non_empty_folder, "ExportError", ["not empty"]),
    "unknown review label": (
        _review_unknown_label,
        "InvalidInput",
        ["'meh'", "good, needs_correction, reject"],
    ),
}


@pytest.mark.parametrize("case", ERRORS)
def test_errors_are_one_clear_line(flow: Flow, tmp_path: Path, case: str) -> None:
    build_args, _type, fragments = ERRORS[case]
    message = clean_error(run_cli(*build_args(flow, tmp_path)))
    for fragment in fragments:
        assert fragment in message


@pytest.mark.parametrize("case", ERRORS)
def test_errors_with_json_are_a_json_object(flow: Flow, tmp_path: Path, case: str) -> None:
    build_args, error_type, fragments = ERRORS[case]
    document = json_error(run_cli(*build_args(flow, tmp_path), "--json"))
    assert document["type"] == error_type
    for fragment in fragments:
        assert fragment in document["error"]


def test_errors_change_nothing_on_disk(flow: Flow, tmp_path: Path) -> None:
    clean_error(run_cli(*_missing_project(flow, tmp_path)))
    assert not (tmp_path / "no-such-project").exists()
    args = _export_into_non_empty_folder(flow, tmp_path)
    clean_error(run_cli(*args))
    assert [p.name for p in (tmp_path / "my-exports").iterdir()] == ["keep.txt"]
    assert (tmp_path / "my-exports" / "keep.txt").read_text() == "my own notes\n"


@pytest.mark.parametrize(
    "template", ["{token", "{token}}", "{token} {0}", "{token} {angle!r}", "{token} {angle:>9}", "{ token }"]
)
def test_caption_templates_with_odd_braces_are_refused_clearly(
    flow: Flow, tmp_path: Path, template: str
) -> None:
    root = copy_project(flow.root, tmp_path / "project")
    result = run_cli(
        "--project",
        root,
        "character",
        "create",
        "odd",
        "--token",
        "odd",
        "--class",
        "woman",
        "--caption-template",
        template,
    )
    assert "caption template" in clean_error(result)


# --------------------------------------------------------------------------------------------------------------
# The demo, run twice in one folder (the second run must re-analyse nothing).


@dataclass(frozen=True)
class DemoRuns:
    out: Path
    first: subprocess.CompletedProcess[str]
    second: subprocess.CompletedProcess[str]
    curate_after_first: dict[str, Any]
    curate_after_second: dict[str, Any]


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> DemoRuns:
    out = tmp_path_factory.mktemp("demo") / "demo-project"
    first = run_cli("--project", out, "demo")  # the global --project names the demo's folder (case 15)
    curate_after_first = ok_json("--project", out, "curate", "lisa")
    second = run_cli("demo", env={"FLENWHEEL_PROJECT": str(out)})  # and so does FLENWHEEL_PROJECT
    curate_after_second = ok_json("--project", out, "curate", "lisa")
    return DemoRuns(out, first, second, curate_after_first, curate_after_second)


def _occupied(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "notes.txt").write_text("not a demo\n")
    return folder


def test_demo_writes_where_project_says_or_refuses_clearly(tmp_path: Path) -> None:
    """Issue 10 case 15: `--project X demo` and FLENWHEEL_PROJECT=X name the demo's folder, never a silent
    ./demo-project. Each folder here is occupied, so the demo stops at once and its message names the folder."""
    default = _occupied(tmp_path / "demo-project")  # where the demo wrote before, whatever --project said
    mine = _occupied(tmp_path / "mine")
    by_flag = clean_error(run_cli("--project", mine, "demo", cwd=tmp_path))
    assert str(mine) in by_flag and "is not a demo project" in by_flag
    by_env = clean_error(run_cli("demo", cwd=tmp_path, env={"FLENWHEEL_PROJECT": str(mine)}))
    assert str(mine) in by_env
    both = clean_error(run_cli("--project", mine, "demo", "--out", tmp_path / "other", cwd=tmp_path))
    assert "--project" in both and "--out" in both and "only one" in both
    assert not (tmp_path / "other").exists()
    plain = clean_error(run_cli("demo", cwd=tmp_path))  # no --project anywhere: ./demo-project as documented
    assert "demo-project" in plain
    assert sorted(p.name for p in default.iterdir()) == ["notes.txt"]
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"]


def _demo_photos(*folders: str) -> list[Path]:
    return sorted(p for folder in folders for p in (DEMO_PHOTOS / folder).iterdir() if p.is_file())


def _shown(photo: Path) -> str:
    return f"{photo.parent.name}/{photo.name}"


def _decisions(report: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {d["file"]: (d["label"], d["reason"]) for d in report["decisions"]}


@pytest.mark.slow
def test_demo_writes_a_report_naming_every_photo(demo: DemoRuns) -> None:
    no_traceback(demo.first)
    assert demo.first.returncode == 0, demo.first.stderr
    report = demo.out / "report.html"
    assert report.is_file()
    html = report.read_text(encoding="utf-8")
    photos = _demo_photos("lisa", "others", "no_face", "broken")
    assert len(photos) == 15
    for photo in photos:
        assert _shown(photo) in html, photo


@pytest.mark.slow
def test_demo_second_run_reanalyses_nothing_and_decides_the_same(demo: DemoRuns) -> None:
    no_traceback(demo.second)
    assert demo.second.returncode == 0, demo.second.stderr
    analysed = [re.findall(r"(\d+) analysed now", run.stdout) for run in (demo.first, demo.second)]
    assert analysed == [["13"], ["0"]]
    assert _decisions(demo.curate_after_second) == _decisions(demo.curate_after_first)
    assert (demo.out / "report.html").is_file()


@pytest.mark.slow
def test_demo_keeps_lisa_and_rejects_everyone_else_with_a_reason(demo: DemoRuns) -> None:
    decisions = {_shown(Path(d["file"])): d for d in demo.curate_after_second["decisions"]}
    for photo in _demo_photos("lisa"):
        assert decisions[_shown(photo)]["label"] == "good", decisions[_shown(photo)]
    for photo in _demo_photos("others", "no_face"):
        decision = decisions[_shown(photo)]
        assert decision["label"] == "reject", decision
        assert decision["reason"]
    rejected_at_ingest = {
        _shown(Path(path)): detail for path, _code, detail in demo.curate_after_second["ingest_rejections"]
    }
    for photo in _demo_photos("broken"):
        assert _shown(photo) not in decisions
        assert rejected_at_ingest[_shown(photo)]


@pytest.mark.slow
def test_demo_json_rerun_reports_nothing_reanalysed(demo: DemoRuns, tmp_path: Path) -> None:
    out = copy_project(demo.out, tmp_path / "demo-project")
    result = ok_json("demo", "--out", out)
    assert result["curation"]["analysed_now"] == 0
    assert _decisions(result["curation"]) == _decisions(demo.curate_after_second)


@pytest.mark.slow
def test_stats_after_the_demo_show_its_own_jobs_against_seed_003(demo: DemoRuns) -> None:
    """`flenwheel --project demo-project stats` (issue 16's "done when"): the demo's own requests, counted as
    its job table and its direct calls say, each SLA judged or said to have too few samples, on the tiny model."""
    figures = ok_json("--project", demo.out, "stats", "--json")
    rows = {(row["area"], row["engine"]): row for row in figures["engines"]}
    trained = ok_json("--project", demo.out, "jobs", "ls", "--kind", "chain_train", "--json")
    evaluated = ok_json("--project", demo.out, "jobs", "ls", "--kind", "chain_evaluate", "--json")

    def requests_in(area: str) -> int:  # every engine's (a rerun that reused everything ran none)
        return sum(row["requests"] for row in figures["engines"] if row["area"] == area)

    assert requests_in("training") == len(trained) >= 1 and ("training", "local") in rows
    assert requests_in("evaluation") == len(evaluated) >= 1 and ("evaluation", "local") in rows
    studio = rows[("studio_generate", "local")]  # the first image and the studio's, drawn directly
    assert studio["models"] == ["tiny"] and studio["failed"] == 0 and studio["requests"] >= 3
    assert rows[("upscale", "esrgan")]["succeeded"] >= 1
    slas = {(s["area"], s["measure"]): s for s in figures["slas"]}
    assert "tiny model on a CPU" in slas[("studio_generate", "first")]["note"]
    identity = {row["mode"]: row for row in figures["identity"]}
    assert identity["lora"]["not_measurable"] >= 1 and identity["lora"]["passed"] == 0  # no faces to pass
    table = ok("--project", demo.out, "stats").stdout
    assert "Seed 003 SLAs" in table and "upscale < 30 s" in table and "lisa" in table


def test_demo_trains_evaluates_recommends_and_activates_only_as_the_user(demo: DemoRuns) -> None:
    out = demo.first.stdout
    for stage in ("gate", "dataset", "train", "evaluate", "activate"):
        assert re.search(rf"│ {stage}\s+│ succeeded", out), (stage, out)
    flat = " ".join(out.replace("│", " ").split())
    # The tiny model's pick cannot be measured: the chain only recommends it, and the studio stays put.
    assert "recommended, not activated (not measurable)" in flat
    assert "Studio (identity_reference mode)" in out
    # Then the demo activates it as the user, says so, and draws in LoRA mode.
    assert "The demo activated the recommendation as the user" in out and "Studio (lora mode)" in out
    assert "activated by the user" in flat
    page = (demo.out / "report.html").read_text(encoding="utf-8")
    assert "studio (identity_reference)" in page and "activated by the demo as the user" in page
    evaluation = next((demo.out / "reports").glob("lisa-run*-evaluation.html")).read_text(encoding="utf-8")
    assert "No face was found" in evaluation  # the tiny model draws none, and the report says so
    assert evaluation.count("data:image/png;base64,") >= 2  # the heatmap and the loss curve
    assert "Background chain" in (demo.out / "report.html").read_text(encoding="utf-8")
    with sqlite3.connect(demo.out / "flenwheel.db") as db:  # the second demo reused the run and its scores
        assert db.execute("SELECT count(*) FROM training_run").fetchone() == (1,)
        assert db.execute("SELECT count(*) FROM evaluation").fetchone() == (1,)


@pytest.mark.slow
def test_demo_runs_one_flywheel_round_and_links_its_report(demo: DemoRuns) -> None:
    """Issue 11: one flywheel round with the LoRA the demo activated; the tiny model draws no faces, so the
    filter removes every candidate, no version is built, and the flywheel report says "not measurable"."""
    assert "Flywheel round 1: 2 synthetic image(s), filter kept 0" in demo.first.stdout
    assert "Flywheel round 2:" in demo.second.stdout  # the second demo runs the next round
    page = (demo.out / "report.html").read_text(encoding="utf-8")
    assert 'href="reports/lisa-flywheel.html"' in page and "no candidate was labelled pristine" in page
    flywheel = (demo.out / "reports" / "lisa-flywheel.html").read_text(encoding="utf-8")
    assert "Not measurable" in flywheel and "round 2 (finished)" in flywheel

    # `flenwheel flywheel NAME --rounds 2` on the demo character: two complete rounds, nothing claimed
    outcome = ok_json(
        "--project", demo.out, "flywheel", "lisa", "--rounds", "2", "--prompts", "1", "--variants", "1"
    )
    rounds = outcome["rounds"]
    assert [(r["number"], r["status"]) for r in rounds] == [(3, "finished"), (4, "finished")]
    for item in rounds:
        record = item["record"]
        assert record["filter"]["kept"] == 0 and record["filter"]["removed_by"]["no face"] == 1
        assert record["dataset"]["created"] is False and "comparison" not in record
    assert rounds[0]["record"]["prompts"][0]["seeds"] != rounds[1]["record"]["prompts"][0]["seeds"]
    assert outcome["stopped_because"] == "ran the 2 round(s) asked for"
    assert "Not measurable" in Path(outcome["report"]).read_text(encoding="utf-8")


@pytest.mark.slow
def test_demo_rerun_lists_each_broken_file_once(demo: DemoRuns) -> None:
    broken = _demo_photos("broken")
    paths = [path for path, _code, _detail in demo.curate_after_second["ingest_rejections"]]
    assert sorted(_shown(Path(p)) for p in paths) == sorted(_shown(p) for p in broken)
    html = (demo.out / "report.html").read_text(encoding="utf-8")
    assert f"{len(broken)} file(s) could not be read" in html


# --------------------------------------------------------------------------------------------------------------
# A careless user: odd names, links, folders that look like images, the project's own files, two at once.


def _fresh_project(tmp: Path, name: str = "lisa", token: str = "ohwx") -> Path:
    root = tmp / "project"
    ok("init", root)
    ok("--project", root, "character", "create", name, "--token", token, "--class", "woman")
    return root


def test_weird_file_names_are_shown_literally_and_can_name_an_asset(tmp_path: Path) -> None:
    root = _fresh_project(tmp_path)
    photos = tmp_path / "photos"
    (photos / "dir.jpg").mkdir(parents=True)  # a folder named like an image is read as a folder
    shutil.copy(LISA[0], photos / "[bold]lisa ünï 😀.jpg")
    shutil.copy(LISA[1], photos / "a [b] c.jpg")
    shutil.copy(LISA[2], photos / "dir.jpg" / "inner.jpg")
    (photos / "[red]broken.jpg").write_bytes(b"\x00not an image")
    names = ["[bold]lisa ünï 😀.jpg", "a [b] c.jpg", "dir.jpg", "[red]broken.jpg"]

    ingested = ok("--project", root, "ingest", "lisa", *names, cwd=photos)
    assert "Ingested 3 new image(s)" in ingested.stdout
    assert "[red]broken.jpg" in ingested.stdout  # not swallowed as rich markup

    curated = ok_json("--project", root, "curate", "lisa")
    assert sorted(d["file"] for d in curated["decisions"]) == sorted(
        ["[bold]lisa ünï 😀.jpg", "a [b] c.jpg", "dir.jpg/inner.jpg"]
    )
    assert all(d["label"] == "good" for d in curated["decisions"])
    plain = ok("--project", root, "curate", "lisa")
    assert "[bold]lisa ünï 😀.jpg" in plain.stdout

    reviewed = ok(
        "--project",
        root,
        "review",
        "lisa",
        "[bold]lisa ünï 😀.jpg",
        "--label",
        "needs_correction",
        "--reason",
        "crop [tight]",
    )
    assert "labelled needs_correction" in reviewed.stdout


def test_symlink_loops_in_an_ingested_folder_neither_hang_nor_crash(tmp_path: Path) -> None:
    root = _fresh_project(tmp_path)
    photos = tmp_path / "photos"
    photos.mkdir()
    shutil.copy(LISA[0], photos / "1.jpg")
    (photos / "loop1.jpg").symlink_to("loop2.jpg")
    (photos / "loop2.jpg").symlink_to("loop1.jpg")
    (photos / "up").symlink_to("..")  # a link back to the parent folder

    ingested = ok_json("--project", root, "ingest", "lisa", photos)
    statuses = {Path(f["path"]).name: f["status"] for f in ingested["files"]}
    assert statuses["1.jpg"] == "added"
    assert set(statuses) <= {"1.jpg", "loop1.jpg", "loop2.jpg"}

    direct = ok_json("--project", root, "ingest", "lisa", photos / "loop1.jpg")
    (outcome,) = direct["files"]
    assert outcome["status"] == "rejected"
    assert "symbolic links" in outcome["detail"]


def test_ingesting_the_projects_own_blob_folder_adds_nothing(flow: Flow) -> None:
    ingested = ok_json("--project", flow.root, "ingest", "lisa", flow.root / "blobs")
    assert ingested["files"]
    assert {f["status"] for f in ingested["files"]} == {"duplicate"}
    (lisa,) = ok_json("--project", flow.root, "character", "list")
    assert lisa["assets"] == 6


@dataclass(frozen=True)
class ParallelIngest:
    photos: int
    runs: list[subprocess.CompletedProcess[str]]
    assets: int


@pytest.fixture(scope="module")
def parallel_ingest(tmp_path_factory: pytest.TempPathFactory) -> ParallelIngest:
    photos = tmp_path_factory.mktemp("parallel-photos")
    for photo in LISA:
        shutil.copy(photo, photos / f"lisa_{photo.name}")
    for n in range(1, 7):
        shutil.copy(london(n), photos / f"london_{n}.jpg")
    count = len(LISA) + 6
    # Whether two processes meet on the same file is down to timing; up to three rounds give it a chance.
    for _round in range(3):
        root = _fresh_project(tmp_path_factory.mktemp("parallel"))
        runs = run_parallel([["--project", root, "ingest", "lisa", photos, "--json"]] * 4)
        (lisa,) = ok_json("--project", root, "character", "list")
        outcomes = [f for run in runs if run.returncode == 0 for f in json.loads(run.stdout)["files"]]
        if any(o["status"] == "duplicate" and o["asset_id"] is None for o in outcomes):
            break
    return ParallelIngest(count, runs, lisa["assets"])


def test_parallel_ingest_of_the_same_folder_stores_each_photo_once(parallel_ingest: ParallelIngest) -> None:
    for run in parallel_ingest.runs:
        no_traceback(run)
        assert run.returncode == 0, run.stderr
    added = sum(
        1 for run in parallel_ingest.runs for f in json.loads(run.stdout)["files"] if f["status"] == "added"
    )
    assert added == parallel_ingest.photos
    assert parallel_ingest.assets == parallel_ingest.photos


def test_parallel_ingest_names_the_asset_each_duplicate_is_of(parallel_ingest: ParallelIngest) -> None:
    for run in parallel_ingest.runs:
        for outcome in json.loads(run.stdout)["files"]:
            if outcome["status"] == "duplicate":
                assert isinstance(outcome["asset_id"], int), outcome


# --------------------------------------------------------------------------------------------------------------
# Once wrong (fixed since): each test states the behaviour a user should get.


def test_parallel_curate_runs_both_finish(tmp_path: Path) -> None:
    root = _fresh_project(tmp_path)
    ok("--project", root, "ingest", "lisa", *LISA[:4])
    for run in run_parallel([["--project", root, "curate", "lisa", "--json"]] * 2):
        no_traceback(run)
        assert run.returncode == 0, run.stderr
        assert len(json.loads(run.stdout)["decisions"]) == 4


def test_ingest_survives_a_file_name_that_is_not_utf8(tmp_path: Path) -> None:
    root = _fresh_project(tmp_path)
    photos = tmp_path / "photos"
    photos.mkdir()
    shutil.copy(LISA[0], photos / "a.jpg")
    shutil.copy(LISA[1], os.path.join(os.fsencode(photos), b"b \xff\xfe.jpg"))
    (photos / "c.jpg").write_bytes(b"junk")
    ingested = ok_json("--project", root, "ingest", "lisa", photos)
    first, odd, last = ingested["files"]
    assert (first["status"], last["status"]) == ("added", "rejected")
    assert odd["status"] == "added" or (odd["status"] == "rejected" and odd["detail"]), odd


def _limit_address_space() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (2 * GIB, 2 * GIB))


def test_ingest_rejects_a_huge_file_without_reading_it(tmp_path: Path) -> None:
    root = _fresh_project(tmp_path)
    photos = tmp_path / "photos"
    photos.mkdir()
    shutil.copy(LISA[0], photos / "1.jpg")
    with open(photos / "holiday.mp4", "wb") as video:
        video.truncate(4 * GIB)  # sparse: no disk space used
    ingested = ok_json(
        "--project",
        root,
        "ingest",
        "lisa",
        photos,
        env={"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"},
        preexec_fn=_limit_address_space,
    )
    files = by_name(ingested["files"], "path")
    assert files["1.jpg"]["status"] == "added"
    assert (files["holiday.mp4"]["status"], files["holiday.mp4"]["reason"]) == ("rejected", "too_large")


def test_reingesting_a_folder_lists_each_broken_file_once(flow: Flow, tmp_path: Path) -> None:
    root = copy_project(flow.root, tmp_path / "project")
    again = ok_json("--project", root, "ingest", "lisa", flow.photos)
    assert {f["status"] for f in again["files"]} == {"duplicate", "rejected"}
    curated = ok_json("--project", root, "curate", "lisa")
    assert [Path(path).name for path, _code, _detail in curated["ingest_rejections"]] == ["broken.jpg"]


def test_demo_leaves_an_existing_users_character_alone(flow: Flow, tmp_path: Path) -> None:
    root = copy_project(flow.root, tmp_path / "project")
    result = run_cli("demo", "--out", root)
    no_traceback(result)
    (lisa,) = ok_json("--project", root, "character", "list")
    assert lisa["assets"] == 6


def test_an_asset_from_a_folder_can_be_named_by_its_file_name(flow: Flow, tmp_path: Path) -> None:
    root = copy_project(flow.root, tmp_path / "project")
    reviewed = ok_json("--project", root, "review", "lisa", "lisa_1.jpg", "--label", "good")
    ingested = by_name(flow.ingest["files"], "path")
    assert reviewed["asset_id"] == ingested["lisa_1.jpg"]["asset_id"]


def test_caption_must_contain_the_token_as_a_word(flow: Flow, tmp_path: Path) -> None:
    root = copy_project(flow.root, tmp_path / "project")
    asset = flow.build["items"][0]["asset_id"]
    message = clean_error(run_cli("--project", root, "caption", "lisa", asset, "photo of ohwxyz woman"))
    assert "ohwx" in message


def test_a_pasted_bom_caption_is_stored_and_exported_clean(flow: Flow, tmp_path: Path) -> None:
    """Issue 10 case 12: `flenwheel caption` with a BOM and a zero-width space; kohya reads clean bytes."""
    root = copy_project(flow.root, tmp_path / "project")
    asset = flow.build["items"][0]["asset_id"]
    pasted = "\ufeffphoto of ohwx\u200b woman, laughing"
    saved = ok_json("--project", root, "caption", "lisa", asset, pasted)
    assert saved["caption"] == "photo of ohwx woman, laughing"
    ok("--project", root, "dataset", "build", "lisa")
    out = tmp_path / "kohya"
    ok("--project", root, "dataset", "export", "lisa", "--format", "kohya", "--out", out)
    captions = [path.read_bytes() for path in sorted((out / "img").rglob("*.txt"))]
    assert b"photo of ohwx woman, laughing\n" in captions
    assert not any(b"\xef\xbb\xbf" in data or b"\xe2\x80\x8b" in data for data in captions)


def test_ai_toolkit_export_replaces_only_the_token_word(flow: Flow, tmp_path: Path) -> None:
    root = copy_project(flow.root, tmp_path / "project")
    project = ["--project", root]
    template = "photo of {token} {class_word}, a smart portrait"
    ok(
        *project,
        "character",
        "create",
        "art",
        "--token",
        "art",
        "--class",
        "woman",
        "--caption-template",
        template,
    )
    ok(*project, "ingest", "art", *LISA[:3])
    ok(*project, "curate", "art")
    ok(*project, "dataset", "build", "art")
    out = tmp_path / "ai-toolkit"
    ok(*project, "dataset", "export", "art", "--format", "ai-toolkit", "--out", out)
    captions = [p.read_text(encoding="utf-8").strip() for p in sorted((out / "dataset").glob("*.txt"))]
    assert captions == ["photo of [trigger] woman, a smart portrait"] * 3


@pytest.mark.parametrize("photos", [[], sorted((FACES / "non_face").glob("*.jpg"))], ids=["none", "no faces"])
def test_curate_says_why_when_no_photo_shows_a_face(tmp_path: Path, photos: list[Path]) -> None:
    root = _fresh_project(tmp_path)
    if photos:
        ok("--project", root, "ingest", "lisa", *photos)
    result = run_cli("--project", root, "curate", "lisa", "--json")
    no_traceback(result)
    if result.returncode == 0:
        decisions = json.loads(result.stdout)["decisions"]
        assert len(decisions) == len(photos)
        assert all(d["label"] == "reject" and "no face" in d["reason"] for d in decisions)
        assert all(d["pose"] is None for d in decisions)  # measured: nobody in a cup, a rocket, a cat
    else:
        message = json_error(result)["error"]
        assert re.search(r"\bno (photos|images|faces?)\b", message, re.IGNORECASE), message


def test_init_on_a_file_gives_a_sensible_fix(tmp_path: Path) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("mine\n")
    message = clean_error(run_cli("init", notes))
    assert f"flenwheel init {notes}" not in message
    assert notes.read_text() == "mine\n"


@pytest.mark.parametrize("command", ["init", "export"])
def test_a_path_below_a_file_is_one_clear_error(flow: Flow, tmp_path: Path, command: str) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("mine\n")
    if command == "init":
        result = run_cli("init", notes / "sub")
    else:
        result = run_cli(
            "--project", flow.root, "dataset", "export", "lisa", "--format", "kohya", "--out", notes / "sub"
        )
    clean_error(result)


@pytest.mark.parametrize(
    "bad", [["lisa", "--version", "99"], ["bob"]], ids=["no such version", "no such character"]
)
def test_a_failed_export_leaves_no_folder_behind(flow: Flow, tmp_path: Path, bad: list[str]) -> None:
    out = tmp_path / "exports" / "kohya"
    clean_error(run_cli("--project", flow.root, "dataset", "export", *bad, "--format", "kohya", "--out", out))
    assert not out.exists()


@pytest.mark.parametrize(
    "args",
    [
        ["review", "lisa", "1"],
        ["dataset", "export", "lisa", "--format", "kohya", "--out", "x", "--repeats", "many"],
    ],
    ids=["missing --label", "bad --repeats"],
)
def test_usage_errors_with_json_are_a_json_object(flow: Flow, tmp_path: Path, args: list[str]) -> None:
    result = run_cli("--project", flow.root, *args, "--json", cwd=tmp_path)
    assert json_error(result)["error"]


def test_a_malformed_setting_is_one_clear_error(flow: Flow) -> None:
    env = {"FLENWHEEL_IDENTITY_THRESHOLD": "abc"}
    message = clean_error(run_cli("--project", flow.root, "character", "list", env=env))
    assert "FLENWHEEL_IDENTITY_THRESHOLD" in message


def test_a_malformed_database_url_is_one_clear_error(flow: Flow) -> None:
    env = {"FLENWHEEL_DATABASE_URL": "not a url"}
    message = clean_error(run_cli("--project", flow.root, "character", "list", env=env))
    assert "FLENWHEEL_DATABASE_URL" in message


def test_curate_json_puts_the_review_band_first_and_a_bad_reference_is_named(tmp_path: Path) -> None:
    """Issue 13: needs_review (label, reason, thresholds) leads curate --json; a reference without a face is
    one clear error naming the file, and `flenwheel reference … --off` unmarks it."""
    root = tmp_path / "p"
    ok("init", root)
    ok("--project", root, "character", "create", "bo", "--token", "ohwx_bo", "--class", "person")
    ok("--project", root, "ingest", "bo", london(13), FACES / "non_face" / "4_brick.jpg", "--reference")
    ok("--project", root, "ingest", "bo", london(13, "smiling"))
    failed = run_cli("--project", root, "curate", "bo")
    no_traceback(failed)
    assert failed.returncode == 2, failed.stdout + failed.stderr
    [error] = [line for line in failed.stderr.splitlines() if line.startswith("error: ")]
    assert "4_brick.jpg: no face found" in error and "neutral.jpg" not in error
    assert ok_json("--project", root, "reference", "bo", "4_brick.jpg", "--off")["is_reference"] is False
    curated = ok_json("--project", root, "curate", "bo")
    assert curated["threshold"] == 0.42 and curated["review_threshold"] == 0.6 and curated["warnings"] == []
    first = curated["decisions"][0]
    assert first["file"].endswith("smiling.jpg") and first["label"] == "needs_review"
    assert first["reason"].startswith("needs review: maybe the character (distance 0.43 is between 0.42")
