"""The built-in `tiny` model: a Stable-Diffusion-architecture pipeline with random weights, built from configs.

It runs on a CPU in seconds and is deterministic from a seed, so every stage can be exercised on a laptop or in
CI. It draws no faces (its weights are random); the product says so wherever its images appear. It is built
once and cached on disk (`~/.cache/flenwheel/models/tiny-v1`); the CLIP vocabulary is the real one, read from
the `open_clip_torch` wheel, so prompts tokenise as they would for SD1.5.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import os
import shutil
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Any

from flenwheel.errors import MissingDependency

TINY_MODEL_ID = "tiny"
TINY_VERSION = "tiny-v2"
TINY_NOTE = "the built-in tiny model has random weights: it draws no faces, only seeded texture"
_SEED = 20261122


def default_cache_root() -> Path:
    return Path(os.environ.get("FLENWHEEL_CACHE", Path.home() / ".cache" / "flenwheel"))


def clip_vocabulary_file() -> Path:
    """open_clip's BPE merges file, located without importing open_clip (its import pulls in torchvision)."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependency("open_clip_torch (for its CLIP vocabulary)", "local")
    path = Path(next(iter(spec.submodule_search_locations))) / "bpe_simple_vocab_16e6.txt.gz"
    if not path.exists():
        raise MissingDependency(f"the CLIP vocabulary ({path})", "local")
    return path


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte → printable character table."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in chars), strict=True))


def write_clip_tokenizer(directory: Path) -> None:
    """vocab.json + merges.txt in the Hugging Face CLIPTokenizer layout, from open_clip's merges file."""
    with gzip.open(clip_vocabulary_file()) as handle:
        lines = handle.read().decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : 49152 - 256 - 2 + 1]]
    alphabet = list(_bytes_to_unicode().values())
    vocab = alphabet + [symbol + "</w>" for symbol in alphabet]
    vocab += ["".join(pair) for pair in merges] + ["<|startoftext|>", "<|endoftext|>"]
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "vocab.json").write_text(json.dumps({token: i for i, token in enumerate(vocab)}))
    (directory / "merges.txt").write_text(
        "#version: 0.2\n" + "\n".join(" ".join(pair) for pair in merges) + "\n"
    )
    (directory / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "model_max_length": 77,
                "bos_token": "<|startoftext|>",
                "eos_token": "<|endoftext|>",
                "pad_token": "<|endoftext|>",
                "unk_token": "<|endoftext|>",
                "tokenizer_class": "CLIPTokenizer",
            }
        )
    )


