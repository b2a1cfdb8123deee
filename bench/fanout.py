"""Fan-out through the ComfyUI provider: N requests at once against the same N one by one, on a real server.

    .venv/bin/python bench/fanout.py [--workload upscale|sd15|both] [--url http://127.0.0.1:8188]

Without --url it builds/starts a ComfyUI 0.3.75 server on loopback (scripts/setup-comfyui; see
tests/providers/comfyui_server.py). Workloads: `upscale` — a tiny RealESRGAN-Compact ×4 model, 64 → 128 px,
milliseconds of engine time, so the table shows flenwheel's own cost; `sd15` — a real KSampler, 3 steps at
64 px on a random SD1.5-architecture checkpoint (seconds of engine time each). Every request differs (its
seed or input image), so ComfyUI's node cache never answers one from another.

The peer is ComfyUI's own example client (script_examples/websockets_api_example.py: queue, wait on the
WebSocket, read /history, fetch /view) given the same filled-in workflows; it does no upload, no resume
look-up and no progress accounting, so the difference is what those cost. The server runs one prompt at a
time, so fan-out cannot beat the engine time; it saves the per-request round trips between prompts.
Columns: time-to-first and time-to-all (seconds from the start of the batch), the engine's own execution
time summed over the batch (history timestamps), and overhead per request = (time-to-all − engine) / N.
"""

from __future__ import annotations

import argparse
import functools
import io
import json
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from rich.console import Console
from rich.table import Table

from flenwheel.providers.base import LocalContext, TextToImage, Upscale
from flenwheel.providers.comfyui import ComfyUIProvider

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "providers"))  # the server fixture's helpers, shared with the tests

from comfyui_server import comfyui_venv, ensure_tiny_sd15, running_comfyui  # noqa: E402

from results import save_table  # noqa: E402


@dataclass
class Batch:
    client: str
    workload: str
    n: int
    mode: str
    first_s: float
    all_s: float
    engine_s: float

    @property
    def overhead_s(self) -> float:
        return (self.all_s - self.engine_s) / self.n


