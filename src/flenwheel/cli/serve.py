"""`flenwheel serve` (the HTTP API with an embedded job worker pool) and `flenwheel user add|ls|token|revoke`."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from flenwheel.cli.common import JsonOption, console, err_console, open_project, print_json, project_dir, safe

user_app = typer.Typer(help="API users and their tokens.", no_args_is_help=True)


def register(root: typer.Typer) -> None:
    root.command("serve")(serve)
    root.add_typer(user_app, name="user")


def serve(
    host: Annotated[str, typer.Option("--host", help="Address to listen on (0.0.0.0: every interface)")] = (
        "127.0.0.1"
    ),
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="TCP port")] = 8000,
    workers: Annotated[
        int,
        typer.Option(
            "--workers",
            min=0,
            max=64,
            help="Embedded job worker threads in this process (0: jobs wait for `flenwheel worker`)",
        ),
    ] = 2,
    log_level: Annotated[str, typer.Option("--log-level", help="uvicorn log level")] = "info",
) -> None:
    """Serve the HTTP API (OpenAPI docs at /docs) and run background jobs in this process."""
    from flenwheel.config import load_settings
    from flenwheel.jobs.worker import uses_procrastinate
    from flenwheel.web.app import create_app
    from flenwheel.web.server import run_server

    app = create_app(load_settings(project=project_dir()), job_workers=workers, job_shutdown_timeout_s=10.0)
    project = app.state.project
    if uses_procrastinate(project):
        jobs = "jobs handed to Procrastinate workers (run `flenwheel worker` on any host)"
    elif workers:
        jobs = f"{workers} embedded job worker{'s' if workers != 1 else ''}"
    else:
        jobs = "no job workers (jobs wait for `flenwheel worker`)"
    shown = f"[{host}]" if ":" in host else host
    err_console.print(
        f"flenwheel API on http://{shown}:{port} (docs: /docs), {project.db.engine.dialect.name} database, "
        f"{jobs}. Make a token with `flenwheel user add NAME`.",
        soft_wrap=True,
    )
    run_server(app, host=host, port=port, log_level=log_level)


@user_app.command("add")
def add(
    name: Annotated[str, typer.Argument(help="User name, e.g. alice")],
    operator: Annotated[
        bool, typer.Option("--operator", help="May read every user's metrics (GET /stats, GET /metrics).")
    ] = False,
    json_output: JsonOption = False,
) -> None:
    """Create an API user and print its token — once: only a hash of it is stored."""
    from flenwheel.web.auth import add_user

    project = open_project()
    try:
        user, token = add_user(project, name, operator=operator)
    finally:
        project.close()
    if json_output:
        print_json({"id": user.id, "name": user.name, "operator": user.operator, "token": token})
        return
    role = " (operator: reads every user's metrics)" if user.operator else ""
    err_console.print(f"API user [bold]{safe(user.name)}[/] created{role}. Its token (shown only now):")
    print(token)
    err_console.print("Send it as `Authorization: Bearer <token>`; `flenwheel user token NAME` replaces it.")


@user_app.command("token")
def token(
    name: Annotated[str, typer.Argument(help="User name")],
    json_output: JsonOption = False,
) -> None:
    """Replace a user's token (the old one stops working at once) and print the new one."""
    from flenwheel.web.auth import new_user_token

    project = open_project()
    try:
        fresh = new_user_token(project, name)
    finally:
        project.close()
    if json_output:
        print_json({"name": name, "token": fresh})
        return
    print(fresh)


@user_app.command("operator")
def operator(
    name: Annotated[str, typer.Argument(help="User name")],
    off: Annotated[bool, typer.Option("--off", help="No longer an operator.")] = False,
    json_output: JsonOption = False,
) -> None:
    """Make a user an operator: GET /stats shows them every character's figures, and GET /metrics (the
    Prometheus endpoint) answers their token. `--off` takes it back."""
    from flenwheel.web.auth import set_operator

    project = open_project()
    try:
        user = set_operator(project, name, not off)
    finally:
        project.close()
    if json_output:
        print_json(user.model_dump(mode="json"))
        return
    now = "is now an operator" if user.operator else "is no longer an operator"
    err_console.print(f"API user [bold]{safe(user.name)}[/] {now}.")


@user_app.command("ls")
def list_users(json_output: JsonOption = False) -> None:
    """List API users (never their tokens)."""
    from flenwheel.web.auth import list_users as users_of

    project = open_project()
    try:
        users = users_of(project)
    finally:
        project.close()
    if json_output:
        print_json([user.model_dump(mode="json") for user in users])
        return
    if not users:
        err_console.print("No API users: add one with `flenwheel user add NAME`.")
        return
    table = Table("id", "name", "created", "revoked", "operator")
    for user in users:
        revoked = user.revoked_at.strftime("%Y-%m-%d %H:%M") if user.revoked_at else ""
        created = user.created_at.strftime("%Y-%m-%d %H:%M")
        table.add_row(str(user.id), safe(user.name), created, revoked, "yes" if user.operator else "")
    console.print(table)


@user_app.command("revoke")
def revoke(
    name: Annotated[str, typer.Argument(help="User name")],
    json_output: JsonOption = False,
) -> None:
    """Revoke a user: their token answers 401 at once (open event streams end); their characters stay.
    `flenwheel user token NAME` lets them back in with a new token."""
    from flenwheel.web.auth import revoke_user

    project = open_project()
    try:
        user = revoke_user(project, name)
    finally:
        project.close()
    if json_output:
        print_json(user.model_dump(mode="json"))
        return
    err_console.print(f"API user [bold]{safe(user.name)}[/] is revoked: their token no longer works.")
