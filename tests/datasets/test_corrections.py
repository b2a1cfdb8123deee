"""Flywheel 2's correction triplets (seed 001 step 2.1): collected from needs_correction images (a real edit on
the tiny model and a real photo), completed with corrected images, frozen into versions, and exported in the
layouts editor trainers read — each export read back the way that trainer reads it."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from sqlalchemy import select

from flenwheel.characters import create_character
from flenwheel.datasets.corrections import (
    attach_target,
    build_triplet_set,
    collect_triplets,
    drop_triplet,
    edit_triplet,
    export_triplets,
    list_triplets,
)
from flenwheel.datasets.ingest import ingest
from flenwheel.datasets.review import review_asset
from flenwheel.domain import AssetKind
from flenwheel.errors import ExportError, InvalidInput
from flenwheel.pipeline.generation import run_generation
from flenwheel.providers.base import ImageToImage
from flenwheel.store.models import Asset
from flenwheel.store.project import Project

from patience import HANG_S
from photos import LISA

FLENWHEEL = Path(sys.executable).parent / "flenwheel"
AI_TOOLKIT_EXTENSIONS = {".jpg", ".jpeg", ".png", ".webp"}  # ai-toolkit's data loader list
INSTRUCTION = "change the background to a forest, keep her face identical"


@dataclass
class Corrections:
    project: Project
    source: int  # the photo the edit was made from
    edited: int  # the edit a person labelled needs_correction
    photo: int  # a photo labelled needs_correction (no parent: it is its own source)
    corrected: Path  # a corrected image of the edit


@pytest.fixture(scope="module")
def corrections(tmp_path_factory: pytest.TempPathFactory) -> Corrections:
    from flenwheel.config import Settings

    project = Project.init(Settings(project=tmp_path_factory.mktemp("corrections") / "p"))
    create_character(project, "lisa", "ohwx", "woman")
    outcomes = ingest(project, "lisa", LISA[:2])
    source, photo = (outcome.asset_id for outcome in outcomes)
    assert source is not None and photo is not None
    edit = ImageToImage(
        prompt=INSTRUCTION, image=LISA[0].read_bytes(), strength=0.6, seed=3, steps=2, width=64, height=64
    )
    made = run_generation(project, "lisa", edit, kind=AssetKind.EDITED, parents=(source,))
    edited = made.outputs[0].asset_id
    review_asset(project, "lisa", str(edited), "needs_correction", "the edit changed her nose")
    review_asset(project, "lisa", str(photo), "needs_correction", "blurred eyes")
    return Corrections(project, source, edited, photo, LISA[2])


def test_every_needs_correction_image_becomes_one_triplet_with_its_source_and_edit_prompt(
    corrections: Corrections,
) -> None:
    project = corrections.project
    made = {t.flawed_asset_id: t for t in collect_triplets(project, "lisa")}
    assert set(made) == {corrections.edited, corrections.photo}
    from_edit, from_photo = made[corrections.edited], made[corrections.photo]
    assert from_edit.source_asset_id == corrections.source  # the image the edit was applied to
    assert from_edit.instruction == INSTRUCTION and from_edit.issue == "the edit changed her nose"
    assert from_photo.source_asset_id == corrections.photo and from_photo.instruction == ""
    assert not from_edit.complete and not from_photo.complete
    assert collect_triplets(project, "lisa") == []  # collected once


def test_a_set_is_built_only_from_complete_triplets_and_says_what_is_missing(
    corrections: Corrections,
) -> None:
    project = corrections.project
    collect_triplets(project, "lisa")
    triplets = {t.flawed_asset_id: t for t in list_triplets(project, "lisa")}
    from_edit, from_photo = triplets[corrections.edited], triplets[corrections.photo]
    if from_edit.target_asset_id is None:
        with pytest.raises(InvalidInput, match=f"#{from_edit.id} needs a corrected image"):
            build_triplet_set(project, "lisa")
        with pytest.raises(InvalidInput, match="own source image"):
            attach_target(project, "lisa", from_edit.id, LISA[0])
        with pytest.raises(InvalidInput, match="readable"):
            attach_target(project, "lisa", from_edit.id, Path(__file__))  # not an image
    attached = attach_target(project, "lisa", from_edit.id, corrections.corrected, "face kept")
    assert attached.complete and attached.improvement == "face kept"
    with project.db.session() as session:
        target = session.get_one(Asset, attached.target_asset_id)
        assert target.kind == AssetKind.CORRECTED and target.parents == [corrections.edited]
    attach_target(project, "lisa", from_photo.id, LISA[3])
    assert not next(
        t for t in list_triplets(project, "lisa") if t.id == from_photo.id
    ).complete  # no instruction
    edit_triplet(project, "lisa", from_photo.id, instruction="sharpen her eyes\ufeff, keep everything else")
    first, created = build_triplet_set(project, "lisa")
    assert created and first.label.startswith("c") and len(first.items) == 2
    instructions = {item["triplet"]: item["instruction"] for item in first.items}
    assert instructions[from_photo.id] == "sharpen her eyes, keep everything else"  # BOM stripped
    again, created_again = build_triplet_set(project, "lisa")
    assert (again.number, created_again) == (first.number, False)  # nothing changed: no new version
    drop_triplet(project, "lisa", from_photo.id)
    second, created = build_triplet_set(project, "lisa")
    assert created and second.number == first.number + 1 and len(second.items) == 1
    edit_triplet(project, "lisa", from_photo.id, issue="blurred eyes (both)")  # brought back
    assert len(build_triplet_set(project, "lisa")[0].items) == 2


def _blob_sha(project: Project, asset_id: int) -> str:
    with project.db.session() as session:
        return session.get_one(Asset, asset_id).sha256


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _complete_set(corrections: Corrections) -> list[tuple[str, str, str]]:
    """Completes both triplets (whatever earlier tests did), builds the set and gives its (source sha256,
    target sha256, instruction) in order."""
    project = corrections.project
    collect_triplets(project, "lisa")
    for triplet in list_triplets(project, "lisa", include_dropped=True):
        if triplet.target_asset_id is None:
            target = corrections.corrected if triplet.flawed_asset_id == corrections.edited else LISA[3]
            attach_target(project, "lisa", triplet.id, target)
        if triplet.dropped or not triplet.instruction:
            edit_triplet(project, "lisa", triplet.id, instruction=triplet.instruction or "sharpen her eyes")
    version, _ = build_triplet_set(project, "lisa")
    return [(i["source"]["sha256"], i["target"]["sha256"], i["instruction"]) for i in version.items]


def test_the_ai_toolkit_export_reads_back_as_its_edit_dataset(
    corrections: Corrections, tmp_path: Path
) -> None:
    """ai-toolkit's dataset entry: images in folder_path with a caption file of the same stem, and a control
    image of the same stem in control_path (config/examples/train_lora_qwen_image_edit_2509_32gb.yaml); the job
    trains Qwen-Image-Edit-2509 (arch qwen_image_edit_plus) and samples edits of the triplets' own sources."""
    expected = _complete_set(corrections)
    result = export_triplets(corrections.project, "lisa", "ai-toolkit", tmp_path / "out")
    process = yaml.safe_load((result.out / "config.yaml").read_text())["config"]["process"][0]
    assert process["model"]["arch"] == "qwen_image_edit_plus"
    assert process["model"]["name_or_path"] == "Qwen/Qwen-Image-Edit-2509"
    assert "trigger_word" not in process and process["network"]["linear"] == 16
    dataset = process["datasets"][0]
    folder, controls = Path(dataset["folder_path"]), Path(dataset["control_path"])
    assert (folder.name, controls.name) == ("dataset", "control")  # what the ai-toolkit trainer takes
    seen = []
    for image in sorted(p for p in folder.iterdir() if p.suffix.lower() in AI_TOOLKIT_EXTENSIONS):
        caption = (folder / f"{image.stem}.{dataset['caption_ext']}").read_text().strip()
        control = [p for p in controls.iterdir() if p.stem == image.stem]
        assert len(control) == 1, image
        seen.append((_sha(control[0].read_bytes()), _sha(image.read_bytes()), caption))
    assert seen == expected
    samples = process["sample"]["samples"]
    assert [s["prompt"] for s in samples] == [e[2] for e in expected]
    assert all(Path(s["ctrl_img_1"]).parent == controls for s in samples)


