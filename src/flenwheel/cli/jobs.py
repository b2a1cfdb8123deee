"""`flenwheel jobs ls|show|cancel|retry` and `flenwheel worker`."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table

from flenwheel.cli.common import JsonOption, console, err_console, open_project, print_json, safe

app = typer.Typer(help="Background jobs: list, show, cancel, retry.", no_args_is_help=True)


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="jobs")
    root.command("worker")(worker)


def _backend(project: Any) -> Any:
    """What cancel/retry go through: Procrastinate must also re-deliver a retried job to a worker."""
    from flenwheel.jobs.worker import uses_procrastinate

    if uses_procrastinate(project):
        from flenwheel.jobs.procrastinate_backend import ProcrastinateBackend

        return ProcrastinateBackend(project)
    from flenwheel.jobs.embedded import EmbeddedBackend

    return EmbeddedBackend(project)  # not started: a running `flenwheel worker` picks the job up


def _row(job: Any) -> dict[str, Any]:
    return job.model_dump(mode="json")


@app.command("ls")
def list_jobs(
    character: Annotated[str | None, typer.Option("--character", help="Only this character's jobs")] = None,
    status: Annotated[
        str | None,
        typer.Option("--status", help="queued, running, succeeded, failed, cancelled, interrupted"),
    ] = None,
    kind: Annotated[str | None, typer.Option("--kind", help="Only jobs of this kind")] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=1000)] = 50,
    offset: Annotated[int, typer.Option("--offset", min=0)] = 0,
    json_output: JsonOption = False,
) -> None:
    """List jobs, newest first."""
    from flenwheel.errors import InvalidInput
    from flenwheel.jobs.base import JobStatus
    from flenwheel.jobs.store import JobStore
    from flenwheel.store.project import get_character

    if status is not None and status not in {s.value for s in JobStatus}:
        raise InvalidInput(f"--status {status!r}: use one of {', '.join(s.value for s in JobStatus)}")
    project = open_project()
    try:
        character_id = None
        if character is not None:
            with project.db.session() as session:
                character_id = get_character(session, character).id
        jobs = JobStore(project.db).list_jobs(
            character_id=character_id, status=status, kind=kind, limit=limit, offset=offset
        )
    finally:
        project.close()
    if json_output:
        print_json([_row(job) for job in jobs])
        return
    if not jobs:
        err_console.print("No jobs.")
        return
    table = Table("id", "kind", "queue", "status", "progress", "attempts", "message / error")
    for job in jobs:
        progress = f"{job.progress_done}/{job.progress_total}" if job.progress_total else ""
        table.add_row(
            str(job.id),
            safe(job.kind),
            job.queue,
            job.status.value,
            progress,
            f"{job.attempts}/{job.max_attempts}",
            safe(job.error or job.message),
        )
    console.print(table)


@app.command("submit")
def submit(
    kind: Annotated[str, typer.Argument(help="Job kind, e.g. curate, dataset_build, generate, chain")],
    payload: Annotated[str, typer.Option("--payload", help='JSON object, e.g. {"character": "lisa"}')] = "{}",
    queue: Annotated[
        str | None, typer.Option("--queue", "-q", help="gpu, cpu or api (default: the kind's own queue)")
    ] = None,
    priority: Annotated[int, typer.Option("--priority", help="Higher runs first")] = 0,
    json_output: JsonOption = False,
) -> None:
    """Queue a job for the workers (`flenwheel worker`); the payload is checked against the kind's model
    first. The background chain's stages are internal (submit `chain`)."""
    import json

    from flenwheel.errors import InvalidInput
    from flenwheel.jobs import kinds
    from flenwheel.jobs.base import JobRequest, Queue
    from flenwheel.pipeline.jobs import parse
    from flenwheel.pipeline.kinds import register_pipeline_kinds
    from flenwheel.store.project import get_character

    register_pipeline_kinds()  # the pipeline's stages are kinds too
    if queue is not None and queue not in {q.value for q in Queue}:
        raise InvalidInput(f"--queue {queue!r}: use one of gpu, cpu, api")
    try:
        data = json.loads(payload)
    except json.JSONDecodeError as exc:
        raise InvalidInput(
            f"--payload is not JSON ({exc.msg} at character {exc.pos}): give an object"
        ) from None
    if not isinstance(data, dict):
        raise InvalidInput('--payload must be a JSON object, e.g. {"character": "lisa"}')
    project = open_project()
    try:
        info = kinds.info(kind)
        accepted = [k.name for k in kinds.submittable(project.settings.test_kinds)]
        if kind not in accepted:
            raise kinds.KindNotSubmittable(info, accepted)
        assert info.payload is not None
        checked = parse(info.payload, data, kind)
        character_id = None
        name = getattr(checked, "character", None)
        if name is not None:
            with project.db.session() as session:
                character_id = get_character(session, name).id
        backend = _backend(project)
        job_id = backend.submit(
            JobRequest(
                kind=kind,
                payload=checked.model_dump(mode="json", exclude_unset=True),
                queue=Queue(queue) if queue is not None else info.queue,
                priority=priority,
                character_id=character_id,
            )
        )
        if hasattr(backend, "close"):
            backend.close()
    finally:
        project.close()
    where = queue or info.queue.value
    if json_output:
        print_json({"id": job_id, "status": "queued", "queue": where})
        return
    console.print(f"job {job_id}: queued on {where}; follow it with `flenwheel jobs show {job_id}`")


