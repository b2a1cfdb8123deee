"""Safe image decoding and normalisation: every accepted image becomes 8-bit sRGB RGB, upright, as PNG bytes."""

from __future__ import annotations

import io
import json
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageCms, ImageOps, UnidentifiedImageError
from PIL.PngImagePlugin import PngInfo

from flenwheel.errors import ImageRejected

# 50 megapixels: above any camera a user would train from, far below a decompression bomb.
MAX_PIXELS = 50_000_000
MAX_FILE_BYTES = 80 * 1024 * 1024
MIN_SIDE = 64
ACCEPTED_FORMATS = {"JPEG", "PNG", "WEBP", "BMP", "TIFF", "HEIF", "GIF", "MPO"}

# The start of the ingest note for an image with transparent pixels; curate names the background from it.
FLATTENED_TRANSPARENCY = "flattened transparency onto white"

_heif_registered = False


def _register_heif() -> None:
    global _heif_registered
    if not _heif_registered:
        try:
            from pillow_heif import register_heif_opener

            register_heif_opener()
        except ImportError:  # HEIC support is optional
            pass
        _heif_registered = True


@dataclass(frozen=True)
class DecodedImage:
    """A normalised image and what was done to it."""

    image: Image.Image  # mode RGB, 8-bit, EXIF orientation applied
    source_format: str
    notes: tuple[str, ...]  # e.g. "converted CMYK to RGB", "rotated per EXIF"


def decode_image(data: bytes, max_pixels: int = MAX_PIXELS) -> DecodedImage:
    """Decode untrusted bytes into an upright 8-bit sRGB RGB image, or raise `ImageRejected` with a reason."""
    _register_heif()
    if not data:
        raise ImageRejected("empty", "the file is empty (0 bytes)")
    if len(data) > MAX_FILE_BYTES:
        raise ImageRejected("too_large", f"the file is {len(data) // 2**20} MiB; the limit is 80 MiB")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            fmt = image.format or "unknown"
            width, height = image.size
            if width * height > max_pixels:
                raise ImageRejected(
                    "too_many_pixels",
                    f"{width}x{height} is {width * height / 1e6:.0f} megapixels; the limit is "
                    f"{max_pixels / 1e6:.0f} (a possible decompression bomb) — downscale it first",
                )
            if fmt not in ACCEPTED_FORMATS:
                raise ImageRejected("unsupported_format", f"{fmt} images are not supported; use JPEG or PNG")
            frames = int(getattr(image, "n_frames", 1))
            if frames > 1 and fmt != "MPO":
                raise ImageRejected(
                    "animated", f"animated {fmt} with {frames} frames; export one frame as PNG"
                )
            image.load()
            if min(image.size) < MIN_SIDE:
                raise ImageRejected(
                    "too_small",
                    f"{image.width}x{image.height} is too small; the short side must be ≥ {MIN_SIDE} px",
                )
            notes: list[str] = []
            normalised = _normalise(image, notes)  # EXIF and colour profiles are untrusted input too
    except ImageRejected:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageRejected(
            "too_many_pixels",
            f"the image declares over {(Image.MAX_IMAGE_PIXELS or 0) / 1e6:.0f} megapixels; the limit is "
            f"{max_pixels / 1e6:.0f} (a possible decompression bomb) — downscale it first",
        ) from exc
    except UnidentifiedImageError as exc:
        raise ImageRejected("not_an_image", "not an image file (no known image format recognised)") from exc
    except (OSError, SyntaxError, ValueError, TypeError, KeyError, IndexError, EOFError, struct.error) as exc:
        raise ImageRejected("corrupt", f"the image data is broken or truncated ({exc})") from exc
    return DecodedImage(image=normalised, source_format=fmt, notes=tuple(notes))


