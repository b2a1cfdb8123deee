"""Every model family's ComfyUI graphs against the real ComfyUI server's own /object_info (comfyui_server.py).

The server runs without the families' weights (several GB each, and no tiny random-weight FLUX/Qwen/Z-Image
text encoder is cheap: their loaders fix the encoders' full sizes), so the graphs are checked structurally —
every class, input, link type and choice the server declares — with model-file choices checked separately:
the server itself then refuses the missing file by name, which is what a user without the weights sees.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from comfyui_server import ComfyUIServer
from PIL import Image

from flenwheel.config import Settings
from flenwheel.families import FAMILIES, family_of_file, get_family
from flenwheel.pipeline.stage import RenderSize
from flenwheel.providers.base import (
    ImageToImage,
    Inpaint,
    LocalContext,
    LoraRef,
    ProviderError,
    TextToImage,
)
from flenwheel.providers.comfyui import WORKFLOWS_DIR, ComfyUIProvider
from flenwheel.providers.comfyui_graphs import GraphError, GraphInputs, build_graph, validate_graph

SPLIT = [family for family in FAMILIES.values() if family.loading.kind == "split"]


def png(color: tuple[int, int, int], size: tuple[int, int] = (64, 64)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def inputs_for(kind: str, **extra: Any) -> GraphInputs:
    inputs = GraphInputs(prompt="a woman in a red coat", negative="blurry", **extra)
    if kind in ("image_to_image", "inpaint"):
        inputs.image = "flenwheel/input.png"
    if kind == "inpaint":
        inputs.mask = "flenwheel/mask.png"
    if kind == "identity_reference" and not inputs.references:
        inputs.references = ["flenwheel/ref.png"]
    return inputs


@pytest.fixture(scope="module")
def object_info(comfyui_server: ComfyUIServer) -> dict[str, Any]:
    return httpx.get(f"{comfyui_server.url}/object_info", timeout=120).json()  # type: ignore[no-any-return]


def test_every_family_graph_fits_the_servers_own_catalogue(object_info: dict[str, Any]) -> None:
    checked = []
    for family in SPLIT:
        for kind in sorted(family.kinds):
            sampling = family.sampling("draft")
            graph = build_graph(
                family,
                kind,
                inputs_for(
                    kind,
                    cfg=sampling.cfg,
                    steps=sampling.steps,
                    sampler=sampling.sampler,
                    scheduler=sampling.scheduler,
                    distilled_guidance=sampling.distilled_guidance,
                    loras=[("style.safetensors", 0.7), ("character.safetensors", 0.9)],
                    count=2,
                ),
            )
            assert validate_graph(graph, object_info, check_files=False, name=f"{family.id}/{kind}") == []
            checked.append(f"{family.id}/{kind}")
    assert len(checked) >= 15  # 6 split families, 1–4 kinds each
    # The one-checkpoint templates (sd15, sdxl) fit too; identity needs the IPAdapter custom nodes.
    for path in sorted(WORKFLOWS_DIR.glob("*.json")):
        problems = validate_graph(
            json.loads(path.read_text()), object_info, check_files=False, name=path.stem
        )
        if path.stem == "identity_reference":
            assert problems and all("IPAdapter" in problem for problem in problems)
        else:
            assert problems == [], path


def test_the_check_names_each_missing_node_input_and_file(object_info: dict[str, Any]) -> None:
    z_image = get_family("z-image-turbo")
    graph = build_graph(z_image, "text_to_image", inputs_for("text_to_image"))
    # The server has no Z-Image weights: each loader's file is named with what the server has instead.
    problems = " | ".join(validate_graph(graph, object_info))
    for file in ("z_image_turbo_bf16.safetensors", "qwen_3_4b.safetensors", "z-image-turbo-vae.safetensors"):
        assert file in problems

    graph["sampling"]["class_type"] = "ModelSamplingZImageMagic"  # a custom node the server lacks
    del graph["sampler"]["inputs"]["scheduler"]
    graph["latent"]["inputs"]["depth"] = 3
    graph["decode"]["inputs"]["samples"] = ["clip", 0]  # CLIP where LATENT is wanted
    problems = " | ".join(validate_graph(graph, object_info, check_files=False))
    assert "node sampling: class ModelSamplingZImageMagic is not on the server" in problems
    assert "node sampler (KSampler) lacks required input scheduler" in problems
    assert "node latent (EmptySD3LatentImage) has no input depth" in problems
    assert "node decode (VAEDecode) input samples takes LATENT but node clip output 0 is CLIP" in problems


def test_family_defaults_loras_in_order_and_references() -> None:
    z_image = get_family("z-image-turbo")
    draft = z_image.sampling("draft")
    graph = build_graph(
        z_image,
        "text_to_image",
        inputs_for(
            "text_to_image",
            steps=draft.steps,
            cfg=draft.cfg,
            sampler=draft.sampler,
            loras=[("style.safetensors", 0.7), ("character.safetensors", 0.9)],
        ),
    )
    assert (draft.steps, draft.cfg, draft.sampler) == (8, 1.0, "res_multistep")
    assert graph["clip"] == {
        "class_type": "CLIPLoader",
        "inputs": {"clip_name": "qwen_3_4b.safetensors", "type": "lumina2"},
    }
    # style first, then the character, then the sampling shift, then the sampler
    assert graph["lora_0"]["inputs"] == {
        "model": ["model", 0],
        "lora_name": "style.safetensors",
        "strength_model": 0.7,
    }
    assert graph["lora_1"]["inputs"]["model"] == ["lora_0", 0]
    assert graph["sampling"]["inputs"]["model"] == ["lora_1", 0]
    assert graph["sampler"]["inputs"]["model"] == ["sampling", 0]
    assert graph["negative"]["class_type"] == "ConditioningZeroOut"  # CFG 1: no negative pass

    flux = get_family("flux-dev")
    graph = build_graph(flux, "text_to_image", inputs_for("text_to_image", distilled_guidance=3.5))
    assert graph["clip"]["class_type"] == "DualCLIPLoader" and graph["clip"]["inputs"]["type"] == "flux"
    assert graph["sampler"]["inputs"]["positive"] == ["guidance", 0]

    edit = get_family("qwen-image-edit-2509")
    graph = build_graph(
        edit, "identity_reference", inputs_for("identity_reference", references=["a.png", "b.png", "c.png"])
    )
    assert graph["positive"]["inputs"]["image3"] == ["reference_2", 0]
    with pytest.raises(GraphError, match="at most 3 reference"):
        build_graph(edit, "identity_reference", inputs_for("identity_reference", references=["a.png"] * 4))
    with pytest.raises(GraphError, match="z-image-turbo does not do identity_reference"):
        build_graph(z_image, "identity_reference", inputs_for("identity_reference"))
    assert family_of_file("/pod/models/diffusion_models/z_image_turbo_bf16.safetensors") is z_image


def test_the_seed_003_pod_setting_generates_edits_and_refuses_with_the_missing_file(
    comfyui_server: ComfyUIServer,
) -> None:
    settings = Settings(comfyui_url=comfyui_server.url, comfyui_family="z-image-turbo")
    provider = ComfyUIProvider.from_settings(settings)
    assert provider is not None
    requests = [
        TextToImage(prompt="a woman on a beach"),
        ImageToImage(prompt="same woman, evening light", image=png((200, 120, 80)), strength=0.4),
        Inpaint(prompt="a red scarf", image=png((200, 120, 80)), mask=png((255, 255, 255))),
    ]
    for request in requests:
        workflow, model = provider.workflow(request, seed=7)
        assert model == "z_image_turbo_bf16.safetensors"
        assert workflow.nodes["sampler"]["inputs"]["steps"] == 8
        with pytest.raises(ProviderError) as raised:  # the server's own validation: the weights are absent
            provider.generate(request, LocalContext())
        assert "z_image_turbo_bf16.safetensors" in str(raised.value) and not raised.value.transient
    # The studio sends its generic tier values (12 steps, guidance 7); the family's own tier wins.
    studio = TextToImage(prompt="x", steps=12, guidance=7.0, width=512, height=512, tier="hq")
    sampler = provider.workflow(studio, seed=1)[0].nodes["sampler"]["inputs"]
    assert (sampler["steps"], sampler["cfg"], sampler["sampler_name"]) == (9, 1.0, "res_multistep")
    # Every pipeline stage (wizard, sheet, enrichment) sizes its requests with RenderSize: draft tier too.
    stage = provider.workflow(TextToImage(prompt="x", **RenderSize().request_fields()), seed=1)[0]
    assert (stage.nodes["sampler"]["inputs"]["steps"], stage.nodes["sampler"]["inputs"]["cfg"]) == (8, 1.0)
    explicit = provider.workflow(TextToImage(prompt="x", steps=12, guidance=2.0), seed=1)[0]
    assert (explicit.nodes["sampler"]["inputs"]["steps"], explicit.nodes["sampler"]["inputs"]["cfg"]) == (
        12,
        2.0,
    )
    t2i, _ = provider.workflow(TextToImage(prompt="x"), seed=1)
    assert (t2i.nodes["latent"]["inputs"]["width"], t2i.nodes["latent"]["inputs"]["height"]) == (1024, 1024)
    edit, _ = provider.workflow(
        ImageToImage(prompt="turn her head left", image=png((9, 9, 9)), model="qwen-image-edit-2509"), seed=1
    )
    assert edit.nodes["positive"]["class_type"] == "TextEncodeQwenImageEditPlus"
    assert edit.nodes["sampler"]["inputs"]["denoise"] == 1.0  # the reference conditions the edit


def test_a_users_own_workflow_is_checked_against_the_server(
    comfyui_server: ComfyUIServer, tmp_path: Path
) -> None:
    folder = tmp_path / "workflows" / "z-image-turbo"
    folder.mkdir(parents=True)
    graph = build_graph(get_family("z-image-turbo"), "text_to_image", inputs_for("text_to_image"))
    graph["sampling"]["class_type"] = "ZImageDetailDaemon"
    del graph["latent"]
    graph["sampler"]["inputs"]["latent_image"] = ["empty", 0]
    graph["empty"] = {"class_type": "EmptySD3LatentImage", "inputs": {"width": 64, "height": 64}}
    (folder / "text_to_image.json").write_text(json.dumps(graph))
    provider = ComfyUIProvider(
        comfyui_server.url, family="z-image-turbo", user_workflows_dir=tmp_path / "workflows"
    )

    with pytest.raises(ProviderError) as raised:
        provider.generate(TextToImage(prompt="x", loras=()), LocalContext())

    message = str(raised.value)
    assert "needs the node id(s) latent" in message
    assert "class ZImageDetailDaemon is not on the server" in message
    assert "node empty (EmptySD3LatentImage) lacks required input batch_size" in message

    # Fixed, it is used in place of the built-in graph, LoRAs chained after its `model` loader.
    graph["sampling"]["class_type"] = "ModelSamplingAuraFlow"
    graph["latent"] = graph.pop("empty")
    graph["latent"]["inputs"]["batch_size"] = 1
    graph["sampler"]["inputs"]["latent_image"] = ["latent", 0]
    (folder / "text_to_image.json").write_text(json.dumps(graph))
    z_image = get_family("z-image-turbo").loading
    for folder, name in (
        ("diffusion_models", z_image.diffusion_model),
        ("text_encoders", z_image.text_encoders[0]),
        ("vae", z_image.vae),
        ("loras", "mine.safetensors"),
    ):  # listed by the server, never loaded: the check sees the files the workflow names
        (comfyui_server.models_dir / folder).mkdir(exist_ok=True)
        (comfyui_server.models_dir / folder / str(name)).write_bytes(b"")
    workflow, _ = provider.workflow(
        TextToImage(prompt="x", loras=(LoraRef(path="mine.safetensors", strength=0.8),)), seed=3
    )
    assert workflow.name.endswith("text_to_image.json")
    assert workflow.nodes["lora_0"]["class_type"] == "LoraLoaderModelOnly"
    assert workflow.nodes["sampling"]["inputs"]["model"] == ["lora_0", 0]
