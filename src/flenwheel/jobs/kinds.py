"""The registry of job kinds: a kind names a plain function `fn(project, payload, ctx) -> result dict`, the
typed payload model that function takes, the queue it runs on, and who may submit it.

Built-in and pipeline kinds are listed in `BUILT_IN` as "module:function" (and their payload models in
`PAYLOADS` as "module:Model"), imported on first use, so a worker only loads what it runs and pipeline
modules may import `flenwheel.jobs` without a cycle. Adding a kind is a line in each table, or
`register("kind", fn, payload=Model)` at run time (tests, plugins). Names are unique.

Who may submit a kind (`access`):
- `public`: users, over the API and the CLI; the payload is validated against its model at submit.
- `internal`: only flenwheel itself (the background chain's stages submit each other); never over the API
  or the CLI, so a user cannot graft a job onto another user's chain.
- `test`: the `noop`/`sleep` kinds the tests and benchmarks drive workers with; refused at submit unless
  the `test_kinds` setting (FLENWHEEL_TEST_KINDS=1) is on.
The queue follows the kind: users do not pick it.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from flenwheel.errors import FlenwheelError
from flenwheel.jobs.base import Queue

if TYPE_CHECKING:
    from flenwheel.jobs.base import JobContext
    from flenwheel.store.project import Project

JobFunction = Callable[["Project", dict[str, Any], "JobContext"], dict[str, Any]]
# The background chain's stages (pipeline/chain.py STAGES), each its own internal kind `chain_<stage>`.
STAGE_NAMES = ("sheet", "gate", "dataset", "train", "evaluate", "activate")

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

_P = "flenwheel.pipeline.jobs"
# The typed payload of each built-in kind (pipeline/jobs.py): validated at submit and by the worker.
PAYLOADS: dict[str, str] = {
    "noop": f"{_P}:NoopPayload",
    "sleep": f"{_P}:SleepPayload",
    "curate": f"{_P}:CuratePayload",
    "dataset_build": f"{_P}:DatasetBuildPayload",
    "generate": f"{_P}:GeneratePayload",
    "chain": f"{_P}:ChainPayload",
    **{f"chain_{stage}": f"{_P}:ChainStagePayload" for stage in STAGE_NAMES},
    "base_images": f"{_P}:BaseImagesPayload",
    "pick_base": f"{_P}:PickBasePayload",
    "skin_pass": f"{_P}:SkinPassPayload",
    "profile_set": f"{_P}:ProfileSetPayload",
    "regenerate_position": f"{_P}:RegeneratePayload",
    "sheet": f"{_P}:SheetPayload",
    "enrich": f"{_P}:EnrichPayload",
    "studio_generate": f"{_P}:StudioPayload",
    "train": f"{_P}:TrainPayload",
    "evaluate": f"{_P}:EvaluatePayload",
}
# The queue each kind runs on (not chosen by whoever submits it); CPU when not listed.
QUEUES: dict[str, Queue] = {
    "generate": Queue.GPU,
    "base_images": Queue.GPU,
    "skin_pass": Queue.GPU,
    "profile_set": Queue.GPU,
    "regenerate_position": Queue.GPU,
    "sheet": Queue.GPU,
    "enrich": Queue.GPU,
    "studio_generate": Queue.GPU,
    "train": Queue.GPU,
    "evaluate": Queue.GPU,
}


class Access(StrEnum):
    """Who may submit a kind (see the module docstring)."""

    PUBLIC = "public"
    INTERNAL = "internal"
    TEST = "test"


ACCESS: dict[str, Access] = {
    "noop": Access.TEST,
    "sleep": Access.TEST,
    **{f"chain_{stage}": Access.INTERNAL for stage in STAGE_NAMES},
}


@dataclass(frozen=True)
class KindInfo:
    """A kind as a submitter sees it: its name, payload model, queue and access."""

    name: str
    payload: type[BaseModel] | None  # None: the kind takes no user input (internal kinds added at run time)
    queue: Queue
    access: Access


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
_registered_info: dict[str, KindInfo] = {}
_lock = threading.Lock()


def register(
    kind: str,
    fn: JobFunction,
    payload: type[BaseModel] | None = None,
    queue: Queue = Queue.CPU,
    access: Access = Access.PUBLIC,
) -> None:
    """Add a kind at run time; a name already in use (built-in or registered) is refused. A kind registered
    without a `payload` model is internal: users cannot submit what nothing validates."""
    if not kind or len(kind) > 48:
        raise FlenwheelError(f"job kind {kind!r}: give a name of 1–48 characters")
    with _lock:
        if kind in _registered or kind in BUILT_IN:
            raise DuplicateJobKind(kind)
        _registered[kind] = fn
        _registered_info[kind] = KindInfo(
            kind, payload, queue, access if payload is not None else Access.INTERNAL
        )


def unregister(kind: str) -> None:
    """Remove a kind added with `register` (tests)."""
    with _lock:
        _registered.pop(kind, None)
        _registered_info.pop(kind, None)


def known_kinds() -> list[str]:
    """Every kind a worker can run, public or not."""
    return sorted({*BUILT_IN, *_registered})


def info(kind: str) -> KindInfo:
    """The payload model, queue and access of `kind`; an unknown kind is a clear error."""
    with _lock:
        found = _registered_info.get(kind)
    if found is not None:
        return found
    if kind not in BUILT_IN:
        raise UnknownJobKind(kind, known_kinds())
    return KindInfo(
        kind, _import(PAYLOADS[kind]), QUEUES.get(kind, Queue.CPU), ACCESS.get(kind, Access.PUBLIC)
    )


def submittable(test_kinds: bool = False) -> list[KindInfo]:
    """The kinds users may submit (over the API and the CLI), by name: the public ones, plus the test kinds
    when the `test_kinds` setting is on."""
    allowed = {Access.PUBLIC, Access.TEST} if test_kinds else {Access.PUBLIC}
    found = [info(kind) for kind in known_kinds()]
    return [kind for kind in found if kind.access in allowed and kind.payload is not None]


class KindNotSubmittable(FlenwheelError):
    """A user asked for an internal kind, or a test kind on a server that does not enable them."""

    def __init__(self, kind: KindInfo, public: list[str]) -> None:
        why = (
            "is a stage of flenwheel's background chain and is started only by the chain itself: submit "
            "`chain` to run the whole chain"
            if kind.access == Access.INTERNAL
            else "is a test kind: the server enables it only with FLENWHEEL_TEST_KINDS=1 (tests, benchmarks)"
        )
        super().__init__(f"job kind {kind.name!r} {why}. Kinds you can submit: {', '.join(public)}")


def _import(target: str) -> Any:
    module_name, _, attribute = target.partition(":")
    return getattr(importlib.import_module(module_name), attribute)


def get(kind: str) -> JobFunction:
    """The function of `kind`; an unknown kind is a clear error."""
    with _lock:
        fn = _registered.get(kind)
    if fn is not None:
        return fn
    target = BUILT_IN.get(kind)
    if target is None:
        raise UnknownJobKind(kind, known_kinds())
    function: JobFunction = _import(target)
    return function
