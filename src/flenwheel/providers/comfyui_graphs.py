"""ComfyUI API-format graphs built from a model family's data, and a check of any graph against /object_info.

`build_graph(family, kind, inputs)` writes the workflow a family needs for one request kind with the split
loaders (UNETLoader, CLIPLoader or DualCLIPLoader with the family's `clip_type`, VAELoader) and the family's
own nodes: ModelSamplingAuraFlow (Qwen-Image, Z-Image), FluxGuidance (FLUX's distilled guidance), ReferenceLatent
(FLUX Kontext edits), TextEncodeQwenImageEditPlus (Qwen-Image-Edit-2509, up to three reference images),
InpaintModelConditioning (FLUX Fill), ConditioningZeroOut (a CFG-1 family's unused negative). Node ids are
names, the same conventions as the checkpoint templates in workflows/ and a user's own workflows:

    model / clip / vae   the loaders (`checkpoint` for a one-file family)
    lora_0, lora_1, …    LoRAs in the order given (seed 002: the style LoRA first, then the character's)
    positive / negative  the prompts;  latent  the batch;  sampler  the KSampler;  save  the output
    image / mask         uploaded inputs;  reference, reference_1, …  reference images

`validate_graph(nodes, object_info)` checks a graph against the server's own node catalogue: every class
exists, every required input is given and no unknown one is, each link points at an existing node's output
whose type the input takes, numbers lie in range and choices (model files included) are among the server's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from flenwheel.families import ModelFamily

# LoadImage / LoadImageMask check their file themselves (VALIDATE_INPUTS): uploaded names are not in the list.
_SELF_CHECKED = {("LoadImage", "image"), ("LoadImageMask", "image")}
# Inputs naming model files: `check_files=False` skips them (a catalogue from a server without the weights).
FILE_INPUTS = frozenset(
    {"ckpt_name", "unet_name", "clip_name", "clip_name1", "clip_name2", "vae_name", "lora_name", "model_name"}
)


@dataclass
class GraphInputs:
    """What one request puts into a family's graph (uploaded file names, not bytes)."""

    prompt: str = ""
    negative: str = ""
    seed: int = 0
    steps: int = 20
    cfg: float = 1.0
    distilled_guidance: float | None = None
    sampler: str = "euler"
    scheduler: str = "simple"
    width: int = 1024
    height: int = 1024
    count: int = 1
    denoise: float = 1.0
    image: str | None = None  # LoadImage name of the image to edit
    mask: str | None = None  # LoadImageMask name (white = redraw)
    references: list[str] = field(default_factory=list)
    loras: list[tuple[str, float]] = field(default_factory=list)  # (server-side name, strength), in order
    diffusion_model: str | None = None
    text_encoders: tuple[str, ...] = ()
    vae: str | None = None


class GraphError(ValueError):
    """A family cannot build the requested graph (a kind it does not serve, a reference it lacks)."""


