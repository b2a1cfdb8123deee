"""Shared fixtures: real photos from tests/fixtures/faces, projects on SQLite and on the local PostgreSQL.

Also how the suite holds on a busy machine: no clock decides an outcome (Hypothesis has no deadline; waits
use tests/patience.py), and under pytest-xdist (`make test` runs `-n 2 --dist loadgroup`) the tests that
share a module fixture (the demo runs, trained checkpoints) run on one worker, so it is computed once, and
every test that needs the real ComfyUI server runs on the same worker, so one server starts, not two.
"""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from flenwheel.config import Settings
from flenwheel.store.project import Project

from photos import FACES, FIXTURES, LISA, london

# The real ComfyUI server and the random SD1.5-architecture checkpoint (tests/providers/comfyui_server.py),
# declared once here so the provider and trainer tests share one server per session.
sys.path.insert(0, str(Path(__file__).resolve().parent / "providers"))
from comfyui_server import comfyui_server, tiny_sd15

__all__ = ["FACES", "FIXTURES", "LISA", "comfyui_server", "london", "tiny_sd15"]
# The test job kinds (noop, sleep) are refused at submit unless this setting is on; the tests drive workers
# with them, here and in the processes they start. tests/web/test_tenancy.py checks a server without it.
os.environ.setdefault("FLENWHEEL_TEST_KINDS", "1")
POSTGRES_ADMIN_URL = os.environ.get(
    "FLENWHEEL_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


# A property test fails on what it finds, never on how long an example took on a loaded machine.
settings.register_profile("flenwheel", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("flenwheel")


def pytest_configure(config: pytest.Config) -> None:
    """Under xdist each worker's torch (and the CLI processes it starts) gets its share of the cores as
    OpenMP threads: two workers with a thread per core each would spin against each other."""
    workers = getattr(config, "workerinput", {}).get("workercount")
    if workers and "OMP_NUM_THREADS" not in os.environ:
        os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // int(workers)))


COMFYUI_FIXTURES = {"comfyui_server", "tiny_sd15"}
SHARED_SCOPES = {"class", "module", "package"}


@pytest.hookimpl(tryfirst=True)  # before xdist reads the xdist_group marks
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Groups for `--dist loadgroup`: tests of one file that share a module-scoped fixture (the demo runs,
    a trained run) are one group, so it is computed once; every test on the real ComfyUI server is in the
    one `comfyui` group (and `slow`), so one server starts. Other tests are spread one by one."""
    parent: dict[str, str] = {}

    def root(node: str) -> str:
        while parent.setdefault(node, node) != node:
            node = parent[node]
        return node

    nodes_of: dict[int, list[str]] = {}
    for index, item in enumerate(items):
        names = set(getattr(item, "fixturenames", ()))
        defs = getattr(getattr(item, "_fixtureinfo", None), "name2fixturedefs", {})
        file = item.path.relative_to(item.config.rootpath).as_posix()
        nodes = [
            f"{file}:{name}"
            for name in sorted(names)
            if defs.get(name) and defs[name][-1].scope in SHARED_SCOPES
        ]
        if names & COMFYUI_FIXTURES:
            nodes.append("comfyui")
            item.add_marker(pytest.mark.slow)
        for node in nodes[1:]:
            parent[root(node)] = root(nodes[0])
        nodes_of[index] = nodes
    for index, item in enumerate(items):
        if nodes := nodes_of[index]:
            group = root(nodes[0])
            item.add_marker(pytest.mark.xdist_group("comfyui" if root("comfyui") == group else group))


@pytest.hookimpl(trylast=True)  # after xdist has read the marks
def pytest_collection_finish(session: pytest.Session) -> None:
    """Under `--dist loadgroup`, xdist names each grouped test `nodeid@group`; pytest 9 computes `nodeid`
    afresh, so xdist 3.8's renaming is lost and every group is silently spread (the demo ran twice, once per
    worker). Stop then rather than run the suite at twice the cost: pin pytest < 9 (requirements/)."""
    if not session.config.getoption("loadgroup", default=False):
        return
    lost = [
        item.nodeid
        for item in session.items
        if item.get_closest_marker("xdist_group") and "@" not in item.nodeid
    ]
    if lost:
        raise pytest.UsageError(
            f"pytest-xdist's --dist loadgroup lost the groups of {len(lost)} tests (e.g. {lost[0]}): this pytest "
            "and pytest-xdist do not work together; use the versions in requirements/constraints.txt"
        )


def _postgres_database() -> Iterator[str]:
    """A fresh database on the local server, dropped afterwards."""
    sqlalchemy = pytest.importorskip("sqlalchemy")
    admin = sqlalchemy.create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    name = f"flenwheel_test_{uuid.uuid4().hex[:12]}"
    try:
        with admin.connect() as connection:
            connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
    except Exception as exc:  # the server is part of CI's machine; locally it may be missing
        if os.environ.get("CI") == "true":
            raise
        pytest.skip(f"PostgreSQL not reachable at {POSTGRES_ADMIN_URL}: {exc}")
    try:
        yield POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with admin.connect() as connection:
            connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def any_project(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Project]:
    """A fresh project, once on SQLite and once on PostgreSQL."""
    if request.param == "sqlite":
        project = Project.init(Settings(project=tmp_path / "project"))
        yield project
        project.close()
        return
    for url in _postgres_database():
        project = Project.init(Settings(project=tmp_path / "project", database_url=url))
        yield project
        project.close()


@pytest.fixture
def project(tmp_path: Path) -> Iterator[Project]:
    """A fresh SQLite project (the embedded default)."""
    project = Project.init(Settings(project=tmp_path / "project", workers=2))
    yield project
    project.close()


@pytest.fixture(scope="session")
def _moto_endpoint() -> Iterator[str]:
    """moto's real S3 server on a free local port, for the whole session."""
    import socket

    server_module = pytest.importorskip("moto.server")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = server_module.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def s3_blob_url(_moto_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """s3://<fresh bucket>/blobs on the moto server; the endpoint and test credentials are in the env
    (FLENWHEEL_S3_ENDPOINT_URL, AWS_*), so Settings() and worker subprocesses find them."""
    for key, value in {
        "FLENWHEEL_S3_ENDPOINT_URL": _moto_endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(key, value)
    return f"s3://flenwheel-{uuid.uuid4().hex[:12]}/blobs"
