"""Engine, sessions and migrations. SQLite (WAL) by default; any SQLAlchemy URL such as PostgreSQL works."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from flenwheel.config import masked_url
from flenwheel.errors import InvalidInput

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
# The newest migration in migrations/versions (a test keeps the two in step). A database already at this
# revision is not handed to Alembic at all, which keeps every command's start-up fast.
HEAD_REVISION = "0011"


def make_engine(url: str) -> Engine:
    try:
        make_url(url)
    except (ArgumentError, ValueError):  # ValueError: a port that is not a number
        raise InvalidInput(
            f"database URL {masked_url(url)!r} (FLENWHEEL_DATABASE_URL) is not a URL: use e.g. "
            "postgresql+psycopg://user@host:5432/db or sqlite:///path.db"
        ) from None
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.close()

        return engine
    return create_engine(url, pool_pre_ping=True)


def current_revision(engine: Engine) -> str | None:
    try:
        with engine.connect() as connection:
            return connection.execute(text("SELECT version_num FROM alembic_version")).scalar()
    except DBAPIError:
        return None  # a new, empty database


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest migration (creates it on an empty database)."""
    if current_revision(engine) == HEAD_REVISION:
        return
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    with engine.connect() as connection:
        # SQLite rebuilds a table to change a constraint (batch mode): with foreign keys on, dropping the old
        # `character` table would cascade-delete every asset. They are off while migrating (SQLite ignores
        # the pragma inside a transaction, so it is set before), and checked after.
        sqlite = connection.dialect.name == "sqlite"
        if sqlite:
            connection.exec_driver_sql("PRAGMA foreign_keys=OFF")
            connection.commit()
        try:
            with connection.begin():
                config.attributes["connection"] = connection
                command.upgrade(config, "head")
                if sqlite and connection.exec_driver_sql("PRAGMA foreign_key_check").first() is not None:
                    raise RuntimeError("the migrated database breaks a foreign key: restore the backup")
        finally:
            if sqlite:
                connection.exec_driver_sql("PRAGMA foreign_keys=ON")
                connection.commit()


class Database:
    """Owns the engine and hands out sessions that commit on success and roll back on error."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = make_engine(url)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @contextmanager
    def session(self) -> Iterator[Session]:
        session = self._sessions()
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()

    def dispose(self) -> None:
        self.engine.dispose()
