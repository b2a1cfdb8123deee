"""Stand-in for ostris/ai-toolkit's run.py: the real trainer needs CUDA and cannot be installed here.

It reads the job YAML the way ai-toolkit does but strictly (an unknown key is an error here, where ai-toolkit's
`kwargs.get` would silently ignore it), "trains" by printing ai-toolkit's tqdm bar (`lr: 1.0e-04 loss: 4.5e-01`
postfix) and saves small real .safetensors files where ai-toolkit does: `<training_folder>/<name>/<name>_
<step:09d>.safetensors` every save_every steps and `<name>.safetensors` at the end, with `training_info` in the
metadata. On start it resumes from the newest of those, as BaseSDTrainProcess.get_latest_save_path does.
Test knobs (environment): STANDIN_HANG_AT_STEP (block after that step, like a long run), STANDIN_FAIL_AT_STEP
(die with a CUDA OOM traceback), STANDIN_PID_FILE (write our pid there), STANDIN_IGNORE_SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sys
import time
from pathlib import Path

import numpy as np
import yaml
from safetensors.numpy import save_file

# The keys ai-toolkit's config classes read (toolkit/config_modules.py, jobs/process/BaseSDTrainProcess.py);
# only the part flenwheel could plausibly write is listed, anything else is refused.
PROCESS_KEYS = {
    "type", "training_folder", "device", "trigger_word", "training_seed", "performance_log_every",
    "network", "save", "datasets", "train", "model", "sample", "logging",
}  # fmt: skip
SECTION_KEYS = {
    "network": {"type", "linear", "linear_alpha", "rank", "alpha", "conv", "conv_alpha", "dropout"},
    "save": {"dtype", "save_every", "max_step_saves_to_keep", "save_format", "push_to_hub", "hf_repo_id"},
    "train": {
        "batch_size", "steps", "gradient_accumulation_steps", "train_unet", "train_text_encoder",
        "gradient_checkpointing", "noise_scheduler", "optimizer", "lr", "dtype", "ema_config",
        "optimizer_params", "lr_scheduler", "skip_first_sample", "disable_sampling", "timestep_type",
        "cache_text_embeddings",
    },
    "model": {
        "name_or_path", "is_flux", "is_xl", "is_v2", "quantize", "low_vram", "arch", "qtype", "quantize_te",
        "qtype_te", "assistant_lora_path",
    },
    "sample": {
        "sampler", "sample_every", "width", "height", "prompts", "neg", "seed", "walk_seed",
        "guidance_scale", "sample_steps",
    },
}  # fmt: skip
DATASET_KEYS = {
    "folder_path", "caption_ext", "caption_dropout_rate", "shuffle_tokens", "cache_latents_to_disk",
    "resolution", "num_repeats", "control_path",
}  # fmt: skip
# The `arch` names ai-toolkit's extensions register (extensions_built_in/diffusion_models/*, at 27a03a9) and
# the quantisation types its get_qtype takes (optimum-quanto's qtypes and its torchao ones).
ARCHS = {"qwen_image", "qwen_image_edit_plus", "zimage", "flux", "sdxl", "sd1"}
QTYPES = {"qint8", "qint4", "qfloat8", "qfloat8_e4m3fn", "qfloat8_e5m2", "int8", "float8"}
IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".webp"}


def refuse_unknown(where: str, found: dict, allowed: set[str]) -> None:
    unknown = sorted(set(found) - allowed)
    if unknown:
        raise ValueError(f"{where}: unknown keys {unknown}")


def load_job(path: Path) -> tuple[str, dict]:
    config = yaml.safe_load(path.read_text())
    refuse_unknown("top level", config, {"job", "config", "meta"})
    if config.get("job") != "extension":
        raise ValueError('config file is invalid. Missing "job" key or not "extension"')
    refuse_unknown("config", config["config"], {"name", "process"})
    [process] = config["config"]["process"]
    refuse_unknown("process", process, PROCESS_KEYS)
    if process["type"] != "sd_trainer":
        raise ValueError(f"unknown process type {process['type']}")
    for section, allowed in SECTION_KEYS.items():
        refuse_unknown(section, process.get(section, {}), allowed)
    model = process["model"]
    if "arch" in model and model["arch"] not in ARCHS:
        raise ValueError(f"unknown arch {model['arch']}")
    for key in ("qtype", "qtype_te"):
        if key in model and model[key] not in QTYPES:
            raise ValueError(f"unknown quantisation type {model[key]} for {key}")
    if model.get("arch") == "qwen_image_edit_plus" and not all(
        "control_path" in d for d in process["datasets"]
    ):
        raise ValueError("qwen_image_edit_plus trains on control images: every dataset needs control_path")
    for dataset in process["datasets"]:
        refuse_unknown("datasets[]", dataset, DATASET_KEYS)
        if "control_path" in dataset:
            # ai-toolkit finds a target's control image by its stem, as .jpg, .jpeg, .png or .webp
            # (toolkit/dataloader_mixins.py ControlFileItemDTOMixin)
            controls = {
                p.stem
                for p in Path(dataset["control_path"]).iterdir()
                if p.suffix.lower() in IMAGE_EXTENSIONS
            }
            for target in Path(dataset["folder_path"]).iterdir():
                if target.suffix.lower() in IMAGE_EXTENSIONS and target.stem not in controls:
                    raise ValueError(f"no control image for {target.name} in {dataset['control_path']}")
        folder = Path(dataset["folder_path"])
        images = [p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS]
        if not images:
            raise ValueError(f"no images in {folder}")
        for image in images:
            if not image.with_suffix("." + dataset["caption_ext"]).exists():
                raise ValueError(f"no caption for {image}")
    return config["config"]["name"], process


def latest_save(save_root: Path, name: str) -> tuple[Path, int] | None:
    from safetensors import safe_open

    found = []
    for path in save_root.glob(f"{name}*.safetensors"):
        with safe_open(str(path), framework="numpy") as handle:
            found.append((json.loads(handle.metadata()["training_info"])["step"], path))
    if not found:
        return None
    step, path = max(found)
    return path, step


def save(save_root: Path, name: str, step: int, rank: int, value: float, final: bool = False) -> None:
    suffix = "" if final else f"_{step:09d}"
    tensors = {
        "lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": np.full(
            (rank, 8), value, np.float16
        ),
        "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": np.full((8, rank), value, np.float16),
    }
    metadata = {"training_info": json.dumps({"step": step, "epoch": 0})}
    metadata["ss_output_name"] = name
    target = save_root / f"{name}{suffix}.safetensors"
    save_file(tensors, str(target), metadata=metadata)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("config_file_list", nargs="+", type=str)
    parser.add_argument("-r", "--recover", action="store_true")
    parser.add_argument("-n", "--name", type=str, default=None)
    parser.add_argument("-l", "--log", type=str, default=None)
    args = parser.parse_args()
    if os.environ.get("STANDIN_IGNORE_SIGTERM"):  # like a trainer whose launcher traps SIGTERM
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if os.environ.get("STANDIN_PID_FILE"):
        Path(os.environ["STANDIN_PID_FILE"]).write_text(str(os.getpid()))
    hang_at = int(os.environ.get("STANDIN_HANG_AT_STEP", "-1"))
    fail_at = int(os.environ.get("STANDIN_FAIL_AT_STEP", "-1"))
    print(f"Running {len(args.config_file_list)} job")
    name, process = load_job(Path(args.config_file_list[0]))
    save_root = Path(process["training_folder"]) / name
    save_root.mkdir(parents=True, exist_ok=True)
    (save_root / "config.yaml").write_text(Path(args.config_file_list[0]).read_text())
    steps = int(process["train"]["steps"])
    save_every = int(process["save"]["save_every"])
    lr = float(process["train"]["lr"])
    rank = int(process["network"]["linear"])
    start = 0
    latest = latest_save(save_root, name)
    if latest is not None:
        print(f"#### IMPORTANT RESUMING FROM {latest[0]} ####")
        start = latest[1]
        print(f"Found step {start} in metadata, starting from there")
    for step in range(start, steps):
        if step == fail_at:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        loss = 0.5 * math.exp(-3 * step / steps)
        if step != start and step % save_every == 0:
            print(f"\nSaving at step {step}")
            save(save_root, name, step, rank, loss)
        done = step + 1
        bar = "█" * (10 * done // steps)
        sys.stderr.write(
            f"\r{name}: {100 * done // steps:3d}%|{bar:<10}| {done}/{steps} "
            f"[00:01<00:02,  9.99it/s, lr: {lr:.1e} loss: {loss:.3e}]"
        )
        sys.stderr.flush()
        if step == hang_at:
            while True:
                time.sleep(1)
    save(save_root, name, steps, rank, 0.1, final=True)
    print("\n========================================\nResult:\n - 1 completed job\n")


if __name__ == "__main__":
    main()
