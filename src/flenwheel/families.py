"""Model families as data: how each loads, its sampling defaults per tier, native sizes, edits and LoRA formats.

One typed `ModelFamily` per family the seeds' users run: sd15 and sdxl (one checkpoint file), FLUX dev /
schnell / Fill / Kontext, Qwen-Image, Qwen-Image-Edit-2509 and Z-Image Turbo (a diffusion model + text
encoder(s) + VAE, loaded separately). Engines (the ComfyUI graph builder, the fal/Replicate catalogue) and
trainers (ai-toolkit's `arch`) read these entries; adding a family is adding an entry to `FAMILIES`.

Sources of the defaults: the file names are those of ComfyUI's own example workflows
(comfyanonymous.github.io/ComfyUI_examples: flux, qwen_image, z_image) and, for Z-Image, seed 003's pod
(`z_image_turbo_bf16.safetensors`, `qwen_3_4b.safetensors`, `z-image-turbo-vae.safetensors`); steps / CFG /
sampler / shift follow the same examples (Z-Image Turbo: 8–9 steps, CFG 1, res_multistep, shift 3; Qwen-Image:
CFG 2.5, shift 3.1; FLUX dev: distilled guidance 3.5, Fill 30, Kontext 2.5). Native sizes: SD1.5 at 512 px,
SDXL/FLUX/Z-Image at ~1 MP buckets (SDXL's training buckets), Qwen-Image's own table from its model card
(1328×1328, 1664×928, …).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from flenwheel.domain import Frozen
from flenwheel.errors import InvalidInput

Tier = Literal["draft", "hq"]
RequestKind = Literal["text_to_image", "image_to_image", "inpaint", "identity_reference", "upscale"]
# How a family edits with a reference image: none (plain img2img by denoise), FLUX Kontext's ReferenceLatent,
# or Qwen-Image-Edit-Plus's text encoder that reads up to three images.
EditMode = Literal["none", "reference_latent", "qwen_edit_plus"]
InpaintMode = Literal["noise_mask", "fill_conditioning"]
LoraFormat = Literal["kohya", "diffusers", "ai-toolkit", "comfyui"]
TrainingArch = Literal["sd", "sdxl", "flux", "qwen-image", "qwen-image-edit", "z-image"]


class Loading(Frozen):
    """How ComfyUI (and any file-based engine) loads the family. `checkpoint`: one file with model, text
    encoder and VAE (CheckpointLoaderSimple); `split`: UNETLoader + CLIPLoader/DualCLIPLoader + VAELoader."""

    kind: Literal["checkpoint", "split"]
    checkpoint: str | None = None  # default checkpoint file (None: the first one the server has)
    diffusion_model: str | None = None  # models/diffusion_models
    weight_dtype: str = "default"  # UNETLoader's weight_dtype
    text_encoders: tuple[str, ...] = ()  # models/text_encoders; two → DualCLIPLoader
    clip_type: str | None = None  # CLIPLoader / DualCLIPLoader `type` (flux, qwen_image, lumina2)
    vae: str | None = None  # models/vae


class Sampling(Frozen):
    """One tier's sampler settings. `cfg` is the KSampler's classifier-free guidance (1 = no negative pass);
    `distilled_guidance` is FLUX's guidance embedding (the FluxGuidance node), None where the model has none."""

    steps: int = Field(ge=1, le=150)
    cfg: float = Field(ge=0, le=30)
    sampler: str
    scheduler: str
    distilled_guidance: float | None = None


