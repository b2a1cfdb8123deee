"""The studio: identity-reference mode until a LoRA is active, LoRA mode after; anchor edits when no engine
has an identity adapter; inpaint keeps the original; upscale; regenerate with a new seed; NSFW routing."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import select

from flenwheel.jobs.base import LocalJobContext
from flenwheel.pipeline.sheet import Anchor, SheetConfig, generate_anchors, save_sheet_config
from flenwheel.pipeline.spec import CharacterSpec, create_character_from_spec
from flenwheel.pipeline.stage import RenderSize
from flenwheel.pipeline.studio import regenerate, studio_generate, studio_inpaint, studio_upscale
from flenwheel.pipeline.wizard import generate_base_images, pick_base
from flenwheel.providers.base import Capability, GenerationRequest, IdentityReference
from flenwheel.providers.diffusers_local import LocalDiffusersProvider
from flenwheel.providers.router import NoProvider
from flenwheel.providers.tiny_model import ensure_tiny_model
from flenwheel.store.models import Asset, Character, Checkpoint, DatasetVersion, TrainingRun
from flenwheel.store.project import Project

from face_engines import PhotoEngine
from photos import LISA

SPEC = CharacterSpec(name="mara", gender_presentation="woman", hair_colour="auburn")
TINY = RenderSize(width=64, height=64, steps=2)


@pytest.fixture(scope="module")
def tiny() -> LocalDiffusersProvider:
    return LocalDiffusersProvider()


@pytest.fixture(scope="module")
def lora_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A LoRA made with PEFT on the tiny UNet, with non-zero up-weights so it changes the output."""
    import torch
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    pipeline = StableDiffusionPipeline.from_pretrained(ensure_tiny_model())
    torch.manual_seed(0)
    pipeline.unet.add_adapter(
        LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"])
    )
    with torch.no_grad():
        for name, parameter in pipeline.unet.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.5)
    folder = tmp_path_factory.mktemp("lora")
    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(pipeline.unet))
    StableDiffusionPipeline.save_lora_weights(
        folder, unet_lora_layers=layers, weight_name="test_lora.safetensors"
    )
    return folder / "test_lora.safetensors"


def asset(project: Project, asset_id: int) -> Asset:
    with project.db.session() as session:
        return session.get_one(Asset, asset_id)


def pixels(path: str) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.float64)


def activate_lora(project: Project, lora: Path, strength: float) -> int:
    """What training + evaluation leave behind: a run, its checkpoint file in the project, the activation."""
    relative = Path("training/mara/run1/step10.safetensors")
    (project.root / relative).parent.mkdir(parents=True)
    shutil.copyfile(lora, project.root / relative)
    with project.db.session() as session:
        character = session.scalar(select(Character).where(Character.name == "mara"))
        version = DatasetVersion(character_id=character.id, number=1)
        session.add(version)
        session.flush()
        run = TrainingRun(
            character_id=character.id, dataset_version_id=version.id, trainer="local", status="succeeded"
        )
        session.add(run)
        session.flush()
        checkpoint = Checkpoint(run_id=run.id, step=10, path=str(relative), sha256="0" * 64)
        session.add(checkpoint)
        session.flush()
        character.active_checkpoint_id, character.active_lora_strength = checkpoint.id, strength
        return checkpoint.id


def test_identity_reference_mode_switches_to_lora_mode_when_a_checkpoint_is_active(
    project: Project, tiny: LocalDiffusersProvider, lora_file: Path
) -> None:
    create_character_from_spec(project, SPEC)
    seen: list[GenerationRequest] = []

    def remember(request: GenerationRequest) -> Path:
        seen.append(request)
        return LISA[0]

    adapter = PhotoEngine(
        "comfyui",
        capabilities=frozenset({Capability.IDENTITY_REFERENCE, Capability.TEXT_TO_IMAGE}),
        allows_nsfw=True,
        pick=remember,
    )
    base = generate_base_images(project, "mara", LocalJobContext(), providers=[adapter], count=1)
    base_id = base.candidates[0].image.asset_id
    pick_base(project, "mara", base_id)
    seen.clear()
    before = studio_generate(project, "mara", "at the beach", seed=9, size=TINY, providers=[adapter, tiny])
    assert before.mode == "identity_reference" and "no LoRA is active yet" in before.mode_reason
    assert before.method == f"identity reference on comfyui from asset {base_id}"
    [request] = seen
    assert isinstance(request, IdentityReference) and request.references == (
        project.blobs.get(asset(project, base_id).sha256),
    )
    assert asset(project, before.outputs[0].asset_id).parents == [base_id]

    checkpoint_id = activate_lora(project, lora_file, 0.8)
    after = studio_generate(project, "mara", "at the beach", seed=9, size=TINY, providers=[tiny])
    assert (
        after.mode == "lora"
        and f"checkpoint {checkpoint_id}" in after.mode_reason
        and "strength 0.8" in after.mode_reason
    )
    stored = asset(project, after.outputs[0].asset_id)
    assert stored.loras == [
        {"path": str(project.root / "training/mara/run1/step10.safetensors"), "strength": 0.8}
    ]
    assert stored.prompt == "ohwx_mara woman, at the beach" and stored.attributes["mode"] == "lora"
    plain = studio_generate(
        project, "mara", "ohwx_mara woman, at the beach", seed=9, size=TINY, mode="text", providers=[tiny]
    )
    assert (
        np.abs(pixels(after.outputs[0].file) - pixels(plain.outputs[0].file)).mean() > 0.5
    )  # the LoRA is applied


