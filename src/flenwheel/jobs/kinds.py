"""The registry of job kinds: a kind names a plain function `fn(project, payload, ctx) -> result dict`, the
typed payload model that function takes, the queue it runs on, and who may submit it.

The job layer registers only its own kinds: `noop` and `sleep` (builtin_kinds.py). The pipeline's stages are
kinds too, but this layer must not import the one above it: the entry points that run or accept jobs
(`flenwheel worker`, `flenwheel jobs submit`, the web app, the demo) register them with
`flenwheel.pipeline.kinds.register_pipeline_kinds()`. A kind's function and payload model may be given as
"module:name", imported on first use, so a worker only loads what it runs. Names are unique.

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
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import BaseModel, ValidationError

from flenwheel.errors import FlenwheelError, InvalidInput
from flenwheel.jobs.base import Queue

if TYPE_CHECKING:
    from flenwheel.jobs.base import JobContext
    from flenwheel.store.project import Project

JobFunction = Callable[["Project", dict[str, Any], "JobContext"], dict[str, Any]]
M = TypeVar("M", bound=BaseModel)


class Access(StrEnum):
    """Who may submit a kind (see the module docstring)."""

    PUBLIC = "public"
    INTERNAL = "internal"
    TEST = "test"


@dataclass(frozen=True)
class KindInfo:
    """A kind as a submitter sees it: its name, payload model, queue and access."""

    name: str
    payload: type[BaseModel] | None  # None: the kind takes no user input (internal kinds added at run time)
    queue: Queue
    access: Access


@dataclass(frozen=True)
class _Kind:
    function: JobFunction | str  # or "module:function"
    payload: type[BaseModel] | str | None  # or "module:Model"
    queue: Queue
    access: Access


class UnknownJobKind(FlenwheelError):
    def __init__(self, kind: str, known: list[str]) -> None:
        super().__init__(
            f"No job kind {kind!r}. Known kinds: {', '.join(known)}. The pipeline's kinds are known once "
            "`flenwheel.pipeline.kinds.register_pipeline_kinds()` has run (`flenwheel worker` and the web "
            "app call it); a new kind is one line in its PIPELINE_KINDS, or "
            "`flenwheel.jobs.kinds.register(name, fn, payload=Model)`."
        )


class DuplicateJobKind(FlenwheelError):
    def __init__(self, kind: str) -> None:
        super().__init__(f"job kind {kind!r} is already registered: pick another name")


_kinds: dict[str, _Kind] = {}
_lock = threading.Lock()


def register(
    kind: str,
    fn: JobFunction | str,
    payload: type[BaseModel] | str | None = None,
    queue: Queue = Queue.CPU,
    access: Access = Access.PUBLIC,
) -> None:
    """Add a kind: its function (or "module:function") and payload model (or "module:Model"), both imported
    when first needed. A kind without a `payload` model is internal: users cannot submit what nothing
    validates. A name in use is refused, except for the very same kind given by name again, so an entry
    point may register its kinds twice."""
    if not kind or len(kind) > 48:
        raise FlenwheelError(f"job kind {kind!r}: give a name of 1–48 characters")
    for target in (fn, payload):
        if isinstance(target, str) and not all(target.partition(":")[::2]):
            raise FlenwheelError(f'job kind {kind!r}: give {target!r} as "module:name"')
    entry = _Kind(fn, payload, queue, access if payload is not None else Access.INTERNAL)
    with _lock:
        known = _kinds.get(kind)
        if known is not None:
            if isinstance(fn, str) and known == entry:
                return
            raise DuplicateJobKind(kind)
        _kinds[kind] = entry


def unregister(kind: str) -> None:
    """Remove a kind added with `register` (tests)."""
    with _lock:
        _kinds.pop(kind, None)


def known_kinds() -> list[str]:
    """Every kind a worker can run, public or not."""
    with _lock:
        return sorted(_kinds)


def _entry(kind: str) -> _Kind:
    with _lock:
        entry = _kinds.get(kind)
    if entry is None:
        raise UnknownJobKind(kind, known_kinds())
    return entry


def info(kind: str) -> KindInfo:
    """The payload model, queue and access of `kind`; an unknown kind is a clear error."""
    entry = _entry(kind)
    payload = _import(entry.payload) if isinstance(entry.payload, str) else entry.payload
    return KindInfo(kind, payload, entry.queue, entry.access)


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
    entry = _entry(kind)
    if not isinstance(entry.function, str):
        return entry.function
    function: JobFunction = _import(entry.function)
    return function


def parse(model: type[M], payload: dict[str, Any], kind: str) -> M:
    """The payload as `model`, or an InvalidInput saying which field is wrong and why."""
    try:
        return model.model_validate(payload)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in error['loc']) or 'payload'}: {error['msg']}" for error in exc.errors()
        )
        raise InvalidInput(f"{kind} job payload is not valid: {problems}") from None


def _register_own_kinds() -> None:
    """The job layer's own kinds; the pipeline's are registered by the entry points (pipeline/kinds.py)."""
    for kind, model in (("noop", "NoopPayload"), ("sleep", "SleepPayload")):
        register(
            kind,
            f"flenwheel.jobs.builtin_kinds:{kind}",
            payload=f"flenwheel.jobs.builtin_kinds:{model}",
            access=Access.TEST,
        )


_register_own_kinds()
