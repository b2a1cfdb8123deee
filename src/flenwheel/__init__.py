"""flenwheel: keep an AI character the same person.

The public Python API. Names are re-exported lazily from the modules that own them, so that
`import flenwheel` (and `flenwheel --help`) stays fast.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "Settings": "flenwheel.config",
    "Project": "flenwheel.store.project",
    "create_character": "flenwheel.characters",
    "list_characters": "flenwheel.characters",
    "ingest": "flenwheel.datasets.ingest",
    "curate": "flenwheel.datasets.curate",
    "review_asset": "flenwheel.datasets.review",
    "set_caption": "flenwheel.datasets.review",
    "build_dataset_version": "flenwheel.datasets.versions",
    "get_dataset_version": "flenwheel.datasets.versions",
    "ExportFormat": "flenwheel.datasets.export",
    "export_dataset": "flenwheel.datasets.export",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'flenwheel' has no attribute {name!r}")
