"""fal and Replicate as a catalogue: each endpoint the seeds name, with its own input schema, capabilities,
NSFW policy and price source.

The endpoints differ in shape: FLUX dev takes `image_size` {width, height}, FLUX pro ultra and the official
Replicate FLUX models an `aspect_ratio`; an edit takes `image_url`, Seedream and Qwen-Image-Edit-Plus a list
`image_urls`; LoRAs are a list `loras` [{path, scale}] on fal and one `lora_weights` URL on Replicate. A
provider builds its generic arguments (fal.py, replicate.py) and `fit` turns them into the endpoint's own:
renamed, converted, dropped where the endpoint has no such input, and checked against the documented schema
(`Endpoint.input_schema`: every input the endpoint's API page lists, with its JSON type). `request.model` picks the
endpoint; one not in the catalogue is refused with the list of known ones unless it is written `raw:<id>`,
which sends the generic arguments unchanged and unchecked.

Schemas and prices as read on each endpoint's page (`source`) when this was written; fal bills image models
per output megapixel (rounded up) or per image, Replicate per image or per GPU-second. External services
are SFW-only here (`allows_nsfw = False` on both providers): their terms forbid sexual content and fal's
endpoints blank what their safety checker flags.
"""

from __future__ import annotations

import math
from typing import Any, Literal

from flenwheel.domain import Frozen
from flenwheel.errors import InvalidInput

Service = Literal["fal", "replicate"]
RAW_PREFIX = (
    "raw:"  # request.model = "raw:<endpoint>" sends the generic arguments to an uncatalogued endpoint
)
JsonType = Literal["string", "integer", "number", "boolean", "object", "array"]

FAL_ASPECT = {  # fal's ultra/kontext aspect_ratio enum
    "21:9",
    "16:9",
    "4:3",
    "3:2",
    "1:1",
    "2:3",
    "3:4",
    "9:16",
    "9:21",
}
REPLICATE_ASPECT = {"1:1", "16:9", "21:9", "3:2", "2:3", "4:5", "5:4", "3:4", "4:3", "9:16", "9:21"}


class Endpoint(Frozen):
    """One remote endpoint. `fields` maps flenwheel's generic argument names to the endpoint's own (absent:
    the endpoint has no such input and it is dropped); `schema` is its documented input schema."""

    service: Service
    id: str
    family: str | None  # families.py id where the weights are one of ours (z-image-turbo, flux-dev, …)
    label: str
    kinds: frozenset[
        str
    ]  # request kinds: text_to_image, image_to_image, inpaint, identity_reference, upscale
    size: Literal["image_size", "aspect_ratio", "width_height", "none"]
    fields: dict[str, str]
    input_schema: dict[str, JsonType]
    required: frozenset[str] = frozenset({"prompt"})
    images_as_list: bool = False  # the input image travels in a list (image_urls)
    max_loras: int = 0
    nsfw_policy: str = (
        "SFW only: the service's terms forbid sexual content; its safety checker blanks outputs"
    )
    source: str

    @property
    def ref(self) -> str:
        return f"{self.service}:{self.id}"


def _fal(id: str, **values: Any) -> Endpoint:
    return Endpoint.model_validate(
        {"service": "fal", "id": id, "source": f"https://fal.ai/models/{id}/api", **values}
    )


def _replicate(id: str, **values: Any) -> Endpoint:
    return Endpoint.model_validate(
        {"service": "replicate", "id": id, "source": f"https://replicate.com/{id}/api/schema", **values}
    )


