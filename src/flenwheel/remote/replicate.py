"""Replicate's HTTP API through the official client, for the Replicate engine and trainer alike.

Protocol (https://replicate.com/docs/reference/http): POST /v1/models/{owner}/{name}/predictions (official
models) or POST /v1/predictions {version, input}; GET /v1/predictions/{id}; POST /v1/predictions/{id}/cancel;
POST /v1/models/{owner}/{name}/versions/{version}/trainings {destination, input}; GET /v1/trainings/{id};
POST /v1/trainings/{id}/cancel; POST /v1/files. Errors are problem details ({title, detail, status}).
Every error answer is turned into a `RemoteError` by a response hook, with the server's Retry-After.
replicate-python's own transport already retries GETs on 429/503/504 (honouring Retry-After); tenacity here
adds the rest: reads on any transient failure, a creation only when Replicate refused it (429) or was never
reached. `Prefer: wait` is never sent: a job's id must be remembered before any waiting.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from typing import Any, BinaryIO, TypeVar

import httpx
import replicate
from replicate.identifier import ModelVersionIdentifier
from replicate.prediction import Prediction
from replicate.training import Training

from flenwheel.remote.errors import RemoteError, call_with_retries, status_error, transport_errors
from flenwheel.remote.waiting import wait_for

SERVICE = "Replicate"
TOKEN_REFUSED = "Replicate refused the token ({detail}): check REPLICATE_API_TOKEN at https://replicate.com/account/api-tokens"
FINISHED = frozenset({"succeeded", "failed", "canceled"})
# Official models run by name; any other model runs by version (its latest one unless `owner/name:version`).
OFFICIAL = frozenset(
    {
        "black-forest-labs/flux-dev",
        "black-forest-labs/flux-dev-lora",
        "black-forest-labs/flux-fill-dev",
        "black-forest-labs/flux-schnell",
        "black-forest-labs/flux-fill-pro",
    }
)
Job = TypeVar("Job", Prediction, Training)


def api_root(base_url: str) -> str:
    """The client adds `/v1/...` to every path, so the configured `…/v1` base loses its suffix here."""
    return base_url.rstrip("/").removesuffix("/v1")


def describe(response: httpx.Response) -> str:
    """A problem-details body in one line: its `detail`, else its `title`, else the raw text."""
    try:
        body = response.json()
    except ValueError:
        return response.text.strip()[:300] or response.reason_phrase
    if isinstance(body, dict):
        return str(body.get("detail") or body.get("title") or body).strip()[:500]
    return str(body)[:500]


class ReplicateClient:
    """One Replicate account: predictions, trainings, files. Reads are retried; a creation only when refused."""

    def __init__(
        self,
        token: str,
        *,
        base_url: str = "https://api.replicate.com/v1",
        sleep: Callable[[float], None] = time.sleep,
        request_timeout_s: float = 120.0,
        transfer_timeout_s: float = 600.0,
    ) -> None:
        if not token.strip():
            raise ValueError("a Replicate client needs a token")
        self.sleep = sleep
        self.api = replicate.Client(
            api_token=token.strip(),
            base_url=api_root(base_url),
            timeout=httpx.Timeout(request_timeout_s, connect=10.0),
            event_hooks={"response": [_raise_for_status]},
        )
        # Output URLs (replicate.delivery) get no token: it must not travel to other hosts.
        self._plain = httpx.Client(
            timeout=httpx.Timeout(transfer_timeout_s, connect=30.0), follow_redirects=True
        )

    # -- predictions -----------------------------------------------------------------------------------------
    def create_prediction(self, model: str, model_input: dict[str, Any]) -> Prediction:
        """Start `owner/name` (official: by name; else its latest version) or `owner/name:version`."""
        try:
            owner, name, version = ModelVersionIdentifier.parse(model)
        except ValueError:
            raise RemoteError(
                SERVICE, f"model {model!r} must be owner/name or owner/name:version", transient=False
            ) from None
        if not version and f"{owner}/{name}" not in OFFICIAL:
            latest = self._call("looking up the model", lambda: self.api.models.get(f"{owner}/{name}"))
            if latest.latest_version is None:
                raise RemoteError(SERVICE, f"{owner}/{name} has no published version to run", transient=False)
            version = latest.latest_version.id
        if version:
            chosen = version
            return self._call(
                "creating the prediction",
                lambda: self.api.predictions.create(version=chosen, input=model_input),
                idempotent=False,
            )
        return self._call(
            "creating the prediction",
            lambda: self.api.models.predictions.create(model=f"{owner}/{name}", input=model_input),
            idempotent=False,
        )

    def prediction(self, prediction_id: str) -> Prediction | None:
        """The prediction, or None when Replicate does not know it (nothing runs or bills)."""
        return self._call(
            "checking the prediction", lambda: self.api.predictions.get(prediction_id), missing_ok=True
        )

    def cancel_prediction(self, prediction_id: str) -> bool:
        """Ask Replicate to stop it: True when it was still running, False when it had already finished."""
        return self._cancel("predictions", prediction_id)

    # -- trainings -------------------------------------------------------------------------------------------
    def create_training(self, trainer: str, destination: str, training_input: dict[str, Any]) -> Training:
        """Start `owner/name:version` training into the `owner/model` destination."""
        owner, name, version = ModelVersionIdentifier.parse(trainer)
        if not version:
            raise RemoteError(
                SERVICE, f"trainer {trainer!r} needs a version: owner/name:version", transient=False
            )
        return self._call(
            "creating the training",
            lambda: self.api.trainings.create(
                model=f"{owner}/{name}", version=version, input=training_input, destination=destination
            ),
            idempotent=False,
        )

    def training(self, training_id: str) -> Training | None:
        """The training, or None when Replicate does not know it (nothing runs or bills)."""
        return self._call(
            "checking the training", lambda: self.api.trainings.get(training_id), missing_ok=True
        )

    def cancel_training(self, training_id: str) -> bool:
        """Ask Replicate to stop it: True when it was still running, False when it had already finished."""
        return self._cancel("trainings", training_id)

    # -- waiting ---------------------------------------------------------------------------------------------
    def wait(
        self,
        job: Job,
        *,
        cancelled: Callable[[], bool],
        on_update: Callable[[Job], None],
        poll_interval: float,
        max_seconds: float,
        limit_hint: str,
    ) -> Job:
        """Poll a prediction or training until it finishes; cancel it on the caller's cancel or at the limit."""
        is_training = isinstance(job, Training)
        first = [job]

        def poll() -> Job:
            if first:
                return first.pop()
            found = self.training(job.id) if is_training else self.prediction(job.id)
            if found is None:
                raise RemoteError(
                    SERVICE,
                    f"{job.id} is gone from Replicate; run the job again to start it anew",
                    transient=True,
                )
            return found  # type: ignore[return-value]

        return wait_for(
            service=SERVICE,
            remote_id=job.id,
            poll=poll,
            finished=lambda state: state.status in FINISHED,
            cancel=lambda: self.cancel_training(job.id) if is_training else self.cancel_prediction(job.id),
            cancelled=cancelled,
            on_update=on_update,
            poll_interval=poll_interval,
            max_seconds=max_seconds,
            limit_hint=limit_hint,
            sleep=self.sleep,
        )

    # -- files -----------------------------------------------------------------------------------------------
    def upload(self, data: bytes | BinaryIO, filename: str, content_type: str) -> str:
        """Put a file in /v1/files; the URL models read it from."""

        def send() -> Any:
            content = io.BytesIO(data) if isinstance(data, bytes) else data
            if not isinstance(data, bytes):
                data.seek(0)
            return self.api.files.create(content, filename=filename, content_type=content_type)

        return str(self._call("uploading an input file", send).urls["get"])

    def download(self, url: str) -> bytes:
        """An output file; outputs expire an hour after the run (404/410 then: permanent)."""

        def fetch() -> bytes:
            with transport_errors(SERVICE, f"downloading {url}"):
                response = self._plain.get(url)
            if response.status_code in (404, 410):
                raise RemoteError(
                    SERVICE,
                    f"output {url} is gone (Replicate deletes outputs an hour after the run)",
                    transient=False,
                )
            if response.status_code >= 400:
                raise status_error(SERVICE, response, f"downloading {url}", describe(response))
            return response.content

        return call_with_retries(fetch, idempotent=True, sleep=self.sleep)

    # -- plumbing --------------------------------------------------------------------------------------------
    def _cancel(self, kind: str, job_id: str) -> bool:
        namespace = self.api.trainings if kind == "trainings" else self.api.predictions
        answer = self._call(f"cancelling {job_id}", lambda: namespace.cancel(job_id))
        return answer.status not in ("succeeded", "failed")

    def _call(
        self, doing: str, send: Callable[[], Any], *, idempotent: bool = True, missing_ok: bool = False
    ) -> Any:
        def attempt() -> Any:
            try:
                with transport_errors(SERVICE, doing):
                    return send()
            except RemoteError as exc:
                if missing_ok and exc.status == 404:
                    return None
                if exc.status is not None:  # from the response hook, which does not know what was being done
                    raise exc.during(doing) from exc
                raise

        return call_with_retries(attempt, idempotent=idempotent, sleep=self.sleep)


def _raise_for_status(response: httpx.Response) -> None:
    """The client's response hook: an error answer becomes a RemoteError carrying status and Retry-After."""
    if response.status_code < 400:
        return
    response.read()
    detail = describe(response)
    if response.status_code in (401, 403):
        detail = TOKEN_REFUSED.format(detail=detail)
    raise status_error(SERVICE, response, "", detail)
