"""Every HTML report escapes what users and engines wrote: a file name, a caption, a review reason, a model
name, a prompt key or an error that holds markup shows as text and never runs in the reader's browser."""

from __future__ import annotations

import shutil
from pathlib import Path

from markupsafe import escape
from sqlalchemy import select

from flenwheel.characters import create_character
from flenwheel.datasets.curate import curate
from flenwheel.datasets.ingest import ingest
from flenwheel.datasets.review import review_asset
from flenwheel.datasets.versions import build_dataset_version
from flenwheel.evaluation.advice import Advice
from flenwheel.evaluation.selection import CellSummary
from flenwheel.pipeline.demo import chain_section
from flenwheel.report.curation import write_curation_report
from flenwheel.report.training import write_evaluation_report
from flenwheel.store.models import Asset, Evaluation, EvaluationSample
from flenwheel.store.project import Project

from checkpoint_runs import add_run, character_with_dataset
from photos import LISA

SCRIPT = "<script>alert(1)</script>"
IMG = "<img src=x onerror=alert(1)>"  # a file name cannot hold the "/" of a closing tag


def assert_shown_as_text(page: str, *values: str) -> None:
    for value in values:
        assert value not in page, value
        assert str(escape(value)) in page, value
    assert "<script" not in page and "<img src=x" not in page


def test_the_curation_report_escapes_file_names_captions_reasons_and_sections(
    project: Project, tmp_path: Path
) -> None:
    create_character(
        project, "lisa", "ohwx", "woman", caption_template="{token} " + SCRIPT + ", {class_word}"
    )
    photos = tmp_path / "photos"
    photos.mkdir()
    for index, photo in enumerate(LISA[:3]):
        shutil.copy(photo, photos / f"{IMG} {index}.jpg")
    (photos / f"{IMG} broken.jpg").write_text("not an image")
    ingest(project, "lisa", [photos], reference=True)
    first = curate(project, "lisa")
    review_asset(project, "lisa", str(first.decisions[2].asset_id), "reject", reason=SCRIPT)
    report = curate(project, "lisa")
    version = build_dataset_version(project, "lisa").version
    chain = [{"job": 7, "stage": "train", "status": "failed", "result": {"run": SCRIPT}}]
    section = chain_section(chain, tmp_path / f"{IMG}.html", tmp_path)

    target = write_curation_report(
        project, report, version, [], tmp_path / "report.html", sections=[(SCRIPT, section)]
    )

    page = target.read_text(encoding="utf-8")
    assert_shown_as_text(page, f"photos/{IMG} 0.jpg", f"photos/{IMG} broken.jpg", f"ohwx {SCRIPT}", SCRIPT)
    assert page.count("<table>") == 6  # the section's own table is markup, not text
    assert f"run {escape(SCRIPT)}" in page and f"{escape(IMG)}.html" in page


def test_the_evaluation_report_escapes_model_prompt_reason_and_advice(project: Project) -> None:
    character_with_dataset(project)
    run_id, [checkpoint_id] = add_run(project, "lisa", [("ckpt", b"not read by the report")])
    cell = CellSummary(
        checkpoint_id=checkpoint_id,
        step=100,
        epoch=1,
        strength=1.0,
        images=1,
        faces=1,
        successes=1,
        success_rate=1.0,
        near_copies=0,
        nsfw_flags=0,
        mean_distance=0.3,
        mean_similarity=0.7,
        spread=None,
        joint_score=0.9,
        meets_target=True,
    )
    advice = Advice(code="overfit", symptom=SCRIPT, evidence=IMG, remedy=SCRIPT)
    with project.db.session() as session:
        asset_id = session.scalars(select(Asset.id)).first()
        evaluation = Evaluation(
            run_id=run_id,
            config={"model": SCRIPT, "prompts": [SCRIPT], "seeds": {SCRIPT: 5}, "size": 64, "steps": 2},
            status="failed",
            summary=[cell.model_dump()],
            selected_checkpoint_id=checkpoint_id,
            selected_strength=1.0,
            reason=IMG,
            advice=[advice.model_dump()],
        )
        session.add(evaluation)
        session.flush()
        session.add(
            EvaluationSample(
                evaluation_id=evaluation.id,
                checkpoint_id=checkpoint_id,
                strength=1.0,
                prompt_key=SCRIPT,
                prompt=SCRIPT,
                seed=5,
                asset_id=asset_id,
                face_found=True,
                identity_distance=0.3,
            )
        )
        evaluation_id = evaluation.id

    page = write_evaluation_report(project, evaluation_id, project.root / "eval.html").read_text(
        encoding="utf-8"
    )

    assert_shown_as_text(page, SCRIPT, IMG)
    assert page.count(f'alt="{escape(SCRIPT)}"') == 1  # the contact sheet's thumbnail, named by its prompt
    assert 'class="chosen"' in page and "This evaluation is failed" in page
