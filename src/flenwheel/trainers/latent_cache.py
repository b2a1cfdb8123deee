"""Aspect-ratio buckets and the on-disk cache of VAE latents and text embeddings that LoRA training reads.

Each image is encoded by the VAE once per (image bytes, model, bucket size) and each caption by the text
encoder(s) once per (caption, model); every later epoch and every later run on the same data reads the files.
The latent cache keeps the VAE's distribution (mean and log-variance), so each step still draws a fresh sample
from it, exactly as training that encodes every step would.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flenwheel.domain import Frozen

BUCKET_STEP = 64
MAX_ASPECT = 2.0


class Bucket(Frozen):
    width: int
    height: int


class PreparedItem(Frozen):
    """One training image: where it is, its caption, its content hash, original size and bucket."""

    path: Path
    caption: str
    sha256: str
    width: int
    height: int
    bucket: Bucket
    crop_left: int = 0
    crop_top: int = 0


def bucket_sizes(resolution: int, step: int = BUCKET_STEP, max_aspect: float = MAX_ASPECT) -> list[Bucket]:
    """Sizes in multiples of `step` with about resolution² pixels (never more), aspect ratio up to 1:2 and 2:1."""
    area = resolution * resolution
    sizes = {(resolution, resolution)}
    for width in range(step, int(resolution * max_aspect) + step, step):
        height = (area // width) // step * step
        if height >= step and max(width / height, height / width) <= max_aspect + 1e-9:
            sizes.add((width, height))
            sizes.add((height, width))
    return [Bucket(width=w, height=h) for w, h in sorted(sizes)]


def nearest_bucket(width: int, height: int, buckets: list[Bucket]) -> Bucket:
    """The bucket whose aspect ratio is closest (in log space) to the image's; ties go to the squarer one."""
    ratio = math.log(width / height)
    return min(buckets, key=lambda b: (abs(math.log(b.width / b.height) - ratio), abs(b.width - b.height)))


def prepare_items(images: list[tuple[Path, str]], resolution: int, buckets: bool) -> list[PreparedItem]:
    """Hash, measure and bucket each image (square centre crops at `resolution` when buckets are off)."""
    from PIL import Image, ImageOps

    choices = bucket_sizes(resolution) if buckets else [Bucket(width=resolution, height=resolution)]
    prepared = []
    for path, caption in images:
        data = path.read_bytes()
        with Image.open(path) as opened:
            width, height = ImageOps.exif_transpose(opened).size
        bucket = nearest_bucket(width, height, choices)
        scale = max(bucket.width / width, bucket.height / height)
        left = (round(width * scale) - bucket.width) // 2
        top = (round(height * scale) - bucket.height) // 2
        prepared.append(
            PreparedItem(
                path=path,
                caption=caption,
                sha256=hashlib.sha256(data).hexdigest(),
                width=width,
                height=height,
                bucket=bucket,
                crop_left=left,
                crop_top=top,
            )
        )
    return prepared


def load_pixels(item: PreparedItem) -> Any:
    """The image resized to cover its bucket and centre-cropped: a (3, H, W) float tensor in [-1, 1]."""
    import numpy as np
    import torch
    from PIL import Image, ImageOps

    with Image.open(item.path) as opened:
        image = ImageOps.exif_transpose(opened).convert("RGB")
    bucket = item.bucket
    scale = max(bucket.width / image.width, bucket.height / image.height)
    size = (max(bucket.width, round(image.width * scale)), max(bucket.height, round(image.height * scale)))
    image = image.resize(size, Image.Resampling.LANCZOS)
    image = image.crop(
        (item.crop_left, item.crop_top, item.crop_left + bucket.width, item.crop_top + bucket.height)
    )
    array = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


@dataclass
class CacheStats:
    """How often the cache answered and how often the VAE / text encoder had to run (per `run`)."""

    latents_cached: int = 0
    latents_encoded: int = 0
    texts_cached: int = 0
    texts_encoded: int = 0
    encoded_items: list[str] = field(default_factory=list)


class TrainingCache:
    """Latents and text embeddings on disk, keyed by content, model fingerprint and size."""

    def __init__(self, root: Path, model_fingerprint: str) -> None:
        self.root = root / model_fingerprint
        self.stats = CacheStats()

    def latent_path(self, item: PreparedItem) -> Path:
        key = f"{item.sha256}-{item.bucket.width}x{item.bucket.height}-{item.crop_left}-{item.crop_top}"
        return self.root / "latents" / item.sha256[:2] / f"{key}.safetensors"

    def text_path(self, caption: str) -> Path:
        key = hashlib.sha256(caption.encode()).hexdigest()
        return self.root / "text" / key[:2] / f"{key}.safetensors"

    def latents(self, item: PreparedItem, encode: Callable[[Any], Any]) -> Any:
        """The VAE distribution's (mean, logvar) for the item: from disk, or `encode(pixels)` then stored."""
        path = self.latent_path(item)
        cached = _read(path)
        if cached is not None:
            self.stats.latents_cached += 1
            return cached["parameters"]
        parameters = encode(load_pixels(item))
        _write(path, {"parameters": parameters})
        self.stats.latents_encoded += 1
        self.stats.encoded_items.append(item.path.name)
        return parameters

    def text(self, caption: str, encode: Callable[[str], dict[str, Any]]) -> dict[str, Any]:
        """Text-encoder outputs for the caption (named tensors): from disk, or `encode(caption)` then stored."""
        path = self.text_path(caption)
        cached = _read(path)
        if cached is not None:
            self.stats.texts_cached += 1
            return cached
        tensors = encode(caption)
        _write(path, tensors)
        self.stats.texts_encoded += 1
        return tensors


def _read(path: Path) -> dict[str, Any] | None:
    from safetensors.torch import load_file

    if not path.exists():
        return None
    try:
        return load_file(str(path))
    except (OSError, ValueError):  # a damaged entry is re-encoded, never trusted
        return None


def _write(path: Path, tensors: dict[str, Any]) -> None:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f"{path.name}.{os.getpid()}.part")
    save_file({key: value.detach().to("cpu").contiguous() for key, value in tensors.items()}, str(partial))
    os.replace(partial, path)