def test_the_fal_export_is_start_end_pairs_with_the_instruction(
    corrections: Corrections, tmp_path: Path
) -> None:
    """fal's edit trainers: a zip of ROOT_start.EXT / ROOT_end.EXT pairs and ROOT.txt with the instruction."""
    expected = _complete_set(corrections)
    result = export_triplets(corrections.project, "lisa", "fal", tmp_path / "out")
    archive = zipfile.ZipFile(result.files[0])
    roots: dict[str, dict[str, bytes]] = {}
    for name in archive.namelist():
        stem, _, extension = name.rpartition(".")
        root, _, role = stem.rpartition("_")
        if extension == "txt":
            roots.setdefault(stem, {})["txt"] = archive.read(name)
        else:
            assert role in {"start", "end"}, name
            roots.setdefault(root, {})[role] = archive.read(name)
    seen = [
        (_sha(pair["start"]), _sha(pair["end"]), pair["txt"].decode().strip())
        for _, pair in sorted(roots.items())
    ]
    assert seen == expected


def test_the_diffsynth_export_is_its_edit_metadata(corrections: Corrections, tmp_path: Path) -> None:
    """DiffSynth-Studio: metadata.csv rows of image (target), prompt, edit_image (source), paths relative to
    --dataset_base_path, read with --data_file_keys "image,edit_image"."""
    expected = _complete_set(corrections)
    result = export_triplets(corrections.project, "lisa", "diffsynth", tmp_path / "out")
    with (result.out / "metadata.csv").open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    seen = [
        (
            _sha((result.out / r["edit_image"]).read_bytes()),
            _sha((result.out / r["image"]).read_bytes()),
            r["prompt"],
        )
        for r in rows
    ]
    assert seen == expected
    document = json.loads((result.out / "triplets.json").read_text())
    assert [t["edit_prompt"] for t in document["triplets"]] == [e[2] for e in expected]
    assert {"source_image", "target_image", "issue", "improvement"} <= set(document["triplets"][0])


