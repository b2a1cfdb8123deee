"""Migration 0005 (tenancy) on a project with data: nothing is lost, names become unique per owner, and
SQLite never reuses a character id after a delete."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import func, select, text

from flenwheel.config import Settings
from flenwheel.store.models import Asset, Character
from flenwheel.store.project import Project


def test_upgrading_keeps_every_asset_and_scopes_names_to_owners(tmp_path: Path) -> None:
    from alembic import command
    from alembic.config import Config

    from flenwheel.store.database import MIGRATIONS_DIR, make_engine

    url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = make_engine(url)  # foreign keys on, as every flenwheel connection
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "0003")
        connection.execute(
            text(
                "INSERT INTO character (name, token, class_word, nsfw, budget_usd, created_at, spec, spent_usd) "
                "VALUES ('lisa', 'ohwx', 'woman', 0, 5.0, '2026-01-01', '{}', 0)"
            )
        )
        connection.execute(
            text(
                "INSERT INTO asset (character_id, kind, sha256, source_sha256, source_name, format, width, "
                "height, is_reference, normalised, caption_edited, parents, loras, cost_usd, timings, "
                "attributes, created_at) VALUES (1, 'source', 'a', 'a', 'x.jpg', 'jpg', 8, 8, 0, '[]', 0, "
                "'[]', '[]', 0, '{}', '{}', '2026-01-01')"
            )
        )
    engine.dispose()
    (tmp_path / "flenwheel.project").write_text("flenwheel project v1\n")
    project = Project.open(Settings(project=tmp_path, database_url=url))  # upgrades to the newest schema
    with project.db.session() as session:
        assert session.scalar(select(func.count()).select_from(Asset)) == 1  # not cascade-deleted
        session.add(Character(name="mara", token="t", class_word="woman"))
    with project.db.session() as session:
        session.execute(text("DELETE FROM character WHERE name = 'mara'"))
    with project.db.session() as session:
        again = Character(name="mara", token="t", class_word="woman")
        session.add(again)
        session.flush()
        assert again.id == 3  # 2 was mara's: never given to another character
    project.close()