def test_without_an_identity_adapter_the_nearest_anchor_is_edited_and_it_says_so(
    project: Project, tiny: LocalDiffusersProvider
) -> None:
    create_character_from_spec(project, SPEC)
    nothing = studio_generate(project, "mara", "reading", size=TINY, providers=[tiny])
    assert nothing.mode == "identity_reference" and "no reference image yet" in nothing.method
    base = generate_base_images(project, "mara", LocalJobContext(), size=TINY, providers=[tiny], count=1)
    base_id = base.candidates[0].image.asset_id
    pick_base(project, "mara", base_id)
    save_sheet_config(
        project,
        "mara",
        SheetConfig(
            candidates=1,
            anchors=(
                Anchor(id="front", prompt="standing", keywords=("standing",)),
                Anchor(id="seated", prompt="seated on a chair", keywords=("sitting", "bench")),
            ),
            variations=(),
        ),
    )
    anchors = generate_anchors(project, "mara", LocalJobContext(), size=TINY, providers=[tiny])
    seated = next(p.asset_id for p in anchors.picks if p.anchor == "seated")
    on_bench = studio_generate(
        project, "mara", "sitting on a park bench", count=2, size=TINY, providers=[tiny]
    )
    assert "no engine with an identity adapter" in on_bench.method and "anchor 'seated'" in on_bench.method
    assert len(on_bench.outputs) == 2 and len({o.seed for o in on_bench.outputs}) == 2
    assert all(asset(project, o.asset_id).parents == [seated] for o in on_bench.outputs)
    assert asset(project, on_bench.outputs[0].asset_id).denoise == pytest.approx(0.55)
    swimming = studio_generate(project, "mara", "swimming in a lake", size=TINY, providers=[tiny])
    assert f"the picked base (asset {base_id})" in swimming.method


def test_inpaint_keeps_the_original_upscale_and_regenerate(
    project: Project, tiny: LocalDiffusersProvider
) -> None:
    create_character_from_spec(project, SPEC)
    photo = io.BytesIO()
    Image.open(LISA[0]).convert("RGB").resize((96, 128)).save(photo, format="PNG")
    mask = Image.new("L", (96, 128), 0)
    mask.paste(255, (32, 32, 64, 64))
    mask_png = io.BytesIO()
    mask.save(mask_png, format="PNG")
    edited = studio_inpaint(
        project, "mara", photo.getvalue(), mask_png.getvalue(), "wearing a hat", steps=2, providers=[tiny]
    )
    [out] = edited.outputs
    before, after = Image.open(photo).convert("RGB"), Image.open(out.file).convert("RGB")
    assert after.getpixel((5, 5)) == before.getpixel((5, 5)) and asset(project, out.asset_id).kind == "edited"
    again = regenerate(project, "mara", out.asset_id, providers=[tiny])
    [redo] = again.outputs
    assert redo.seed != out.seed and redo.asset_id != out.asset_id
    redone = Image.open(redo.file).convert("RGB")
    assert redone.getpixel((5, 5)) == before.getpixel(
        (5, 5)
    )  # the same inpaint request: the mask still holds
    assert (
        asset(project, redo.asset_id).prompt == "wearing a hat"
        and asset(project, redo.asset_id).kind == "edited"
    )
    upscaled = studio_upscale(project, "mara", Path(out.file).read_bytes(), 2, parents=(out.asset_id,))
    assert Image.open(upscaled.outputs[0].file).size == (192, 256) and upscaled.provider == "esrgan"
    assert asset(project, upscaled.outputs[0].asset_id).parents == [out.asset_id]


def test_nsfw_studio_work_stays_on_self_hosted_engines_and_is_charged(any_project: Project) -> None:
    """On SQLite and on PostgreSQL (random seeds fit its 32-bit seed column)."""
    project = any_project
    create_character_from_spec(project, SPEC, budget_usd=1.0)
    external = PhotoEngine("fal", pick=lambda r: LISA[0], price=0.05)
    own = PhotoEngine("comfyui", allows_nsfw=True, pick=lambda r: LISA[1])
    with pytest.raises(NoProvider, match="NSFW work stays on self-hosted engines"):
        studio_generate(project, "mara", "boudoir photo", nsfw=True, size=TINY, providers=[external])
    routed = studio_generate(
        project, "mara", "boudoir photo", nsfw=True, size=TINY, providers=[external, own]
    )
    assert routed.provider == "comfyui" and routed.nsfw_routing and external.calls == []
    paid = studio_generate(project, "mara", "in a cafe", count=2, size=TINY, providers=[external, own])
    assert paid.provider == "fal" and paid.cost_usd == pytest.approx(0.10)
    with project.db.session() as session:
        assert session.scalar(select(Character.spent_usd)) == pytest.approx(0.10)