_FAL_COMMON: dict[str, JsonType] = {
    "prompt": "string",
    "seed": "integer",
    "num_images": "integer",
    "enable_safety_checker": "boolean",
    "output_format": "string",
    "sync_mode": "boolean",
}
_FAL_FLUX = {
    **_FAL_COMMON,
    "image_size": "object",
    "num_inference_steps": "integer",
    "guidance_scale": "number",
}
_FAL_FIELDS = {
    "prompt": "prompt",
    "seed": "seed",
    "num_images": "num_images",
    "enable_safety_checker": "enable_safety_checker",
    "output_format": "output_format",
    "image_size": "image_size",
    "num_inference_steps": "num_inference_steps",
    "guidance_scale": "guidance_scale",
}
_REPLICATE_FLUX: dict[str, JsonType] = {
    "prompt": "string",
    "seed": "integer",
    "num_outputs": "integer",
    "aspect_ratio": "string",
    "output_format": "string",
    "megapixels": "string",
    "num_inference_steps": "integer",
    "guidance": "number",
    "disable_safety_checker": "boolean",
}
_REPLICATE_FIELDS = {
    "prompt": "prompt",
    "seed": "seed",
    "num_outputs": "num_outputs",
    "aspect_ratio": "aspect_ratio",
    "output_format": "output_format",
    "megapixels": "megapixels",
    "num_inference_steps": "num_inference_steps",
    "guidance": "guidance",
}
_T2I = frozenset({"text_to_image"})
_I2I = frozenset({"image_to_image"})

