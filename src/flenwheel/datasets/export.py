"""Export a dataset version in the formats trainers read: kohya folders + TOML, ai-toolkit YAML, fal zip.

Every export also writes metadata.json in seed 001's shape. Nothing is written outside the --out folder:
file names are ours (token + index), never taken from user input, and each path is checked before writing.
Captions are normalised on the way out too (captions.normalise_caption): a version built before that rule
ships no BOM or zero-width space.
"""

from __future__ import annotations

import json
import math
import zipfile
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import tomli_w
import yaml

from flenwheel.captions import normalise_caption, token_pattern
from flenwheel.datasets.subsets import Subset
from flenwheel.datasets.versions import get_dataset_version, version_subsets
from flenwheel.errors import ExportError
from flenwheel.store.models import Asset, DatasetVersion
from flenwheel.store.project import Project, get_character

# The model card prompts of seed 001, used as ai-toolkit sample prompts.
SAMPLE_PROMPTS = [
    "portrait of [trigger], neutral expression, front view, clean background, studio lighting",
    "portrait of [trigger], smiling, profile-left view, clean background, studio lighting",
    "full body photo of [trigger] standing, front view, neutral pose, clean background",
    "full body photo of [trigger] sitting on a chair, side view, clean background",
]


class ExportFormat(StrEnum):
    KOHYA = "kohya"
    AI_TOOLKIT = "ai-toolkit"
    ZIP = "zip"


@dataclass(frozen=True)
class ExportResult:
    format: ExportFormat
    out: Path
    version: str
    images: int
    files: list[Path]  # the main entry points: config file, zip, metadata.json


def default_repeats(images: int) -> int:
    """About 200 image-steps an epoch, as kohya users size small character sets; 1–40."""
    return max(1, min(40, math.ceil(200 / max(1, images))))


def export_dataset(
    project: Project,
    character_name: str,
    fmt: ExportFormat | str,
    out: Path,
    version_number: int | None = None,
    repeats: int | None = None,
) -> ExportResult:
    try:
        fmt = ExportFormat(fmt)
    except ValueError:
        allowed = ", ".join(f.value for f in ExportFormat)
        raise ExportError(f"unknown export format {fmt!r}: use one of {allowed}") from None
    if repeats is not None and not 1 <= repeats <= 1000:
        raise ExportError(f"--repeats {repeats} is out of range: use 1–1000")
    with project.db.session() as session:
        character = get_character(session, character_name)
        token, class_word, name = character.token, character.class_word, character.name
    version = get_dataset_version(project, character_name, version_number)
    out = prepare_out(out, project)  # only now: a failed export leaves no empty folder behind
    writer = _Writer(project, out)
    repeats = repeats or default_repeats(len(version.items))
    subsets = version_subsets(version)
    if subsets:
        files = _export_subsets(writer, version, fmt, subsets, token, class_word, f"{name}_{version.label}")
    elif fmt == ExportFormat.KOHYA:
        image_dir = writer.write_images(version, f"img/{repeats}_{token} {class_word}", token, lambda c: c)
        files = [
            writer.write_text(
                "dataset_config.toml", kohya_dataset_toml(image_dir, repeats, f"{token} {class_word}")
            )
        ]
    elif fmt == ExportFormat.AI_TOOLKIT:
        trigger = token_pattern(token)
        image_dir = writer.write_images(version, "dataset", token, lambda c: trigger.sub("[trigger]", c))
        config = ai_toolkit_config(f"{name}_{version.label}", image_dir, token)
        files = [
            writer.write_text("config.yaml", yaml.safe_dump(config, sort_keys=False, allow_unicode=True))
        ]
    else:
        files = [writer.write_zip(f"{token}_{version.label}.zip", version, token)]
    document = metadata(version, token, writer.formats(version))
    if subsets:
        document["subsets"] = [
            {**subset.model_dump(), "folder": _subset_folder(fmt, subset, token), "images": len(positions)}
            for subset, positions in subsets
        ]
    files.append(writer.write_text("metadata.json", json.dumps(document, indent=2) + "\n"))
    return ExportResult(fmt, out, version.label, len(version.items), files)


def _subset_folder(fmt: ExportFormat, subset: Subset, token: str) -> str:
    """Seed 002's folder names: img/40_maya_char, img/20_maya_char_realbody (kohya); dataset_<name> (ai-toolkit)."""
    if fmt == ExportFormat.KOHYA:
        return f"img/{subset.repeats}_{token}_{subset.name}"
    return f"dataset_{subset.name}" if fmt == ExportFormat.AI_TOOLKIT else ""