def build_graph(family: ModelFamily, kind: str, inputs: GraphInputs) -> dict[str, Any]:
    """The API-format graph (node id → {class_type, inputs}) of a split-loader family for one request kind.

    Raises GraphError when the family does not serve `kind` or the inputs lack what the kind needs."""
    if family.loading.kind != "split":
        raise GraphError(f"{family.id} loads from one checkpoint: it uses the templates in workflows/")
    if kind not in family.kinds:
        raise GraphError(f"{family.id} does not do {kind}; it does {', '.join(sorted(family.kinds))}")
    loading = family.loading
    encoders = inputs.text_encoders or loading.text_encoders
    nodes: dict[str, Any] = {
        "model": _node(
            "UNETLoader",
            unet_name=inputs.diffusion_model or loading.diffusion_model,
            weight_dtype=loading.weight_dtype,
        ),
        "vae": _node("VAELoader", vae_name=inputs.vae or loading.vae),
    }
    if len(encoders) == 2:
        nodes["clip"] = _node(
            "DualCLIPLoader", clip_name1=encoders[0], clip_name2=encoders[1], type=loading.clip_type
        )
    else:
        nodes["clip"] = _node("CLIPLoader", clip_name=encoders[0], type=loading.clip_type)
    model: list[Any] = ["model", 0]
    for index, (name, strength) in enumerate(inputs.loras):
        nodes[f"lora_{index}"] = _node(
            "LoraLoaderModelOnly", model=model, lora_name=name, strength_model=strength
        )
        model = [f"lora_{index}", 0]
    if family.shift is not None:
        nodes["sampling"] = _node("ModelSamplingAuraFlow", model=model, shift=family.shift)
        model = ["sampling", 0]

    images = _images(family, kind, inputs, nodes)
    positive, negative = _prompts(family, inputs, images, nodes)
    latent: list[Any]
    if kind == "inpaint":
        latent, positive, negative = _inpaint_latent(family, inputs, nodes, positive, negative)
    elif kind == "image_to_image":
        nodes["encode"] = _node("VAEEncode", pixels=["image_in", 0], vae=["vae", 0])
        if family.edit == "reference_latent":
            nodes["reference_latent"] = _node("ReferenceLatent", conditioning=positive, latent=["encode", 0])
            positive = ["reference_latent", 0]
        nodes["latent"] = _node("RepeatLatentBatch", samples=["encode", 0], amount=inputs.count)
        latent = ["latent", 0]
    else:  # text_to_image, identity_reference: a fresh latent (references condition it)
        if kind == "identity_reference" and family.edit == "reference_latent":
            nodes["reference_encode"] = _node("VAEEncode", pixels=[images[0], 0], vae=["vae", 0])
            nodes["reference_latent"] = _node(
                "ReferenceLatent", conditioning=positive, latent=["reference_encode", 0]
            )
            positive = ["reference_latent", 0]
        nodes["latent"] = _node(
            family.latent, width=inputs.width, height=inputs.height, batch_size=inputs.count
        )
        latent = ["latent", 0]
    if inputs.distilled_guidance is not None:
        nodes["guidance"] = _node("FluxGuidance", conditioning=positive, guidance=inputs.distilled_guidance)
        positive = ["guidance", 0]
    nodes["sampler"] = _node(
        "KSampler",
        model=model,
        seed=inputs.seed,
        steps=inputs.steps,
        cfg=inputs.cfg,
        sampler_name=inputs.sampler,
        scheduler=inputs.scheduler,
        positive=positive,
        negative=negative,
        latent_image=latent,
        denoise=inputs.denoise,
    )
    nodes["decode"] = _node("VAEDecode", samples=["sampler", 0], vae=["vae", 0])
    output: list[Any] = ["decode", 0]
    if kind == "inpaint":  # unmasked pixels stay exactly the original's
        nodes["originals"] = _node("RepeatImageBatch", image=["image_in", 0], amount=inputs.count)
        nodes["composite"] = _node(
            "ImageCompositeMasked",
            destination=["originals", 0],
            source=output,
            x=0,
            y=0,
            resize_source=False,
            mask=["mask", 0],
        )
        output = ["composite", 0]
    nodes["save"] = _node("SaveImage", filename_prefix=f"flenwheel/{family.id}/{kind}", images=output)
    return nodes


def _node(class_type: str, **inputs: Any) -> dict[str, Any]:
    return {"class_type": class_type, "inputs": inputs}


