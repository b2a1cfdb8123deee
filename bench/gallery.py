"""How the web app's review gallery holds up with 2,000 images (issue 12), side by side with what a grid of
full-size images would cost.

    .venv/bin/python bench/gallery.py [--images 2000] [--side 1024]

Makes a fresh SQLite project with one user and one character, ingests N distinct JPEGs of side×side px (the
same path as an upload), signs in as a browser would, then measures through the app (Starlette's TestClient,
in process, so the numbers are the server's work without a network):
- the Photos page (48 tiles) at the first, middle and last page, and filtered by label;
- one page's 48 thumbnails the first time (each made and cached) and again (read from the cache);
- the same 48 images full size, which is what a grid without thumbnails would send.
"""

from __future__ import annotations

import argparse
import io
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from fastapi.testclient import TestClient
from PIL import Image

from flenwheel.config import Settings
from flenwheel.datasets.ingest import ingest_bytes
from flenwheel.store.project import Project
from flenwheel.web.app import create_app
from flenwheel.web.auth import add_user
from flenwheel.web.pages import PAGE_SIZE


def photo(index: int, side: int) -> bytes:
    """A distinct photo-like JPEG: smooth gradients plus noise, so it compresses like a photo."""
    rng = np.random.default_rng(index)
    y, x = np.mgrid[0:side, 0:side].astype(np.float32) / side
    base = np.stack([x, y, (x + y) / 2], axis=-1) * rng.uniform(80, 200, size=3)
    pixels = np.clip(base + rng.normal(0, 12, size=(side, side, 3)), 0, 255).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "JPEG", quality=88)
    return out.getvalue()


def timed(call, repeat: int = 5) -> float:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--side", type=int, default=1024)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="flenwheel-gallery-"))
    project = Project.init(Settings(project=root / "project"))
    _user, token = add_user(project, "alice")
    app = create_app(project.settings)
    started = time.perf_counter()
    with TestClient(app) as client:
        form = client.get("/signin")
        csrf = re.search(r'name="csrf" value="([^"]+)"', form.text).group(1)  # type: ignore[union-attr]
        client.post("/signin", data={"token": token, "csrf": csrf})
        made = client.post(
            "/characters",
            json={"name": "lisa", "token": "ohwx_lisa", "class_word": "woman"},
            headers={
                "X-CSRF-Token": re.search(r'csrf-token" content="([^"]+)"', client.get("/").text).group(1)
            },  # type: ignore[union-attr]
        )
        character = made.json()["id"]
        for index in range(args.images):
            ingest_bytes(project, character, photo(index, args.side), f"{index}.jpg", f"{index}.jpg", False)
        print(
            f"ingested {args.images} images of {args.side} px in {time.perf_counter() - started:.0f} s",
            file=sys.stderr,
        )
        pages = -(-args.images // PAGE_SIZE)
        rows: list[tuple[str, float, str]] = []
        for label, url in (
            ("Photos page 1", f"/c/{character}"),
            (f"Photos page {pages // 2}", f"/c/{character}?page={pages // 2}"),
            (f"Photos page {pages} (last)", f"/c/{character}?page={pages}"),
            ("Photos filtered (unlabelled)", f"/c/{character}?label=none"),
        ):
            response = client.get(url)
            assert response.status_code == 200 and response.text.count('class="tile"') > 0, url
            rows.append(
                (label, timed(lambda url=url: client.get(url)), f"{len(response.content) / 1024:.0f} KiB")
            )

        page = client.get(f"/c/{character}").text
        ids = re.findall(r"/assets/(\d+)/thumb", page)
        assert len(ids) == PAGE_SIZE
        start = time.perf_counter()
        cold = sum(len(client.get(f"/assets/{i}/thumb").content) for i in ids)
        cold_s = time.perf_counter() - start
        warm_s = timed(lambda: [client.get(f"/assets/{i}/thumb") for i in ids], repeat=3)
        full_s = timed(lambda: [client.get(f"/assets/{i}/image") for i in ids], repeat=3)
        full = sum(len(client.get(f"/assets/{i}/image").content) for i in ids)

    print(
        f"\n{args.images} images of {args.side}×{args.side} px, {PAGE_SIZE} tiles a page, SQLite, in process\n"
    )
    print(f"| {'what':<34} | {'time':>9} | {'size':>10} |")
    print(f"|{'-' * 36}|{'-' * 11}|{'-' * 12}|")
    for label, seconds, size in rows:
        print(f"| {label:<34} | {seconds * 1000:7.1f} ms | {size:>10} |")
    print(f"| {'48 thumbnails, first time (made)':<34} | {cold_s * 1000:7.1f} ms | {cold / 2**20:7.2f} MiB |")
    print(f"| {'48 thumbnails, cached':<34} | {warm_s * 1000:7.1f} ms | {cold / 2**20:7.2f} MiB |")
    print(f"| {'peer: 48 full-size images':<34} | {full_s * 1000:7.1f} ms | {full / 2**20:7.2f} MiB |")
    print(f"\nfull-size / cached thumbnails: {full / cold:.1f}× the bytes, {full_s / warm_s:.1f}× the time")
    project.close()


if __name__ == "__main__":
    main()
