"""Request body limits: refuse an over-large upload with a JSON 413 that names the limit, before reading it."""

from __future__ import annotations

from fastapi import status
from fastapi.responses import JSONResponse
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

MAX_FILES_PER_UPLOAD = 50


def too_large_detail(upload_limit: int) -> str:
    """What a client is told when a request is too large: how many images of what size fit."""
    return (
        f"the request body is too large: upload at most {MAX_FILES_PER_UPLOAD} images of at most "
        f"{upload_limit / 2**20:.3g} MiB each per request (FLENWHEEL_UPLOAD_MAX_MB on the server)"
    )


class BodyLimit:
    """Refuse request bodies over `max_body` with a JSON 413 naming the limit: at once when Content-Length
    says so, else as soon as a chunked body grows past it (the handler's read then fails with 413)."""

    def __init__(self, app: ASGIApp, max_body: int, upload_limit: int) -> None:
        self.app = app
        self.max_body = max_body
        self.upload_limit = upload_limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_body:
            response = JSONResponse(
                {"detail": too_large_detail(self.upload_limit)},
                status_code=status.HTTP_413_CONTENT_TOO_LARGE,
                headers={"Connection": "close"},
            )
            await response(scope, receive, send)
            return
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body:
                    raise StarletteHTTPException(status.HTTP_413_CONTENT_TOO_LARGE, "Content Too Large")
            return message

        await self.app(scope, counted, send)