ENDPOINTS: tuple[Endpoint, ...] = (
    # --- fal: FLUX ----------------------------------------------------------------------------------------
    _fal(
        "fal-ai/flux/schnell",
        family="flux-schnell",
        label="FLUX.1 [schnell]",
        kinds=_T2I,
        size="image_size",
        fields={k: v for k, v in _FAL_FIELDS.items() if k != "guidance_scale"},
        input_schema={k: v for k, v in _FAL_FLUX.items() if k != "guidance_scale"},
    ),
    _fal(
        "fal-ai/flux/dev",
        family="flux-dev",
        label="FLUX.1 [dev]",
        kinds=_T2I,
        size="image_size",
        fields=_FAL_FIELDS,
        input_schema=_FAL_FLUX,
    ),
    _fal(
        "fal-ai/flux/dev/image-to-image",
        family="flux-dev",
        label="FLUX.1 [dev] image-to-image",
        kinds=_I2I,
        size="none",
        fields={
            **{k: v for k, v in _FAL_FIELDS.items() if k != "image_size"},
            "image_url": "image_url",
            "strength": "strength",
        },
        input_schema={
            **{k: v for k, v in _FAL_FLUX.items() if k != "image_size"},
            "image_url": "string",
            "strength": "number",
        },
        required=frozenset({"prompt", "image_url"}),
    ),
    _fal(
        "fal-ai/flux-lora",
        family="flux-dev",
        label="FLUX.1 [dev] + LoRAs",
        kinds=_T2I,
        size="image_size",
        fields={**_FAL_FIELDS, "loras": "loras"},
        input_schema={**_FAL_FLUX, "loras": "array"},
        max_loras=5,
    ),
    _fal(
        "fal-ai/flux-lora/image-to-image",
        family="flux-dev",
        label="FLUX.1 [dev] + LoRAs, image-to-image",
        kinds=_I2I,
        size="image_size",
        fields={**_FAL_FIELDS, "loras": "loras", "image_url": "image_url", "strength": "strength"},
        input_schema={**_FAL_FLUX, "loras": "array", "image_url": "string", "strength": "number"},
        required=frozenset({"prompt", "image_url"}),
        max_loras=5,
    ),
    _fal(
        "fal-ai/flux-lora/inpainting",
        family="flux-dev",
        label="FLUX.1 [dev] + LoRAs, inpainting",
        kinds=frozenset({"inpaint"}),
        size="image_size",
        fields={
            **_FAL_FIELDS,
            "loras": "loras",
            "image_url": "image_url",
            "mask_url": "mask_url",
            "strength": "strength",
        },
        input_schema={
            **_FAL_FLUX,
            "loras": "array",
            "image_url": "string",
            "mask_url": "string",
            "strength": "number",
        },
        required=frozenset({"prompt", "image_url", "mask_url"}),
        max_loras=5,
    ),
    _fal(
        "fal-ai/flux-pro/v1.1-ultra",
        family=None,
        label="FLUX1.1 [pro] ultra (seed 004's anchors)",
        kinds=_T2I,
        size="aspect_ratio",
        fields={
            k: v
            for k, v in _FAL_FIELDS.items()
            if k not in ("num_inference_steps", "guidance_scale", "image_size")
        }
        | {"aspect_ratio": "aspect_ratio"},
        input_schema={
            **_FAL_COMMON,
            "aspect_ratio": "string",
            "raw": "boolean",
            "safety_tolerance": "string",
        },
    ),
    _fal(
        "fal-ai/flux-kontext/dev",
        family="flux-kontext",
        label="FLUX.1 Kontext [dev] edit",
        kinds=_I2I,
        size="none",
        fields={k: v for k, v in _FAL_FIELDS.items() if k != "image_size"} | {"image_url": "image_url"},
        input_schema={
            **{k: v for k, v in _FAL_FLUX.items() if k != "image_size"},
            "image_url": "string",
            "resolution_mode": "string",
        },
        required=frozenset({"prompt", "image_url"}),
    ),
    _fal(
        "fal-ai/flux-pulid",
        family=None,
        label="FLUX PuLID (identity from one reference)",
        kinds=frozenset({"identity_reference"}),
        size="image_size",
        fields={k: v for k, v in _FAL_FIELDS.items() if k != "num_images"}
        | {
            "reference_image_url": "reference_image_url",
            "id_weight": "id_weight",
            "negative_prompt": "negative_prompt",
        },
        input_schema={
            **{k: v for k, v in _FAL_FLUX.items() if k != "num_images"},
            "reference_image_url": "string",
            "id_weight": "number",
            "negative_prompt": "string",
        },
        required=frozenset({"prompt", "reference_image_url"}),
    ),
    # --- fal: Seedream, Qwen, Z-Image -----------------------------------------------------------------------
    _fal(
        "fal-ai/bytedance/seedream/v4/text-to-image",
        family=None,
        label="Seedream 4.0",
        kinds=_T2I,
        size="image_size",
        fields={
            k: _FAL_FIELDS[k] for k in ("prompt", "seed", "num_images", "enable_safety_checker", "image_size")
        },
        input_schema={
            **{
                k: _FAL_COMMON[k]
                for k in ("prompt", "seed", "num_images", "enable_safety_checker", "sync_mode")
            },
            "image_size": "object",
            "max_images": "integer",
        },
    ),
    _fal(
        "fal-ai/bytedance/seedream/v4/edit",
        family=None,
        label="Seedream 4.0 edit (up to 10 references)",
        kinds=frozenset({"image_to_image", "identity_reference"}),
        size="image_size",
        fields={
            k: _FAL_FIELDS[k] for k in ("prompt", "seed", "num_images", "enable_safety_checker", "image_size")
        }
        | {"image_url": "image_urls", "reference_image_url": "image_urls"},
        input_schema={
            **{
                k: _FAL_COMMON[k]
                for k in ("prompt", "seed", "num_images", "enable_safety_checker", "sync_mode")
            },
            "image_size": "object",
            "image_urls": "array",
            "max_images": "integer",
        },
        required=frozenset({"prompt", "image_urls"}),
        images_as_list=True,
    ),
    _fal(
        "fal-ai/qwen-image",
        family="qwen-image",
        label="Qwen-Image",
        kinds=_T2I,
        size="image_size",
        fields={**_FAL_FIELDS, "loras": "loras", "negative_prompt": "negative_prompt"},
        input_schema={**_FAL_FLUX, "loras": "array", "negative_prompt": "string", "acceleration": "string"},
        max_loras=3,
    ),
    _fal(
        "fal-ai/qwen-image-edit-plus",
        family="qwen-image-edit-2509",
        label="Qwen-Image-Edit-2509 (Plus)",
        kinds=frozenset({"image_to_image", "identity_reference"}),
        size="image_size",
        fields={
            **_FAL_FIELDS,
            "image_url": "image_urls",
            "reference_image_url": "image_urls",
            "negative_prompt": "negative_prompt",
        },
        input_schema={
            **_FAL_FLUX,
            "image_urls": "array",
            "negative_prompt": "string",
            "acceleration": "string",
        },
        required=frozenset({"prompt", "image_urls"}),
        images_as_list=True,
    ),
    _fal(
        "fal-ai/qwen-image-edit-plus-lora",
        family="qwen-image-edit-2509",
        label="Qwen-Image-Edit-2509 + LoRAs (dx8152 multiple angles, a character LoRA)",
        kinds=frozenset({"image_to_image", "identity_reference"}),
        size="image_size",
        fields={
            **_FAL_FIELDS,
            "image_url": "image_urls",
            "reference_image_url": "image_urls",
            "negative_prompt": "negative_prompt",
            "loras": "loras",
        },
        input_schema={
            **_FAL_FLUX,
            "image_urls": "array",
            "negative_prompt": "string",
            "loras": "array",
            "acceleration": "string",
        },
        required=frozenset({"prompt", "image_urls"}),
        images_as_list=True,
        max_loras=3,
    ),
    _fal(
        "fal-ai/z-image/turbo",
        family="z-image-turbo",
        label="Z-Image Turbo",
        kinds=_T2I,
        size="image_size",
        fields={k: v for k, v in _FAL_FIELDS.items() if k != "guidance_scale"},
        input_schema={
            **{k: v for k, v in _FAL_FLUX.items() if k != "guidance_scale"},
            "acceleration": "string",
            "enable_prompt_expansion": "boolean",
        },
    ),
    _fal(
        "fal-ai/z-image/turbo/lora",
        family="z-image-turbo",
        label="Z-Image Turbo + LoRAs",
        kinds=_T2I,
        size="image_size",
        fields={k: v for k, v in _FAL_FIELDS.items() if k != "guidance_scale"} | {"loras": "loras"},
        input_schema={
            **{k: v for k, v in _FAL_FLUX.items() if k != "guidance_scale"},
            "loras": "array",
            "acceleration": "string",
        },
        max_loras=3,
    ),
    _fal(
        "fal-ai/esrgan",
        family=None,
        label="Real-ESRGAN upscale",
        kinds=frozenset({"upscale"}),
        size="none",
        fields={
            "image_url": "image_url",
            "scale": "scale",
            "model": "model",
            "output_format": "output_format",
        },
        input_schema={
            "image_url": "string",
            "scale": "number",
            "model": "string",
            "output_format": "string",
            "face": "boolean",
            "tile": "integer",
        },
        required=frozenset({"image_url"}),
        nsfw_policy="SFW only: fal's terms forbid sexual content (no safety checker on this endpoint)",
    ),
    # --- Replicate ----------------------------------------------------------------------------------------
    _replicate(
        "black-forest-labs/flux-schnell",
        family="flux-schnell",
        label="FLUX.1 [schnell]",
        kinds=_T2I,
        size="aspect_ratio",
        fields={k: v for k, v in _REPLICATE_FIELDS.items() if k != "guidance"},
        input_schema={k: v for k, v in _REPLICATE_FLUX.items() if k != "guidance"} | {"go_fast": "boolean"},
    ),
    _replicate(
        "black-forest-labs/flux-dev",
        family="flux-dev",
        label="FLUX.1 [dev]",
        kinds=frozenset({"text_to_image", "image_to_image"}),
        size="aspect_ratio",
        fields={**_REPLICATE_FIELDS, "image": "image", "prompt_strength": "prompt_strength"},
        input_schema={
            **_REPLICATE_FLUX,
            "image": "string",
            "prompt_strength": "number",
            "go_fast": "boolean",
        },
    ),
    _replicate(
        "black-forest-labs/flux-dev-lora",
        family="flux-dev",
        label="FLUX.1 [dev] + one LoRA",
        kinds=frozenset({"text_to_image", "image_to_image"}),
        size="aspect_ratio",
        fields={
            **_REPLICATE_FIELDS,
            "image": "image",
            "prompt_strength": "prompt_strength",
            "lora_weights": "lora_weights",
            "lora_scale": "lora_scale",
        },
        input_schema={
            **_REPLICATE_FLUX,
            "image": "string",
            "prompt_strength": "number",
            "lora_weights": "string",
            "lora_scale": "number",
            "go_fast": "boolean",
        },
        max_loras=1,
    ),
    _replicate(
        "black-forest-labs/flux-fill-dev",
        family="flux-fill",
        label="FLUX.1 Fill [dev] inpainting",
        kinds=frozenset({"inpaint"}),
        size="none",
        fields={k: v for k, v in _REPLICATE_FIELDS.items() if k not in ("aspect_ratio",)}
        | {"image": "image", "mask": "mask", "lora_weights": "lora_weights", "lora_scale": "lora_scale"},
        input_schema={
            **{k: v for k, v in _REPLICATE_FLUX.items() if k != "aspect_ratio"},
            "image": "string",
            "mask": "string",
            "lora_weights": "string",
            "lora_scale": "number",
        },
        required=frozenset({"prompt", "image", "mask"}),
        max_loras=1,
    ),
    _replicate(
        "black-forest-labs/flux-1.1-pro-ultra",
        family=None,
        label="FLUX1.1 [pro] ultra",
        kinds=_T2I,
        size="aspect_ratio",
        fields={k: _REPLICATE_FIELDS[k] for k in ("prompt", "seed", "aspect_ratio", "output_format")},
        input_schema={
            "prompt": "string",
            "seed": "integer",
            "aspect_ratio": "string",
            "output_format": "string",
            "raw": "boolean",
            "safety_tolerance": "integer",
            "image_prompt": "string",
            "image_prompt_strength": "number",
        },
    ),
    _replicate(
        "black-forest-labs/flux-kontext-pro",
        family=None,
        label="FLUX.1 Kontext [pro] edit",
        kinds=_I2I,
        size="aspect_ratio",
        fields={
            "prompt": "prompt",
            "seed": "seed",
            "aspect_ratio": "aspect_ratio",
            "output_format": "output_format",
            "image": "input_image",
        },
        input_schema={
            "prompt": "string",
            "seed": "integer",
            "aspect_ratio": "string",
            "output_format": "string",
            "input_image": "string",
            "safety_tolerance": "integer",
            "prompt_upsampling": "boolean",
        },
        required=frozenset({"prompt", "input_image"}),
    ),
    _replicate(
        "bytedance/seedream-4",
        family=None,
        label="Seedream 4.0 (text and multi-reference edit)",
        kinds=frozenset({"text_to_image", "image_to_image", "identity_reference"}),
        size="aspect_ratio",
        fields={
            "prompt": "prompt",
            "aspect_ratio": "aspect_ratio",
            "image": "image_input",
            "main_face_image": "image_input",
            "num_outputs": "max_images",
        },
        input_schema={
            "prompt": "string",
            "aspect_ratio": "string",
            "image_input": "array",
            "max_images": "integer",
            "size": "string",
            "width": "integer",
            "height": "integer",
            "sequential_image_generation": "string",
        },
        images_as_list=True,
    ),
    _replicate(
        "qwen/qwen-image-edit-plus",
        family="qwen-image-edit-2509",
        label="Qwen-Image-Edit-2509 (Plus)",
        kinds=frozenset({"image_to_image", "identity_reference"}),
        size="aspect_ratio",
        fields={
            "prompt": "prompt",
            "seed": "seed",
            "aspect_ratio": "aspect_ratio",
            "output_format": "output_format",
            "image": "image",
            "main_face_image": "image",
        },
        input_schema={
            "prompt": "string",
            "seed": "integer",
            "aspect_ratio": "string",
            "output_format": "string",
            "image": "array",
            "go_fast": "boolean",
            "output_quality": "integer",
            "disable_safety_checker": "boolean",
        },
        required=frozenset({"prompt", "image"}),
        images_as_list=True,
    ),
    _replicate(
        "prunaai/z-image-turbo",
        family="z-image-turbo",
        label="Z-Image Turbo",
        kinds=_T2I,
        size="width_height",
        fields={
            "prompt": "prompt",
            "seed": "seed",
            "num_inference_steps": "num_inference_steps",
            "output_format": "output_format",
            "width": "width",
            "height": "height",
            "guidance": "guidance_scale",
        },
        input_schema={
            "prompt": "string",
            "seed": "integer",
            "num_inference_steps": "integer",
            "output_format": "string",
            "width": "integer",
            "height": "integer",
            "guidance_scale": "number",
            "output_quality": "integer",
        },
    ),
    _replicate(
        "bytedance/flux-pulid",
        family=None,
        label="FLUX PuLID",
        kinds=frozenset({"identity_reference"}),
        size="width_height",
        fields={
            k: k
            for k in (
                "prompt",
                "main_face_image",
                "width",
                "height",
                "num_steps",
                "guidance_scale",
                "id_weight",
                "num_outputs",
                "output_format",
                "negative_prompt",
                "seed",
            )
        },
        input_schema={
            "prompt": "string",
            "main_face_image": "string",
            "width": "integer",
            "height": "integer",
            "num_steps": "integer",
            "guidance_scale": "number",
            "id_weight": "number",
            "num_outputs": "integer",
            "output_format": "string",
            "negative_prompt": "string",
            "seed": "integer",
            "start_step": "integer",
            "true_cfg": "number",
        },
        required=frozenset({"prompt", "main_face_image"}),
    ),
    _replicate(
        "nightmareai/real-esrgan",
        family=None,
        label="Real-ESRGAN upscale",
        kinds=frozenset({"upscale"}),
        size="none",
        fields={"image": "image", "scale": "scale", "face_enhance": "face_enhance"},
        input_schema={"image": "string", "scale": "number", "face_enhance": "boolean"},
        required=frozenset({"image"}),
        nsfw_policy="SFW only: Replicate's terms forbid sexual content (no safety checker on this model)",
    ),
)
CATALOGUE: dict[tuple[str, str], Endpoint] = {(e.service, e.id): e for e in ENDPOINTS}


