"""The run context: one object per job or CLI command, passed unchanged from the job through the stage, the
router and the engine or trainer. The product's promises live here and nowhere else:

- **Budget.** A paid call reserves its worst case first, in the same transaction that records the call
  (`run_call` row + one guarded UPDATE of the character's `spent_usd`). A reservation is kept while the
  remote job may still bill (it was accepted: the engine remembered its remote id), and a settle never takes
  the character above its cap (`settle` charges at most what the cap allows and records an overrun).
- **Remote ids.** Every call to an engine or trainer is a `run_call` row keyed by a fingerprint of the
  request; the engine's remote id is written there *before* waiting, so a retry after a crash resumes the
  same remote job instead of paying twice.
- **Cancellation.** `cancelled()` reads the job row (a user's cancel, or this worker no longer owning it);
  engines poll it while waiting and send their own remote cancel.
- **One transaction per step.** `transaction()` hands the stage a session in which it stores outputs, their
  attributes and the call's settlement together (`settle(..., session=…)`).

A context without a database (`RunContext.detached()`) serves direct calls of one engine or trainer
(scripts, engine tests): progress to a callback, ids and checkpoints in memory, no budget.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from flenwheel.errors import FlenwheelError

if TYPE_CHECKING:
    from flenwheel.store.database import Database

log = logging.getLogger(__name__)

# Call states: reserved (money held, nothing sent yet) → submitted (the engine accepted: it may bill) →
# done (settled with the real cost) | released (never accepted: money handed back) | abandoned (accepted,
# then failed or cancelled: the reservation stays until a retry resumes and settles it).
# failed (the engine failed it for good: nothing billed, its error kept on the row for the metrics).
RESERVED, SUBMITTED, DONE, RELEASED, ABANDONED = "reserved", "submitted", "done", "released", "abandoned"
FAILED = "failed"
MAY_BILL = (SUBMITTED, ABANDONED)
DIRECT_CALL = "direct"  # the call of an engine or trainer given a detached context directly
EPSILON_USD = 1e-9


class BudgetExceeded(FlenwheelError):
    """A paid call's worst-case cost does not fit in what is left of the character's budget."""


class PolicyRefused(FlenwheelError):
    """The product's NSFW policy refuses this work for this engine or trainer (it leaves the user's machines)."""


class RunCancelled(FlenwheelError):
    """The user cancelled the run; what was stored so far is kept. The job ends as cancelled, not failed."""


class CallStillBilling(FlenwheelError):
    """An engine accepted the work and then failed while it may still be running (and billing) remotely.

    The reservation is kept and no other paid engine is tried; a retry of the same run resumes the same
    remote job by its remembered id."""

    transient = True


def is_paid(engine: object) -> bool:
    """Does this engine or trainer bill per call? Its own `paid` flag; otherwise every engine that sends work
    off the user's machines (`allows_nsfw = False`) is treated as paid."""
    declared = getattr(engine, "paid", None)
    if isinstance(declared, bool):
        return declared
    return not bool(getattr(engine, "allows_nsfw", True))


@dataclass
class _RunState:
    """What every scope of one run shares."""

    db: Database | None
    job_id: int | None
    worker: str | None
    character_id: int | None
    on_progress: Callable[[int, int, str], None] | None
    submit: Callable[[Any], int] | None
    values: dict[str, Any]
    progress_interval_s: float = 0.2
    lock: threading.Lock = field(default_factory=threading.Lock)
    cancelled: bool = False
    cancel_checked: float = 0.0
    pending: tuple[int, int, str] | None = None
    last_write: float = 0.0
    cost_usd: float = 0.0
    memory_calls: dict[str, dict[str, Any]] = field(default_factory=dict)