def _export_subsets(
    writer: _Writer,
    version: DatasetVersion,
    fmt: ExportFormat,
    subsets: list[tuple[Subset, list[int]]],
    token: str,
    class_word: str,
    job_name: str,
) -> list[Path]:
    """One folder and one dataset entry per subset, each at its own repeats; the zip holds every image."""
    if fmt == ExportFormat.ZIP:
        return [writer.write_zip(f"{token}_{version.label}.zip", version, token)]
    trigger = token_pattern(token)
    folders = []
    for subset, positions in subsets:
        chosen = set(positions)
        caption_of = (lambda c: c) if fmt == ExportFormat.KOHYA else (lambda c: trigger.sub("[trigger]", c))
        folder = writer.write_images(version, _subset_folder(fmt, subset, token), token, caption_of, chosen)
        folders.append((str(folder), subset.repeats))
    if fmt == ExportFormat.KOHYA:
        toml = kohya_subsets_toml([(Path(f), r, f"{token} {class_word}") for f, r in folders])
        return [writer.write_text("dataset_config.toml", toml)]
    config = ai_toolkit_config(job_name, Path(folders[0][0]), token, AiToolkitRun(subsets=tuple(folders)))
    return [writer.write_text("config.yaml", yaml.safe_dump(config, sort_keys=False, allow_unicode=True))]