def test_bad_requests_are_clear(corrections: Corrections, tmp_path: Path) -> None:
    project = corrections.project
    with pytest.raises(ExportError, match="ai-toolkit, fal, diffsynth"):
        export_triplets(project, "lisa", "kohya", tmp_path / "x")
    with pytest.raises(InvalidInput, match="no correction triplet 999"):
        drop_triplet(project, "lisa", 999)
    with pytest.raises(InvalidInput, match="under 2000"):
        edit_triplet(project, "lisa", list_triplets(project, "lisa", True)[0].id, instruction="x" * 5000)
    create_character(project, "maya", "ohwx_maya", "woman")
    with pytest.raises(InvalidInput, match="maya has no correction triplet"):  # lisa's triplet is not maya's
        drop_triplet(project, "maya", list_triplets(project, "lisa", True)[0].id)
    with pytest.raises(InvalidInput, match="flenwheel corrections build maya"):
        export_triplets(project, "maya", "fal", tmp_path / "y")
    assert not (tmp_path / "y").exists()


def test_the_cli_lists_and_exports(corrections: Corrections, tmp_path: Path) -> None:
    _complete_set(corrections)
    root = str(corrections.project.root)

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(FLENWHEEL), "--project", root, "corrections", *args],
            capture_output=True,
            text=True,
            timeout=HANG_S,
        )

    listed = cli("ls", "lisa", "--json")
    assert listed.returncode == 0, listed.stderr
    assert {t["flawed_asset_id"] for t in json.loads(listed.stdout)["triplets"]} >= {corrections.edited}
    exported = cli("export", "lisa", "--format", "fal", "--out", str(tmp_path / "fal"))
    assert exported.returncode == 0, exported.stderr
    assert "triplets" in exported.stdout
    with corrections.project.db.session() as session:
        assert session.scalar(select(Asset.id).where(Asset.kind == AssetKind.CORRECTED)) is not None
    no_run = cli("compare", "lisa", "--run", "99999")
    assert no_run.returncode != 0 and "has no run 99999" in no_run.stderr, no_run.stderr
    bad = cli("attach", "lisa", "12345", str(LISA[0]))
    assert (
        bad.returncode != 0 and "no correction triplet 12345" in bad.stderr and "Traceback" not in bad.stderr
    )


