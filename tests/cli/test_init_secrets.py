"""`flenwheel init --json` on PostgreSQL: the database URL it prints carries no password."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url
from test_cli import ok

PASSWORD = "init-s3cret-pw"


@pytest.fixture
def postgres_url_with_password() -> Iterator[str]:
    """A fresh database on the local server (FLENWHEEL_TEST_POSTGRES, as tests/conftest.py), its URL carrying a
    password: the test server trusts local users, so the password is sent and ignored."""
    sqlalchemy = pytest.importorskip("sqlalchemy")
    admin_url = os.environ.get("FLENWHEEL_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
    admin = sqlalchemy.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    name = f"flenwheel_test_{uuid.uuid4().hex[:12]}"
    try:
        with admin.connect() as connection:
            connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
    except Exception as exc:  # the server is part of CI's machine; locally it may be missing
        admin.dispose()
        pytest.skip(f"PostgreSQL not reachable at {admin_url}: {exc}")
    try:
        yield make_url(admin_url).set(database=name, password=PASSWORD).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


@pytest.mark.postgres
def test_init_json_masks_the_database_password(postgres_url_with_password: str, tmp_path: Path) -> None:
    result = ok(
        "init", tmp_path / "project", "--json", env={"FLENWHEEL_DATABASE_URL": postgres_url_with_password}
    )

    assert PASSWORD not in result.stdout + result.stderr
    shown = json.loads(result.stdout)["database"]
    assert make_url(shown).password == "***"
    assert make_url(shown).database == make_url(postgres_url_with_password).database
