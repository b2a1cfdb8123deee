"""A flenwheel project: a folder holding the database and the blob store, opened from Settings."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from flenwheel.config import DATABASE_FILE, Settings
from flenwheel.errors import CharacterNotFound, InvalidInput, ProjectNotFound
from flenwheel.store.blobs import FsspecBlobStore, open_blob_store
from flenwheel.store.database import Database, migrate
from flenwheel.store.models import Character

PROJECT_MARKER = "flenwheel.project"


class Project:
    """The database and blob store of one project folder."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.db = Database(settings.resolved_database_url())
        self.blobs = open_blob_store(settings)  # a local folder, or s3://… shared by every host

    @classmethod
    def init(cls, settings: Settings) -> Project:
        """Create the folder, database schema and blob folder; safe to run on an existing project."""
        root = settings.project
        if root.exists() and not root.is_dir():
            raise InvalidInput(f"{root} is a file: give the path of a new or existing folder for the project")
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InvalidInput(f"cannot create the project folder {root}: {exc.strerror}") from None
        (root / PROJECT_MARKER).write_text("flenwheel project v1\n")
        project = cls(settings)
        project.blobs.root.mkdir(parents=True, exist_ok=True)
        if isinstance(project.blobs, FsspecBlobStore):
            project.blobs.ensure_container()
        migrate(project.db.engine)
        return project

    @classmethod
    def open(cls, settings: Settings) -> Project:
        root = settings.project
        if not (root / PROJECT_MARKER).exists() and not (root / DATABASE_FILE).exists():
            raise ProjectNotFound(str(root))
        project = cls(settings)
        migrate(project.db.engine)  # a no-op when current; upgrades a project made by an older release
        return project

    @property
    def root(self) -> Path:
        return self.settings.project

    def close(self) -> None:
        self.db.dispose()


CHARACTERS_DIR = "characters"  # characters/<id>/: files of one character (the sheet)
TRAINING_DIR = "training"  # training/<id>/run<N>/: a character's training runs


def character_dir(project: Project, character_id: int) -> Path:
    """The folder of one character's own files, named by id (names are reused; ids are not shared)."""
    return project.root / CHARACTERS_DIR / str(character_id)


def character_files(project: Project, character_id: int) -> list[Path]:
    """Every folder that holds only this character's files: removed with the character."""
    return [character_dir(project, character_id), project.root / TRAINING_DIR / str(character_id)]


def get_character(session: Session, name: str) -> Character:
    """The character `name` names: `#ID` (how the API and its jobs name one), or a name. Names are unique per
    owner, so a name several owners use is refused with their ids rather than guessed."""
    if name.startswith("#") and name[1:].isdigit():
        found = session.get(Character, int(name[1:]))
        if found is None:
            raise CharacterNotFound(name, [])
        return found
    matches = list(session.scalars(select(Character).where(Character.name == name).order_by(Character.id)))
    if len(matches) > 1:
        ids = ", ".join(f"#{c.id}" for c in matches)
        raise InvalidInput(
            f"{len(matches)} characters are named {name!r} ({ids}, of different users): give #ID"
        )
    if not matches:
        known = list(session.scalars(select(Character.name).order_by(Character.name)))
        raise CharacterNotFound(name, known)
    return matches[0]