@app.command("show")
def show(job_id: Annotated[int, typer.Argument(help="Job id")], json_output: JsonOption = False) -> None:
    """Everything about one job: payload, progress, result, error, external ids."""
    from flenwheel.jobs.store import JobStore

    project = open_project()
    try:
        job = JobStore(project.db).get(job_id)
    finally:
        project.close()
    if json_output:
        print_json(_row(job))
        return
    for key, value in _row(job).items():
        console.print(f"[bold]{key}[/bold]: {safe(value)}")


@app.command("cancel")
def cancel(job_id: Annotated[int, typer.Argument(help="Job id")], json_output: JsonOption = False) -> None:
    """Cancel a queued job now, or ask a running one to stop at its next step."""
    project = open_project()
    try:
        status = _backend(project).store.cancel(job_id)
    finally:
        project.close()
    if json_output:
        print_json({"id": job_id, "status": status.value})
        return
    if status.value == "running":
        console.print(f"job {job_id}: cancel requested; it stops at its next step")
    else:
        console.print(f"job {job_id}: {status.value}")


@app.command("retry")
def retry(job_id: Annotated[int, typer.Argument(help="Job id")], json_output: JsonOption = False) -> None:
    """Queue a failed, cancelled or interrupted job again; remote work it started is resumed."""
    project = open_project()
    try:
        backend = _backend(project)
        job = backend.retry(job_id)
        if hasattr(backend, "close"):
            backend.close()
    finally:
        project.close()
    if json_output:
        print_json(_row(job))
        return
    console.print(f"job {job_id}: queued again (attempt {job.attempts + 1} of at most {job.max_attempts})")


def worker(
    queue: Annotated[
        list[str] | None,
        typer.Option("--queue", "-q", help="gpu, cpu or api; repeat for several (default: all)"),
    ] = None,
    concurrency: Annotated[int, typer.Option("--concurrency", "-c", min=1, max=64)] = 1,
) -> None:
    """Run jobs from the project's queues until stopped (Ctrl-C / SIGTERM)."""
    from flenwheel.errors import InvalidInput
    from flenwheel.jobs.base import Queue
    from flenwheel.jobs.worker import run_worker
    from flenwheel.pipeline.kinds import register_pipeline_kinds

    register_pipeline_kinds()  # this process runs the pipeline's stages
    known = {q.value for q in Queue}
    for name in queue or []:
        if name not in known:
            raise InvalidInput(f"--queue {name!r}: use one of {', '.join(sorted(known))}")
    from flenwheel.jobs.worker import uses_procrastinate

    project = open_project()
    try:
        kind = "Procrastinate" if uses_procrastinate(project) else "embedded"
        err_console.print(
            f"{kind} worker on queues {', '.join(queue or sorted(known))} with concurrency {concurrency}; "
            "Ctrl-C stops"
        )
        run_worker(project, queue or None, concurrency)
    finally:
        project.close()
