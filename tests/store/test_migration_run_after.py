"""Migration 0006: a job waiting out its backoff when the database is upgraded keeps its wait, now in
`run_after`, and its `heartbeat_at` is cleared (it meant the backoff, not a heartbeat)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from sqlalchemy import text

from flenwheel.config import Settings
from flenwheel.jobs.store import JobStore, utcnow
from flenwheel.store.project import Project


def test_a_waiting_retry_keeps_its_wait_across_the_upgrade(tmp_path: Path) -> None:
    from alembic import command
    from alembic.config import Config

    from flenwheel.store.database import MIGRATIONS_DIR, make_engine

    url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = make_engine(url)
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    later = (utcnow() + timedelta(hours=1)).replace(tzinfo=None)
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "0005")
        for status, beat in (("queued", later), ("running", utcnow().replace(tzinfo=None))):
            connection.execute(
                text(
                    "INSERT INTO job (kind, queue, priority, status, payload, result, progress_done, "
                    "progress_total, message, attempts, max_attempts, cancel_requested, heartbeat_at, "
                    "external_ids, cost_usd, created_at) VALUES ('noop', 'cpu', 0, :status, '{}', '{}', 0, 0, "
                    "'', 1, 3, 0, :beat, '{}', 0, '2026-01-01')"
                ),
                {"status": status, "beat": beat},
            )
    engine.dispose()
    (tmp_path / "flenwheel.project").write_text("flenwheel project v1\n")
    project = Project.open(Settings(project=tmp_path, database_url=url))
    store = JobStore(project.db)
    waiting, running = store.get(1), store.get(2)
    assert waiting.heartbeat_at is None and waiting.run_after is not None
    assert waiting.run_after.replace(tzinfo=None) == later
    assert running.heartbeat_at is not None and running.run_after is None  # a real heartbeat stays
    assert store.claim("w1") is None  # still waiting
    project.close()