class RunContext:
    """One run (a job, a CLI command) and, when scoped with `call()`, one engine or trainer call of it.

    Engines use `progress`, `cancelled`, `remember_remote_id`, `known_remote_id`; trainers also
    `checkpoint_saved`. Stages use `call`, `transaction`, `settle`, `release`, `check_cancelled`,
    `remember`/`known` and `submit` (child jobs)."""

    def __init__(
        self,
        db: Database | None = None,
        *,
        job_id: int | None = None,
        worker: str | None = None,
        character_id: int | None = None,
        on_progress: Callable[[int, int, str], None] | None = None,
        submit: Callable[[Any], int] | None = None,
        values: dict[str, Any] | None = None,
        progress_interval_s: float = 0.2,
    ) -> None:
        self._state = _RunState(
            db=db,
            job_id=job_id,
            worker=worker,
            character_id=character_id,
            on_progress=on_progress,
            submit=submit,
            values=dict(values or {}),
            progress_interval_s=progress_interval_s,
        )
        self._call_key: str | None = None
        self._engine: str | None = None
        self._call_started: datetime | None = None  # when this call scope began: its row's created_at
        self._on_checkpoint: Callable[[Any], None] | None = None
        self._on_step: Callable[[int, int, float | None], None] | None = None
        self._engine_progress = True
        self.checkpoints: list[Any] = []  # detached runs keep what a trainer reported
        self.losses: list[tuple[int, float]] = []

    # -- construction ------------------------------------------------------------------------------------
    @classmethod
    def detached(
        cls, on_progress: Callable[..., None] | None = None, cancel_after_step: int | None = None
    ) -> RunContext:
        """A run with no database: for calling one engine or trainer directly (scripts, engine tests).
        `cancel_after_step` cancels the run once a trainer reports that step (tests of cooperative stops)."""
        ctx = cls(on_progress=adapt_progress(on_progress))
        ctx._cancel_after_step = cancel_after_step
        return ctx

    _cancel_after_step: int | None = None

    def _scope(self) -> RunContext:
        scoped = type(self).__new__(type(self))  # a subclass (a test's scripted run) keeps its overrides
        scoped.__dict__.update(self.__dict__)
        return scoped

    @property
    def job_id(self) -> int | None:
        return self._state.job_id

    @property
    def db(self) -> Database | None:
        return self._state.db

    @property
    def character_id(self) -> int | None:
        return self._state.character_id

    def for_character(self, character_id: int, db: Database | None = None) -> RunContext:
        """This run, scoped to one character's budget (a CLI command learns its character after it starts).
        A detached run used on a project's store is bound to its database `db` from here on."""
        if self._state.db is None and db is not None:
            self._state.db = db
        if self._state.character_id is None:
            self._state.character_id = character_id
        if self._state.character_id == character_id:
            return self
        scoped = self._scope()
        scoped._state = _RunState(**{**self._state.__dict__, "character_id": character_id})
        return scoped

    # -- progress ----------------------------------------------------------------------------------------
    def progress(
        self, done: int, total: int, message: str | float | None = "", loss: float | None = None
    ) -> None:
        """Report `done` of `total` units (images, steps). Written to the job row at most every 0.2 s; the
        first, the last (done == total) and any `flush()` always land. `loss`: a trainer's loss at step
        `done` (trainers may pass it as the third positional argument: `progress(step, total, loss)`)."""
        if isinstance(message, int | float):
            message, loss = "", float(message)
        message = message if isinstance(message, str) else ""
        if loss is not None and not message:
            message = f"step {done}/{total}, loss {loss:.4f}"
        if self._on_step is not None:
            self._on_step(done, total, loss)
        if loss is not None and self._on_step is None:
            self.losses.append((done, float(loss)))
        if self._cancel_after_step is not None and done >= self._cancel_after_step:
            self._state.cancelled = True
        if self._call_key is not None and not self._engine_progress:
            return  # the stage counts images itself; an engine's steps would make its totals jump
        if self._call_key is not None and not message:
            message = f"{self._engine}: {done}/{total}"
        state = self._state
        if state.on_progress is not None:
            state.on_progress(done, total, message)
        if state.db is None or state.job_id is None:
            return
        now = time.monotonic()
        with state.lock:
            state.pending = (done, total, message)
            due = (
                state.last_write == 0.0
                or done >= total
                or now - state.last_write >= state.progress_interval_s
            )
        if due:
            self.flush()

    def flush(self) -> None:
        """Write the latest progress to the job row now."""
        state = self._state
        with state.lock:
            pending, state.pending = state.pending, None
        if pending is None or state.db is None or state.job_id is None:
            return
        from flenwheel.store.models import Job

        done, total, message = pending
        values: dict[str, Any] = {"progress_done": max(0, done), "progress_total": max(0, total, done)}
        if message:
            values["message"] = message[:2000]
        statement = update(Job).where(Job.id == state.job_id, Job.status == "running")
        if state.worker is not None:
            statement = statement.where(Job.worker == state.worker)
        with state.db.session() as session:
            session.execute(statement.values(**values))
        state.last_write = time.monotonic()

    def counting_images(self) -> RunContext:
        """This run, for a stage that reports progress per image: the engines' own step progress is not
        written to the job (its done/total would jump between images and steps); cancel still reaches them."""
        scoped = self._scope()
        scoped._engine_progress = False
        return scoped

    # -- cancellation ------------------------------------------------------------------------------------
    def cancel(self) -> None:
        """Ask this run to stop (direct calls; a job is cancelled through its row)."""
        self._state.cancelled = True

    def cancelled(self) -> bool:
        """True once the user asked the run to stop — or this worker no longer owns the job row (it was
        handed to another worker), so a stale attempt stops instead of working twice. Reads the row at most
        every 50 ms."""
        state = self._state
        if state.cancelled or state.db is None or state.job_id is None:
            return state.cancelled
        now = time.monotonic()
        if now - state.cancel_checked < 0.05:
            return False
        state.cancel_checked = now
        from flenwheel.store.models import Job

        with state.db.session() as session:
            row = session.execute(
                select(Job.cancel_requested, Job.status, Job.worker).where(Job.id == state.job_id)
            ).first()
        if row is None or (
            state.worker is not None and (row.status != "running" or row.worker != state.worker)
        ):
            state.cancelled = True
        else:
            state.cancelled = bool(row.cancel_requested)
        return state.cancelled

    def check_cancelled(self) -> None:
        """Raise RunCancelled when the run was cancelled (call between steps)."""
        if self.cancelled():
            raise RunCancelled("cancelled by the user; what was stored so far is kept")

    # -- values kept across attempts of one job (a seed drawn once, …) ------------------------------------
    def remember(self, key: str, value: str) -> None:
        """Keep `value` for this job across retries (in the job row); in memory for a CLI run."""
        state = self._state
        state.values[key] = value
        if state.db is None or state.job_id is None:
            return
        from flenwheel.store.models import Job

        with state.db.session() as session:
            row = session.get(Job, state.job_id, with_for_update=_is_postgres(state.db))
            if row is not None:
                row.external_ids = {**(row.external_ids or {}), key: value}

    def known(self, key: str) -> str | None:
        value = self._state.values.get(key)
        return None if value is None else str(value)

    remember_external_id = remember  # the names stages used before the run context
    known_external_id = known

    # -- child jobs --------------------------------------------------------------------------------------
    def submit(self, request: Any) -> int:
        """Submit a child job (a `flenwheel.jobs.JobRequest`) through the backend that runs this job."""
        if self._state.submit is None:
            raise FlenwheelError("this run has no job backend: child jobs can only be submitted from a job")
        return self._state.submit(request)

    def add_cost(self, usd: float) -> None:
        """Money spent by this run (recorded on the job row when it finishes)."""
        with self._state.lock:
            self._state.cost_usd += usd

    @property
    def cost_usd(self) -> float:
        return self._state.cost_usd

    # -- calls: budget reservations and remote ids, one `run_call` row each --------------------------------
    def call(
        self, engine: str, key: str, *, estimate: float = 0.0, paid: bool = False, what: str = ""
    ) -> RunContext:
        """Scope this run to one call of `engine`, keyed by `key` (a fingerprint of the request: the same key
        on a retry resumes the same remote job). A `paid` call reserves `estimate` (its worst case, USD)
        first — refused with BudgetExceeded when it does not fit, and refused outright when a paid engine
        estimates $0 (a bug in its price table). A key already holding a reservation keeps it."""
        if paid and estimate <= 0:
            raise FlenwheelError(
                f"{engine} is a paid engine but estimated ${estimate:.4f} for {what or key}: refusing to "
                f"send work that reserves nothing (fix its price in FLENWHEEL_PRICES or providers/pricing.py)"
            )
        scoped = self._scope()
        scoped._call_key = f"{engine}:{key}"[:160]
        scoped._engine = engine
        scoped._call_started = _now()
        if paid:
            scoped._reserve(estimate, what or key)
        return scoped

    def _reserve(self, amount: float, what: str) -> None:
        state = self._state
        key = self._call_key
        assert key is not None
        if state.db is None:
            state.memory_calls.setdefault(key, {"status": RESERVED, "reserved": amount, "remote_id": None})
            return
        if state.character_id is None:
            raise FlenwheelError(f"a paid call ({what}) needs a character whose budget pays for it")
        from flenwheel.store.models import Character, RunCall

        with state.db.session() as session:
            row = session.scalar(select(RunCall).where(RunCall.key == key))
            if row is not None and row.status in (RESERVED, SUBMITTED, ABANDONED):
                return  # a retry: the earlier attempt's reservation still holds
            charged = session.execute(
                update(Character)
                .where(
                    Character.id == state.character_id,
                    Character.spent_usd + amount <= Character.budget_usd + EPSILON_USD,
                )
                .values(spent_usd=Character.spent_usd + amount)
            )
            if _rowcount(charged) != 1:
                character = session.get_one(Character, state.character_id)
                left = max(0.0, character.budget_usd - character.spent_usd)
                name = character.name
                session.rollback()
                raise BudgetExceeded(
                    f"{what} may cost up to ${amount:.4f} but {name!r} has ${left:.4f} of its budget left: "
                    f"raise it with `flenwheel character budget {name} AMOUNT` or use a local engine"
                )
            if row is None:
                session.add(
                    RunCall(
                        key=key,
                        engine=self._engine or "",
                        character_id=state.character_id,
                        job_id=state.job_id,
                        status=RESERVED,
                        reserved_usd=amount,
                        created_at=self._started(),
                    )
                )
            else:  # an earlier call with this key finished or was released: a new attempt
                row.status, row.reserved_usd, row.billed_usd = RESERVED, amount, None
                row.remote_id, row.job_id = None, state.job_id
                row.error, row.created_at = None, self._started()

    def remember_remote_id(self, remote_id: str) -> None:
        """Persist the engine's job id *before* waiting on it: from here on the call may bill, and a restart
        resumes it instead of submitting again."""
        state, key = self._state, self._call_key
        if key is None and state.db is None:
            key = DIRECT_CALL  # an engine called directly, outside any router: one call per context
        if key is None:
            raise FlenwheelError("remember_remote_id needs a call scope (RunContext.call)")
        if state.db is None:
            entry = state.memory_calls.setdefault(key, {"status": SUBMITTED, "reserved": 0.0})
            entry.update(remote_id=remote_id, status=SUBMITTED)
            return
        from flenwheel.store.models import RunCall

        with state.db.session() as session:
            row = session.scalar(select(RunCall).where(RunCall.key == key))
            if row is None:
                session.add(
                    RunCall(
                        key=key,
                        engine=self._engine or "",
                        character_id=state.character_id,
                        job_id=state.job_id,
                        status=SUBMITTED,
                        reserved_usd=0.0,
                        remote_id=remote_id,
                        created_at=self._started(),
                    )
                )
            else:
                row.remote_id, row.status, row.updated_at = remote_id, SUBMITTED, _now()

    def known_remote_id(self) -> str | None:
        """The remote id an earlier, interrupted attempt of this same call remembered (not yet settled)."""
        entry = self._row()
        if entry is None or entry["status"] not in MAY_BILL:
            return None
        return entry["remote_id"]

    def may_still_bill(self) -> bool:
        """True when the engine accepted this call and it has not been settled: it may run and bill."""
        entry = self._row()
        return entry is not None and entry["status"] in MAY_BILL and entry["remote_id"] is not None

    def _row(self) -> dict[str, Any] | None:
        state, key = self._state, self._call_key
        if key is None and state.db is None:
            key = DIRECT_CALL
        if key is None:
            return None
        if state.db is None:
            return state.memory_calls.get(key)
        from flenwheel.store.models import RunCall

        with state.db.session() as session:
            row = session.scalar(select(RunCall).where(RunCall.key == key))
            if row is None:
                return None
            return {"status": row.status, "remote_id": row.remote_id, "reserved": row.reserved_usd}

    def settle(
        self, billed_usd: float, session: Session | None = None, outputs: list[int] | None = None
    ) -> float:
        """Close the call with what the engine billed (USD): the reservation is replaced by `billed_usd`.
        Never takes the character above its cap: an engine that billed more than its reservation (a wrong
        price table) is charged up to the cap, and the call row keeps the true bill and says `overrun`.
        Pass the step's `session` so outputs and the settlement commit together, and their asset ids as
        `outputs` so a retry of the finished call reuses them. Returns the amount charged."""
        state, key = self._state, self._call_key
        if key is None:
            return 0.0
        if state.db is None:
            entry = state.memory_calls.setdefault(key, {"reserved": 0.0, "remote_id": None})
            entry.update(status=DONE, billed=billed_usd)
            return billed_usd
        if session is None:
            with state.db.session() as own:
                return self.settle(billed_usd, own, outputs)
        from flenwheel.store.models import Character, RunCall

        row = session.scalar(select(RunCall).where(RunCall.key == key))
        reserved = 0.0
        if row is not None and row.status in (RESERVED, SUBMITTED, ABANDONED):
            reserved = row.reserved_usd
        if row is None:
            if billed_usd <= 0 and not outputs:
                return 0.0  # a free call that never went remote leaves no row
            row = RunCall(
                key=key,
                engine=self._engine or "",
                character_id=state.character_id,
                job_id=state.job_id,
                status=RESERVED,
                reserved_usd=0.0,
                created_at=self._started(),
            )
            session.add(row)
        elif row.status in (DONE, FAILED, RELEASED):  # a new attempt of a call that ended before
            row.created_at = self._started()
        row.error = None  # settled: a failure an earlier attempt noted is over (an overrun is noted below)
        charged = billed_usd
        delta = billed_usd - reserved
        if state.character_id is not None and abs(delta) > EPSILON_USD:
            if delta <= 0:
                session.execute(
                    update(Character)
                    .where(Character.id == state.character_id)
                    .values(spent_usd=Character.spent_usd + delta)
                )
            else:
                fits = session.execute(
                    update(Character)
                    .where(
                        Character.id == state.character_id,
                        Character.spent_usd + delta <= Character.budget_usd + EPSILON_USD,
                    )
                    .values(spent_usd=Character.spent_usd + delta)
                )
                if _rowcount(fits) != 1:
                    character = session.get_one(Character, state.character_id)
                    room = max(0.0, character.budget_usd - character.spent_usd)
                    character.spent_usd = character.spent_usd + room
                    charged = reserved + room
                    log.error(
                        "%s billed $%.4f for %s, above its reservation of $%.4f: charged up to the cap; "
                        "fix its price table",
                        self._engine,
                        billed_usd,
                        key,
                        reserved,
                    )
                    row.error = f"overrun: billed ${billed_usd:.4f}, reserved ${reserved:.4f}"
        row.status, row.billed_usd, row.updated_at = DONE, billed_usd, _now()
        if outputs is not None:
            row.outputs = list(outputs)
        return charged

    def fail(self, error: str) -> None:
        """Close a call the engine failed for good: it settles at $0 (a definitive failure made nothing and
        bills nothing) and its row keeps `error` — one is made for a free call too — so the failure counts
        against the engine in the metrics (flenwheel.metrics). A later attempt of the same call clears it."""
        state, key = self._state, self._call_key
        if key is None:
            return
        if state.db is None:
            entry = state.memory_calls.setdefault(key, {"reserved": 0.0, "remote_id": None})
            entry.update(status=FAILED, billed=0.0, error=error)
            return
        from flenwheel.store.models import RunCall

        with state.db.session() as session:
            self.settle(0.0, session)
            row = session.scalar(select(RunCall).where(RunCall.key == key))
            if row is None:
                row = RunCall(
                    key=key,
                    engine=self._engine or "",
                    character_id=state.character_id,
                    job_id=state.job_id,
                    reserved_usd=0.0,
                    billed_usd=0.0,
                    created_at=self._started(),
                )
                session.add(row)
            row.status, row.error, row.updated_at = FAILED, error[:2000], _now()

    def note_error(self, error: str) -> None:
        """Keep a transient failure's message on the call's row after `release()` (made for a free call
        too), so an engine that kept failing shows in the metrics even when another engine took over."""
        state, key = self._state, self._call_key
        if key is None or state.db is None:
            return
        from flenwheel.store.models import RunCall

        with state.db.session() as session:
            row = session.scalar(select(RunCall).where(RunCall.key == key))
            if row is None:
                row = RunCall(
                    key=key,
                    engine=self._engine or "",
                    character_id=state.character_id,
                    job_id=state.job_id,
                    status=RELEASED,
                    reserved_usd=0.0,
                    created_at=self._started(),
                )
                session.add(row)
            row.error, row.updated_at = error[:2000], _now()

    def _started(self) -> datetime:
        return self._call_started or _now()

    def release(self) -> None:
        """Hand the reservation back — only when the engine never accepted the call. A call that may still
        bill keeps its reservation and becomes `abandoned` (a retry resumes and settles it)."""
        state, key = self._state, self._call_key
        if key is None:
            return
        if state.db is None:
            entry = state.memory_calls.get(key)
            if entry is not None:
                entry["status"] = ABANDONED if entry.get("remote_id") else RELEASED
            return
        from flenwheel.store.models import Character, RunCall

        with state.db.session() as session:
            row = session.scalar(
                select(RunCall).where(RunCall.key == key).with_for_update(nowait=False)
                if _is_postgres(state.db)
                else select(RunCall).where(RunCall.key == key)
            )
            if row is None or row.status not in (RESERVED, SUBMITTED, ABANDONED):
                return
            if row.remote_id is not None:
                row.status, row.updated_at = ABANDONED, _now()
                return
            if row.character_id is not None and row.reserved_usd > 0:
                session.execute(
                    update(Character)
                    .where(Character.id == row.character_id)
                    .values(spent_usd=Character.spent_usd - row.reserved_usd)
                )
            row.status, row.updated_at = RELEASED, _now()

    # -- trainers ----------------------------------------------------------------------------------------
    def on_training(
        self,
        step: Callable[[int, int, float | None], None] | None,
        checkpoint: Callable[[Any], None] | None,
    ) -> RunContext:
        """This scope, with a trainer's steps (step, total, loss) and saved checkpoints handed to the stage."""
        scoped = self._scope()
        scoped._on_step = step
        scoped._on_checkpoint = checkpoint
        return scoped

    def checkpoint_saved(self, checkpoint: Any) -> None:
        """A trainer wrote a checkpoint (a `trainers.base.CheckpointFile`): recorded at once, so evaluation can
        start and a crash loses nothing."""
        if self._on_checkpoint is not None:
            self._on_checkpoint(checkpoint)
        else:
            self.checkpoints.append(checkpoint)

    # -- the step's transaction --------------------------------------------------------------------------
    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """One session for a step: outputs, their attributes and the call's settlement commit together."""
        if self._state.db is None:
            raise FlenwheelError("a detached run has no database to store into")
        with self._state.db.session() as session:
            yield session


