"""The pipeline's job kinds: each stage that runs as a background job, by name, with its payload model, its
queue and who may submit it.

The job layer runs kinds but must not import the pipeline, so it does not know these until an entry point
registers them: `flenwheel worker` and `flenwheel jobs submit`, the web app (`flenwheel serve`) and the demo
call `register_pipeline_kinds()`, and so must any program that runs or accepts pipeline jobs in its own
process. Nothing is imported until a kind runs or is validated. Adding a kind is one line here.
"""

from __future__ import annotations

from dataclasses import dataclass

from flenwheel.jobs import kinds
from flenwheel.jobs.base import Queue
from flenwheel.jobs.kinds import Access

_JOBS = "flenwheel.pipeline.jobs"
_CHAIN = "flenwheel.pipeline.chain"
# The background chain's stages (pipeline/chain.py STAGES), each its own internal kind `chain_<stage>`.
STAGE_NAMES = ("sheet", "gate", "dataset", "train", "evaluate", "activate")


@dataclass(frozen=True)
class PipelineKind:
    """A kind's function and payload model as "module:name", its queue, and who may submit it."""

    function: str
    payload: str
    queue: Queue = Queue.CPU
    access: Access = Access.PUBLIC


def _gpu(name: str, payload: str) -> PipelineKind:
    return PipelineKind(f"{_JOBS}:{name}", f"{_JOBS}:{payload}", Queue.GPU)


PIPELINE_KINDS: dict[str, PipelineKind] = {
    "curate": PipelineKind(f"{_JOBS}:curate_job", f"{_JOBS}:CuratePayload"),
    "dataset_build": PipelineKind(f"{_JOBS}:dataset_build_job", f"{_JOBS}:DatasetBuildPayload"),
    "generate": _gpu("generate_job", "GeneratePayload"),
    # The background chain (pipeline/chain.py): a root job and one internal job per stage.
    "chain": PipelineKind(f"{_CHAIN}:chain_job", f"{_JOBS}:ChainPayload"),
    **{
        f"chain_{stage}": PipelineKind(
            f"{_CHAIN}:chain_{stage}", f"{_JOBS}:ChainStagePayload", access=Access.INTERNAL
        )
        for stage in STAGE_NAMES
    },
    # Wizard, sheet, studio, training and evaluation stages (pipeline/jobs.py).
    "base_images": _gpu("base_images_job", "BaseImagesPayload"),
    "pick_base": PipelineKind(f"{_JOBS}:pick_base_job", f"{_JOBS}:PickBasePayload"),
    "skin_pass": _gpu("skin_pass_job", "SkinPassPayload"),
    "profile_set": _gpu("profile_set_job", "ProfileSetPayload"),
    "regenerate_position": _gpu("regenerate_position_job", "RegeneratePayload"),
    "sheet": _gpu("sheet_job", "SheetPayload"),
    "redraw_variation": _gpu("redraw_variation_job", "RedrawVariationPayload"),
    "enrich": _gpu("enrich_job", "EnrichPayload"),
    "studio_generate": _gpu("studio_generate_job", "StudioPayload"),
    "studio_edit": _gpu("studio_edit_job", "StudioEditPayload"),
    "studio_upscale": _gpu("studio_upscale_job", "StudioUpscalePayload"),
    "train": _gpu("train_job", "TrainPayload"),
    "evaluate": _gpu("evaluate_job", "EvaluatePayload"),
    # Flywheel 1 (pipeline/flywheel.py): rounds of generate → filter → review → v(N+1) → retrain → compare.
    "flywheel": _gpu("flywheel_job", "FlywheelPayload"),
}


def register_pipeline_kinds() -> None:
    """Make the pipeline's kinds known to this process's job registry. Cheap (nothing is imported until a kind
    runs) and safe to call again."""
    for name, kind in PIPELINE_KINDS.items():
        kinds.register(name, kind.function, payload=kind.payload, queue=kind.queue, access=kind.access)
