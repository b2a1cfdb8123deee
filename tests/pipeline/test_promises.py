"""The product's promises, kept by the run context on every path: NSFW work never leaves self-hosted trainers,
engines are resolved once per process (a pipeline loads once), and a worker killed at any commit of a stage
neither stores an image twice nor submits the remote job twice — on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select

from flenwheel.characters import create_character
from flenwheel.config import secret
from flenwheel.pipeline.generation import run_generation
from flenwheel.pipeline.training import train_character
from flenwheel.providers.base import TextToImage
from flenwheel.providers.fal import FalProvider
from flenwheel.providers.registry import ProviderRegistry
from flenwheel.store.models import Asset, Character, RunCall, TrainingRun
from flenwheel.store.project import Project
from flenwheel.store.run import PolicyRefused
from flenwheel.trainers.fal import FalTrainer

from checkpoint_runs import character_with_dataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "providers"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "trainers"))
from fal_server import FalServer
from fal_training_server import FalTrainingServer

TINY = TextToImage(prompt="photo of ohwx woman, studio light", seed=11, steps=1, width=64, height=64)


@pytest.fixture
def fal_training() -> Iterator[FalTrainingServer]:
    running = FalTrainingServer().start()
    yield running
    running.stop()


@pytest.fixture
def fal() -> Iterator[FalServer]:
    running = FalServer().start()
    yield running
    running.stop()


def test_an_nsfw_dataset_is_never_uploaded_to_an_external_trainer(
    project: Project, fal_training: FalTrainingServer
) -> None:
    character_with_dataset(project, "nina")
    with project.db.session() as session:
        session.scalar(select(Character).where(Character.name == "nina")).nsfw = True
    trainer = FalTrainer(
        fal_training.key, queue_url=fal_training.url, rest_url=fal_training.url, poll_interval=0.01
    )
    with pytest.raises(PolicyRefused, match="self-hosted trainers"):
        train_character(project, "nina", trainer, family="flux")
    assert fal_training.uploads == [] and fal_training.submissions == []  # not one byte left the machine
    with project.db.session() as session:
        assert session.scalar(select(func.count()).select_from(TrainingRun)) == 0
        assert session.scalar(select(Character.spent_usd).where(Character.name == "nina")) == 0.0


def test_engines_are_resolved_once_per_process_and_a_pipeline_loads_once(project: Project) -> None:
    create_character(project, "lisa", "ohwx", "woman")
    registry = ProviderRegistry.shared(project.settings)
    assert ProviderRegistry.shared(project.settings) is registry
    local = registry.get("local")
    before = local.loads
    for seed in range(4):
        run_generation(project, "lisa", TINY.model_copy(update={"seed": seed}))
    assert local.loads - before <= 1  # once for the whole run, not once per image
    assert local.loads >= 1


CRASHING_WORKER = textwrap.dedent(
    """
    import sys
    from flenwheel.config import Settings
    from flenwheel.pipeline.generation import run_generation
    from flenwheel.providers.base import TextToImage
    from flenwheel.providers.fal import FalProvider
    from flenwheel.store.project import Project
    from flenwheel.store.run import install_kill_at_commit

    root, url, key, database_url = sys.argv[1:5]
    project = Project.open(Settings(project=root, database_url=database_url or None))
    install_kill_at_commit()
    engine = FalProvider(key, queue_url=url, rest_url=url, poll_interval=0.01)
    request = TextToImage.model_validate_json(sys.argv[5])
    run_generation(project, "lisa", request, providers=[engine], attributes={"stage": "crash-test"})
    print("finished")
    """
)


def test_a_worker_killed_at_any_commit_neither_stores_twice_nor_pays_twice(
    any_project: Project, fal: FalServer, tmp_path: Path
) -> None:
    create_character(any_project, "lisa", "ohwx", "woman", budget_usd=1.0)
    script = tmp_path / "worker.py"
    script.write_text(CRASHING_WORKER)
    request = TINY.model_copy(update={"model": "fal-ai/flux/dev", "width": 512, "height": 512})
    database_url = secret(any_project.settings.database_url) or ""
    root = str(any_project.root)
    finished, commit = False, 0
    while not finished:
        commit += 1
        assert commit < 50, "the stage never finished"
        env = {**os.environ, "FLENWHEEL_TEST_KILL_AT_COMMIT": str(commit)}
        worker = subprocess.run(
            [sys.executable, str(script), root, fal.url, fal.key, database_url, request.model_dump_json()],
            env=env,
            capture_output=True,
            text=True,
        )
        finished = worker.returncode == 0 and "finished" in worker.stdout
        assert finished or worker.returncode == -9, worker.stderr  # killed at the commit, or done
        # the restarted worker (this process) runs the same step again
        engine = FalProvider(fal.key, queue_url=fal.url, rest_url=fal.url, poll_interval=0.01)
        run_generation(any_project, "lisa", request, providers=[engine], attributes={"stage": "crash-test"})
        with any_project.db.session() as session:
            assets = session.scalars(select(Asset)).all()
            calls = session.scalars(select(RunCall)).all()
            spent = session.scalar(select(Character.spent_usd))
        assert len(assets) == 1, f"killed at commit {commit}: {len(assets)} assets"
        assert assets[0].attributes.get("stage") == "crash-test"  # tagged in the same transaction
        assert len(fal.requests) == 1, f"killed at commit {commit}: submitted {len(fal.requests)} times"
        assert [c.status for c in calls] == ["done"]
        billed = calls[0].billed_usd
        [request_id] = list(fal.requests)
        assert billed is not None and billed > 0
        assert billed == pytest.approx(fal.billed_usd(request_id))  # recorded = what fal billed
        assert spent == pytest.approx(billed)
        json.dumps(assets[0].attributes)
        # a fresh project state for the next kill point: forget the image and the call, keep the server's
        # request so that a resubmission would show as a second request
        with any_project.db.session() as session:
            for asset in session.scalars(select(Asset)):
                session.delete(asset)
            for call in session.scalars(select(RunCall)):
                session.delete(call)
            session.scalar(select(Character)).spent_usd = 0.0
        fal.requests.clear()
    assert commit > 2  # it was killed at every commit of the step before the one that finished
