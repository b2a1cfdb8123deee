"""The registry of job kinds: a kind names a plain function `fn(project, payload, ctx) -> result dict`.

Built-in and pipeline kinds are listed in `BUILT_IN` as "module:function" and imported on first use, so a
worker only loads what it runs and pipeline modules may import `flenwheel.jobs` without a cycle. Adding a
kind is one line there, or `register("kind", fn)` at run time (tests, plugins). Names are unique.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from flenwheel.errors import FlenwheelError

if TYPE_CHECKING:
    from flenwheel.jobs.base import JobContext
    from flenwheel.store.project import Project

JobFunction = Callable[["Project", dict[str, Any], "JobContext"], dict[str, Any]]

BUILT_IN: dict[str, str] = {
    "noop": "flenwheel.jobs.builtin_kinds:noop",
    "sleep": "flenwheel.jobs.builtin_kinds:sleep",
    "curate": "flenwheel.jobs.builtin_kinds:curate_job",
    "dataset_build": "flenwheel.jobs.builtin_kinds:dataset_build_job",
    "generate": "flenwheel.jobs.builtin_kinds:generate_job",
    # The background chain (pipeline/chain.py): a root job and one job per stage.
    "chain": "flenwheel.pipeline.chain:chain_job",
    "chain_sheet": "flenwheel.pipeline.chain:chain_sheet",
    "chain_gate": "flenwheel.pipeline.chain:chain_gate",
    "chain_dataset": "flenwheel.pipeline.chain:chain_dataset",
    "chain_train": "flenwheel.pipeline.chain:chain_train",
    "chain_evaluate": "flenwheel.pipeline.chain:chain_evaluate",
    "chain_activate": "flenwheel.pipeline.chain:chain_activate",
    # Wizard, sheet, studio, training and evaluation stages (pipeline/jobs.py).
    "base_images": "flenwheel.pipeline.jobs:base_images_job",
    "pick_base": "flenwheel.pipeline.jobs:pick_base_job",
    "skin_pass": "flenwheel.pipeline.jobs:skin_pass_job",
    "profile_set": "flenwheel.pipeline.jobs:profile_set_job",
    "regenerate_position": "flenwheel.pipeline.jobs:regenerate_position_job",
    "sheet": "flenwheel.pipeline.jobs:sheet_job",
    "enrich": "flenwheel.pipeline.jobs:enrich_job",
    "studio_generate": "flenwheel.pipeline.jobs:studio_generate_job",
    "train": "flenwheel.pipeline.jobs:train_job",
    "evaluate": "flenwheel.pipeline.jobs:evaluate_job",
}


class UnknownJobKind(FlenwheelError):
    def __init__(self, kind: str, known: list[str]) -> None:
        super().__init__(
            f"No job kind {kind!r}. Known kinds: {', '.join(known)}. A new kind is one line in "
            "flenwheel/jobs/kinds.py BUILT_IN, or `flenwheel.jobs.kinds.register(name, fn)`."
        )


class DuplicateJobKind(FlenwheelError):
    def __init__(self, kind: str) -> None:
        super().__init__(f"job kind {kind!r} is already registered: pick another name")


_registered: dict[str, JobFunction] = {}
_lock = threading.Lock()


def register(kind: str, fn: JobFunction) -> None:
    """Add a kind at run time; a name already in use (built-in or registered) is refused."""
    if not kind or len(kind) > 48:
        raise FlenwheelError(f"job kind {kind!r}: give a name of 1–48 characters")
    with _lock:
        if kind in _registered or kind in BUILT_IN:
            raise DuplicateJobKind(kind)
        _registered[kind] = fn


def unregister(kind: str) -> None:
    """Remove a kind added with `register` (tests)."""
    with _lock:
        _registered.pop(kind, None)


def known_kinds() -> list[str]:
    return sorted({*BUILT_IN, *_registered})


def get(kind: str) -> JobFunction:
    """The function of `kind`; an unknown kind is a clear error."""
    with _lock:
        fn = _registered.get(kind)
    if fn is not None:
        return fn
    target = BUILT_IN.get(kind)
    if target is None:
        raise UnknownJobKind(kind, known_kinds())
    module_name, _, attribute = target.partition(":")
    function: JobFunction = getattr(importlib.import_module(module_name), attribute)
    return function