class ModelFamily(Frozen):
    id: str
    label: str
    arch: TrainingArch  # what a trainer calls this architecture
    loading: Loading
    tiers: dict[str, Sampling]  # "draft", "hq"
    resolutions: dict[str, tuple[int, int]]  # aspect ratio "W:H" → native (width, height)
    latent: Literal["EmptyLatentImage", "EmptySD3LatentImage"] = "EmptyLatentImage"
    shift: float | None = None  # ModelSamplingAuraFlow shift (Qwen-Image, Z-Image); None: the model's own
    edit: EditMode = "none"
    inpaint: InpaintMode = "noise_mask"
    kinds: frozenset[str]  # request kinds it serves (upscale is family-free)
    max_references: int = 0  # reference images an edit / identity request may carry
    lora_formats: tuple[LoraFormat, ...] = ()
    lora_clip: bool = (
        False  # LoRAs patch the text encoder too (LoraLoader) or the model only (LoraLoaderModelOnly)
    )
    hf_repo: str | None = None  # the diffusers repository trainers load
    nsfw_capable: bool = True  # the weights themselves (a self-hosted engine decides whether NSFW may run)
    source: str = ""

    @property
    def negative_prompt(self) -> bool:
        """Whether a negative prompt changes anything: only with a second, unconditional pass (CFG > 1)."""
        return any(tier.cfg > 1.0 for tier in self.tiers.values())

    @property
    def edits_with_reference(self) -> bool:
        return self.edit != "none"

    def sampling(self, tier: str = "draft") -> Sampling:
        try:
            return self.tiers[tier]
        except KeyError:
            raise InvalidInput(
                f"{self.id} has no tier {tier!r}: use one of {', '.join(self.tiers)}"
            ) from None

    def size(self, aspect: str) -> tuple[int, int]:
        """The family's native (width, height) for an aspect ratio such as "9:16"."""
        try:
            return self.resolutions[aspect]
        except KeyError:
            raise InvalidInput(
                f"{self.id} has no native size for {aspect!r}: use one of {', '.join(self.resolutions)}"
            ) from None


_SD15_SIZES = {
    "1:1": (512, 512),
    "2:3": (512, 768),
    "3:2": (768, 512),
    "3:4": (576, 768),
    "4:3": (768, 576),
    "9:16": (432, 768),
    "16:9": (768, 432),
}
_MEGAPIXEL_SIZES = {  # SDXL's training buckets, also FLUX's and Z-Image's native ~1 MP sizes
    "1:1": (1024, 1024),
    "2:3": (832, 1216),
    "3:2": (1216, 832),
    "3:4": (896, 1152),
    "4:3": (1152, 896),
    "9:16": (768, 1344),
    "16:9": (1344, 768),
}
_QWEN_SIZES = {  # the Qwen-Image model card's aspect-ratio table
    "1:1": (1328, 1328),
    "2:3": (1056, 1584),
    "3:2": (1584, 1056),
    "3:4": (1104, 1472),
    "4:3": (1472, 1104),
    "9:16": (928, 1664),
    "16:9": (1664, 928),
}
_ALL = frozenset({"text_to_image", "image_to_image", "inpaint", "identity_reference"})
_NO_IDENTITY = frozenset({"text_to_image", "image_to_image", "inpaint"})
_FLUX_ENCODERS = ("clip_l.safetensors", "t5xxl_fp16.safetensors")
_QWEN_ENCODER = ("qwen_2.5_vl_7b_fp8_scaled.safetensors",)
_EXAMPLES = "https://comfyanonymous.github.io/ComfyUI_examples/"


def _flux(
    id: str, label: str, file: str, guidance: float | None, steps: tuple[int, int], **extra: object
) -> ModelFamily:
    return ModelFamily.model_validate(
        {
            "id": id,
            "label": label,
            "arch": "flux",
            "loading": Loading(
                kind="split",
                diffusion_model=file,
                text_encoders=_FLUX_ENCODERS,
                clip_type="flux",
                vae="ae.safetensors",
            ),
            "tiers": {
                "draft": Sampling(
                    steps=steps[0], cfg=1.0, sampler="euler", scheduler="simple", distilled_guidance=guidance
                ),
                "hq": Sampling(
                    steps=steps[1], cfg=1.0, sampler="euler", scheduler="simple", distilled_guidance=guidance
                ),
            },
            "resolutions": _MEGAPIXEL_SIZES,
            "latent": "EmptySD3LatentImage",
            "lora_formats": ("kohya", "diffusers", "ai-toolkit", "comfyui"),
            "source": _EXAMPLES + "flux/",
            **extra,
        }
    )


