"""What a remote call can end in: an error (transient or not, with Retry-After), a cancel, a retry policy.

Retries go through tenacity. A call is retried only when repeating it cannot pay twice: reads (status,
result, download, cancel) on any transient failure; a submission only when the service certainly did not
accept it (HTTP 429, or no connection was made). A server's Retry-After is honoured as given (capped at
`MAX_RETRY_AFTER_S`); otherwise the wait grows exponentially with jitter.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from email.utils import parsedate_to_datetime
from typing import TypeVar

import httpx
import tenacity

from flenwheel.errors import FlenwheelError

T = TypeVar("T")
TRANSIENT_STATUS = frozenset({408, 409, 425, 429})  # plus every 5xx
ATTEMPTS = 4  # one call and three retries
MAX_RETRY_AFTER_S = 120.0  # a longer Retry-After is not waited out here: the error goes up, transient


class RemoteError(FlenwheelError):
    """A remote service failed a call. `transient` ones may succeed later; `message` says what to do."""

    def __init__(
        self,
        service: str,
        message: str,
        *,
        transient: bool,
        status: int | None = None,
        retry_after_s: float | None = None,
        accepted: bool | None = None,
    ) -> None:
        super().__init__(f"{service}: {message}")
        self.service = service
        self.message = message
        self.transient = transient
        self.status = status
        self.retry_after_s = retry_after_s
        # False when the service certainly did not take the request (so sending it again pays nothing twice).
        self.accepted = accepted

    def during(self, doing: str) -> RemoteError:
        """The same error, its message saying what was being done ("creating the prediction failed with …")."""
        return RemoteError(
            self.service,
            f"{doing} failed with {self.message}",
            transient=self.transient,
            status=self.status,
            retry_after_s=self.retry_after_s,
            accepted=self.accepted,
        )


class RemoteCancelled(FlenwheelError):
    """The caller cancelled while waiting; the remote job was asked to stop (`cancel_sent`)."""

    def __init__(self, service: str, remote_id: str, cancel_sent: bool) -> None:
        super().__init__(f"{service}: {remote_id} cancelled by the user")
        self.remote_id = remote_id
        self.cancel_sent = cancel_sent


def status_error(service: str, response: httpx.Response, doing: str, detail: str) -> RemoteError:
    """The error for an HTTP error answer: transient for 408/409/425/429/5xx. `doing` may be "" (said later)."""
    status = response.status_code
    transient = status in TRANSIENT_STATUS or status >= 500
    retry_after = retry_after_seconds(response.headers.get("retry-after"))
    message = f"HTTP {status}: {detail}"
    if doing:
        message = f"{doing} failed with {message}"
    if retry_after is not None:
        message += f" (retry after {retry_after:g} s)"
    return RemoteError(
        service,
        message,
        transient=transient,
        status=status,
        retry_after_s=retry_after,
        accepted=False if status == 429 else None,
    )


def retry_after_seconds(value: str | None) -> float | None:
    """Retry-After as seconds: either delta-seconds ("7") or an HTTP date (RFC 9110 §10.2.3)."""
    if not value or not value.strip():
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


@contextmanager
def transport_errors(service: str, doing: str) -> Iterator[None]:
    """httpx failures as transient RemoteErrors; a refused connection means the request was never taken."""
    try:
        yield
    except httpx.ConnectError as exc:
        raise RemoteError(
            service, f"{doing} failed: cannot reach {service} ({exc})", transient=True, accepted=False
        ) from exc
    except httpx.TimeoutException as exc:
        raise RemoteError(service, f"{doing} timed out ({exc!r})", transient=True) from exc
    except httpx.HTTPError as exc:
        raise RemoteError(service, f"{doing} failed: cannot reach {service} ({exc})", transient=True) from exc


def _wait(state: tenacity.RetryCallState) -> float:
    error = state.outcome.exception() if state.outcome else None
    if isinstance(error, RemoteError) and error.retry_after_s is not None:
        return error.retry_after_s
    return float(tenacity.wait_exponential_jitter(multiplier=0.5, max=30.0)(state))


def call_with_retries(
    call: Callable[[], T],
    *,
    idempotent: bool,
    sleep: Callable[[float], None] = time.sleep,
    attempts: int = ATTEMPTS,
) -> T:
    """`call()`, retried on transient RemoteErrors when that is safe (see the module docstring)."""

    def retryable(error: BaseException) -> bool:
        if not isinstance(error, RemoteError) or not error.transient:
            return False
        if error.retry_after_s is not None and error.retry_after_s > MAX_RETRY_AFTER_S:
            return False
        return idempotent or error.accepted is False

    retrying = tenacity.Retrying(
        retry=tenacity.retry_if_exception(retryable),
        wait=_wait,
        stop=tenacity.stop_after_attempt(attempts),
        sleep=sleep,
        reraise=True,
    )
    return retrying(call)


@contextmanager
def translated(make: Callable[[str, bool], Exception]) -> Iterator[None]:
    """Re-raise RemoteErrors as the caller's own error type, e.g. `ProviderError(id, message, transient)`."""
    try:
        yield
    except RemoteError as exc:
        raise make(exc.message, exc.transient) from exc