def _build(target: Path) -> None:
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=".building-"))
    try:
        write_clip_tokenizer(staging / "tokenizer_files")
        tokenizer = CLIPTokenizer.from_pretrained(staging / "tokenizer_files")
        torch.manual_seed(_SEED)
        unet: Any = UNet2DConditionModel(
            block_out_channels=(32, 64),
            layers_per_block=1,
            sample_size=32,
            in_channels=4,
            out_channels=4,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            cross_attention_dim=32,
            norm_num_groups=8,
        )
        torch.manual_seed(_SEED + 1)
        vae: Any = AutoencoderKL(  # four blocks: 8x down-sampling, as SD1.5 (512 px → 64 latent)
            block_out_channels=(16, 32, 32, 64),
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            latent_channels=4,
            norm_num_groups=8,
        )
        torch.manual_seed(_SEED + 2)
        text_encoder: Any = CLIPTextModel(
            CLIPTextConfig(
                bos_token_id=49406,
                eos_token_id=49407,
                pad_token_id=49407,
                hidden_size=32,
                intermediate_size=37,
                layer_norm_eps=1e-05,
                num_attention_heads=4,
                num_hidden_layers=2,
                vocab_size=len(tokenizer),
                max_position_embeddings=77,
                projection_dim=32,
            )
        )
        for model in (unet, vae, text_encoder):
            model.eval()  # built from configs: dropout would otherwise make outputs random
        scheduler = DDIMScheduler(
            beta_start=0.00085,
            beta_end=0.012,
            beta_schedule="scaled_linear",
            clip_sample=False,
            set_alpha_to_one=False,
            steps_offset=1,
        )
        pipeline: Any = StableDiffusionPipeline(
            unet=unet,
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            scheduler=scheduler,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
        pipeline.save_pretrained(staging / "pipeline")
        (staging / "pipeline" / "FLENWHEEL_TINY").write_text(TINY_NOTE + "\n")
        os.replace(staging / "pipeline", target)  # atomic: a half-built model is never seen
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def ensure_tiny_model(cache_root: Path | None = None) -> Path:
    """The on-disk folder of the tiny pipeline, built on first use (a few seconds)."""
    from huggingface_hub.utils import disable_progress_bars

    disable_progress_bars()
    target = (cache_root or default_cache_root()) / "models" / TINY_VERSION
    if not (target / "FLENWHEEL_TINY").exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            _build(target)
        except OSError:
            if not (target / "FLENWHEEL_TINY").exists():  # another process may have won the race
                raise
    return target


@lru_cache(maxsize=1)
def tokenizer_vocab_size() -> int:
    return 49408


def describe() -> dict[str, Any]:
    return {"id": TINY_MODEL_ID, "version": TINY_VERSION, "note": TINY_NOTE}


TINY_CONTROLNET_VERSION = "tiny-controlnet-pose-v1"
# Spread of the random weights given to the ControlNet's zero-initialised output convolutions (biases stay
# 0): large enough that two skeletons draw visibly differently on the tiny model.
CONTROLNET_WEIGHT_STD = 0.2
# How loud the encoded skeleton is beside the latent it is added to (a trained ControlNet learns this).
CONDITION_GAIN = 8.0


def _build_controlnet(target: Path, cache_root: Path | None) -> None:
    import torch
    from diffusers import ControlNetModel, UNet2DConditionModel

    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=".building-"))
    try:
        unet: Any = UNet2DConditionModel.from_pretrained(ensure_tiny_model(cache_root) / "unet")
        torch.manual_seed(_SEED + 3)
        # The tiny UNet's own layout and weights (diffusers' from_unet), a 3-step (8x) condition encoder
        # as SD1.5's ControlNets have, narrowed like the tiny UNet.
        controlnet: Any = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(8, 16, 16, 32))
        # A trained ControlNet's zero convolutions are not zero any more; random ones make the control
        # image change the drawing, as it would with real weights.
        with torch.no_grad():
            for name, parameter in controlnet.named_parameters():
                if name.startswith("controlnet_cond_embedding"):
                    # He-initialised and without biases, so the skeleton's lines, not constant offsets,
                    # carry through its eight convolutions
                    if name.endswith("weight"):
                        torch.nn.init.kaiming_normal_(parameter, nonlinearity="relu")
                        if name.startswith("controlnet_cond_embedding.conv_out"):
                            parameter.mul_(CONDITION_GAIN)
                    else:
                        parameter.zero_()
                elif name.startswith(("controlnet_down_blocks", "controlnet_mid_block")) and name.endswith(
                    "weight"
                ):
                    parameter.normal_(0.0, CONTROLNET_WEIGHT_STD)
        controlnet.eval()
        controlnet.save_pretrained(staging / "controlnet")
        (staging / "controlnet" / "FLENWHEEL_TINY").write_text(
            "a random pose ControlNet for the tiny model: it steers the drawing, not toward a real pose\n"
        )
        os.replace(staging / "controlnet", target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def ensure_tiny_controlnet(cache_root: Path | None = None) -> Path:
    """The on-disk folder of the tiny model's pose ControlNet (random weights, built from the tiny UNet)."""
    target = (cache_root or default_cache_root()) / "models" / TINY_CONTROLNET_VERSION
    if not (target / "FLENWHEEL_TINY").exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            _build_controlnet(target, cache_root)
        except OSError:
            if not (target / "FLENWHEEL_TINY").exists():
                raise
    return target
