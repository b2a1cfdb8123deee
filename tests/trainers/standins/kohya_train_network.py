"""Stand-in for kohya-ss/sd-scripts' train_network.py: the real trainer needs CUDA and cannot be installed here.

Installed as train_network.py, sdxl_train_network.py and flux_train_network.py. Like the real scripts it
refuses unknown flags (argparse) and unknown dataset_config.toml keys (sd-scripts validates the TOML with a
voluptuous schema that forbids extras), prints "steps:" tqdm bars with an `avr_loss=` postfix, saves small
real .safetensors files `<output_name>-<epoch:06d>.safetensors` / `<output_name>.safetensors` and, with
--save_state, `<output_name>-<epoch:06d>-state/train_state.json`. Its resume follows train_network.py: the
start epoch comes from --initial_epoch (or the state's step), and its own step counter restarts at 0.
Test knobs (environment): STANDIN_HANG_AT_STEP, STANDIN_FAIL_AT_STEP (steps counted from the run's start
epoch as the user sees them), STANDIN_PID_FILE.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import tomllib
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

GENERAL_KEYS = {"shuffle_caption", "caption_extension", "keep_tokens"}
DATASET_KEYS = {"resolution", "batch_size", "enable_bucket", "subsets"}
SUBSET_KEYS = {"image_dir", "num_repeats", "class_tokens", "caption_extension"}
IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}
NETWORK_MODULES = {"train_network.py": "networks.lora", "sdxl_train_network.py": "networks.lora"}


def parser() -> argparse.ArgumentParser:
    parse = argparse.ArgumentParser()
    for flag in (
        "pretrained_model_name_or_path", "dataset_config", "output_dir", "output_name", "network_module",
        "optimizer_type", "mixed_precision", "save_precision", "resume", "ae", "clip_l", "t5xxl",
        "timestep_sampling", "model_prediction_type",
    ):  # fmt: skip
        parse.add_argument(f"--{flag}", type=str, default=None)
    parse.add_argument(
        "--save_model_as", type=str, choices=["ckpt", "pt", "safetensors"], default="safetensors"
    )
    for flag in ("network_dim", "seed", "max_train_epochs", "max_train_steps", "save_every_n_epochs"):
        parse.add_argument(f"--{flag}", type=int, default=None)
    for flag in ("initial_epoch", "initial_step"):
        parse.add_argument(f"--{flag}", type=int, default=None)
    for flag in ("network_alpha", "learning_rate", "guidance_scale"):
        parse.add_argument(f"--{flag}", type=float, default=None)
    for flag in (
        "gradient_checkpointing", "cache_latents", "cache_latents_to_disk", "sdpa", "save_state",
        "network_train_unet_only", "skip_until_initial_step",
    ):  # fmt: skip
        parse.add_argument(f"--{flag}", action="store_true")
    return parse


def refuse_unknown(where: str, found: dict, allowed: set[str]) -> None:
    unknown = sorted(set(found) - allowed)
    if unknown:
        raise ValueError(
            f"Invalid user config / ユーザ設定の形式が正しくないようです: extra keys not allowed {where} {unknown}"
        )


def batches_per_epoch(config_path: Path) -> int:
    config = tomllib.loads(config_path.read_text())
    refuse_unknown("top", config, {"general", "datasets"})
    refuse_unknown("general", config.get("general", {}), GENERAL_KEYS)
    batches = 0
    for dataset in config["datasets"]:
        refuse_unknown("datasets", dataset, DATASET_KEYS)
        for subset in dataset["subsets"]:
            refuse_unknown("subsets", subset, SUBSET_KEYS)
            folder = Path(subset["image_dir"])
            images = [p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS]
            for image in images:
                if not image.with_suffix(subset["caption_extension"]).exists():
                    raise ValueError(f"no caption for {image}")
            batches += math.ceil(len(images) * subset["num_repeats"] / dataset["batch_size"])
    return batches


def save(path: Path, rank: int, value: float, epoch: int, steps: int) -> None:
    print(f"\nsaving checkpoint: {path}")
    tensors = {
        "lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": np.full(
            (rank, 8), value, np.float16
        ),
        "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": np.full((8, rank), value, np.float16),
    }
    save_file(tensors, str(path), metadata={"ss_epoch": str(epoch), "ss_steps": str(steps)})


def save_state(folder: Path, epoch: int, step: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "optimizer.bin").write_bytes(b"state")
    (folder / "train_state.json").write_text(json.dumps({"current_epoch": epoch, "current_step": step}))


def main() -> None:
    args = parser().parse_args()
    script = Path(sys.argv[0]).name
    expected = NETWORK_MODULES.get(script, "networks.lora_flux")
    if args.network_module != expected:
        raise ValueError(f"{script} trains {expected}, not {args.network_module}")
    if script == "flux_train_network.py" and not (args.ae and args.clip_l and args.t5xxl):
        raise ValueError("flux_train_network.py needs --ae, --clip_l and --t5xxl")
    if os.environ.get("STANDIN_PID_FILE"):
        Path(os.environ["STANDIN_PID_FILE"]).write_text(str(os.getpid()))
    hang_at = int(os.environ.get("STANDIN_HANG_AT_STEP", "-1"))
    fail_at = int(os.environ.get("STANDIN_FAIL_AT_STEP", "-1"))
    per_epoch = batches_per_epoch(Path(args.dataset_config))
    epochs = args.max_train_epochs or math.ceil(args.max_train_steps / per_epoch)
    max_steps = epochs * per_epoch if args.max_train_epochs else args.max_train_steps
    print("running training / 学習開始")
    print(f"  num batches per epoch / 1epochのバッチ数: {per_epoch}")
    print(f"  num epochs / epoch数: {epochs}")
    print(f"  total optimization steps / 学習ステップ数: {max_steps}")
    initial_step = 0
    if args.resume:
        state = json.loads((Path(args.resume) / "train_state.json").read_text())
        print(f"resume training from local state: {args.resume}")
        initial_step = state["current_step"]
    if args.initial_epoch is not None:
        initial_step = (args.initial_epoch - 1) * per_epoch
    epoch_to_start = initial_step // per_epoch
    output = Path(args.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    name = args.output_name
    global_step = 0  # sd-scripts restarts its counter on resume (without --skip_until_initial_step)
    bar_total = max_steps - initial_step
    shown = 0
    for epoch in range(epoch_to_start, epochs):
        print(f"\nepoch {epoch + 1}/{epochs}\n")
        for _ in range(per_epoch):
            user_step = initial_step + shown + 1
            if user_step - 1 == fail_at:
                raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
            global_step += 1
            shown += 1
            loss = 0.3 * math.exp(-2 * user_step / max_steps)
            bar = "█" * (10 * shown // bar_total)
            sys.stderr.write(
                f"\rsteps: {100 * shown // bar_total:3d}%|{bar:<10}| {shown}/{bar_total} "
                f"[00:01<00:02,  9.50it/s, avr_loss={loss:.4g}]"
            )
            sys.stderr.flush()
            if user_step == hang_at:
                while True:
                    time.sleep(1)
            if global_step >= max_steps:
                break
        if args.save_every_n_epochs and (epoch + 1) % args.save_every_n_epochs == 0 and epoch + 1 < epochs:
            save(
                output / f"{name}-{epoch + 1:06d}.safetensors", args.network_dim, loss, epoch + 1, global_step
            )
            if args.save_state:
                save_state(output / f"{name}-{epoch + 1:06d}-state", epoch + 1, global_step)
    if args.save_state:
        save_state(output / f"{name}-state", epochs, global_step)
    save(output / f"{name}.safetensors", args.network_dim, 0.1, epochs, global_step)
    print("model saved.")


if __name__ == "__main__":
    main()