def exported_subsets(dataset_dir: Path) -> list[tuple[Path, int, int]]:
    """(folder, num_repeats, images) of each subset of an export with subsets (its metadata.json); [] for a
    one-folder export."""
    try:
        document = json.loads((dataset_dir / "metadata.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    return [
        (dataset_dir / str(entry["folder"]), int(entry["repeats"]), int(entry["images"]))
        for entry in document.get("subsets") or []
    ]


def subset_repeats(subsets: list[tuple[Path, int, int]], default: int) -> int:
    """The one repeats value that gives the subsets' steps per epoch (Σ images × repeats / images), so the
    step plan of a one-folder trainer matches; `default` without subsets."""
    images = sum(count for _, _, count in subsets)
    if not images:
        return default
    return max(1, round(sum(count * repeats for _, repeats, count in subsets) / images))


def metadata(version: DatasetVersion, token: str, formats: dict[int, str]) -> dict[str, Any]:
    """seed 001 step 1.1's metadata.json."""
    return {
        "dataset_version": version.label,
        "images": [
            {
                "filename": _image_name(token, item.position, formats[item.asset_id]),
                "caption": normalise_caption(item.caption),
                "angle": item.angle,
                "expression": item.expression,
                "shot": item.shot,
                "quality": item.quality,
                "sha256": item.sha256,
            }
            for item in version.items
        ],
    }


def _image_name(token: str, position: int, extension: str) -> str:
    return f"{token}_{position + 1:03d}.{extension}"


def prepare_out(out: Path, project: Project) -> Path:
    """`out` made ready for an export: a new or empty real folder outside the blob store, resolved. Raises
    ExportError naming the problem (a file, a link, not empty, inside the blob store, cannot be created)."""
    if out.resolve().is_relative_to(project.blobs.root.resolve()):
        raise ExportError(f"--out {out} is inside the project's blob store: export somewhere else")
    if out.exists() and not out.is_dir():
        raise ExportError(f"--out {out} is a file: give a folder")
    if out.is_symlink():
        raise ExportError(f"--out {out} is a symbolic link: give a real folder")
    if out.exists() and any(out.iterdir()):
        raise ExportError(
            f"--out {out} is not empty: export into a new or empty folder so nothing is overwritten"
        )
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ExportError(f"cannot create --out {out}: {exc.strerror}") from None
    return out.resolve()


class _Writer:
    """Writes files under one root and refuses any path that would land outside it."""

    def __init__(self, project: Project, root: Path) -> None:
        self.project = project
        self.root = root

    def _target(self, relative: str) -> Path:
        target = (self.root / relative).resolve()
        if not target.is_relative_to(self.root):
            raise ExportError(f"refusing to write {relative!r}: it would land outside {self.root}")
        target.parent.mkdir(parents=True, exist_ok=True)
        return target

    def write_text(self, relative: str, text: str) -> Path:
        target = self._target(relative)
        target.write_text(text, encoding="utf-8")
        return target

    def formats(self, version: DatasetVersion) -> dict[int, str]:
        with self.project.db.session() as session:
            return {item.asset_id: session.get_one(Asset, item.asset_id).format for item in version.items}

    def write_images(
        self,
        version: DatasetVersion,
        folder: str,
        token: str,
        caption_of: Any,
        positions: set[int] | None = None,
    ) -> Path:
        formats = self.formats(version)
        for item in version.items:
            if positions is not None and item.position not in positions:
                continue
            name = _image_name(token, item.position, formats[item.asset_id])
            self._target(f"{folder}/{name}").write_bytes(self.project.blobs.get(item.sha256))
            caption = caption_of(normalise_caption(item.caption))
            self.write_text(f"{folder}/{Path(name).stem}.txt", caption + "\n")
        return self._target(folder)

    def write_zip(self, relative: str, version: DatasetVersion, token: str) -> Path:
        target = self._target(relative)
        formats = self.formats(version)
        with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            for item in version.items:
                name = _image_name(token, item.position, formats[item.asset_id])
                archive.writestr(name, self.project.blobs.get(item.sha256))
                archive.writestr(f"{Path(name).stem}.txt", normalise_caption(item.caption) + "\n")
        return target


def kohya_dataset_toml(
    image_dir: Path,
    repeats: int,
    class_tokens: str,
    resolution: int = 512,
    batch_size: int = 1,
    enable_bucket: bool = True,
) -> str:
    """sd-scripts' dataset_config.toml for one image folder (also what the kohya trainer runs with)."""
    return kohya_subsets_toml([(image_dir, repeats, class_tokens)], resolution, batch_size, enable_bucket)


def kohya_subsets_toml(
    folders: list[tuple[Path, int, str]],
    resolution: int = 512,
    batch_size: int = 1,
    enable_bucket: bool = True,
) -> str:
    """sd-scripts' dataset_config.toml with one [[datasets.subsets]] per (folder, num_repeats, class_tokens)."""
    # kohya's default caption extension is ".caption" and it ignores folder names when a TOML is used,
    # so every setting is stated explicitly.
    subsets = [
        {
            "image_dir": str(image_dir),
            "num_repeats": repeats,
            "class_tokens": class_tokens,
            "caption_extension": ".txt",
        }
        for image_dir, repeats, class_tokens in folders
    ]
    document = {
        "general": {"shuffle_caption": False, "caption_extension": ".txt", "keep_tokens": 1},
        "datasets": [
            {
                "resolution": resolution,
                "batch_size": batch_size,
                "enable_bucket": enable_bucket,
                "subsets": subsets,
            }
        ],
    }
    return "# kohya sd-scripts dataset config written by flenwheel\n" + tomli_w.dumps(document)


@dataclass(frozen=True)
class AiToolkitRun:
    """The run-specific values of an ai-toolkit job. Defaults: the export's FLUX.1-dev-on-24-GB example."""

    training_folder: str = "output"  # checkpoints land in <training_folder>/<job name>/
    base_model: str = "black-forest-labs/FLUX.1-dev"
    family: str = "flux"  # "sd", "sdxl" or "flux"
    rank: int = 16
    alpha: float = 16
    learning_rate: float = 1e-4
    optimizer: str = "adamw8bit"
    steps: int = 1000
    save_every: int = 250
    max_step_saves_to_keep: int = 4
    batch_size: int = 1
    resolutions: tuple[int, ...] = (512, 768, 1024)
    num_repeats: int | None = None  # None: ai-toolkit's default (1)
    seed: int | None = None  # None: ai-toolkit picks; samples use 42
    ema_decay: float | None = None  # None: no EMA
    train_text_encoder: bool = False
    qtype: str = "qint8"  # Qwen / Z-Image transformer quantisation (seed 002: int8); FLUX keeps ai-toolkit's
    control_dir: str | None = None  # Qwen-Image-Edit: the control (source) images, one per target, same names
    # One dataset entry per subset: (folder, num_repeats); empty: the one `image_dir` at `num_repeats`.
    subsets: tuple[tuple[str, int], ...] = ()


# ai-toolkit's model block per training architecture: the `arch` its extensions register
# (extensions_built_in/diffusion_models: qwen_image, qwen_image_edit_plus, zimage) or its flags for the
# older ones; the text encoder quantised to qfloat8 as in its own Qwen examples; Z-Image Turbo trained through
# ostris's de-distillation adapter as its UI does for "zimage:turbo".
_AI_TOOLKIT_ARCH: dict[str, dict[str, Any]] = {
    "sd": {},
    "sdxl": {"is_xl": True},
    "flux": {"is_flux": True, "quantize": True},
    "qwen-image": {"arch": "qwen_image", "quantize": True, "quantize_te": True, "qtype_te": "qfloat8"},
    "qwen-image-edit": {
        "arch": "qwen_image_edit_plus",
        "quantize": True,
        "quantize_te": True,
        "qtype_te": "qfloat8",
    },
    "z-image": {
        "arch": "zimage",
        "quantize": True,
        "quantize_te": True,
        "qtype_te": "qfloat8",
        "assistant_lora_path": "ostris/zimage_turbo_training_adapter/zimage_turbo_training_adapter_v2.safetensors",
    },
}
_SAMPLING = {  # ai-toolkit sample steps / guidance per architecture (the families' hq tier)
    "flux": (20, 4.0),
    "qwen-image": (25, 3.0),
    "qwen-image-edit": (25, 3.0),
    "z-image": (9, 1.0),
}


def ai_toolkit_config(
    job_name: str, image_dir: Path, token: str, run: AiToolkitRun | None = None
) -> dict[str, Any]:
    """An ai-toolkit `job: extension` config with one sd_trainer process (keys as its config_modules.py reads them)."""
    run = run or AiToolkitRun()
    if run.family not in _AI_TOOLKIT_ARCH:
        raise ExportError(
            f"ai-toolkit has no architecture for family {run.family!r}: use one of {', '.join(_AI_TOOLKIT_ARCH)}"
        )
    flux = run.family not in ("sd", "sdxl")  # every other architecture is flow-matching
    model: dict[str, Any] = {"name_or_path": run.base_model, **_AI_TOOLKIT_ARCH[run.family]}
    if "arch" in model:
        model["qtype"] = run.qtype
    entries = run.subsets or ((str(image_dir), run.num_repeats),)
    datasets = []
    for folder, repeats in entries:
        dataset: dict[str, Any] = {
            "folder_path": folder,
            "caption_ext": "txt",
            "caption_dropout_rate": 0.05,
            "shuffle_tokens": False,
            "cache_latents_to_disk": True,
            "resolution": list(run.resolutions),
        }
        if repeats is not None:
            dataset["num_repeats"] = repeats
        if run.control_dir is not None:
            dataset["control_path"] = run.control_dir
        datasets.append(dataset)
    train: dict[str, Any] = {
        "batch_size": run.batch_size,
        "steps": run.steps,
        "gradient_accumulation_steps": 1,
        "train_unet": True,
        "train_text_encoder": run.train_text_encoder,
        "gradient_checkpointing": True,
        "noise_scheduler": "flowmatch" if flux else "ddpm",
        "optimizer": run.optimizer,
        "lr": run.learning_rate,
        "dtype": "bf16",
    }
    if run.ema_decay is not None:
        train["ema_config"] = {"use_ema": True, "ema_decay": run.ema_decay}
    if "arch" in model:  # ai-toolkit's Qwen / Z-Image examples: weighted timesteps, cached prompt embeddings
        train.update(timestep_type="weighted", cache_text_embeddings=True)
    sample_steps, sample_guidance = _SAMPLING.get(run.family, (20, 7.0))
    process: dict[str, Any] = {
        "type": "sd_trainer",
        "training_folder": run.training_folder,
        "device": "cuda:0",
        "trigger_word": token,
    }
    if run.seed is not None:
        process["training_seed"] = run.seed
    sample_size = max(run.resolutions)
    process.update(
        {
            "network": {"type": "lora", "linear": run.rank, "linear_alpha": run.alpha},
            "save": {
                "dtype": "float16",
                "save_every": run.save_every,
                "max_step_saves_to_keep": run.max_step_saves_to_keep,
            },
            "datasets": datasets,
            "train": train,
            "model": model,
            "sample": {
                "sampler": "flowmatch" if flux else "ddpm",
                "sample_every": run.save_every,
                "width": sample_size,
                "height": sample_size,
                "prompts": SAMPLE_PROMPTS,
                "neg": "",
                "seed": 42 if run.seed is None else run.seed,
                "walk_seed": True,
                "guidance_scale": sample_guidance,
                "sample_steps": sample_steps,
            },
        }
    )
    return {
        "job": "extension",
        "config": {"name": job_name, "process": [process]},
        "meta": {"name": "[name]", "version": "1.0"},
    }
