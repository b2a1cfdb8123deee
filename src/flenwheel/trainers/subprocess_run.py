"""Run a trainer as a child process: its own process group, output logged and parsed line by line, killable.

ai-toolkit and sd-scripts each train in one Python process that prints tqdm bars (`\\r`-separated) and log
lines. `TrainerProcess` reads both streams as lines, appends them to a log file, hands each to a callback,
watches for cancellation and kills the whole process group on request (accelerate may spawn children).
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import signal
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

TAIL_LINES = 20
# A tqdm bar: "name:  12%|█▏   | 120/1000 [01:23<10:12,  1.44it/s, lr: 1.0e-04 loss: 4.523e-01]"
_TQDM = re.compile(r"\|\s*(\d+)/(\d+)\s*\[([^\]]*)\]?")
_NUMBER = r"([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|nan|inf)"


@dataclass(frozen=True)
class BarReading:
    """One tqdm bar line: completed `n` of `total`, and the loss its postfix shows, if any."""

    n: int
    total: int
    loss: float | None


def read_bar(line: str, loss_key: str) -> BarReading | None:
    """Parse a tqdm bar whose postfix holds `loss_key` as `key: 1.2e-01` (ai-toolkit) or `key=0.12` (kohya)."""
    found = _TQDM.search(line)
    if not found:
        return None
    loss = None
    value = re.search(rf"\b{re.escape(loss_key)}\s*[:=]\s*{_NUMBER}", found.group(3))
    if value:
        loss = float(value.group(1))
    return BarReading(int(found.group(1)), int(found.group(2)), loss)


@dataclass(frozen=True)
class ProcessOutcome:
    returncode: int
    cancelled: bool
    tail: tuple[str, ...]  # the last log lines that are not progress bars: where a traceback ends up


class StableFiles:
    """Checkpoint files matching a glob, each reported once, when it is a complete .safetensors file."""

    def __init__(self, folder: Path, pattern: str) -> None:
        self.folder = folder
        self.pattern = pattern
        self.reported: set[Path] = set()

    def new_stable(self) -> list[Path]:
        """Files not reported before that a trainer has finished writing."""
        found = []
        for path in sorted(self.folder.glob(self.pattern)) if self.folder.is_dir() else []:
            if path not in self.reported and complete_safetensors(path):
                found.append(path)
                self.reported.add(path)
        return found


def complete_safetensors(path: Path) -> bool:
    """True when the file holds its whole header and every tensor the header lists (not still being written)."""
    try:
        with path.open("rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            header_length = int.from_bytes(handle.read(8), "little")
            if size < 8 + header_length:
                return False
            header = json.loads(handle.read(header_length))
    except (OSError, ValueError):
        return False
    ends = [entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"]
    return size == 8 + header_length + max(ends, default=0)


class TrainerProcess:
    """One run of a trainer command; `run` blocks until it exits or is cancelled (and then killed)."""

    def __init__(
        self,
        command: Sequence[str],
        cwd: Path,
        log_path: Path,
        env: dict[str, str] | None = None,
        poll_s: float = 0.2,
        grace_s: float = 10.0,
    ) -> None:
        self.command = [str(part) for part in command]
        self.cwd = cwd
        self.log_path = log_path
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.poll_s = poll_s
        self.grace_s = grace_s  # after SIGTERM, how long the trainer gets before SIGKILL
        self.pid: int | None = None

    def run(
        self,
        on_line: Callable[[str], None],
        cancelled: Callable[[], bool],
        on_tick: Callable[[], None] | None = None,
    ) -> ProcessOutcome:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        lines: queue.Queue[str | None] = queue.Queue()
        tail: deque[str] = deque(maxlen=TAIL_LINES)
        with self.log_path.open("a", encoding="utf-8") as log:
            log.write(f"$ {' '.join(self.command)}\n")
            log.flush()
            process = subprocess.Popen(
                self.command,
                cwd=self.cwd,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: a cancel reaches every child
            )
            self.pid = process.pid
            assert process.stdout is not None
            reader = threading.Thread(target=_split_lines, args=(process.stdout, lines), daemon=True)
            reader.start()
            stopped = False
            ended = False
            try:
                while not ended:
                    if not stopped and cancelled():
                        self._stop(process)
                        stopped = True
                    try:
                        line = lines.get(timeout=self.poll_s)
                    except queue.Empty:
                        line = ""
                    while line is not None:
                        if line:
                            log.write(line + "\n")
                            if _TQDM.search(line) is None and line.strip():
                                tail.append(line.rstrip())
                            if not stopped:
                                on_line(line)
                        try:
                            line = lines.get_nowait()
                        except queue.Empty:
                            break
                    else:
                        ended = True
                    log.flush()
                    if on_tick is not None and not stopped:
                        on_tick()
            except BaseException:
                self._stop(process)  # a crash in our callbacks must not leave the trainer running
                raise
            returncode = process.wait()
            reader.join(timeout=5)
        return ProcessOutcome(returncode, stopped, tuple(tail))

    def _stop(self, process: subprocess.Popen[bytes]) -> None:
        """SIGTERM to the whole group, SIGKILL after the grace period."""
        if process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + self.grace_s
        while process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def _split_lines(stream: object, lines: queue.Queue[str | None]) -> None:
    """Read raw output and cut it at \\n and \\r, so each tqdm redraw is its own line."""
    buffer = b""
    fd = stream.fileno()  # type: ignore[attr-defined]
    while True:
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        buffer += chunk
        parts = re.split(rb"[\r\n]", buffer)
        buffer = parts.pop()
        if buffer.endswith(
            b"]"
        ):  # tqdm writes "\r<bar>" and ends it only with the next redraw: pass it on now
            parts.append(buffer)
            buffer = b""
        for part in parts:
            lines.put(part.decode("utf-8", errors="replace"))
    if buffer:
        lines.put(buffer.decode("utf-8", errors="replace"))
    lines.put(None)


def python_for(configured: Path | None, tool_dir: Path) -> Path:
    """The interpreter to run a trainer with: the configured one, the tool's own venv, or ours."""
    import sys

    if configured is not None:
        return configured
    for candidate in (tool_dir / "venv" / "bin" / "python", tool_dir / ".venv" / "bin" / "python"):
        if candidate.exists():
            return candidate
    return Path(sys.executable)


def failure_message(tool: str, outcome: ProcessOutcome, log_path: Path) -> str:
    last = "\n".join(outcome.tail[-12:]) or "(no output)"
    return f"{tool} exited with code {outcome.returncode}; its last lines:\n{last}\nfull log: {log_path}"