def test_an_editor_lora_trains_on_a_correction_set_through_ai_toolkit(
    corrections: Corrections, tmp_path: Path
) -> None:
    """Seed 001 step 2.2 through the trainer contract: ai-toolkit (its stand-in run.py, which reads the job as
    ai-toolkit does) trains Qwen-Image-Edit-2509 on the set's targets with the sources as control images; the
    run is recorded against the correction set, never taken for a character LoRA; the local trainer, which
    cannot condition on a source image, refuses with advice."""
    import shutil

    from flenwheel.pipeline.evaluation import evaluate_run
    from flenwheel.pipeline.training import latest_run, train_editor
    from flenwheel.store.models import TrainingRun
    from flenwheel.trainers.ai_toolkit import AiToolkitTrainer
    from flenwheel.trainers.local_lora import LocalLoraTrainer

    project = corrections.project
    expected = _complete_set(corrections)
    with pytest.raises(InvalidInput, match="ai-toolkit"):
        train_editor(project, "lisa", LocalLoraTrainer(cache_root=tmp_path / "cache"))
    with pytest.raises(InvalidInput, match="does not edit"):
        train_editor(project, "lisa", LocalLoraTrainer(cache_root=tmp_path / "cache"), family="flux")
    install = tmp_path / "ai-toolkit"
    install.mkdir()
    shutil.copy(Path(__file__).parents[1] / "trainers" / "standins" / "ai_toolkit_run.py", install / "run.py")
    trainer = AiToolkitTrainer(install, Path(sys.executable))
    outcome = train_editor(project, "lisa", trainer, max_steps=4, save_every_steps=2)
    assert outcome.status == "succeeded" and outcome.dataset_version.startswith("c")
    assert [c["step"] for c in outcome.checkpoints] == [2, 4]
    job = yaml.safe_load((outcome.work_dir / "ai-toolkit-job.yaml").read_text())["config"]["process"][0]
    assert job["model"]["arch"] == "qwen_image_edit_plus"
    assert job["model"]["name_or_path"] == "Qwen/Qwen-Image-Edit-2509"
    dataset = job["datasets"][0]
    targets = sorted(p for p in Path(dataset["folder_path"]).iterdir() if p.suffix != ".txt")
    assert [_sha(p.read_bytes()) for p in targets] == [e[1] for e in expected]
    assert [(Path(dataset["folder_path"]) / f"{p.stem}.txt").read_text().strip() for p in targets] == [
        e[2] for e in expected
    ]
    with project.db.session() as session:
        run = session.get_one(TrainingRun, outcome.run_id)
        assert run.dataset_version_id is None and run.correction_set_id is not None
    assert latest_run(project, "lisa", editor=True).id == outcome.run_id
    with pytest.raises(InvalidInput, match="flenwheel train lisa"):
        latest_run(project, "lisa")  # an editor run is not the character's LoRA
    with pytest.raises(InvalidInput, match="editor LoRA"):
        evaluate_run(project, "lisa", run_id=outcome.run_id)
    again = train_editor(project, "lisa", trainer, max_steps=4, save_every_steps=2, reuse_finished=True)
    assert again.run_id == outcome.run_id and again.resumed  # the same set and settings: not trained twice


def _editor_run(corrections: Corrections, tmp_path: Path) -> int:
    """An editor run on the current set (trained once per set and settings; reused after)."""
    import shutil

    from flenwheel.pipeline.training import train_editor
    from flenwheel.trainers.ai_toolkit import AiToolkitTrainer

    _complete_set(corrections)
    install = tmp_path / "ai-toolkit"
    install.mkdir(exist_ok=True)
    shutil.copy(Path(__file__).parents[1] / "trainers" / "standins" / "ai_toolkit_run.py", install / "run.py")
    trainer = AiToolkitTrainer(install, Path(sys.executable))
    return train_editor(
        corrections.project, "lisa", trainer, max_steps=4, save_every_steps=2, reuse_finished=True
    ).run_id


