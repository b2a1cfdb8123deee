"""Local diffusers engine: the built-in `tiny` model, or any local SD-family folder/checkpoint, on CPU or CUDA.

Text-to-image, image-to-image and inpaint share one set of loaded components; LoRAs load per request with
their strengths and are unloaded afterwards. A request's control image (a pose skeleton) steers text-to-image
and image-to-image through a diffusers ControlNetModel: for the tiny model a random one built from the tiny
UNet (tiny_model.ensure_tiny_controlnet); for other models the folder given in `controlnets` per control type. The same seed gives the same pixels on the same machine.
"""

from __future__ import annotations

import io
import random
import threading
import time
from pathlib import Path
from typing import Any

from PIL import Image

from flenwheel.config import Settings
from flenwheel.errors import InvalidInput, MissingDependency
from flenwheel.images import decode_image, encode_png
from flenwheel.providers.base import (
    Cancelled,
    Capability,
    ControlImage,
    ControlType,
    GeneratedImage,
    GenerationRequest,
    GenerationResult,
    ImageToImage,
    Inpaint,
    ProviderContext,
    ProviderError,
    TextToImage,
)
from flenwheel.providers.tiny_model import TINY_MODEL_ID, ensure_tiny_controlnet, ensure_tiny_model

_LOCK = threading.Lock()  # one generation at a time per process: diffusers pipelines are not re-entrant


def _import_torch() -> Any:
    try:
        import torch
        from diffusers.utils import logging as diffusers_logging
        from huggingface_hub.utils import disable_progress_bars
        from transformers.utils import logging as transformers_logging
    except ImportError as exc:
        raise MissingDependency(f"torch / diffusers ({exc})", "local") from exc
    disable_progress_bars()  # flenwheel reports progress itself
    diffusers_logging.set_verbosity_error()
    diffusers_logging.disable_progress_bar()
    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()
    return torch


