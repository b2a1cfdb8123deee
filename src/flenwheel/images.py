"""Safe image decoding and normalisation: every accepted image becomes 8-bit sRGB RGB, upright, as PNG bytes."""

from __future__ import annotations

import contextlib
import io
import json
import re
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageCms, ImageFile, ImageOps, UnidentifiedImageError
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
            # A truncated file is corrupt, whatever a library imported in this process set: face_recognition
            # turns PIL's LOAD_TRUNCATED_IMAGES on at import, which would fill the missing part with grey.
            ImageFile.LOAD_TRUNCATED_IMAGES = False
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


# A1111's infotext settings: `Key: value` pairs, a value quoted (JSON) when it holds a comma, colon or newline
# (modules/infotext_utils.py `re_param_code` and `quote`). Its parser reads the last line as settings only
# when it holds at least three of them; otherwise the line is taken for part of the prompt.
_A1111_SETTING = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
_A1111_MIN_SETTINGS = 3
MAX_PARAMETERS_CHARS = 20_000  # a source's `parameters` text longer than this is not carried over


@dataclass(frozen=True)
class A1111Parameters:
    """An A1111 `parameters` text: prompt lines, then "Negative prompt: …" lines, then one line of settings
    (`Key: value, …`, in order, values unquoted here)."""

    prompt: str
    negative: str
    settings: dict[str, str]

    def text(self) -> str:
        """The text A1111, civitai and image browsers read back (A1111 strips an empty prompt line too)."""
        lines = [self.prompt] if self.prompt else []
        if self.negative:
            lines.append(f"Negative prompt: {self.negative}")
        lines.append(", ".join(f"{key}: {_a1111_quote(value)}" for key, value in self.settings.items()))
        return "\n".join(lines)


def _a1111_quote(value: str) -> str:
    return json.dumps(value, ensure_ascii=False) if any(c in value for c in ",:\n") else value


def parse_a1111_parameters(text: str) -> A1111Parameters:
    """Split a `parameters` text the way A1111's `parse_generation_parameters` does."""
    lines = text.strip().split("\n")
    settings_line = lines[-1] if len(_A1111_SETTING.findall(lines[-1])) >= _A1111_MIN_SETTINGS else ""
    if settings_line:
        lines = lines[:-1]
    prompt: list[str] = []
    negative: list[str] = []
    for raw in lines:
        line = raw.strip()
        if line.startswith("Negative prompt:"):
            negative.append(line[len("Negative prompt:") :].strip())
        elif negative:
            negative.append(line)
        else:
            prompt.append(line)
    settings: dict[str, str] = {}
    for key, value in _A1111_SETTING.findall(settings_line):
        if len(value) >= 2 and value[0] == value[-1] == '"':
            with contextlib.suppress(ValueError):  # a broken quote stays as written
                value = str(json.loads(value))
        settings[key.strip()] = value.strip()
    return A1111Parameters("\n".join(prompt), "\n".join(negative), settings)


def stored_parameters(data: bytes | None) -> A1111Parameters | None:
    """The A1111 `parameters` of an image's bytes (a PNG text chunk flenwheel or A1111 wrote), or None where it
    has none or is unreadable: only the header is read."""
    if not data:
        return None
    try:
        with Image.open(io.BytesIO(data)) as image:
            text = image.info.get("parameters")
    except (OSError, ValueError, SyntaxError, struct.error):
        return None
    if not isinstance(text, str) or not text.strip() or len(text) > MAX_PARAMETERS_CHARS:
        return None
    return parse_a1111_parameters(text)


def _generation_settings(
    steps: int | None,
    guidance: float | None,
    seed: int | None,
    width: int,
    height: int,
    model: str,
    denoise: float | None,
) -> dict[str, str]:
    settings: dict[str, str] = {}
    if steps is not None:
        settings["Steps"] = str(steps)
    if guidance is not None:
        settings["CFG scale"] = f"{guidance:g}"
    if seed is not None:
        settings["Seed"] = str(seed)
    settings["Size"] = f"{width}x{height}"
    settings["Model"] = model
    if denoise is not None:
        settings["Denoising strength"] = f"{denoise:g}"
    return settings


def _with_lora_tags(prompt: str, loras: list[tuple[str, float]]) -> str:
    return prompt + "".join(f" <lora:{Path(path).stem}:{strength:g}>" for path, strength in loras)


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
    settings = _generation_settings(steps, guidance, seed, width, height, model, denoise)
    return A1111Parameters(_with_lora_tags(prompt, loras), negative, settings).text()


def output_parameters(request: Any, seed: int | None, width: int, height: int, model: str) -> str:
    """The `parameters` text of one output of a generation request (any `providers.base` request; read by
    attribute so this module stays below the providers).

    An upscale keeps the source image's own parameters (prompt, negative, seed, steps…, read from its PNG) and
    adds "Postprocess upscale by" and "Postprocess upscaler", as A1111's Extras tab does; factors multiply when
    the source was itself upscaled. An edit (image-to-image, inpaint) is described by its own prompt and
    settings, with the source's prompt, negative and settings added as "Source …" settings. A source without
    parameters (a photo) leaves just the step's own settings, never a settings line A1111 reads as a prompt."""
    source = stored_parameters(getattr(request, "image", None))
    if getattr(request, "kind", None) == "upscale":
        base = source or A1111Parameters("", "", {"Size": f"{width}x{height}"})
        settings = dict(base.settings)
        factor = float(getattr(request, "factor", 1))
        with contextlib.suppress(ValueError):  # an unreadable earlier factor is dropped, not multiplied
            factor *= float(settings.pop("Postprocess upscale by", "1"))
        settings["Postprocess upscale by"] = f"{factor:g}"
        settings["Postprocess upscaler"] = model
        return A1111Parameters(base.prompt, base.negative, settings).text()
    loras = [(lora.path, lora.strength) for lora in getattr(request, "loras", ())]
    settings = _generation_settings(
        getattr(request, "steps", None),
        getattr(request, "guidance", None),
        seed,
        width,
        height,
        model,
        getattr(request, "strength", None),
    )
    if source is not None:
        if source.prompt:
            settings["Source prompt"] = source.prompt
        if source.negative:
            settings["Source negative prompt"] = source.negative
        for key, value in source.settings.items():
            if not key.startswith("Source "):  # the grandparent's recipe stays with the parent
                settings[f"Source {key}"] = value
    prompt = _with_lora_tags(getattr(request, "prompt", ""), loras)
    return A1111Parameters(prompt, getattr(request, "negative", ""), settings).text()


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
