"""ComfyUI: runs API-format workflows (providers/workflows/*.json) on a ComfyUI server the user runs.

One request travels like this. Input images are uploaded (POST /upload/image, content-addressed names, so
a retry uploads nothing new); the request's workflow template is filled in; and it is queued (POST /prompt)
under a prompt_id that *we* choose and persist through `ctx.remember_remote_id` first. ComfyUI takes a
client-supplied prompt_id as it is (server.py, post_prompt) but does not refuse one it already has, so a
retry first looks the id up in /history and /queue and queues nothing when the server knows it. Progress
comes over the WebSocket (/ws?clientId=<prompt_id>: the server sends a prompt's messages only to the client
id it was queued with, so a resumed attempt gets them too), the images from /view, and the engine's own
execution time from the history's status timestamps. Cancelling removes the prompt from the queue and
interrupts it if it is running.

Models are files in the server's models folders, named relative to them. With `models_dir` (the server's
models folder, reachable from here: a local server's `--base-directory`/models, or a shared mount) a
LoraRef's file — or a checkpoint given as a path — is placed there once, under a content-addressed name in a
`flenwheel/` subfolder, before the prompt names it. Without `models_dir`, LoRAs must already be in the
server's loras folder under their own file names.
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import os
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flenwheel.errors import ImageRejected
from flenwheel.families import FAMILIES, ModelFamily, family_of_file, get_family
from flenwheel.images import decode_image, encode_png
from flenwheel.providers.base import (
    Capability,
    ControlType,
    GeneratedImage,
    GenerationRequest,
    GenerationResult,
    IdentityReference,
    ImageToImage,
    Inpaint,
    ProviderContext,
    ProviderError,
    TextToImage,
    Upscale,
)
from flenwheel.providers.comfyui_client import (
    PROVIDER_ID,
    STAGING_FOLDER,
    ComfyUIClient,
    comfy_error,
)
from flenwheel.providers.comfyui_graphs import GraphError, GraphInputs, build_graph, validate_graph
from flenwheel.providers.pricing import PriceTable

if TYPE_CHECKING:
    from flenwheel.config import Settings

WORKFLOWS_DIR = Path(__file__).with_name("workflows")


@dataclass
class _Workflow:
    """A filled-in copy of one template; nodes are addressed by their ids ("sampler", "checkpoint", …)."""

    name: str
    nodes: dict[str, Any]

    def set(self, node_id: str, field: str, value: Any) -> None:
        node = self.nodes.get(node_id)
        if node is None:
            raise comfy_error(
                f"workflow {self.name}.json has no node {node_id!r}: restore it or add the node"
            )
        node["inputs"][field] = value

    def add_loras(self, names: list[tuple[str, float]]) -> None:
        """Chain LoraLoader nodes after the checkpoint and point its MODEL/CLIP consumers at the last one,
        in the order given (seed 002: a style LoRA first, then the character's). A split-loader workflow
        (a `model` UNETLoader node) gets LoraLoaderModelOnly nodes after `model` instead."""
        if names and "checkpoint" not in self.nodes and "model" in self.nodes:
            self._add_model_loras(names)
            return
        if names and "checkpoint" not in self.nodes:
            raise comfy_error(f"LoRAs do not apply to the {self.name} workflow", transient=False)
        source = "checkpoint"
        chain = []
        for index, (name, strength) in enumerate(names):
            node_id = f"lora_{index}"
            chain.append(node_id)
            self.nodes[node_id] = {
                "class_type": "LoraLoader",
                "inputs": {
                    "model": [source, 0],
                    "clip": [source, 1],
                    "lora_name": name,
                    "strength_model": strength,
                    "strength_clip": strength,
                },
            }
            source = node_id
        if source == "checkpoint":
            return
        for node_id, node in self.nodes.items():
            if node_id in chain:
                continue
            for field, value in node["inputs"].items():
                if (
                    isinstance(value, list)
                    and len(value) == 2
                    and value[0] == "checkpoint"
                    and value[1] in (0, 1)
                ):
                    node["inputs"][field] = [source, value[1]]

    def add_control(self, controlnet: str, image: str, strength: float) -> None:
        """Steer the sampler with a ControlNet: LoadImage (`image`, an uploaded name) → ControlNetLoader
        (`controlnet`, a name in the server's controlnet folder) → ControlNetApplyAdvanced on the sampler's
        positive and negative conditioning, over the whole schedule, at `strength`."""
        sampler = self.nodes.get("sampler")
        if sampler is None or "positive" not in sampler["inputs"]:
            raise comfy_error(
                f"a control image needs the {self.name} workflow's KSampler `sampler`", transient=False
            )
        self.nodes["control_image"] = {"class_type": "LoadImage", "inputs": {"image": image}}
        self.nodes["controlnet"] = {
            "class_type": "ControlNetLoader",
            "inputs": {"control_net_name": controlnet},
        }
        self.nodes["control"] = {
            "class_type": "ControlNetApplyAdvanced",
            "inputs": {
                "positive": sampler["inputs"]["positive"],
                "negative": sampler["inputs"]["negative"],
                "control_net": ["controlnet", 0],
                "image": ["control_image", 0],
                "strength": strength,
                "start_percent": 0.0,
                "end_percent": 1.0,
            },
        }
        sampler["inputs"]["positive"] = ["control", 0]
        sampler["inputs"]["negative"] = ["control", 1]

    def _add_model_loras(self, names: list[tuple[str, float]]) -> None:
        source = "model"
        chain = []
        for index, (name, strength) in enumerate(names):
            node_id = f"lora_{index}"
            chain.append(node_id)
            self.nodes[node_id] = {
                "class_type": "LoraLoaderModelOnly",
                "inputs": {"model": [source, 0], "lora_name": name, "strength_model": strength},
            }
            source = node_id
        for node_id, node in self.nodes.items():
            if node_id in chain:
                continue
            for field, value in node["inputs"].items():
                if isinstance(value, list) and value == ["model", 0]:
                    node["inputs"][field] = [source, 0]


# Node ids a user's workflow must keep so that flenwheel can fill it in, per request kind.
REQUIRED_NODES: dict[str, tuple[str, ...]] = {
    "text_to_image": ("positive", "sampler", "latent"),
    "image_to_image": ("positive", "sampler", "image"),
    "inpaint": ("positive", "sampler", "image", "mask"),
    "identity_reference": ("positive", "sampler", "reference"),
}


def check_user_workflow(path: Path, nodes: Any, kind: str, object_info: dict[str, Any]) -> None:
    """A user's API-format workflow checked against the node-id conventions and the server's /object_info.

    Raises ProviderError (permanent) naming every missing node, class or input."""
    problems = validate_graph(nodes, object_info, name=str(path))
    if isinstance(nodes, dict):
        missing = [node_id for node_id in REQUIRED_NODES.get(kind, ()) if node_id not in nodes]
        if missing:
            problems.insert(
                0,
                f"{path}: a {kind} workflow needs the node id(s) {', '.join(missing)} (rename your nodes' ids "
                "in the API-format JSON: flenwheel fills them in by id)",
            )
        if "model" not in nodes and "checkpoint" not in nodes:
            problems.append(f"{path}: name the model loader node `model` (UNETLoader) or `checkpoint`")
    if problems:
        raise comfy_error("your workflow does not fit this server: " + "; ".join(problems), transient=False)


class ComfyUIProvider:
    """Image generation on the user's own ComfyUI server (text, image-to-image, inpaint, upscale, identity)."""

    id = PROVIDER_ID
    allows_nsfw = True  # the user's own server: nothing leaves machines they control
    paid = False  # the user's own server: no bill, no reservation
    capabilities = frozenset(
        {
            Capability.TEXT_TO_IMAGE,
            Capability.IMAGE_TO_IMAGE,
            Capability.INPAINT,
            Capability.UPSCALE,
            Capability.IDENTITY_REFERENCE,  # needs ComfyUI_IPAdapter_plus on the server (workflows/README.md)
            Capability.LORA,
        }
    )

    def __init__(
        self,
        url: str,
        *,
        models_dir: Path | None = None,
        checkpoint: str | None = None,
        upscale_model: str | None = None,
        workflows_dir: Path | None = None,
        prices: PriceTable | None = None,
        timeout_s: float = 3600.0,
        family: str | None = None,
        user_workflows_dir: Path | None = None,
        controlnets: dict[ControlType, str] | None = None,
    ) -> None:
        self.client = ComfyUIClient(url, timeout_s=timeout_s)
        self.models_dir = models_dir
        self.checkpoint = checkpoint
        self.upscale_model = upscale_model
        self.workflows_dir = workflows_dir or WORKFLOWS_DIR
        # The family a request without a `model` runs on (FLENWHEEL_COMFYUI_FAMILY); None: sd15's checkpoint.
        self.family = get_family(family) if family else None
        # The user's own API-format workflows: <dir>/<family id>/<request kind>.json, checked on load.
        self.user_workflows_dir = user_workflows_dir
        # ControlNet per control type: a name in the server's controlnet folder, or a local file placed there
        self.controlnets = dict(controlnets or {})
        if self.controlnets:  # this engine takes a control image only when it has a ControlNet to apply it
            self.capabilities = ComfyUIProvider.capabilities | {Capability.CONTROLNET}
        self._object_info: dict[str, Any] | None = None
        self.prices = prices or PriceTable.load()
        self._hashes: dict[tuple[str, int, int], str] = {}

    @classmethod
    def from_settings(cls, settings: Settings) -> ComfyUIProvider | None:
        """The provider for `settings.comfyui_url`, or None when no server is configured."""
        if not settings.comfyui_url:
            return None
        return cls(
            settings.comfyui_url,
            models_dir=settings.comfyui_models_dir,
            checkpoint=settings.comfyui_checkpoint,
            upscale_model=settings.comfyui_upscale_model,
            prices=PriceTable.load(settings.prices),
            family=settings.comfyui_family,
            user_workflows_dir=settings.comfyui_workflows_dir or settings.project / "workflows",
            controlnets=(
                {ControlType.POSE: settings.comfyui_controlnet_pose}
                if settings.comfyui_controlnet_pose
                else None
            ),
        )

    def estimate_cost(self, request: GenerationRequest) -> float:
        width, height = getattr(request, "width", 512), getattr(request, "height", 512)
        return self.prices.price(self.id, request.model or "*").cost(request.count, width, height)

    def generate(self, request: GenerationRequest, ctx: ProviderContext) -> GenerationResult:
        prompt_id = ctx.known_remote_id() or str(uuid.uuid4())
        # A seed we pick is derived from the prompt id, so a resumed attempt records the seed that ran.
        seed = request.seed if request.seed is not None else _seed_from(prompt_id)
        workflow, model = self.workflow(request, seed)
        run = self.client.run(workflow.nodes, ctx, prompt_id)
        images = []
        for data in run.images:
            width, height = _png_size(data)
            images.append(
                GeneratedImage(
                    data=data,
                    width=width,
                    height=height,
                    seed=None if isinstance(request, Upscale) else seed,  # a batch shares one seed
                )
            )
        return GenerationResult(
            images=tuple(images),
            provider=self.id,
            model=model,
            cost_usd=self.estimate_cost(request),
            remote_id=run.prompt_id,
            engine_seconds=run.engine_seconds,
        )

    def workflow(self, request: GenerationRequest, seed: int) -> tuple[_Workflow, str]:
        """The filled-in workflow for a request, and the model it names. Uploads inputs and places files."""
        workflow = self._template(request.kind)
        if isinstance(request, Upscale):
            model = self._model_name(request.model, "upscale_models", self.upscale_model)
            source = _prepared(request.image)
            workflow.set("image", "image", self.client.upload_image(encode_png(source)))
            workflow.set("upscale_model", "model_name", model)
            workflow.set("resize", "width", source.width * request.factor)
            workflow.set("resize", "height", source.height * request.factor)
            workflow.add_loras([(self._place(lora.path, "loras"), lora.strength) for lora in request.loras])
            return workflow, model
        family, file = self.family_for(request.model)
        control = getattr(request, "control", None)
        if control is not None and not isinstance(request, TextToImage | ImageToImage):
            raise comfy_error("a control image steers text-to-image and image-to-image here", transient=False)
        user = self._user_workflow(family, request.kind)
        if control is not None and (user is not None or family.loading.kind == "split"):
            raise comfy_error(
                f"a control image is applied to the checkpoint workflows (sd15, sdxl), not to {family.id}'s "
                "built graph or your own workflow: add ControlNetApplyAdvanced to your workflow instead",
                transient=False,
            )
        if user is not None:
            return self._fill_user_workflow(user, family, file, request, seed)
        if family.loading.kind == "split":
            return self._family_workflow(family, file, request, seed)
        model = self._model_name(file, "checkpoints", self.checkpoint or family.loading.checkpoint)
        workflow.set("checkpoint", "ckpt_name", model)
        workflow.set("positive", "text", request.prompt)
        workflow.set("negative", "text", request.negative)
        for field, value in (("seed", seed), ("steps", request.steps), ("cfg", request.guidance)):
            workflow.set("sampler", field, value)
        if isinstance(request, TextToImage | IdentityReference):
            workflow.set("latent", "width", request.width)
            workflow.set("latent", "height", request.height)
            workflow.set("latent", "batch_size", request.count)
        if isinstance(request, ImageToImage | Inpaint):
            size = (request.width, request.height)
            workflow.set(
                "image", "image", self.client.upload_image(encode_png(_prepared(request.image, size)))
            )
            workflow.set("latent", "amount", request.count)
            workflow.set("sampler", "denoise", request.strength)
        if isinstance(request, Inpaint):
            mask = _prepared(request.mask, (request.width, request.height))
            workflow.set("mask", "image", self.client.upload_image(encode_png(mask)))
            workflow.set("originals", "amount", request.count)
        if isinstance(request, IdentityReference):
            self._add_references(workflow, request.references)
            workflow.set("faceid", "weight", request.identity_strength)
            workflow.set("faceid", "weight_faceidv2", request.identity_strength)
        if isinstance(request, TextToImage | ImageToImage) and request.control is not None:
            workflow.add_control(
                self._controlnet_name(request.control.type),
                self.client.upload_image(
                    encode_png(_prepared(request.control.image, (request.width, request.height)))
                ),
                request.control.strength,
            )
        workflow.add_loras([(self._place(lora.path, "loras"), lora.strength) for lora in request.loras])
        return workflow, model

    def _controlnet_name(self, kind: ControlType) -> str:
        configured = self.controlnets.get(kind)
        if configured is None:
            raise comfy_error(
                f"no {kind.value} ControlNet configured for ComfyUI: set FLENWHEEL_COMFYUI_CONTROLNET_POSE to a "
                "file in the server's models/controlnet folder (an OpenPose ControlNet for your checkpoint)",
                transient=False,
            )
        return self._model_name(configured, "controlnet", None)

    def family_for(self, model: str | None) -> tuple[ModelFamily, str | None]:
        """The family a request's `model` names (a family id, or a file the family loads by default), else
        the configured default family, else sd15; and the model file the request names, if any."""
        if model in FAMILIES:
            return FAMILIES[model], None
        if model and (family := family_of_file(model)) is not None:
            return family, model
        return self.family or FAMILIES["sd15"], model

    def _family_inputs(
        self, family: ModelFamily, file: str | None, request: GenerationRequest, seed: int
    ) -> GraphInputs:
        """The request's values with the family's draft tier for what the request left unset."""
        assert not isinstance(request, Upscale)
        sampling = family.sampling(request.tier or "draft")
        given = request.model_fields_set - ({"steps", "guidance"} if request.tier else set())
        cfg, distilled = sampling.cfg, sampling.distilled_guidance
        if "guidance" in given:
            if distilled is not None:  # FLUX: the user's guidance is the distilled guidance, as on fal
                distilled = request.guidance
            else:
                cfg = request.guidance
        width, height = request.width, request.height
        if not {"width", "height"} & given:
            width, height = family.size("1:1")
        denoise = 1.0
        if isinstance(request, Inpaint) or (
            isinstance(request, ImageToImage) and not family.edits_with_reference
        ):
            denoise = request.strength
        return GraphInputs(
            prompt=request.prompt,
            negative=request.negative,
            seed=seed,
            steps=request.steps if "steps" in given else sampling.steps,
            cfg=cfg,
            distilled_guidance=distilled,
            sampler=sampling.sampler,
            scheduler=sampling.scheduler,
            width=width,
            height=height,
            count=request.count,
            denoise=denoise,
            loras=[(self._place(lora.path, "loras"), lora.strength) for lora in request.loras],
            diffusion_model=self._model_name(file, "diffusion_models", None) if file else None,
        )

    def _family_workflow(
        self, family: ModelFamily, file: str | None, request: GenerationRequest, seed: int
    ) -> tuple[_Workflow, str]:
        """The built graph of a split-loader family (comfyui_graphs.build_graph), inputs uploaded."""
        inputs = self._family_inputs(family, file, request, seed)
        if isinstance(request, ImageToImage | Inpaint):
            source = _prepared(request.image)
            explicit = {"width", "height"} & request.model_fields_set
            size = (
                (inputs.width, inputs.height)
                if explicit
                else (source.width // 16 * 16, source.height // 16 * 16)
            )
            source = _prepared(request.image, size)
            inputs.width, inputs.height = source.width, source.height
            inputs.image = self.client.upload_image(encode_png(source))
        if isinstance(request, Inpaint):
            mask = _prepared(request.mask, (inputs.width, inputs.height))
            inputs.mask = self.client.upload_image(encode_png(mask))
        if isinstance(request, IdentityReference):
            inputs.references = [
                self.client.upload_image(encode_png(_prepared(data))) for data in request.references
            ]
        try:
            nodes = build_graph(family, request.kind, inputs)
        except GraphError as exc:
            raise comfy_error(str(exc), transient=False) from None
        model = inputs.diffusion_model or family.loading.diffusion_model or family.id
        return _Workflow(name=f"{family.id}/{request.kind}", nodes=nodes), model

    def object_info(self, refresh: bool = False) -> dict[str, Any]:
        """The server's node catalogue (GET /object_info), fetched once."""
        if self._object_info is None or refresh:
            self._object_info = self.client.object_info()
        return self._object_info

    def _user_workflow(self, family: ModelFamily, kind: str) -> _Workflow | None:
        """The user's own workflow for this family and kind, checked against the server; None if none."""
        if self.user_workflows_dir is None:
            return None
        path = self.user_workflows_dir / family.id / f"{kind}.json"
        if not path.is_file():
            return None
        try:
            nodes = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise comfy_error(f"cannot read your workflow {path}: {exc}") from None
        try:
            check_user_workflow(path, nodes, kind, self.object_info())
        except ProviderError:  # the catalogue may predate a node or model file added since: ask again once
            check_user_workflow(path, nodes, kind, self.object_info(refresh=True))
        return _Workflow(name=str(path), nodes=nodes)

    def _fill_user_workflow(
        self,
        workflow: _Workflow,
        family: ModelFamily,
        file: str | None,
        request: GenerationRequest,
        seed: int,
    ) -> tuple[_Workflow, str]:
        """A user's workflow filled in by the node-id conventions (comfyui_graphs' docstring)."""
        inputs = self._family_inputs(family, file, request, seed)
        nodes = workflow.nodes
        text_field = "prompt" if "prompt" in nodes["positive"]["inputs"] else "text"
        workflow.set("positive", text_field, request.prompt)
        if "negative" in nodes and text_field in nodes["negative"]["inputs"]:
            workflow.set("negative", text_field, request.negative)
        for field, value in (("seed", seed), ("steps", inputs.steps), ("cfg", inputs.cfg)):
            workflow.set("sampler", field, value)
        if "latent" in nodes and "width" in nodes["latent"]["inputs"]:
            workflow.set("latent", "width", inputs.width)
            workflow.set("latent", "height", inputs.height)
            workflow.set("latent", "batch_size", request.count)
        if isinstance(request, ImageToImage | Inpaint):
            workflow.set("image", "image", self.client.upload_image(encode_png(_prepared(request.image))))
            workflow.set("sampler", "denoise", inputs.denoise)
        if isinstance(request, Inpaint):
            workflow.set("mask", "image", self.client.upload_image(encode_png(_prepared(request.mask))))
        if inputs.diffusion_model and "model" in nodes:
            workflow.set("model", "unet_name", inputs.diffusion_model)
        model = inputs.diffusion_model or family.loading.diffusion_model or family.id
        if "checkpoint" in nodes:
            model = self._model_name(file, "checkpoints", self.checkpoint or family.loading.checkpoint)
            workflow.set("checkpoint", "ckpt_name", model)
        workflow.add_loras(inputs.loras)
        return workflow, model

    def _template(self, kind: str) -> _Workflow:
        path = self.workflows_dir / f"{kind}.json"
        try:
            nodes = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise comfy_error(f"cannot read the {kind} workflow {path}: {exc}") from None
        return _Workflow(name=kind, nodes=copy.deepcopy(nodes))

    def _add_references(self, workflow: _Workflow, references: tuple[bytes, ...]) -> None:
        """One LoadImage per reference, joined into one batch with ImageBatch nodes."""
        names = [self.client.upload_image(encode_png(_prepared(data))) for data in references]
        workflow.set("reference", "image", names[0])
        batch = "reference"
        for index, name in enumerate(names[1:], start=1):
            workflow.nodes[f"reference_{index}"] = {"class_type": "LoadImage", "inputs": {"image": name}}
            workflow.nodes[f"references_{index}"] = {
                "class_type": "ImageBatch",
                "inputs": {"image1": [batch, 0], "image2": [f"reference_{index}", 0]},
            }
            batch = f"references_{index}"
        workflow.set("faceid", "image", [batch, 0])

    def _model_name(self, model: str | None, folder: str, default: str | None) -> str:
        """A model named by the request (a server-side name, or a local file we place), else the default."""
        if model and self.models_dir is not None and Path(model).expanduser().is_file():
            return self._place(model, folder)
        return model or default or self._first_model(folder)

    def _first_model(self, folder: str) -> str:
        names = sorted(self.client.models(folder))
        if not names:
            raise comfy_error(
                f"the ComfyUI server has no {folder}: put one in its models/{folder} folder, or name one "
                "in the request's model"
            )
        return names[0]

    def _place(self, path: str, folder: str) -> str:
        """The server-side name of a model file: placed in `models_dir/folder/flenwheel/` when we can."""
        if path.startswith(("http://", "https://")):
            raise comfy_error(
                f"{path}: download the LoRA first; ComfyUI loads only files in its models folders"
            )
        source = Path(path).expanduser()
        if self.models_dir is None:
            if source.name not in self.client.models(folder):
                raise comfy_error(
                    f"{source.name} is not in the ComfyUI server's {folder} folder: copy it there, or set "
                    "FLENWHEEL_COMFYUI_MODELS_DIR to the server's models folder so flenwheel places it"
                )
            return source.name
        if not source.is_file():
            raise comfy_error(f"{path} does not exist or is not a file")
        name = f"{source.stem}-{self._digest(source)[:16]}{source.suffix}"
        target = self.models_dir / folder / STAGING_FOLDER / name
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            _link_or_copy(source, target)
        return f"{STAGING_FOLDER}/{name}"

    def _digest(self, path: Path) -> str:
        stat = path.stat()
        key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
        if key not in self._hashes:
            digest = hashlib.sha256()
            with path.open("rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
            self._hashes[key] = digest.hexdigest()
        return self._hashes[key]


def _prepared(data: bytes, size: tuple[int, int] | None = None) -> Any:
    """An input image decoded safely (and resized to the request's size), as a PIL image."""
    from PIL import Image

    try:
        image = decode_image(data).image
    except ImageRejected as exc:
        raise comfy_error(f"an input image was rejected: {exc.detail}") from None
    if size is not None and image.size != size:
        image = image.resize(size, Image.Resampling.LANCZOS)
    return image


def _png_size(data: bytes) -> tuple[int, int]:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.size
    except (UnidentifiedImageError, OSError) as exc:
        raise comfy_error(f"the server returned an image that cannot be read ({exc})") from None


def _link_or_copy(source: Path, target: Path) -> None:
    """A hard link when on the same file system (instant, no space), else a copy; atomic either way."""
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=".placing-"))
    try:
        temporary = staging / target.name
        try:
            os.link(source, temporary)
        except OSError:
            shutil.copyfile(source, temporary)
        os.replace(temporary, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _seed_from(prompt_id: str) -> int:
    try:
        return uuid.UUID(prompt_id).int % 2**32
    except ValueError:
        return int.from_bytes(hashlib.sha256(prompt_id.encode()).digest()[:4], "big")
