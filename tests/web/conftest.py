"""API fixtures: the app over a fresh project (SQLite, or both databases via `api`), and two users."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from webapi import Api, make_api

from flenwheel.store.project import Project


@pytest.fixture
def api(any_project: Project) -> Iterator[Api]:
    """The API on SQLite and on PostgreSQL, without job workers (jobs stay queued)."""
    yield from make_api(any_project)


@pytest.fixture
def sqlite_api(project: Project) -> Iterator[Api]:
    """The API on SQLite without job workers."""
    yield from make_api(project)


@pytest.fixture
def working_api(project: Project) -> Iterator[Api]:
    """The API on SQLite with two embedded job workers."""
    yield from make_api(project, job_workers=2)
