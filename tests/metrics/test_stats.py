"""Seed 003's metrics from a job history made for real: tiny-model jobs, jobs on a local fal that answers after a
poll (a latency) or refuses (an injected failure), a base-image job that charges the creation cap, a direct
edit and a direct upscale that fails — and the figures equal a hand count of what happened."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
from fal_server import FalServer
from sqlalchemy import select
from typer.testing import CliRunner

from flenwheel.characters import create_character
from flenwheel.cli import app
from flenwheel.config import Settings
from flenwheel.jobs.base import JobRequest, JobStatus
from flenwheel.jobs.embedded import EmbeddedBackend
from flenwheel.metrics import compute_stats
from flenwheel.metrics.figures import MIN_SAMPLES, error_kind, parse_since, percentiles
from flenwheel.metrics.records import Area
from flenwheel.pipeline.kinds import register_pipeline_kinds
from flenwheel.pipeline.spec import CharacterSpec, create_character_from_spec
from flenwheel.providers.base import ProviderError
from flenwheel.store.models import Asset, Character, Job, RunCall
from flenwheel.store.project import Project

from patience import finished

TINY = {"width": 64, "height": 64, "steps": 2}
FAL_REFUSAL = {"detail": [{"loc": ["body", "prompt"], "msg": "prompt is flagged", "type": "value_error"}]}


@dataclass
class History:
    project: Project
    fal: FalServer
    jobs: dict[str, list[int]]
    edit_asset: int
    studio_requests: list[str]  # fal request ids of the studio jobs that succeeded
    base_requests: list[str]


def _character_id(project: Project, name: str) -> int:
    with project.db.session() as session:
        return int(session.scalar(select(Character.id).where(Character.name == name)))


def _run(backend: EmbeddedBackend, kind: str, character_id: int, payload: dict) -> int:
    job_id = backend.submit(JobRequest(kind=kind, payload=payload, character_id=character_id))
    finished(backend, job_id)
    return job_id


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> Iterator[History]:
    register_pipeline_kinds()
    fal = FalServer().start()
    fal.queued_polls, fal.pending_polls = 0, 1  # one IN_PROGRESS answer: each request waits a poll interval
    root = tmp_path_factory.mktemp("stats")
    settings = Settings(
        project=root / "project",
        workers=1,
        fal_key=fal.key,
        fal_queue_url=fal.url,
        fal_rest_url=fal.url,
        providers="fal,local,esrgan",
    )
    project = Project.init(settings)
    create_character(project, "lisa", "ohwx", "woman")
    create_character_from_spec(
        project,
        CharacterSpec(name="mara", age_range="28-32", gender_presentation="woman", hair_colour="auburn"),
    )
    lisa, mara = _character_id(project, "lisa"), _character_id(project, "mara")
    jobs: dict[str, list[int]] = {"local": [], "fal": [], "refused": [], "base": []}
    with EmbeddedBackend(project, workers=1) as backend:
        for n in range(2):  # the tiny model, on this machine's CPU
            request = {**TINY, "prompt": f"portrait {n}", "seed": n}
            payload = {"character": "lisa", "request": request, "preferred": "local"}
            jobs["local"].append(_run(backend, "generate", lisa, payload))
        for n in range(5):  # fal, one poll interval each
            payload = {"character": "lisa", "prompt": f"beach {n}", "mode": "text", "size": TINY, "seed": n}
            jobs["fal"].append(_run(backend, "studio_generate", lisa, payload))
        studio_requests = list(fal.requests)
        fal.fail("submit", 422, FAL_REFUSAL)  # the next studio job is refused for good
        payload = {"character": "lisa", "prompt": "refused", "mode": "text", "size": TINY, "seed": 99}
        jobs["refused"].append(_run(backend, "studio_generate", lisa, payload))
        payload = {"character": "mara", "count": 3, "max_retries": 0, "size": TINY}
        jobs["base"].append(_run(backend, "base_images", mara, payload))
        base_requests = [r for r in fal.requests if r not in studio_requests]
    # Direct calls, as `flenwheel edit` and `flenwheel upscale` make them: no job row.
    from flenwheel.pipeline.studio import studio_edit, studio_upscale

    with project.db.session() as session:
        source = session.scalars(select(Asset).where(Asset.job_id == jobs["local"][0])).one()
        image = project.blobs.get(source.sha256)
    edited = studio_edit(project, "lisa", image, "red scarf", strength=0.5, steps=2, provider="local")
    fal.fail("submit", 422, FAL_REFUSAL)
    with pytest.raises(ProviderError):
        studio_upscale(project, "lisa", image, provider="fal")
    yield History(project, fal, jobs, edited.outputs[0].asset_id, studio_requests, base_requests)
    project.close()
    fal.stop()


def _hand_percentile(values: list[float], q: float) -> float:
    """The linear-interpolation percentile, counted by hand: rank q·(n−1) between the two nearest values."""
    ordered = sorted(values)
    rank = q * (len(ordered) - 1)
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def _utc(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def test_the_figures_equal_a_hand_count_of_the_history(history: History) -> None:
    project, fal = history.project, history.fal
    with project.db.session() as session:
        stats = compute_stats(session)
        jobs = {job.id: job for job in session.scalars(select(Job))}
        first_output = {
            job_id: min(
                _utc(a.created_at) for a in session.scalars(select(Asset).where(Asset.job_id == job_id))
            )
            for job_id in history.jobs["local"] + history.jobs["fal"]
        }
    rows = {(row.area, row.engine): row for row in stats.engines}
    local, on_fal = rows[(Area.STUDIO_GENERATE, "local")], rows[(Area.STUDIO_GENERATE, "fal")]

    # completion and failure, per engine: 2 of 2 on the tiny model; 5 of 6 on fal, refused once with a 422
    assert (local.requests, local.succeeded, local.failed, local.models) == (2, 2, 0, ("tiny",))
    assert (on_fal.requests, on_fal.succeeded, on_fal.failed) == (6, 5, 1)
    assert on_fal.completion_rate == round(5 / 6, 4) and on_fal.failure_rate == round(1 / 6, 4)
    assert [(e.kind, e.count) for e in on_fal.errors] == [("fal HTTP 422", 1)]
    assert on_fal.models == ("fal-ai/flux/dev",)
    assert "tiny model on CPU" in local.hardware and "remote" in on_fal.hardware

    # latencies: the percentiles of the stored timestamps, counted by hand
    def seconds(job_id: int, end: datetime) -> float:
        return (end - _utc(jobs[job_id].created_at)).total_seconds()

    fal_all = [seconds(j, _utc(jobs[j].finished_at)) for j in history.jobs["fal"]]
    fal_first = [seconds(j, first_output[j]) for j in history.jobs["fal"]]
    assert on_fal.time_to_all.samples == 5 and on_fal.time_to_first.samples == 5
    assert on_fal.time_to_all.p50_s == pytest.approx(_hand_percentile(fal_all, 0.5), abs=1e-3)
    assert on_fal.time_to_all.p90_s == pytest.approx(_hand_percentile(fal_all, 0.9), abs=1e-3)
    assert on_fal.time_to_first.p90_s == pytest.approx(_hand_percentile(fal_first, 0.9), abs=1e-3)
    # each fal request answered IN_PROGRESS once, then the client waited its 1 s poll interval
    assert min(fal_first) >= 1.0 and on_fal.time_to_first.p50_s >= 1.0
    assert local.time_to_all.samples == 2 and local.time_to_all.p50_s is None  # fewer than 5: no percentile

    # cost per image: what fal billed for the five studio images (the refused one billed nothing)
    billed = sum(fal.billed_usd(r) for r in history.studio_requests)
    assert billed > 0 and on_fal.images == 5 and local.images == 2
    assert on_fal.cost_usd == pytest.approx(billed, abs=1e-6)
    assert on_fal.cost_per_image_usd == pytest.approx(billed / 5, abs=1e-6)
    assert local.cost_per_image_usd == 0.0

    # the SLA: every studio sample together (7 first images, 7 finals); the tiny model's share is said
    [studio_first] = [s for s in stats.slas if s.area is Area.STUDIO_GENERATE and s.measure == "first"]
    assert studio_first.figures.samples == 7
    assert studio_first.verdict == ("met" if studio_first.figures.p50_s < 20 else "not met")
    assert set(studio_first.engines) == {"local/tiny", "fal/fal-ai/flux/dev"}
    assert "tiny" in studio_first.note
    # three base images: the first landed before (or with) the last; one request is below MIN_SAMPLES
    base = rows[(Area.BASE_IMAGES, "fal")]
    assert (base.requests, base.images) == (1, 3)
    assert base.time_to_first.samples == 1 and base.time_to_first.p50_s is None
    [base_all] = [s for s in stats.slas if s.area is Area.BASE_IMAGES and s.measure == "all"]
    assert base_all.verdict == "too few samples" and base_all.figures.samples == 1


def test_direct_calls_count_in_their_area_and_an_engine_failure_is_recorded(history: History) -> None:
    with history.project.db.session() as session:
        stats = compute_stats(session)
        [refused] = session.scalars(
            select(RunCall).where(RunCall.status == "failed", RunCall.job_id.is_(None))
        )
        edited = session.get_one(Asset, history.edit_asset)
        [edit_call] = session.scalars(
            select(RunCall).where(RunCall.engine == "local", RunCall.job_id.is_(None))
        )
    rows = {(row.area, row.engine): row for row in stats.engines}
    edit = rows[(Area.EDIT, "local")]
    assert (edit.requests, edit.succeeded, edit.images) == (1, 1, 1)
    # the call began before its image was stored: time-to-first is the wait, not 0 or negative
    assert _utc(edit_call.created_at) <= _utc(edited.created_at)
    assert edit.time_to_first.samples == 1
    upscale = rows[(Area.UPSCALE, "fal")]
    assert (upscale.requests, upscale.failed, upscale.images, upscale.cost_usd) == (1, 1, 0, 0.0)
    assert [e.kind for e in upscale.errors] == ["fal HTTP 422"]
    assert refused.error.startswith("upscale: fal:") and refused.billed_usd == 0.0


def test_spend_per_character_against_the_caps(history: History) -> None:
    fal = history.fal
    with history.project.db.session() as session:
        stats = compute_stats(session)
        spent = {
            row.name: row.spent_usd for row in session.execute(select(Character.name, Character.spent_usd))
        }
    spend = {row.character: row for row in stats.spend}
    base_billed = sum(fal.billed_usd(r) for r in history.base_requests)
    studio_billed = sum(fal.billed_usd(r) for r in history.studio_requests)
    assert len(history.base_requests) == 3 and base_billed > 0
    mara, lisa = spend["mara"], spend["lisa"]
    assert mara.creation_usd == pytest.approx(base_billed, abs=1e-6) and mara.creation_within_cap
    assert mara.with_lora_usd == pytest.approx(base_billed, abs=1e-6)
    assert lisa.creation_usd == 0.0  # the studio is not creation
    assert lisa.total_usd == pytest.approx(studio_billed, abs=1e-6)
    assert lisa.committed_usd == pytest.approx(spent["lisa"]) == pytest.approx(studio_billed, abs=1e-6)
    assert (mara.creation_cap_usd, mara.with_lora_cap_usd) == (2.0, 5.0)


def test_a_window_and_a_character_narrow_the_figures(history: History) -> None:
    with history.project.db.session() as session:
        mara = session.scalar(select(Character.id).where(Character.name == "mara"))
        only_mara = compute_stats(session, character_ids=frozenset({mara}))
        future = compute_stats(session, since=datetime(2999, 1, 1, tzinfo=UTC))
    assert {(row.area, row.engine) for row in only_mara.engines} == {(Area.BASE_IMAGES, "fal")}
    assert [row.character for row in only_mara.spend] == ["mara"]
    assert future.requests == 0 and not future.engines
    assert all(s.verdict == "too few samples" for s in future.slas)


def test_flenwheel_stats_prints_each_sla_and_its_json(history: History) -> None:
    runner = CliRunner()
    root = str(history.project.root)
    table = runner.invoke(app, ["--project", root, "stats", "--since", "all"])
    assert table.exit_code == 0, table.output
    assert "studio: first image < 20 s" in table.output and "fal HTTP 422" in table.output
    assert "tiny model on CPU" in table.output
    given = runner.invoke(app, ["--project", root, "stats", "--character", "mara", "--json"])
    assert given.exit_code == 0, given.output
    figures = json.loads(given.output)
    assert [e["area"] for e in figures["engines"]] == ["base_images"]
    assert {s["verdict"] for s in figures["slas"]} == {"too few samples"}
    bad = runner.invoke(app, ["--project", root, "stats", "--since", "last tuesday"])
    assert bad.exit_code != 0 and "7d" in str(bad.exception or bad.output)


def test_fewer_than_five_samples_give_no_percentile_and_error_kinds_are_countable() -> None:
    assert percentiles([1.0] * (MIN_SAMPLES - 1)).p50_s is None
    assert percentiles([1.0, 2.0, 3.0, 4.0, 10.0]).p90_s == pytest.approx(
        _hand_percentile([1, 2, 3, 4, 10], 0.9)
    )
    assert error_kind("fal: submitting the request failed with HTTP 503: busy") == "fal HTTP 503"
    assert error_kind("text_to_image: replicate: HTTP 422: bad input") == "replicate HTTP 422"
    assert (
        error_kind("photo may cost up to $1.0000 but 'lisa' has $0.1000 of its budget left")
        == "budget exceeded"
    )
    assert parse_since("7d", datetime(2026, 1, 8, tzinfo=UTC)) == datetime(2026, 1, 1, tzinfo=UTC)
    assert parse_since("all") is None


def test_a_failed_job_is_counted_even_when_no_engine_was_reached(tmp_path: Path) -> None:
    """A job refused before any engine ran (its character's budget) is a failure of its area, engine `none`."""
    project = Project.init(Settings(project=tmp_path / "p", workers=1, providers="local"))
    create_character(project, "lisa", "ohwx", "woman")
    lisa = _character_id(project, "lisa")
    register_pipeline_kinds()
    with EmbeddedBackend(project, workers=1) as backend:
        bad = {"character": "lisa", "position": "nowhere", "size": TINY}
        job_id = _run(backend, "regenerate_position", lisa, bad)
    assert backend.get(job_id).status is JobStatus.FAILED
    with project.db.session() as session:
        stats = compute_stats(session)
    [row] = stats.engines
    assert (row.area, row.engine, row.failed, row.failure_rate) == (Area.REGENERATE, "none", 1, 1.0)
    project.close()