def _normalise(image: Image.Image, notes: list[str]) -> Image.Image:
    orientation = image.getexif().get(0x0112, 1)
    if orientation not in (1, None):
        image = ImageOps.exif_transpose(image)
        notes.append(f"rotated per EXIF orientation {orientation}")
    icc = image.info.get("icc_profile")
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        image = _to_8bit_grey(image)
        notes.append(f"converted {mode} to 8-bit")
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
        notes.append("expanded palette")
    if icc and image.mode in ("RGB", "CMYK", "L"):
        converted = _to_srgb(image, icc)
        if converted is not None:
            image = converted
            notes.append("converted embedded colour profile to sRGB")
    if image.mode in ("RGBA", "LA", "PA"):
        alpha = image.convert("RGBA").getchannel("A")
        background = Image.new("RGB", image.size, (255, 255, 255))
        background.paste(image.convert("RGBA"), mask=alpha)
        image = background
        transparent = float((np.asarray(alpha) < 255).mean())
        if transparent > 0:
            notes.append(f"{FLATTENED_TRANSPARENCY} ({transparent:.0%} of the pixels were transparent)")
        else:
            notes.append("dropped an alpha channel that was opaque everywhere")
    if image.mode != "RGB":
        notes.append(f"converted {image.mode} to RGB")
        image = image.convert("RGB")
    return image


def _to_8bit_grey(image: Image.Image) -> Image.Image:
    array = np.asarray(image, dtype=np.float64)
    top = 65535.0 if array.max() > 255 else 255.0
    return Image.fromarray(np.clip(array / top * 255.0 + 0.5, 0, 255).astype(np.uint8), mode="L")


def _to_srgb(image: Image.Image, icc: bytes) -> Image.Image | None:
    try:
        source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        target = ImageCms.createProfile("sRGB")
        return ImageCms.profileToProfile(image, source, target, outputMode="RGB")
    except (ImageCms.PyCMSError, OSError, ValueError):
        return None  # a broken profile is not worth rejecting the photo for


def image_mime_type(data: bytes) -> str:
    """The MIME type engines expect for uploaded image bytes."""
    if data.startswith(b"\x89PNG"):
        return "image/png"
    if data.startswith(b"\xff\xd8"):
        return "image/jpeg"
    return "application/octet-stream"


def encode_png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=6)
    return buffer.getvalue()


def open_stored(data: bytes) -> Image.Image:
    """Open bytes that flenwheel itself stored (already normalised)."""
    image = Image.open(io.BytesIO(data))
    image.load()
    return image.convert("RGB")


def a1111_parameters(
    prompt: str,
    negative: str,
    steps: int | None,
    guidance: float | None,
    seed: int | None,
    width: int,
    height: int,
    model: str,
    loras: list[tuple[str, float]],
    denoise: float | None = None,
) -> str:
    """The A1111 `parameters` text that image browsers and civitai read: prompt, negative, then settings."""
    lora_tags = "".join(f" <lora:{Path(path).stem}:{strength:g}>" for path, strength in loras)
    settings = []
    if steps is not None:
        settings.append(f"Steps: {steps}")
    if guidance is not None:
        settings.append(f"CFG scale: {guidance:g}")
    if seed is not None:
        settings.append(f"Seed: {seed}")
    settings.append(f"Size: {width}x{height}")
    settings.append(f"Model: {model}")
    if denoise is not None:
        settings.append(f"Denoising strength: {denoise:g}")
    lines = [prompt + lora_tags]
    if negative:
        lines.append(f"Negative prompt: {negative}")
    lines.append(", ".join(settings))
    return "\n".join(lines)


def embed_provenance(png: bytes, parameters: str, record: dict[str, Any]) -> bytes:
    """Re-save PNG bytes with an A1111-style `parameters` chunk and a `flenwheel` JSON chunk."""
    image = Image.open(io.BytesIO(png))
    info = PngInfo()
    info.add_itxt("parameters", parameters)
    info.add_itxt("flenwheel", json.dumps(record, sort_keys=True, default=str))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info, compress_level=6)
    return buffer.getvalue()


def read_provenance(png: bytes) -> tuple[str | None, dict[str, Any] | None]:
    """The `parameters` text and the `flenwheel` record of a PNG flenwheel wrote (None where absent)."""
    image = Image.open(io.BytesIO(png))
    text = getattr(image, "text", {}) or {}
    record = text.get("flenwheel")
    return text.get("parameters"), json.loads(record) if record else None