def adapt_progress(callback: Callable[..., None] | None) -> Callable[[int, int, str], None] | None:
    """Callbacks of direct callers take (done, total) or (done, total, message)."""
    if callback is None:
        return None
    import inspect

    try:
        parameters = inspect.signature(callback).parameters.values()
        arity = sum(1 for p in parameters if p.default is inspect.Parameter.empty)
    except (TypeError, ValueError):
        arity = 3
    if arity >= 3:
        return callback
    return lambda done, total, message: callback(done, total)


def _is_postgres(db: Database) -> bool:
    return db.engine.dialect.name == "postgresql"


def _rowcount(result: Any) -> int:
    return int(getattr(result, "rowcount", 0) or 0)


def _now() -> datetime:
    return datetime.now(UTC)


# -- the crash test hook -----------------------------------------------------------------------------------
KILL_AT_COMMIT_ENV = "FLENWHEEL_TEST_KILL_AT_COMMIT"


def install_kill_at_commit() -> None:
    """Test hook: with FLENWHEEL_TEST_KILL_AT_COMMIT=N, SIGKILL this process right after its Nth database
    commit — how the crash tests stop a worker at each transaction boundary of a stage. Does nothing when
    the variable is unset. Installed once per process."""
    global _KILL_INSTALLED
    target = os.environ.get(KILL_AT_COMMIT_ENV)
    if not target or _KILL_INSTALLED:
        return
    _KILL_INSTALLED = True
    from sqlalchemy import event

    limit = int(target)
    counter = {"n": 0}
    lock = threading.Lock()

    @event.listens_for(Session, "after_commit")
    def _maybe_die(session: Session) -> None:
        with lock:
            counter["n"] += 1
            if counter["n"] >= limit:
                os.kill(os.getpid(), signal.SIGKILL)


_KILL_INSTALLED = False