def image(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def tiny_upscaler(path: Path) -> Path:
    from safetensors.numpy import save_file

    rng = np.random.default_rng(7)
    weights = {
        "body.0.weight": rng.normal(0, 0.1, (8, 3, 3, 3)),
        "body.0.bias": np.zeros(8),
        "body.1.weight": np.full(8, 0.25),
        "body.2.weight": rng.normal(0, 0.1, (8, 8, 3, 3)),
        "body.2.bias": np.zeros(8),
        "body.3.weight": np.full(8, 0.25),
        "body.4.weight": rng.normal(0, 0.01, (48, 8, 3, 3)),
        "body.4.bias": np.zeros(48),
    }
    save_file({key: value.astype(np.float32) for key, value in weights.items()}, str(path))
    return path


def requests_for(workload: str, n: int, offset: int, models: dict[str, Path]) -> list[Any]:
    if workload == "upscale":
        return [Upscale(image=image(offset + i), factor=2, model=str(models["upscaler"])) for i in range(n)]
    return [
        TextToImage(
            prompt="a portrait",
            model=str(models["checkpoint"]),
            width=64,
            height=64,
            steps=3,
            seed=offset + i,
        )
        for i in range(n)
    ]


def timed_batch(jobs: Sequence[Callable[[], float]], at_once: bool) -> tuple[float, float, float]:
    """Run the jobs (each returns its engine seconds); → (time to first, time to all, engine total)."""
    start = time.perf_counter()
    finished: list[float] = []
    engine: list[float] = []
    lock = threading.Lock()

    def one(job: Callable[[], float]) -> None:
        seconds = job()
        with lock:
            finished.append(time.perf_counter() - start)
            engine.append(seconds)

    if at_once:
        threads = [threading.Thread(target=one, args=(job,)) for job in jobs]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    else:
        for job in jobs:
            one(job)
    return min(finished), max(finished), sum(engine)


def example_client(url: str, prompt: dict[str, Any]) -> float:
    """ComfyUI's websockets_api_example.py as written (urllib + websocket-client): queue, wait, history, images."""
    import urllib.parse
    import urllib.request

    import websocket

    client_id = str(uuid.uuid4())
    ws = websocket.WebSocket()
    ws.connect(f"ws{url.removeprefix('http')}/ws?clientId={client_id}")
    body = json.dumps({"prompt": prompt, "client_id": client_id}).encode("utf-8")
    with urllib.request.urlopen(urllib.request.Request(f"{url}/prompt", data=body)) as response:
        prompt_id = json.loads(response.read())["prompt_id"]
    while True:
        out = ws.recv()
        if isinstance(out, str):
            message = json.loads(out)
            data = message["data"]
            if message["type"] == "executing" and data["node"] is None and data["prompt_id"] == prompt_id:
                break
    ws.close()
    with urllib.request.urlopen(f"{url}/history/{prompt_id}") as response:
        entry = json.loads(response.read())[prompt_id]
    for output in entry["outputs"].values():
        for picture in output.get("images", []):
            with urllib.request.urlopen(f"{url}/view?{urllib.parse.urlencode(picture)}") as response:
                response.read()
    messages = entry["status"]["messages"]
    stamps = [
        data["timestamp"] for kind, data in messages if kind in ("execution_start", "execution_success")
    ]
    return (stamps[-1] - stamps[0]) / 1000


def measure(
    url: str, provider: ComfyUIProvider, workload: str, n: int, models: dict[str, Path]
) -> list[Batch]:
    rows = []
    offset = 1000 * n + (0 if workload == "upscale" else 500)

    def flenwheel_job(request: Any) -> Callable[[], float]:
        return lambda: provider.generate(request, LocalContext()).engine_seconds or 0.0

    for mode, at_once in (("one by one", False), ("all at once", True)):
        offset += 100
        jobs = [flenwheel_job(request) for request in requests_for(workload, n, offset, models)]
        rows.append(Batch("flenwheel", workload, n, mode, *timed_batch(jobs, at_once)))
        offset += 100
        prompts = [
            provider.workflow(r, r.seed or 0)[0].nodes for r in requests_for(workload, n, offset, models)
        ]
        peer_jobs = [functools.partial(example_client, url, prompt) for prompt in prompts]
        rows.append(Batch("ComfyUI example client", workload, n, mode, *timed_batch(peer_jobs, at_once)))
    return rows


def run(url: str, models_dir: Path, workloads: list[str]) -> None:
    models: dict[str, Path] = {"upscaler": tiny_upscaler(Path(tempfile.mkdtemp()) / "bench-x4.safetensors")}
    if "sd15" in workloads:
        models["checkpoint"] = ensure_tiny_sd15().checkpoint
    provider = ComfyUIProvider(url, models_dir=models_dir)
    rows = []
    for workload in workloads:
        # Warm-up: load this workload's model once, outside the timings (the server keeps one prompt's worth).
        provider.generate(requests_for(workload, 1, 0, models)[0], LocalContext())
        rows += [row for n in (3, 8) for row in measure(url, provider, workload, n, models)]

    table = Table(title=f"ComfyUI fan-out ({url}; one server, executes one prompt at a time)")
    for column in (
        "workload",
        "N",
        "mode",
        "client",
        "first (s)",
        "all (s)",
        "engine Σ (s)",
        "overhead/request (s)",
    ):
        table.add_column(column, justify="left" if column in ("workload", "mode", "client") else "right")
    for row in rows:
        table.add_row(
            row.workload,
            str(row.n),
            row.mode,
            row.client,
            f"{row.first_s:.2f}",
            f"{row.all_s:.2f}",
            f"{row.engine_s:.2f}",
            f"{row.overhead_s:.3f}",
        )
    console = Console(width=150)
    console.print(table)
    by_key = {(row.workload, row.n, row.mode, row.client): row for row in rows}
    notes = []
    for workload in workloads:
        for n in (3, 8):
            sequential = by_key[(workload, n, "one by one", "flenwheel")]
            fanned = by_key[(workload, n, "all at once", "flenwheel")]
            peer = by_key[(workload, n, "all at once", "ComfyUI example client")]
            notes.append(
                f"{workload} N={n}: all at once / one by one = {fanned.all_s / sequential.all_s:.2f}× the time; "
                f"flenwheel / example client (all at once) = {fanned.all_s / peer.all_s:.2f}×"
            )
    for note in notes:
        console.print(note)
    console.print(f"written: {save_table('fanout', table, notes)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", choices=("upscale", "sd15", "both"), default="both")
    parser.add_argument(
        "--url", help="an already running ComfyUI server (then --models-dir is its models folder)"
    )
    parser.add_argument("--models-dir", type=Path, help="the server's models folder, reachable from here")
    args = parser.parse_args()
    workloads = ["upscale", "sd15"] if args.workload == "both" else [args.workload]
    if args.url:
        if args.models_dir is None:
            parser.error("--url needs --models-dir (the server's models folder) to place the bench's models")
        run(args.url, args.models_dir, workloads)
        return
    with (
        tempfile.TemporaryDirectory(prefix="flenwheel-comfyui-") as base,
        running_comfyui(comfyui_venv(), Path(base)) as server,
    ):
        run(server.url, server.models_dir, workloads)


if __name__ == "__main__":
    main()