def _images(family: ModelFamily, kind: str, inputs: GraphInputs, nodes: dict[str, Any]) -> list[str]:
    """LoadImage nodes for the input image (`image`, scaled as `image_in`) and references; their node ids."""
    loaded: list[str] = []
    if kind in ("image_to_image", "inpaint"):
        if not inputs.image:
            raise GraphError(f"{kind} needs an input image")
        nodes["image"] = _node("LoadImage", image=inputs.image)
        if family.edit == "reference_latent" and kind == "image_to_image":
            nodes["image_in"] = _node("FluxKontextImageScale", image=["image", 0])
        else:
            nodes["image_in"] = _node(
                "ImageScale",
                image=["image", 0],
                upscale_method="lanczos",
                width=inputs.width,
                height=inputs.height,
                crop="center",
            )
        loaded.append("image_in")
    if kind == "inpaint":
        if not inputs.mask:
            raise GraphError("inpaint needs a mask")
        nodes["mask"] = _node("LoadImageMask", image=inputs.mask, channel="red")
    if kind == "identity_reference":
        if not inputs.references:
            raise GraphError("identity_reference needs at least one reference image")
        if len(inputs.references) > family.max_references:
            raise GraphError(
                f"{family.id} takes at most {family.max_references} reference image(s); "
                f"{len(inputs.references)} were given"
            )
        for index, name in enumerate(inputs.references):
            node_id = "reference" if index == 0 else f"reference_{index}"
            nodes[node_id] = _node("LoadImage", image=name)
            loaded.append(node_id)
    return loaded


def _prompts(
    family: ModelFamily, inputs: GraphInputs, images: list[str], nodes: dict[str, Any]
) -> tuple[list[Any], list[Any]]:
    if family.edit == "qwen_edit_plus" and images:
        pictures = {f"image{index + 1}": [node_id, 0] for index, node_id in enumerate(images[:3])}
        nodes["positive"] = _node(
            "TextEncodeQwenImageEditPlus", clip=["clip", 0], prompt=inputs.prompt, vae=["vae", 0], **pictures
        )
        nodes["negative"] = _node(
            "TextEncodeQwenImageEditPlus",
            clip=["clip", 0],
            prompt=inputs.negative,
            vae=["vae", 0],
            **pictures,
        )
        return ["positive", 0], ["negative", 0]
    nodes["positive"] = _node("CLIPTextEncode", text=inputs.prompt, clip=["clip", 0])
    if inputs.cfg > 1.0:
        nodes["negative"] = _node("CLIPTextEncode", text=inputs.negative, clip=["clip", 0])
    else:  # CFG 1 runs no unconditional pass: the negative is the zeroed positive, as ComfyUI's examples do
        nodes["negative"] = _node("ConditioningZeroOut", conditioning=["positive", 0])
    return ["positive", 0], ["negative", 0]


def _inpaint_latent(
    family: ModelFamily,
    inputs: GraphInputs,
    nodes: dict[str, Any],
    positive: list[Any],
    negative: list[Any],
) -> tuple[list[Any], list[Any], list[Any]]:
    if family.inpaint == "fill_conditioning":
        nodes["fill"] = _node(
            "InpaintModelConditioning",
            positive=positive,
            negative=negative,
            vae=["vae", 0],
            pixels=["image_in", 0],
            mask=["mask", 0],
            noise_mask=True,
        )
        nodes["latent"] = _node("RepeatLatentBatch", samples=["fill", 2], amount=inputs.count)
        return ["latent", 0], ["fill", 0], ["fill", 1]
    nodes["encode"] = _node("VAEEncode", pixels=["image_in", 0], vae=["vae", 0])
    nodes["masked"] = _node("SetLatentNoiseMask", samples=["encode", 0], mask=["mask", 0])
    nodes["latent"] = _node("RepeatLatentBatch", samples=["masked", 0], amount=inputs.count)
    return ["latent", 0], positive, negative


# --- validation against the server's own /object_info ------------------------------------------------------


def _spec_type(spec: Any) -> tuple[str, list[Any] | None, dict[str, Any]]:
    """(type name, choices or None, options) of one /object_info input spec: [TYPE, {opts}] or [[choices], {opts}]
    or ["COMBO", {"options": [...]}]."""
    head = spec[0] if isinstance(spec, list | tuple) and spec else spec
    options = (
        spec[1] if isinstance(spec, list | tuple) and len(spec) > 1 and isinstance(spec[1], dict) else {}
    )
    if isinstance(head, list):
        return "COMBO", head, options
    if head == "COMBO":
        return "COMBO", list(options.get("options", [])), options
    return str(head), None, options


