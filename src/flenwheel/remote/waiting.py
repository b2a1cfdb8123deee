"""Waiting on a remote job: poll, report, stop at the caller's cancel or at the time limit — cancelling it."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

from flenwheel.remote.errors import RemoteCancelled, RemoteError

S = TypeVar("S")
# A cancel sent at the time limit stops the remote job within this many seconds (the poll that notices the
# limit, the cancel call, the service stopping its runner): cost estimates for GPU-second billing add it.
CANCEL_GRACE_S = 30.0
log = logging.getLogger(__name__)


def wait_for(
    *,
    service: str,
    remote_id: str,
    poll: Callable[[], S],
    finished: Callable[[S], bool],
    cancel: Callable[[], bool],
    cancelled: Callable[[], bool],
    on_update: Callable[[S], None],
    poll_interval: float,
    max_seconds: float,
    limit_hint: str,
    sleep: Callable[[float], None] = time.sleep,
) -> S:
    """Poll until `finished(state)`; return that state.

    `cancel()` asks the service to stop the job and answers False when the job had already finished. When
    `cancelled()` turns true the job is cancelled and `RemoteCancelled` raised. When `max_seconds` pass (the
    limit the cost estimate assumed), the job is cancelled too, so it bills no more than estimated, and a
    permanent `RemoteError` ends with `limit_hint` (how to allow longer).
    """
    deadline = time.monotonic() + max_seconds
    while True:
        if cancelled():
            raise RemoteCancelled(service, remote_id, _cancel_quietly(cancel, service, remote_id))
        state = poll()
        on_update(state)
        if finished(state):
            return state
        if time.monotonic() >= deadline:
            if not cancel():  # it finished between the poll and the cancel: take its result
                state = poll()
                on_update(state)
                if finished(state):
                    return state
            raise RemoteError(
                service,
                f"{remote_id} was still running after {max_seconds:g} s, the limit its cost estimate "
                f"assumed, so it was cancelled and bills no more: {limit_hint}",
                transient=False,
            )
        sleep(poll_interval)


def _cancel_quietly(cancel: Callable[[], bool], service: str, remote_id: str) -> bool:
    """The user's cancel stands even when the service cannot be told; the failure is logged."""
    try:
        return cancel()
    except RemoteError as exc:
        log.warning("could not cancel %s job %s: %s", service, remote_id, exc)
        return False