class LocalDiffusersProvider:
    """Runs Stable-Diffusion-family pipelines in this process."""

    id = "local"
    capabilities = frozenset(
        {
            Capability.TEXT_TO_IMAGE,
            Capability.IMAGE_TO_IMAGE,
            Capability.INPAINT,
            Capability.LORA,
            Capability.CONTROLNET,  # text-to-image and image-to-image
        }
    )
    allows_nsfw = True  # runs on the user's own machine
    paid = False  # no bill: nothing to reserve

    def __init__(
        self,
        model: str = TINY_MODEL_ID,
        device: str | None = None,
        cache_root: Path | None = None,
        controlnets: dict[ControlType, Path] | None = None,
    ) -> None:
        self.model = model
        self.device = device
        self.cache_root = cache_root
        self.controlnets = dict(controlnets or {})  # diffusers ControlNet folders for models other than tiny
        self._pipelines: dict[str, Any] = {}
        self._controlnets: dict[tuple[str, ControlType], Any] = {}
        self._load_lock = threading.Lock()
        self.loads = 0  # pipelines loaded from disk so far (one per model: the registry shares this engine)

    @classmethod
    def from_settings(cls, settings: Settings) -> LocalDiffusersProvider:
        return cls(cache_root=settings.cache_dir)

    def estimate_cost(self, request: GenerationRequest) -> float:
        return 0.0

    # -- loading -------------------------------------------------------------------------------------------
    def _model_source(self, model: str) -> Path:
        if model == TINY_MODEL_ID:
            return ensure_tiny_model(self.cache_root)
        path = Path(model).expanduser()
        if not path.exists():
            raise InvalidInput(
                f"model {model!r} not found: give 'tiny', a local diffusers folder or a .safetensors checkpoint"
            )
        return path

    def _base_pipeline(self, model: str) -> Any:
        """The model's pipeline, loaded once per model and device for the engine's (the process's) life."""
        with self._load_lock:
            if model not in self._pipelines:
                self._pipelines[model] = self._load(model)
                self.loads += 1
            return self._pipelines[model]

    def _load(self, model: str) -> Any:
        torch = _import_torch()
        from diffusers import StableDiffusionPipeline

        source = self._model_source(model)
        device = self.device or ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = torch.float16 if device == "cuda" else torch.float32
        try:
            if source.is_dir():
                pipeline = StableDiffusionPipeline.from_pretrained(
                    source, dtype=dtype, safety_checker=None, requires_safety_checker=False
                )
            else:
                pipeline = StableDiffusionPipeline.from_single_file(source, dtype=dtype)
        except (OSError, ValueError, KeyError) as exc:
            raise ProviderError(self.id, f"cannot load model {model!r}: {exc}", transient=False) from exc
        pipeline = pipeline.to(device)
        pipeline.set_progress_bar_config(disable=True)
        return pipeline

    def _controlnet(self, model: str, control: ControlImage, base: Any) -> Any:
        """The ControlNet for this model and control type, loaded once."""
        key = (model, control.type)
        with self._load_lock:
            if key not in self._controlnets:
                from diffusers import ControlNetModel

                if model == TINY_MODEL_ID and control.type == ControlType.POSE:
                    source = ensure_tiny_controlnet(self.cache_root)
                elif control.type in self.controlnets:
                    source = self.controlnets[control.type]
                else:
                    raise ProviderError(
                        self.id,
                        f"no {control.type.value} ControlNet for model {model!r}: give its diffusers folder "
                        "(LocalDiffusersProvider(controlnets=...)) or send the request without a control image",
                        transient=False,
                    )
                try:
                    loaded = ControlNetModel.from_pretrained(source, torch_dtype=base.unet.dtype)
                except (OSError, ValueError) as exc:
                    raise ProviderError(
                        self.id, f"cannot load ControlNet {source}: {exc}", transient=False
                    ) from exc
                self._controlnets[key] = loaded.to(base.device)
            return self._controlnets[key]

    def _pipeline_for(self, request: GenerationRequest, base: Any, model: str) -> Any:
        from diffusers import StableDiffusionImg2ImgPipeline, StableDiffusionInpaintPipeline

        control = getattr(request, "control", None)
        if control is not None:
            from diffusers import StableDiffusionControlNetImg2ImgPipeline, StableDiffusionControlNetPipeline

            if isinstance(request, Inpaint):
                raise ProviderError(
                    self.id,
                    "a control image steers text-to-image and image-to-image, not inpainting",
                    transient=False,
                )
            controlled: Any = (
                StableDiffusionControlNetImg2ImgPipeline
                if isinstance(request, ImageToImage)
                else StableDiffusionControlNetPipeline
            )
            components = {**base.components, "safety_checker": None, "feature_extractor": None}
            pipeline = controlled(
                **components, controlnet=self._controlnet(model, control, base), requires_safety_checker=False
            )
            pipeline.set_progress_bar_config(disable=True)
            return pipeline
        kind: Any = None
        if isinstance(request, ImageToImage):
            kind = StableDiffusionImg2ImgPipeline
        elif isinstance(request, Inpaint):
            kind = StableDiffusionInpaintPipeline
        if kind is None:
            return base
        components = {**base.components, "safety_checker": None, "feature_extractor": None}
        pipeline = kind(**components, requires_safety_checker=False)
        pipeline.set_progress_bar_config(disable=True)
        return pipeline

    # -- generation ----------------------------------------------------------------------------------------
    def generate(self, request: GenerationRequest, ctx: ProviderContext) -> GenerationResult:
        if not isinstance(request, TextToImage | ImageToImage | Inpaint):
            raise ProviderError(self.id, f"cannot do {request.kind}", transient=False)
        torch = _import_torch()
        model = request.model or self.model
        seed = request.seed if request.seed is not None else random.SystemRandom().randrange(2**32)
        started = time.perf_counter()
        with _LOCK:
            base = self._base_pipeline(model)
            pipeline = self._pipeline_for(request, base, model)
            adapters = self._load_loras(base, request)
            try:
                images = [
                    self._one(pipeline, request, (seed + index) % 2**32, index, ctx, torch)
                    for index in range(request.count)
                ]
            finally:
                if adapters:
                    base.unload_lora_weights()
        return GenerationResult(
            images=tuple(images),
            provider=self.id,
            model=model,
            cost_usd=0.0,
            engine_seconds=round(time.perf_counter() - started, 3),
        )

    def _load_loras(self, base: Any, request: GenerationRequest) -> list[str]:
        names = []
        for index, lora in enumerate(request.loras):
            path = Path(lora.path).expanduser()
            if not path.is_file():
                raise InvalidInput(f"LoRA file {lora.path!r} not found: give a local .safetensors path")
            name = f"lora{index}"
            try:
                base.load_lora_weights(str(path), adapter_name=name)
            except (ValueError, OSError, KeyError) as exc:
                base.unload_lora_weights()
                raise ProviderError(self.id, f"cannot load LoRA {lora.path}: {exc}", transient=False) from exc
            names.append(name)
        if names:
            base.set_adapters(names, adapter_weights=[lora.strength for lora in request.loras])
        return names

    def _one(
        self,
        pipeline: Any,
        request: GenerationRequest,
        seed: int,
        index: int,
        ctx: ProviderContext,
        torch: Any,
    ) -> GeneratedImage:
        assert isinstance(request, TextToImage | ImageToImage | Inpaint)
        generator = torch.Generator("cpu").manual_seed(seed)
        total = request.steps * request.count

        def on_step(pipe: Any, step: int, _timestep: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
            ctx.progress(index * request.steps + step + 1, total)
            if ctx.cancelled():
                pipe._interrupt = True
            return kwargs

        arguments: dict[str, Any] = {
            "prompt": request.prompt,
            "negative_prompt": request.negative or None,
            "num_inference_steps": request.steps,
            "guidance_scale": request.guidance,
            "generator": generator,
            "callback_on_step_end": on_step,
        }
        if isinstance(request, TextToImage):
            arguments.update(width=request.width, height=request.height)
        else:
            source = decode_image(request.image).image.resize((request.width, request.height))
            arguments.update(image=source, strength=request.strength)
        if request.control is not None:
            condition = decode_image(request.control.image).image.convert("RGB")
            condition = condition.resize((request.width, request.height))
            key = "control_image" if isinstance(request, ImageToImage) else "image"
            arguments.update({key: condition, "controlnet_conditioning_scale": request.control.strength})
            if isinstance(request, ImageToImage):
                arguments.update(width=request.width, height=request.height)
        if isinstance(request, Inpaint):  # every inpaint, steered or not, is drawn under its mask
            mask = Image.open(io.BytesIO(request.mask)).convert("L").resize(source.size)
            arguments.update(mask_image=mask, width=request.width, height=request.height)
        with torch.inference_mode():
            image = pipeline(**arguments).images[0]
        if ctx.cancelled():
            raise Cancelled(self.id)
        if isinstance(request, Inpaint):
            image = _keep_unmasked(source, image, mask)
        return GeneratedImage(data=encode_png(image), width=image.width, height=image.height, seed=seed)


def _keep_unmasked(original: Image.Image, generated: Image.Image, mask: Image.Image) -> Image.Image:
    """Inpainting changes only the white part of the mask; the rest is the original, pixel for pixel."""
    return Image.composite(
        generated.convert("RGB"), original.convert("RGB"), mask.point(lambda v: 255 if v > 127 else 0)
    )