def validate_graph(
    nodes: dict[str, Any], object_info: dict[str, Any], *, check_files: bool = True, name: str = "workflow"
) -> list[str]:
    """Every problem with `nodes` against the server's catalogue, each naming the node and input; [] if none.

    `object_info` is the server's GET /object_info. With `check_files=False` model-file choices (FILE_INPUTS)
    are not checked, for a graph meant for a server whose weights are not at hand."""
    problems: list[str] = []
    if not isinstance(nodes, dict) or not nodes:
        return [f"{name}: not an API-format workflow (an object of nodes): export it with 'Export (API)'"]
    for node_id, node in nodes.items():
        if not isinstance(node, dict) or "class_type" not in node or not isinstance(node.get("inputs"), dict):
            problems.append(f"{name}: node {node_id} is not {{class_type, inputs}} (is this the API format?)")
            continue
        class_type = node["class_type"]
        info = object_info.get(class_type)
        if info is None:
            problems.append(
                f"{name}: node {node_id}: class {class_type} is not on the server (a custom node not installed?)"
            )
            continue
        declared = info.get("input", {})
        required = declared.get("required", {}) or {}
        optional = declared.get("optional", {}) or {}
        hidden = declared.get("hidden", {}) or {}
        given = node["inputs"]
        for input_name in required:
            if input_name not in given:
                problems.append(f"{name}: node {node_id} ({class_type}) lacks required input {input_name}")
        for input_name, value in given.items():
            spec = required.get(input_name, optional.get(input_name))
            if spec is None:
                if input_name not in hidden:
                    problems.append(f"{name}: node {node_id} ({class_type}) has no input {input_name}")
                continue
            problems.extend(
                _check_value(
                    nodes, object_info, node_id, class_type, input_name, value, spec, check_files, name
                )
            )
    return problems


def _check_value(
    nodes: dict[str, Any],
    object_info: dict[str, Any],
    node_id: str,
    class_type: str,
    input_name: str,
    value: Any,
    spec: Any,
    check_files: bool,
    name: str,
) -> list[str]:
    where = f"{name}: node {node_id} ({class_type}) input {input_name}"
    kind, choices, options = _spec_type(spec)
    if isinstance(value, list) and len(value) == 2 and isinstance(value[1], int):
        source = nodes.get(str(value[0]))
        if not isinstance(source, dict):
            return [f"{where} links to node {value[0]}, which is not in the workflow"]
        outputs = (object_info.get(source.get("class_type", "")) or {}).get("output", [])
        if not outputs:
            return []  # the source's own class is reported missing already
        if not 0 <= value[1] < len(outputs):
            return [f"{where} takes output {value[1]} of node {value[0]}, which has {len(outputs)}"]
        produced = outputs[value[1]]
        produced_name = "COMBO" if isinstance(produced, list) else str(produced)
        accepted = {part.strip() for part in kind.split(",")}
        if "*" in accepted or produced_name == "*" or produced_name in accepted:
            return []
        return [f"{where} takes {kind} but node {value[0]} output {value[1]} is {produced_name}"]
    if choices is not None:
        if (class_type, input_name) in _SELF_CHECKED or (not check_files and input_name in FILE_INPUTS):
            return []
        if value not in choices:
            shown = ", ".join(map(str, choices[:12])) or "none"
            return [f"{where}: {value!r} is not one of the server's choices ({shown})"]
        return []
    if kind in ("INT", "FLOAT"):
        if isinstance(value, bool) or not isinstance(value, int | float):
            return [f"{where} must be a number, not {value!r}"]
        if ("min" in options and value < options["min"]) or ("max" in options and value > options["max"]):
            return [f"{where}: {value} is outside {options.get('min')}–{options.get('max')}"]
        if kind == "INT" and not float(value).is_integer():
            return [f"{where} must be a whole number, not {value!r}"]
    elif kind == "BOOLEAN" and not isinstance(value, bool):
        return [f"{where} must be true or false, not {value!r}"]
    elif kind == "STRING" and not isinstance(value, str):
        return [f"{where} must be text, not {value!r}"]
    return []
