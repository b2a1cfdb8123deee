"""Run the app under uvicorn so that a stop (Ctrl-C, SIGTERM) ends open event streams at once instead of
waiting for them, and embedded jobs still running are handed back to the queue."""

from __future__ import annotations

import contextlib
import threading
from types import FrameType

import uvicorn
from fastapi import FastAPI

# Seconds uvicorn waits for open requests after a stop; event streams end by themselves well before.
GRACEFUL_SHUTDOWN_S = 10


class StoppingServer(uvicorn.Server):
    """uvicorn's server, telling the app as soon as a stop is asked for."""

    def __init__(self, config: uvicorn.Config, stopping: threading.Event) -> None:
        super().__init__(config)
        self.stopping = stopping

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self.stopping.set()
        super().handle_exit(sig, frame)


def run_server(app: FastAPI, host: str, port: int, log_level: str = "info") -> None:
    """Serve `app` (made by `create_app`) until stopped."""
    config = uvicorn.Config(
        app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S
    )
    with contextlib.suppress(KeyboardInterrupt):  # uvicorn re-raises the Ctrl-C it caught, after a clean stop
        StoppingServer(config, app.state.stopping).run()
