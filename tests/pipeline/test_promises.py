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
from flenwheel.store.models import Asset, Character, RunCall, TrainingRun, User
from flenwheel.store.project import Project
from flenwheel.store.run import PolicyRefused
from flenwheel.trainers.fal import FalTrainer

from checkpoint_runs import character_with_dataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "providers"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "trainers"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "web"))
from fal_server import FalServer
from fal_training_server import FalTrainingServer
from replicate_server import ReplicateServer

TINY = TextToImage(prompt="photo of ohwx woman, studio light", seed=11, steps=1, width=64, height=64)


@pytest.fixture
def fal_training() -> Iterator[FalTrainingServer]:
    running = FalTrainingServer().start()
    yield running
    running.stop()


@pytest.fixture
def replicate() -> Iterator[ReplicateServer]:
    running = ReplicateServer().start()
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


def _paid_requests(count: int) -> list:
    """`count` distinct paid requests of every kind fal takes (distinct seeds: distinct fingerprints)."""
    from flenwheel.providers.base import IdentityReference, ImageToImage, Upscale

    from engines import png

    source = png((200, 120, 40))
    made: list = []
    for n in range(count):
        kind = n % 4
        if kind == 0:
            made.append(
                TextToImage(prompt=f"photo {n}", seed=n, width=512, height=512, model="fal-ai/flux/dev")
            )
        elif kind == 1:
            made.append(ImageToImage(prompt=f"edit {n}", seed=n, image=source, width=512, height=512))
        elif kind == 2:
            made.append(Upscale(image=png((n % 255, 10, 10)), factor=2))
        else:
            made.append(IdentityReference(prompt=f"portrait {n}", seed=n, references=(source,)))
    return made


class UnreachableStatusFal(FalServer):
    """fal where every fifth request, once accepted, cannot be checked on (503) until `reachable()`: it keeps
    running — and billing — on fal while flenwheel's engine gives up on it."""

    def __init__(self) -> None:
        super().__init__()
        self.unreachable: set[str] = set()

    def _submit(self, endpoint, arguments, headers):  # type: ignore[no-untyped-def]
        status, body, extra = super()._submit(endpoint, arguments, headers)
        if status == 200 and len(self.requests) % 5 == 0:
            self.unreachable.add(body["request_id"])
        return status, body, extra

    def _status(self, request, with_logs):  # type: ignore[no-untyped-def]
        if request.id in self.unreachable:
            return 503, {"detail": "upstream request timeout"}, {}
        return super()._status(request, with_logs)

    def reachable(self) -> None:
        self.unreachable.clear()


@pytest.fixture
def flaky_fal() -> Iterator[UnreachableStatusFal]:
    running = UnreachableStatusFal()
    running.start()
    yield running
    running.stop()


def test_a_hundred_concurrent_paid_requests_stay_under_the_cap_and_record_what_fal_billed(
    project: Project, flaky_fal: UnreachableStatusFal
) -> None:
    fal = flaky_fal
    from concurrent.futures import ThreadPoolExecutor

    from flenwheel.store.run import BudgetExceeded, CallStillBilling

    create_character(project, "lisa", "ohwx", "woman", budget_usd=1.00)
    engine = FalProvider(fal.key, queue_url=fal.url, rest_url=fal.url, poll_interval=0.01)
    requests = _paid_requests(100)

    def send(request) -> str:
        try:
            run_generation(project, "lisa", request, providers=[engine])
            return "stored"
        except BudgetExceeded:
            return "refused"
        except CallStillBilling:
            return "still billing"

    with ThreadPoolExecutor(max_workers=16) as pool:
        outcomes = list(pool.map(send, requests))

    def spent() -> float:
        with project.db.session() as session:
            return float(session.scalar(select(Character.spent_usd)))

    assert spent() <= 1.00 + 1e-9  # the cap holds while some remote jobs may still bill
    assert {"refused", "stored", "still billing"} <= set(outcomes), outcomes
    # fal answers again; the retries of the abandoned ones resume the same fal requests and settle them
    fal.reachable()
    for request, outcome in zip(requests, outcomes, strict=True):
        if outcome == "still billing":
            run_generation(project, "lisa", request, providers=[engine])
    submitted = outcomes.count("stored") + outcomes.count("still billing")
    assert len(fal.requests) == submitted  # nothing was submitted twice
    billed = sum(fal.billed_usd(request_id) for request_id in fal.requests)
    # what flenwheel records is what fal billed (costs are kept to 6 decimals: a few micro-dollars of rounding)
    assert spent() == pytest.approx(billed, abs=1e-4)
    assert spent() <= 1.00 + 1e-9
    with project.db.session() as session:
        calls = session.scalars(select(RunCall)).all()
        assert {call.status for call in calls} == {"done"}
        assert sum(call.billed_usd or 0.0 for call in calls) == pytest.approx(billed, abs=1e-4)


