"""Settings: where the project lives and the tunable defaults, from env vars (FLENWHEEL_*) or arguments."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

DATABASE_FILE = "flenwheel.db"
BLOB_DIR = "blobs"


class Settings(BaseSettings):
    """Project settings. `project` is the folder made by `flenwheel init`."""

    model_config = SettingsConfigDict(env_prefix="FLENWHEEL_", extra="forbid")

    project: Path = Field(default_factory=Path.cwd)
    database_url: str | None = None  # default: SQLite file inside the project
    blob_url: str | None = None  # default: content-addressed folder inside the project
    # Identity gate: dlib embedding distance at or below which a face is the character.
    # Calibrated on ../shared/faces with bench/calibrate_identity.py (see README "Identity threshold").
    identity_threshold: float = 0.48
    # Perceptual-hash Hamming distance at or below which two images are near-duplicates.
    near_duplicate_bits: int = 6
    # Faces are detected on a copy whose long side is at most this many pixels.
    detect_max_side: int = 640
    workers: int = 0  # 0 = one per CPU core

    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.project / DATABASE_FILE).resolve()}"

    def resolved_blob_dir(self) -> Path:
        if self.blob_url:
            return Path(self.blob_url)
        return (self.project / BLOB_DIR).resolve()