FAMILIES: dict[str, ModelFamily] = {
    family.id: family
    for family in (
        ModelFamily(
            id="sd15",
            label="Stable Diffusion 1.5",
            arch="sd",
            loading=Loading(kind="checkpoint"),
            tiers={
                "draft": Sampling(steps=20, cfg=7.0, sampler="euler", scheduler="normal"),
                "hq": Sampling(steps=30, cfg=7.0, sampler="dpmpp_2m", scheduler="karras"),
            },
            resolutions=_SD15_SIZES,
            kinds=_ALL,  # identity: IP-Adapter FaceID (workflows/identity_reference.json)
            max_references=8,
            lora_formats=("kohya", "diffusers"),
            lora_clip=True,
            hf_repo="stable-diffusion-v1-5/stable-diffusion-v1-5",
            source=_EXAMPLES,
        ),
        ModelFamily(
            id="sdxl",
            label="Stable Diffusion XL",
            arch="sdxl",
            loading=Loading(kind="checkpoint", checkpoint="sd_xl_base_1.0.safetensors"),
            tiers={
                "draft": Sampling(steps=20, cfg=6.0, sampler="euler", scheduler="normal"),
                "hq": Sampling(steps=30, cfg=6.0, sampler="dpmpp_2m", scheduler="karras"),
            },
            resolutions=_MEGAPIXEL_SIZES,
            kinds=_ALL,
            max_references=8,
            lora_formats=("kohya", "diffusers"),
            lora_clip=True,
            hf_repo="stabilityai/stable-diffusion-xl-base-1.0",
            source=_EXAMPLES + "sdxl/",
        ),
        _flux(
            "flux-dev",
            "FLUX.1 [dev]",
            "flux1-dev.safetensors",
            3.5,
            (20, 28),
            kinds=_NO_IDENTITY,
            hf_repo="black-forest-labs/FLUX.1-dev",
        ),
        _flux(
            "flux-schnell",
            "FLUX.1 [schnell]",
            "flux1-schnell.safetensors",
            None,
            (4, 4),
            kinds=_NO_IDENTITY,
            hf_repo="black-forest-labs/FLUX.1-schnell",
        ),
        _flux(
            "flux-fill",
            "FLUX.1 Fill [dev]",
            "flux1-fill-dev.safetensors",
            30.0,
            (20, 28),
            kinds=frozenset({"inpaint"}),
            inpaint="fill_conditioning",
            hf_repo="black-forest-labs/FLUX.1-Fill-dev",
        ),
        _flux(
            "flux-kontext",
            "FLUX.1 Kontext [dev]",
            "flux1-dev-kontext_fp8_scaled.safetensors",
            2.5,
            (20, 28),
            kinds=_ALL,
            edit="reference_latent",
            max_references=1,
            hf_repo="black-forest-labs/FLUX.1-Kontext-dev",
        ),
        ModelFamily(
            id="qwen-image",
            label="Qwen-Image",
            arch="qwen-image",
            loading=Loading(
                kind="split",
                diffusion_model="qwen_image_fp8_e4m3fn.safetensors",
                text_encoders=_QWEN_ENCODER,
                clip_type="qwen_image",
                vae="qwen_image_vae.safetensors",
            ),
            tiers={
                "draft": Sampling(steps=20, cfg=2.5, sampler="euler", scheduler="simple"),
                "hq": Sampling(steps=50, cfg=4.0, sampler="euler", scheduler="simple"),
            },
            resolutions=_QWEN_SIZES,
            latent="EmptySD3LatentImage",
            shift=3.1,
            kinds=_NO_IDENTITY,
            lora_formats=("diffusers", "ai-toolkit", "comfyui"),
            hf_repo="Qwen/Qwen-Image",
            source=_EXAMPLES + "qwen_image/",
        ),
        ModelFamily(
            id="qwen-image-edit-2509",
            label="Qwen-Image-Edit-2509",
            arch="qwen-image-edit",
            loading=Loading(
                kind="split",
                diffusion_model="qwen_image_edit_2509_fp8_e4m3fn.safetensors",
                text_encoders=_QWEN_ENCODER,
                clip_type="qwen_image",
                vae="qwen_image_vae.safetensors",
            ),
            tiers={
                "draft": Sampling(steps=20, cfg=2.5, sampler="euler", scheduler="simple"),
                "hq": Sampling(steps=40, cfg=4.0, sampler="euler", scheduler="simple"),
            },
            resolutions=_QWEN_SIZES,
            latent="EmptySD3LatentImage",
            shift=3.0,
            edit="qwen_edit_plus",
            max_references=3,  # TextEncodeQwenImageEditPlus: image1..image3
            kinds=_ALL,
            lora_formats=("diffusers", "ai-toolkit", "comfyui"),  # dx8152's multiple-angles LoRA is one
            hf_repo="Qwen/Qwen-Image-Edit-2509",
            source=_EXAMPLES + "qwen_image/",
        ),
        ModelFamily(
            id="z-image-turbo",
            label="Z-Image Turbo",
            arch="z-image",
            loading=Loading(
                kind="split",
                diffusion_model="z_image_turbo_bf16.safetensors",
                text_encoders=("qwen_3_4b.safetensors",),
                clip_type="lumina2",
                vae="z-image-turbo-vae.safetensors",
            ),
            tiers={  # seed 003: ~6–7 s an image at 8–9 steps
                "draft": Sampling(steps=8, cfg=1.0, sampler="res_multistep", scheduler="simple"),
                "hq": Sampling(steps=9, cfg=1.0, sampler="res_multistep", scheduler="simple"),
            },
            resolutions=_MEGAPIXEL_SIZES,
            latent="EmptySD3LatentImage",
            shift=3.0,
            kinds=_NO_IDENTITY,
            lora_formats=("diffusers", "ai-toolkit", "comfyui"),
            hf_repo="Tongyi-MAI/Z-Image-Turbo",
            source=_EXAMPLES + "z_image/ and seed 003's pod",
        ),
    )
}


