"""fal.ai's queue and storage protocol, for the fal engine and the fal trainer alike.

Queue (https://docs.fal.ai/model-endpoints/queue): POST {queue}/{endpoint} answers a `request_id`; status,
result and cancel live under {queue}/{owner}/{alias}/requests/{id} (without the endpoint's subpath):
GET …/status?logs=1 → IN_QUEUE | IN_PROGRESS | COMPLETED (logs, metrics, error); GET … → the output;
PUT …/cancel → 202 CANCELLATION_REQUESTED, or 400 ALREADY_COMPLETED. Storage: POST
{rest}/storage/upload/initiate?storage_type=gcs {file_name, content_type} → {upload_url, file_url}; PUT the
bytes to upload_url (a signed URL: no key goes there). Errors carry `detail` (a string, or a list of
{loc, msg}) and may carry `x-fal-retryable` and `Retry-After`. fal-client 1.0.3 fixes its hosts at import, so
only its endpoint parsing and data-URI encoding are used here; the calls themselves are made with httpx.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import fal_client
import httpx

from flenwheel.domain import Frozen
from flenwheel.remote.errors import (
    RemoteError,
    call_with_retries,
    status_error,
    transport_errors,
)
from flenwheel.remote.waiting import wait_for

SERVICE = "fal"
KEY_REFUSED = "fal refused the key ({detail}): check FAL_KEY at https://fal.ai/dashboard/keys"


class FalStatus(Frozen):
    """One status answer. `error` is set when a COMPLETED request failed (the model's own message)."""

    state: str  # IN_QUEUE, IN_PROGRESS or COMPLETED
    logs: tuple[dict[str, Any], ...] = ()
    metrics: dict[str, Any] = {}
    error: str | None = None

    @property
    def done(self) -> bool:
        return self.state == "COMPLETED"


def app_path(endpoint: str) -> str:
    """`owner/alias` of an endpoint: fal-ai/flux/dev → fal-ai/flux (request URLs omit the subpath)."""
    app = fal_client.client.AppId.from_endpoint_id(endpoint)
    prefix = f"{app.namespace}/" if app.namespace else ""
    return f"{prefix}{app.owner}/{app.alias}"


def describe(response: httpx.Response) -> str:
    """fal's error body in one line: `detail` is a string (request errors) or typed errors (model errors)."""
    try:
        body = response.json()
    except ValueError:
        return response.text.strip()[:300] or response.reason_phrase
    detail = body.get("detail", body) if isinstance(body, dict) else body
    if isinstance(detail, list):
        parts = []
        for item in detail:
            if isinstance(item, dict):
                where = ".".join(str(p) for p in item.get("loc", []) if p != "body")
                parts.append(f"{where}: {item.get('msg', item)}" if where else str(item.get("msg", item)))
            else:
                parts.append(str(item))
        return "; ".join(parts)
    return str(detail)[:500]


class FalClient:
    """One fal account's queue and storage. Reads are retried; a submission only when fal refused it (429)."""

    def __init__(
        self,
        key: str,
        *,
        queue_url: str = "https://queue.fal.run",
        rest_url: str = "https://rest.fal.ai",
        sleep: Callable[[float], None] = time.sleep,
        transfer_timeout_s: float = 600.0,
    ) -> None:
        if not key.strip():
            raise ValueError("a fal client needs a key")
        self.queue_url = queue_url.rstrip("/")
        self.rest_url = rest_url.rstrip("/")
        self.sleep = sleep
        headers = {"Authorization": f"Key {key.strip()}", "User-Agent": fal_client.client.USER_AGENT}
        self._api = httpx.Client(
            headers=headers, timeout=httpx.Timeout(120.0, connect=30.0), follow_redirects=True
        )
        # Signed upload URLs and the CDN get no key: it must not travel to other hosts.
        self._plain = httpx.Client(
            timeout=httpx.Timeout(transfer_timeout_s, connect=30.0), follow_redirects=True
        )

    def close(self) -> None:
        self._api.close()
        self._plain.close()

    # -- the queue -------------------------------------------------------------------------------------------
    def submit(self, endpoint: str, arguments: dict[str, Any]) -> str:
        """Queue a request; its request_id. Sent again only when fal certainly did not take it."""
        response = self._call(
            "submitting the request",
            lambda: self._api.post(f"{self.queue_url}/{endpoint}", json=arguments),
            idempotent=False,
        )
        return str(response.json()["request_id"])

    def status(self, endpoint: str, request_id: str) -> FalStatus | None:
        """The request's status with its logs; None when fal does not know it (nothing runs or bills)."""
        response = self._call(
            "checking the request status",
            lambda: self._api.get(f"{self._request_url(endpoint, request_id)}/status", params={"logs": 1}),
            missing_ok=True,
        )
        if response is None:
            return None
        body = response.json()
        return FalStatus(
            state=body.get("status", "IN_QUEUE"),
            logs=tuple(entry for entry in body.get("logs") or [] if isinstance(entry, dict)),
            metrics=body.get("metrics") or {},
            error=body.get("error"),
        )

    def result(self, endpoint: str, request_id: str) -> dict[str, Any]:
        """The finished request's output (the model's JSON)."""
        response = self._call(
            "fetching the result", lambda: self._api.get(self._request_url(endpoint, request_id))
        )
        output = response.json()
        return output if isinstance(output, dict) else {"output": output}

    def cancel(self, endpoint: str, request_id: str) -> bool:
        """Ask fal to stop the request: True when asked, False when it had already completed."""
        url = f"{self._request_url(endpoint, request_id)}/cancel"
        response = self._call("cancelling the request", lambda: self._api.put(url), ok=(400,))
        return bool(response.status_code < 400)

    def wait(
        self,
        endpoint: str,
        request_id: str,
        *,
        cancelled: Callable[[], bool],
        on_status: Callable[[FalStatus], None],
        poll_interval: float,
        max_seconds: float,
        limit_hint: str,
    ) -> FalStatus:
        """Poll until the request completes; cancel it on the caller's cancel or at `max_seconds`."""

        def poll() -> FalStatus:
            status = self.status(endpoint, request_id)
            if status is None:
                raise RemoteError(
                    SERVICE,
                    f"request {request_id} is gone from fal's queue; run the job again to submit it anew",
                    transient=True,
                )
            return status

        return wait_for(
            service=SERVICE,
            remote_id=request_id,
            poll=poll,
            finished=lambda status: status.done,
            cancel=lambda: self.cancel(endpoint, request_id),
            cancelled=cancelled,
            on_update=on_status,
            poll_interval=poll_interval,
            max_seconds=max_seconds,
            limit_hint=limit_hint,
            sleep=self.sleep,
        )

    # -- files -----------------------------------------------------------------------------------------------
    def upload(self, data: bytes, content_type: str, file_name: str) -> str:
        """Put bytes in fal storage; the URL models read them from."""
        initiated = self._call(
            "uploading an input file",
            lambda: self._api.post(
                f"{self.rest_url}/storage/upload/initiate",
                params={"storage_type": "gcs"},
                json={"file_name": file_name, "content_type": content_type},
            ),
        )
        target = initiated.json()
        self._call(
            "uploading an input file",
            lambda: self._plain.put(
                target["upload_url"], content=data, headers={"Content-Type": content_type}
            ),
        )
        return str(target["file_url"])

    def download(self, url: str) -> bytes:
        """The bytes behind an output URL (a data URI or fal's CDN)."""
        return self._call(f"downloading {url}", lambda: self._plain.get(url)).content

    # -- plumbing --------------------------------------------------------------------------------------------
    def _request_url(self, endpoint: str, request_id: str) -> str:
        return f"{self.queue_url}/{app_path(endpoint)}/requests/{request_id}"

    def _call(
        self,
        doing: str,
        send: Callable[[], httpx.Response],
        *,
        idempotent: bool = True,
        missing_ok: bool = False,
        ok: tuple[int, ...] = (),
    ) -> Any:
        """send(), its error answers as RemoteErrors, retried when safe; None for a 404 when `missing_ok`."""

        def attempt() -> httpx.Response | None:
            with transport_errors(SERVICE, doing):
                response = send()
            if missing_ok and response.status_code == 404:
                return None
            return self._checked(response, doing, ok)

        return call_with_retries(attempt, idempotent=idempotent, sleep=self.sleep)

    def _checked(self, response: httpx.Response, doing: str, ok: tuple[int, ...] = ()) -> httpx.Response:
        if response.status_code < 400 or response.status_code in ok:
            return response
        detail = describe(response)
        if response.status_code in (401, 403):
            detail = KEY_REFUSED.format(detail=detail)
        error = status_error(SERVICE, response, doing, detail)
        retryable = response.headers.get("x-fal-retryable")
        if retryable in ("true", "false"):
            error.transient = retryable == "true"
        raise error