def test_enrichment_with_the_editor_lora_is_compared_with_the_base_editor_on_the_same_edits(
    corrections: Corrections, tmp_path: Path
) -> None:
    """Seed 001 step 2.3. Real photos stand in for the edits: without the LoRA the engine answers with another
    woman's face (drift), with it with lisa's own — six paired edits decide "better" by the exact McNemar test.
    The request with the editor carries its LoRA and the editor's model family; the plain one carries neither."""
    import sys as _sys

    from flenwheel.jobs.base import LocalJobContext
    from flenwheel.pipeline.editor import compare_editor
    from flenwheel.pipeline.enrich import editor_lora

    _sys.path.insert(0, str(Path(__file__).parents[1] / "pipeline"))
    from face_engines import PhotoEngine
    from photos import london

    project = corrections.project
    run_id = _editor_run(corrections, tmp_path)
    editor = editor_lora(project, "lisa", run_id)
    assert editor.model == "qwen-image-edit-2509" and Path(editor.lora.path).is_file()
    engine = PhotoEngine("comfyui", pick=lambda r: LISA[5] if r.loras else london(7))
    sources = [corrections.source, corrections.photo]
    result = compare_editor(
        project, "lisa", LocalJobContext(), editor, per_source=3, source_ids=sources, providers=[engine]
    )
    assert (result.without.measured, result.with_editor.measured) == (6, 6)
    assert (result.without.drifted, result.with_editor.drifted) == (6, 0)
    assert result.pairs == 6 and result.discordant == (0, 6) and result.verdict == "better"
    assert result.p_value == pytest.approx(2 / 64, abs=1e-4)
    plain = [r for r in engine.calls if not r.loras]
    tuned = [r for r in engine.calls if r.loras]
    assert len(plain) == len(tuned) == 6 and all(r.model is None for r in plain)
    assert all(r.model == "qwen-image-edit-2509" and r.loras[0].path == editor.lora.path for r in tuned)
    assert sorted(r.seed for r in plain) == sorted(r.seed for r in tuned)  # the same edits on both arms
    again = compare_editor(
        project, "lisa", LocalJobContext(), editor, per_source=3, source_ids=sources, providers=[engine]
    )
    assert again.verdict == "better" and len(engine.calls) == 12  # drawn once: the comparison is reused


def test_an_editor_comparison_with_nothing_measured_says_so(corrections: Corrections, tmp_path: Path) -> None:
    from flenwheel.jobs.base import LocalJobContext
    from flenwheel.pipeline.editor import compare_editor
    from flenwheel.pipeline.enrich import editor_lora
    from flenwheel.pipeline.stage import RenderSize

    project = corrections.project
    editor = editor_lora(project, "lisa", _editor_run(corrections, tmp_path))
    from engines import ScriptedEngine  # draws flat colours: no face to measure

    engine = ScriptedEngine("comfyui")
    result = compare_editor(
        project,
        "lisa",
        LocalJobContext(),
        editor,
        per_source=1,
        source_ids=[corrections.edited],  # the tiny model's edit: no face to compare with
        size=RenderSize(width=64, height=64, steps=1),
        providers=[engine],
    )
    assert result.verdict == "not measurable" and result.p_value is None
    assert result.without.drift_rate is None and "not measurable" in result.summary


def test_an_editor_lora_trains_on_fals_qwen_image_edit_trainer_but_never_for_an_nsfw_character(
    corrections: Corrections,
) -> None:
    """fal-ai/qwen-image-edit-2509-trainer takes the fal export (ROOT_start / ROOT_end pairs with ROOT.txt);
    the budget records what fal billed (at least 100 steps at $0.004); an NSFW character's corrections never
    leave the machine."""
    from flenwheel.pipeline.training import train_editor
    from flenwheel.store.models import Character
    from flenwheel.store.run import PolicyRefused
    from flenwheel.trainers.fal import FalTrainer

    sys.path.insert(0, str(Path(__file__).parents[1] / "trainers"))
    from fal_training_server import EDIT_TRAINING, FalTrainingServer

    project = corrections.project
    expected = _complete_set(corrections)
    server = FalTrainingServer().start()
    try:
        trainer = FalTrainer(server.key, queue_url=server.url, rest_url=server.url, poll_interval=0.01)
        with project.db.session() as session:
            session.scalar(select(Character).where(Character.name == "lisa")).nsfw = True
        with pytest.raises(PolicyRefused, match="NSFW"):
            train_editor(project, "lisa", trainer, max_steps=50)
        assert server.uploads == [] and server.submissions == []
        with project.db.session() as session:
            session.scalar(select(Character).where(Character.name == "lisa")).nsfw = False
        outcome = train_editor(project, "lisa", trainer, max_steps=50)
        [submission] = server.submissions
        assert submission.endpoint == EDIT_TRAINING and submission.arguments["steps"] == 50
        with zipfile.ZipFile(io.BytesIO(server.uploads[0].data)) as archive:
            names = sorted(archive.namelist())
            instructions = [archive.read(n).decode().strip() for n in names if n.endswith(".txt")]
        assert instructions == [e[2] for e in expected]
        assert sum(n.endswith(("_start.png", "_start.jpg")) for n in names) == len(expected)
        assert outcome.status == "succeeded" and outcome.cost_usd == 0.4  # 50 steps billed as 100 at $0.004
        assert outcome.cost_usd == pytest.approx(sum(server.billed_usd(r) for r in server.requests))
    finally:
        server.stop()