# Seed 002's training defaults for the flow-matching families ai-toolkit trains (its Qwen character LoRA:
# rank 16, alpha 16, lr 2e-4, adamw8bit, 10 epochs, EMA 0.999, 1024 px); applied where the user set nothing.
SEED_002_TRAINING = {
    "rank": 16,
    "alpha": 16.0,
    "learning_rate": 2e-4,
    "optimizer": "adamw8bit",
    "epochs": 10,
    "ema": True,
    "ema_decay": 0.999,
    "resolution": 1024,
}
TRAINING_DEFAULTS: dict[str, dict[str, object]] = {
    "qwen-image": SEED_002_TRAINING,
    "qwen-image-edit": SEED_002_TRAINING,
    "z-image": SEED_002_TRAINING,
}
# The diffusers repository each training architecture loads by default.
TRAINING_BASE_MODELS: dict[str, str] = {
    "sd": "stable-diffusion-v1-5/stable-diffusion-v1-5",
    "sdxl": "stabilityai/stable-diffusion-xl-base-1.0",
    "flux": "black-forest-labs/FLUX.1-dev",
    "qwen-image": "Qwen/Qwen-Image",
    "qwen-image-edit": "Qwen/Qwen-Image-Edit-2509",
    "z-image": "Tongyi-MAI/Z-Image-Turbo",
}


def families_of_arch(arch: str) -> list[str]:
    """The family ids a training architecture's LoRA serves (flux → flux-dev, flux-schnell, …)."""
    return [family.id for family in FAMILIES.values() if family.arch == arch]


def get_family(family_id: str) -> ModelFamily:
    """The family called `family_id`; InvalidInput naming the known ones otherwise."""
    try:
        return FAMILIES[family_id]
    except KeyError:
        raise InvalidInput(f"unknown model family {family_id!r}: use one of {', '.join(FAMILIES)}") from None


def family_of_file(name: str) -> ModelFamily | None:
    """The family whose default diffusion model or checkpoint file is `name` (a path's file name counts)."""
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    for family in FAMILIES.values():
        if base in (family.loading.diffusion_model, family.loading.checkpoint):
            return family
    return None