def endpoint(service: Service, model: str) -> Endpoint | None:
    """The catalogue entry for `model` on `service` (a Replicate `owner/name:version` counts as owner/name);
    None for `raw:<id>`; InvalidInput naming the known endpoints for anything else."""
    if model.startswith(RAW_PREFIX):
        return None
    found = CATALOGUE.get((service, model.split(":")[0]))
    if found is None:
        known = ", ".join(e.id for e in ENDPOINTS if e.service == service)
        raise InvalidInput(
            f"{model} is not in flenwheel's {service} catalogue, so its inputs are unknown: use one of {known}, "
            f"or send it the generic inputs unchecked with model '{RAW_PREFIX}{model}'"
        )
    return found


def raw_id(model: str) -> str:
    return model.removeprefix(RAW_PREFIX)


def nearest_aspect(width: int, height: int, allowed: set[str]) -> str:
    """The aspect ratio in `allowed` nearest to width:height (on a log scale)."""

    def distance(ratio: str) -> float:
        across, down = (int(part) for part in ratio.split(":"))
        return abs(math.log(width / height) - math.log(across / down))

    return min(sorted(allowed), key=distance)


_JSON_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "object": (dict,),
    "array": (list, tuple),
}


def fit(entry: Endpoint, arguments: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """The generic `arguments` in the endpoint's own shape, and the names it dropped (inputs it lacks).

    Generic names: fal's (image_size {width, height}, image_url, reference_image_url, mask_url, loras…) or
    Replicate's (aspect_ratio, width/height, image, main_face_image, lora_weights…), as fal.py / replicate.py
    write them. Raises InvalidInput when the result breaks the endpoint's documented schema."""
    shaped: dict[str, Any] = {}
    dropped: list[str] = []
    width, height = _size_of(arguments)
    for name, value in arguments.items():
        target = entry.fields.get(name)
        if name in ("image_size", "aspect_ratio", "width", "height", "megapixels") and target is None:
            continue  # the size travels in the endpoint's own way below
        if target is None:
            if name in _ESSENTIAL:
                raise InvalidInput(
                    f"{entry.id} has no input for {name}: pick an endpoint that takes it (see the catalogue)"
                )
            dropped.append(name)
            continue
        if entry.images_as_list and target in ("image_urls", "image", "image_input") and name != "mask":
            shaped.setdefault(target, []).append(value)
            continue
        shaped[target] = value
    if width and height:
        if entry.size == "image_size":
            shaped["image_size"] = {"width": width, "height": height}
        elif entry.size == "aspect_ratio":
            shaped["aspect_ratio"] = nearest_aspect(
                width, height, FAL_ASPECT if entry.service == "fal" else REPLICATE_ASPECT
            )
        elif entry.size == "width_height":
            shaped["width"], shaped["height"] = width, height
    if "loras" in shaped and len(shaped["loras"]) > entry.max_loras:
        raise InvalidInput(
            f"{entry.id} takes at most {entry.max_loras} LoRA(s); {len(shaped['loras'])} given"
        )
    problems = check_schema(entry, shaped)
    if problems:
        raise InvalidInput(f"{entry.id}: " + "; ".join(problems))
    return shaped, dropped


def _size_of(arguments: dict[str, Any]) -> tuple[int | None, int | None]:
    size = arguments.get("image_size")
    if isinstance(size, dict):
        return int(size["width"]), int(size["height"])
    if "width" in arguments and "height" in arguments:
        return int(arguments["width"]), int(arguments["height"])
    return None, None


def check_schema(entry: Endpoint, payload: dict[str, Any]) -> list[str]:
    """Each way `payload` breaks the endpoint's documented input schema: an unknown input, a wrong JSON type,
    a missing required input."""
    problems = [f"it has no input {name!r}" for name in payload if name not in entry.input_schema]
    for name, value in payload.items():
        expected = entry.input_schema.get(name)
        if expected is None:
            continue
        types = _JSON_TYPES[expected]
        if (isinstance(value, bool) and expected != "boolean") or not isinstance(value, types):
            problems.append(f"input {name!r} must be a JSON {expected}, not {type(value).__name__}")
    problems.extend(f"input {name!r} is required" for name in sorted(entry.required) if name not in payload)
    return problems


_ESSENTIAL = frozenset(
    {
        "loras",
        "lora_weights",
        "image_url",
        "mask_url",
        "reference_image_url",
        "image",
        "mask",
        "main_face_image",
    }
)


def for_family(service: Service, family: str, kind: str, loras: int) -> Endpoint:
    """The endpoint that runs model family `family` for a request kind (one taking LoRAs when there are any);
    InvalidInput naming what the service offers for the family otherwise."""
    offered = [e for e in ENDPOINTS if e.service == service and e.family == family]
    fitting = [e for e in offered if kind in e.kinds and e.max_loras >= loras]
    if not fitting:
        shown = "; ".join(f"{e.id} ({', '.join(sorted(e.kinds))})" for e in offered) or "nothing"
        raise InvalidInput(
            f"{service} has no {family} endpoint for {kind}{' with LoRAs' if loras else ''}: it offers {shown}"
        )
    return min(fitting, key=lambda e: e.max_loras)  # the plain endpoint when no LoRA is asked for


def refuse_kind(entry: Endpoint, kind: str) -> None:
    if kind not in entry.kinds:
        raise InvalidInput(f"{entry.id} does not do {kind}; it does {', '.join(sorted(entry.kinds))}")


def apply_tier(entry: Endpoint, payload: dict[str, Any], tier: str | None) -> dict[str, Any]:
    """The payload with the steps and guidance of the endpoint's model family for a studio `tier`, where the
    endpoint takes them (Z-Image Turbo draft: 8 steps; FLUX dev: guidance 3.5); unchanged without a tier."""
    from flenwheel.families import FAMILIES

    if tier is None or entry.family not in FAMILIES:
        return payload
    sampling = FAMILIES[entry.family].sampling(tier)
    guidance = sampling.distilled_guidance if sampling.distilled_guidance is not None else sampling.cfg
    updated = dict(payload)
    for name, value in (
        ("num_inference_steps", sampling.steps),
        ("guidance_scale", guidance),
        ("guidance", guidance),
    ):
        if name in updated:
            updated[name] = value
    return updated
