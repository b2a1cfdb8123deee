"""`flenwheel init --json` on PostgreSQL: the database URL it prints carries no password."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url
from test_cli import ok

from conftest import _postgres_database

PASSWORD = "init-s3cret-pw"


@pytest.fixture
def postgres_url_with_password() -> Iterator[str]:
    """A fresh database on the local server, its URL carrying a password (the test server trusts local users,
    so the password is sent and ignored)."""
    for url in _postgres_database():
        yield make_url(url).set(password=PASSWORD).render_as_string(hide_password=False)


@pytest.mark.postgres
def test_init_json_masks_the_database_password(postgres_url_with_password: str, tmp_path: Path) -> None:
    result = ok(
        "init", tmp_path / "project", "--json", env={"FLENWHEEL_DATABASE_URL": postgres_url_with_password}
    )

    assert PASSWORD not in result.stdout + result.stderr
    shown = json.loads(result.stdout)["database"]
    assert make_url(shown).password == "***"
    assert make_url(shown).database == make_url(postgres_url_with_password).database