def test_a_cancel_reaches_fal_and_the_reservation_settles_to_what_was_billed(
    project: Project, fal: FalServer
) -> None:
    from flenwheel.store.run import RunCancelled, RunContext

    create_character(project, "lisa", "ohwx", "woman", budget_usd=1.00)
    engine = FalProvider(fal.key, queue_url=fal.url, rest_url=fal.url, poll_interval=0.01)
    fal.pending_polls = 10_000  # it keeps running until cancelled
    run = RunContext(project.db)
    fal.on_first_status = lambda _request_id: run.cancel()  # the user presses cancel while it runs
    request = TextToImage(prompt="x", seed=3, width=512, height=512, model="fal-ai/flux/dev")
    with pytest.raises(RunCancelled):
        run_generation(project, "lisa", request, providers=[engine], ctx=run)
    [request_id] = list(fal.requests)
    assert fal.cancels == [request_id]  # fal heard the cancel
    with project.db.session() as session:
        [call] = session.scalars(select(RunCall)).all()
        spent = session.scalar(select(Character.spent_usd))
    assert call.status == "done" and call.billed_usd == fal.billed_usd(request_id) == 0.0
    assert spent == 0.0  # the reservation settled to what fal billed for a cancelled per-image request


def test_no_nsfw_input_ever_reaches_an_external_server(
    project: Project, fal: FalServer, fal_training
) -> None:
    """A property over random sequences of stages (generate, edit, upscale, identity reference, train) on
    characters with and without the NSFW flag, and NSFW-flagged requests: the fal protocol servers record
    every request and upload they receive, and not one comes from NSFW work."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from flenwheel.providers.base import IdentityReference, ImageToImage, Upscale

    from engines import ScriptedEngine, png

    external = FalProvider(fal.key, queue_url=fal.url, rest_url=fal.url, poll_interval=0.01)
    self_hosted = ScriptedEngine("comfyui", allows_nsfw=True)
    trainer = FalTrainer(
        fal_training.key, queue_url=fal_training.url, rest_url=fal_training.url, poll_interval=0.01
    )
    character_with_dataset(project, "dataset")
    counter = iter(range(10_000))

    def request_of(kind: str, n: int, nsfw: bool):
        common = {"prompt": f"portrait {n}", "seed": n, "nsfw": nsfw}
        if kind == "generate":
            return TextToImage(**common, width=512, height=512, model="fal-ai/flux/dev")
        if kind == "edit":
            return ImageToImage(**common, image=png((n % 250, 1, 2)), width=512, height=512)
        if kind == "upscale":
            return Upscale(image=png((3, n % 250, 4)), factor=2, nsfw=nsfw)
        return IdentityReference(**common, references=(png((5, 6, n % 250)),))

    steps = st.lists(
        st.tuples(st.sampled_from(["generate", "edit", "upscale", "identity", "train"]), st.booleans()),
        min_size=1,
        max_size=4,
    )

    @settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))
    @given(character_nsfw=st.booleans(), engines_order=st.booleans(), sequence=steps)
    def property_(character_nsfw: bool, engines_order: bool, sequence: list[tuple[str, bool]]) -> None:
        name = f"c{next(counter)}"
        create_character(project, name, "ohwx", "woman", nsfw=character_nsfw, budget_usd=100.0)
        engines = [external, self_hosted] if engines_order else [self_hosted, external]
        for kind, request_nsfw in sequence:
            n = next(counter)
            sent_before = (len(fal.submissions), len(fal.uploads))
            trained_before = (len(fal_training.submissions), len(fal_training.uploads))
            nsfw = character_nsfw or request_nsfw
            if kind == "train":
                with project.db.session() as session:
                    session.scalar(select(Character).where(Character.name == "dataset")).nsfw = nsfw
                try:
                    train_character(project, "dataset", trainer, family="flux", max_steps=10, epochs=1)
                except PolicyRefused:
                    assert nsfw
                if nsfw:
                    assert (len(fal_training.submissions), len(fal_training.uploads)) == trained_before
                continue
            outcome = run_generation(project, name, request_of(kind, n, request_nsfw), providers=engines)
            if nsfw:
                assert outcome.provider == "comfyui"
                assert (len(fal.submissions), len(fal.uploads)) == sent_before  # not one byte went out

    property_()


def test_paid_work_from_api_cli_processes_and_trainings_at_once_stays_under_the_cap(
    project: Project, fal: FalServer, fal_training: FalTrainingServer, replicate: ReplicateServer
) -> None:
    """`POST /jobs` over the API (its job workers), `flenwheel generate` processes, fal trainings and
    in-process requests on fal and Replicate spend one character's budget at the same time: the cap holds,
    and what flenwheel records equals what the three servers billed."""
    from concurrent.futures import ThreadPoolExecutor

    from pydantic import SecretStr
    from webapi import make_api

    from flenwheel.providers.replicate import ReplicateProvider
    from flenwheel.store.run import BudgetExceeded

    character_with_dataset(project, "lisa")
    with project.db.session() as session:
        session.scalar(select(Character).where(Character.name == "lisa")).budget_usd = 0.60
    engine = FalProvider(fal.key, queue_url=fal.url, rest_url=fal.url, poll_interval=0.01)
    on_replicate = ReplicateProvider(replicate.token, base_url=f"{replicate.url}/v1", poll_interval=0.01)
    api_context = make_api(
        project,
        job_workers=2,
        fal_key=SecretStr(fal.key),
        fal_queue_url=fal.url,
        fal_rest_url=fal.url,
        providers="fal",
    )
    api = next(api_context)
    with project.db.session() as session:
        alice_id = int(session.scalar(select(User.id).where(User.name == "alice")))
        session.scalar(select(Character).where(Character.name == "lisa")).owner_id = alice_id
        lisa_id = int(session.scalar(select(Character.id).where(Character.name == "lisa")))
    trainer = FalTrainer(
        fal_training.key, queue_url=fal_training.url, rest_url=fal_training.url, poll_interval=0.01
    )
    flenwheel = Path(sys.executable).parent / "flenwheel"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("FLENWHEEL_")},
        "FAL_KEY": fal.key,
        "FLENWHEEL_FAL_QUEUE_URL": fal.url,
        "FLENWHEEL_FAL_REST_URL": fal.url,
        "FLENWHEEL_PROVIDERS": "fal",
    }
    cli = [
        subprocess.Popen(
            [
                *(str(flenwheel), "--project", str(project.root), "generate", "lisa", f"cli photo {n}"),
                *("--provider", "fal", "--model", "fal-ai/flux/dev", "--seed", str(n), "--json"),
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n in range(6)
    ]

    api_jobs = [
        api.client.post(
            "/jobs",
            json={
                "kind": "generate",
                "character_id": lisa_id,
                "payload": {"request": {"prompt": f"api photo {n}", "seed": n, "width": 512, "height": 512}},
            },
            headers=api.alice,
        ).json()["id"]
        for n in range(200, 206)
    ]

    def generate(n: int) -> str:
        on_fal = n % 3 != 0
        model = "fal-ai/flux/dev" if on_fal else "black-forest-labs/flux-dev"
        request = TextToImage(prompt=f"thread {n}", seed=n, width=512, height=512, model=model)
        try:
            run_generation(project, "lisa", request, providers=[engine if on_fal else on_replicate])
            return "stored on fal" if on_fal else "stored on replicate"
        except BudgetExceeded:
            return "refused"

    def train(steps: int) -> str:
        try:
            train_character(project, "lisa", trainer, family="flux", max_steps=steps, epochs=1)
            return "trained"
        except BudgetExceeded:
            return "refused"

    with ThreadPoolExecutor(max_workers=8) as pool:
        threads = list(pool.map(generate, range(100, 112)))
        trainings = list(pool.map(train, (40, 60)))
    cli_outcomes = []
    for process in cli:
        out, err = process.communicate()
        cli_outcomes.append("stored" if process.returncode == 0 else "refused")
        assert process.returncode == 0 or "budget" in out + err, out + err
    api_outcomes = []
    for job_id in api_jobs:
        job = wait_for_job(api, job_id)
        assert job["status"] == "succeeded" or "budget" in (job["error"] or ""), job
        api_outcomes.append("stored" if job["status"] == "succeeded" else "refused")
    api_context.close()  # the app and its job workers stop
    stored = [*threads, *cli_outcomes, *api_outcomes]
    assert "stored" in cli_outcomes + api_outcomes and "stored on replicate" in threads, stored
    with project.db.session() as session:
        spent = float(session.scalar(select(Character.spent_usd).where(Character.name == "lisa")))
        calls = session.scalars(select(RunCall)).all()
    billed = (
        sum(fal.billed_usd(r) for r in fal.requests)
        + sum(fal_training.billed_usd(r) for r in fal_training.requests)
        + sum(replicate.billed_usd(p) for p in replicate.predictions)
    )
    assert spent <= 0.60 + 1e-9
    assert spent == pytest.approx(billed, abs=1e-4)
    assert {call.status for call in calls} <= {"done"}
    assert len(fal.requests) == stored.count("stored on fal") + stored.count("stored")
    assert len(replicate.predictions) == stored.count("stored on replicate")
    assert len(fal_training.requests) == trainings.count("trained")


def wait_for_job(api, job_id: int) -> dict:  # type: ignore[no-untyped-def]
    """The job's row once it has finished (polled: the outcome, not the time, decides the test)."""
    import time

    while True:
        job = api.client.get(f"/jobs/{job_id}", headers=api.alice).json()
        if job["status"] in {"succeeded", "failed", "cancelled"}:
            return dict(job)
        time.sleep(0.1)
