"""The project store on both databases: characters, assets, reviews and immutable dataset versions."""

from __future__ import annotations

import pytest
from sqlalchemy import inspect, select

from flenwheel.characters import create_character, list_characters
from flenwheel.config import Settings
from flenwheel.datasets.curate import curate
from flenwheel.datasets.ingest import ingest
from flenwheel.datasets.review import review_asset
from flenwheel.datasets.versions import build_dataset_version, get_dataset_version
from flenwheel.errors import CharacterExists, CharacterNotFound, InvalidInput, ProjectNotFound
from flenwheel.store.models import Asset, Character
from flenwheel.store.project import Project

from photos import LISA, london


def test_init_creates_every_table_and_reopens(any_project: Project) -> None:
    tables = set(inspect(any_project.db.engine).get_table_names())
    assert {"character", "asset", "analysis", "review", "dataset_version", "dataset_item"} <= tables
    create_character(any_project, "lisa", "ohwx", "woman")
    reopened = Project.open(any_project.settings)
    assert [c.name for c in list_characters(reopened)] == ["lisa"]
    reopened.close()


def test_character_names_are_unique_and_tokens_validated(any_project: Project) -> None:
    create_character(any_project, "lisa", "ohwx", "woman")
    with pytest.raises(CharacterExists, match="already exists"):
        create_character(any_project, "lisa", "other", "woman")
    with pytest.raises(InvalidInput, match="trigger token"):
        create_character(any_project, "eve", "../../etc", "woman")
    with pytest.raises(InvalidInput, match="class word"):
        create_character(any_project, "eve", "ohwx_eve", "wo/man")
    with pytest.raises(CharacterNotFound, match="Known characters: lisa"):
        ingest(any_project, "nobody", LISA[:1])


def test_sqlite_project_uses_wal(project: Project) -> None:
    with project.db.engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"


def test_opening_a_folder_that_is_not_a_project_says_how_to_fix(tmp_path) -> None:
    with pytest.raises(ProjectNotFound, match="flenwheel init"):
        Project.open(Settings(project=tmp_path / "nothing-here"))


def test_full_curation_flow_and_versions_are_immutable(any_project: Project) -> None:
    create_character(any_project, "lisa", "ohwx", "woman")
    ingest(any_project, "lisa", [*LISA[:5], london(1), london(2)])
    report = curate(any_project, "lisa")
    good = {d.file for d in report.decisions if d.label == "good"}
    assert good == {p.name for p in LISA[:5]}

    first = build_dataset_version(any_project, "lisa")
    assert first.created and first.version.label == "v1"
    assert not build_dataset_version(any_project, "lisa").created  # nothing changed: no v2

    review_asset(any_project, "lisa", "1.jpg", "reject", "eyes closed")
    second = build_dataset_version(any_project, "lisa")
    assert second.version.label == "v2"
    assert second.version.composition["lineage"] == {"added": 0, "removed": 1}
    v1 = get_dataset_version(any_project, "lisa", 1)
    assert len(v1.items) == 5 and len(second.version.items) == 4

    with any_project.db.session() as session:
        assert session.scalar(select(Asset).where(Asset.source_name == "1.jpg")) is not None


def test_head_revision_constant_matches_the_migrations(any_project: Project) -> None:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    from flenwheel.store.database import HEAD_REVISION, MIGRATIONS_DIR, current_revision

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    assert ScriptDirectory.from_config(config).get_current_head() == HEAD_REVISION
    assert current_revision(any_project.db.engine) == HEAD_REVISION


def test_a_project_made_by_the_first_schema_upgrades_without_losing_data(tmp_path) -> None:
    from alembic import command
    from alembic.config import Config
    from sqlalchemy import text

    from flenwheel.store.database import MIGRATIONS_DIR, make_engine

    url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = make_engine(url)
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "0001")
        connection.execute(
            text(
                "INSERT INTO character (name, token, class_word, nsfw, budget_usd, created_at) "
                "VALUES ('lisa', 'ohwx', 'woman', 0, 5.0, '2026-01-01')"
            )
        )
    engine.dispose()
    (tmp_path / "flenwheel.project").write_text("flenwheel project v1\n")
    project = Project.open(Settings(project=tmp_path, database_url=url))  # upgrades to the newest schema
    [lisa] = list_characters(project)
    assert (lisa.name, lisa.token, lisa.budget_usd) == ("lisa", "ohwx", 5.0)
    with project.db.session() as session:
        assert session.scalar(select(Character.spent_usd)) == 0.0
    project.close()
