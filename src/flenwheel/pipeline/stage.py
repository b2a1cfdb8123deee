"""What the character stages share: engines with per-provider concurrency, derived seeds, storing one image
with its stage attributes, face measurements cached per asset, the identity check, and parallel submission."""

from __future__ import annotations

import hashlib
import math
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any, Literal, TypeVar

import numpy as np
from sqlalchemy import select

from flenwheel.config import Settings
from flenwheel.domain import AssetAnalysis, AssetKind, BodyPose, Frozen
from flenwheel.errors import InvalidInput, MissingDependency
from flenwheel.jobs.base import JobContext
from flenwheel.pipeline.generation import run_generation
from flenwheel.poses.base import PoseAnalyzer
from flenwheel.poses.target import PoseCheck, PoseTarget
from flenwheel.providers.base import (
    Capability,
    GenerationRequest,
    GenerationResult,
    ImageProvider,
    ProviderContext,
)
from flenwheel.providers.tiny_model import TINY_MODEL_ID, TINY_NOTE
from flenwheel.store.models import Analysis, Asset
from flenwheel.store.project import Project, get_character
from flenwheel.store.run import is_paid

T = TypeVar("T")
REMOTE_CONCURRENCY = 4  # fal / Replicate / ComfyUI take several at once; 3 base images must run together
SEED_MASK = 2**31 - 1
LOCAL_CONCURRENCY = 1  # the in-process diffusers pipeline is not re-entrant


class RenderSize(Frozen):
    """Pixel size and steps of the images a stage draws (tests use the tiny model at 64 px, 2 steps)."""

    width: int = 512
    height: int = 512
    steps: int = 20
    guidance: float = 7.0
    # An engine that knows its model family (families.py) takes the family's steps and guidance for this tier
    # instead of `steps` / `guidance` (Z-Image Turbo: 8 steps at CFG 1); None: `steps` / `guidance` as given.
    tier: Literal["draft", "hq"] | None = "draft"

    def request_fields(self) -> dict[str, Any]:
        return {
            "width": self.width,
            "height": self.height,
            "steps": self.steps,
            "guidance": self.guidance,
            "tier": self.tier,
        }

    def edit_fields(self, strength: float) -> dict[str, Any]:
        """Fields for an edit at `strength`: an engine runs steps × strength steps, so at least one."""
        return {**self.request_fields(), "steps": max(self.steps, math.ceil(1 / strength))}


def derive_seed(*parts: object) -> int:
    """A seed fixed by its parts (spec fingerprint, stage, slot, attempt): same inputs, same seed, anywhere.
    31 bits: `asset.seed` is a 32-bit signed integer on PostgreSQL."""
    digest = hashlib.sha256("|".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:4], "big") & SEED_MASK


# -- engines ----------------------------------------------------------------------------------------------
_SEMAPHORES: dict[tuple[str, int], threading.BoundedSemaphore] = {}
_SEMAPHORES_LOCK = threading.Lock()


def concurrency_limit(provider: ImageProvider, settings: Settings) -> int:
    """FLENWHEEL_PROVIDER_CONCURRENCY (`fal=8,comfyui=2`), else the provider's `max_concurrency`, else
    1 for the in-process engine and 4 for the others."""
    for item in settings.provider_concurrency.split(","):
        key, _, value = item.partition("=")
        if key.strip() == provider.id and value.strip().isdigit() and int(value) > 0:
            return int(value)
    declared = getattr(provider, "max_concurrency", None)
    if isinstance(declared, int) and declared > 0:
        return declared
    return LOCAL_CONCURRENCY if provider.id == "local" else REMOTE_CONCURRENCY


class ThrottledProvider:
    """A provider behind its process-wide semaphore: at most `limit` requests in flight on it at once."""

    def __init__(self, inner: ImageProvider, limit: int) -> None:
        self.inner = inner
        self.id = inner.id
        self.capabilities = inner.capabilities
        self.allows_nsfw = inner.allows_nsfw
        self.paid = is_paid(inner)  # the budget must see what the engine itself declares
        self.limit = limit
        with _SEMAPHORES_LOCK:
            self._semaphore = _SEMAPHORES.setdefault((inner.id, limit), threading.BoundedSemaphore(limit))

    def healthy(self) -> bool:
        check = getattr(self.inner, "healthy", None)
        return bool(check()) if callable(check) else True

    def estimate_cost(self, request: GenerationRequest) -> float:
        return self.inner.estimate_cost(request)

    def generate(self, request: GenerationRequest, ctx: ProviderContext) -> GenerationResult:
        with self._semaphore:
            return self.inner.generate(request, ctx)


class StageEngines:
    """The configured engines, resolved once per stage call, each behind its concurrency limit."""

    def __init__(self, providers: Sequence[ImageProvider], settings: Settings) -> None:
        self.providers: list[ImageProvider] = [
            p if isinstance(p, ThrottledProvider) else ThrottledProvider(p, concurrency_limit(p, settings))
            for p in providers
        ]

    @classmethod
    def for_project(cls, project: Project, providers: Sequence[ImageProvider] | None = None) -> StageEngines:
        if providers is None:
            from flenwheel.providers.registry import ProviderRegistry

            providers = ProviderRegistry.shared(project.settings).all()
        return cls(providers, project.settings)

    def first_with(self, capability: Capability, nsfw: bool) -> ImageProvider | None:
        """The first engine that can do `capability` and may take this work (NSFW stays self-hosted)."""
        for provider in self.providers:
            if capability in provider.capabilities and (provider.allows_nsfw or not nsfw):
                return provider
        return None

    @property
    def workers(self) -> int:
        return max(1, sum(p.limit for p in self.providers if isinstance(p, ThrottledProvider)))


# -- storing one image ------------------------------------------------------------------------------------
class StageImage(Frozen):
    """One stored image of a stage, as it lands."""

    asset_id: int
    kind: str
    seed: int | None
    provider: str
    model: str
    width: int
    height: int
    cost_usd: float
    file: str
    attributes: dict[str, Any]
    note: str | None = None  # e.g. the tiny model draws no faces


def check_cancelled(ctx: JobContext) -> None:
    """Raise JobCancelled when the run was cancelled (between images)."""
    ctx.check_cancelled()


def generate_asset(
    project: Project,
    character_name: str,
    request: GenerationRequest,
    kind: AssetKind,
    attributes: dict[str, Any],
    engines: StageEngines,
    ctx: JobContext,
    parents: tuple[int, ...] = (),
    preferred: str | None = None,
) -> StageImage:
    """Route one single-image request (budget, NSFW policy, provenance) and tag the asset with its stage."""
    check_cancelled(ctx)
    outcome = run_generation(
        project,
        character_name,
        request,
        kind=kind,
        parents=parents,
        preferred=preferred,
        providers=engines.providers,
        ctx=ctx.counting_images(),
        attributes=attributes,
    )
    output = outcome.outputs[0]
    return StageImage(
        asset_id=output.asset_id,
        kind=kind.value,
        seed=output.seed,
        provider=output.provider,
        model=output.model,
        width=output.width,
        height=output.height,
        cost_usd=output.cost_usd,
        file=str(output.file),
        attributes=attributes,
        note=outcome.note,
    )


def update_attributes(project: Project, asset_id: int, **changes: Any) -> None:
    with project.db.session() as session:
        asset = session.get_one(Asset, asset_id)
        asset.attributes = {**asset.attributes, **changes}


STAGE_KINDS = {
    "base": AssetKind.BASE,
    "anchor": AssetKind.ANCHOR,
    "variation": AssetKind.VARIATION,
    "enriched": AssetKind.ENRICHED,
    "profile": AssetKind.GENERATED,
}


def stage_assets(project: Project, character_name: str, stage: str, **match: Any) -> list[Asset]:
    """The character's assets whose attributes say `stage` (and match every given attribute), oldest first."""
    with project.db.session() as session:
        character = get_character(session, character_name)
        query = select(Asset).where(Asset.character_id == character.id).order_by(Asset.id)
        if stage in STAGE_KINDS:  # narrow in SQL; the JSON attributes are matched here
            query = query.where(Asset.kind == STAGE_KINDS[stage])
        rows = session.scalars(query).all()
        return [
            asset
            for asset in rows
            if (asset.attributes or {}).get("stage") == stage
            and all(asset.attributes.get(key) == value for key, value in match.items())
        ]


def picked_base(project: Project, character_name: str) -> Asset | None:
    """The picked base image (after the skin pass, the enhanced one), or None before a pick."""
    picked = stage_assets(project, character_name, "base", picked=True)
    return picked[-1] if picked else None


def require_picked_base(project: Project, character_name: str) -> Asset:
    base = picked_base(project, character_name)
    if base is None:
        raise InvalidInput(
            f"{character_name!r} has no picked base image: generate base images and pick one "
            f"(pipeline.wizard.pick_base) first"
        )
    return base


def request_size(asset: Asset, size: RenderSize, strength: float) -> dict[str, Any]:
    """Request fields for an edit of `asset` at `strength`: its own size rounded to multiples of 8, at
    most 2048 px."""
    scale = min(1.0, 2048 / max(asset.width, asset.height))
    width = max(64, int(asset.width * scale) // 8 * 8)
    height = max(64, int(asset.height * scale) // 8 * 8)
    return {**size.edit_fields(strength), "width": width, "height": height}


# -- faces ------------------------------------------------------------------------------------------------
_ANALYZER: Any = None
_ANALYZER_LOCK = threading.Lock()
NOT_MEASURABLE = "not measurable"


class FaceProbe:
    """Analysis (faces, quality) of stored assets, computed once and cached in the `analysis` table."""

    def __init__(self, project: Project) -> None:
        self.project = project
        self.problem: str | None = None  # why faces cannot be measured at all (dlib missing)
        self.pose_problem: str | None = None  # why body poses cannot be measured (mediapipe missing)

    def analysis(self, asset_id: int) -> AssetAnalysis | None:
        """Faces, quality and body pose of a stored asset (an analysis cached before pose was measured gets
        its pose added); None when faces cannot be measured at all."""
        global _ANALYZER
        from flenwheel.datasets.analysis import analyze_image, with_pose
        from flenwheel.images import open_stored

        with self.project.db.session() as session:
            asset = session.get_one(Asset, asset_id)
            stored = session.get(Analysis, asset_id)
            sha256 = asset.sha256
            if stored is not None:
                cached = AssetAnalysis.model_validate(stored.data)
                pose = self._pose_analyzer() if cached.pose_analyzer is None else None
                if pose is None:
                    return cached
                cached = with_pose(cached, open_stored(self.project.blobs.get(sha256)), pose)
                stored.data = cached.model_dump()
                return cached

        image = open_stored(self.project.blobs.get(sha256))
        with _ANALYZER_LOCK:  # one dlib model set per process; dlib calls are not shared across threads
            if _ANALYZER is None:
                try:
                    from flenwheel.faces.dlib_backend import DlibFaceAnalyzer

                    _ANALYZER = DlibFaceAnalyzer(detect_max_side=self.project.settings.detect_max_side)
                except MissingDependency as exc:
                    self.problem = str(exc)
                    return None
            result = analyze_image(image, _ANALYZER, self._pose_analyzer())
        from sqlalchemy.exc import IntegrityError

        try:
            with self.project.db.session() as session:
                session.add(Analysis(asset_id=asset_id, analyzer=result.analyzer, data=result.model_dump()))
        except IntegrityError:
            pass  # another stage stored the same asset's analysis first; it is the same
        return result

    def _pose_analyzer(self) -> PoseAnalyzer | None:
        try:
            from flenwheel.poses.mediapipe_backend import shared_pose_analyzer

            return shared_pose_analyzer()
        except MissingDependency as exc:
            self.pose_problem = str(exc)
            return None

    def body(self, asset_id: int) -> BodyPose | None:
        """The main person's body pose, or None when nobody was found (or pose cannot be measured here)."""
        analysis = self.analysis(asset_id)
        return analysis.body if analysis is not None else None

    def pose_check(self, asset_id: int, target: PoseTarget) -> PoseCheck:
        """Is the body in the image the pose `target` asks for (not measurable without a person)?"""
        check = target.check(self.body(asset_id))
        if check.status == NOT_MEASURABLE and self.pose_problem:
            return check.model_copy(update={"reason": f"pose not measurable: {self.pose_problem}"})
        return check

    def embedding(self, asset_id: int) -> np.ndarray | None:
        """The main (largest) face's 128-d embedding, or None when no face is found."""
        analysis = self.analysis(asset_id)
        if analysis is None or not analysis.faces:
            return None
        main = max(analysis.faces, key=lambda face: face.area)
        return np.asarray(main.embedding, dtype=np.float64)

    def quality_score(self, asset_id: int) -> float:
        """Higher is better: sharpness, less the clipped share, capped so one metric cannot dominate."""
        analysis = self.analysis(asset_id)
        if analysis is None:
            return 0.0
        q = analysis.quality
        return min(q.sharpness, 500.0) / 500.0 - (q.clipped_dark + q.clipped_bright)


class IdentityCheck(Frozen):
    """Is the face in an image the character's? `not measurable` when either side shows no face."""

    status: Literal["passed", "drifted", "not measurable"]
    distance: float | None = None
    threshold: float
    reason: str


def identity_check(
    reference: np.ndarray | None, candidate: np.ndarray | None, threshold: float
) -> IdentityCheck:
    if reference is None or candidate is None:
        which = "the reference" if reference is None else "the image"
        return IdentityCheck(
            status=NOT_MEASURABLE, threshold=threshold, reason=f"{NOT_MEASURABLE}: no face found in {which}"
        )
    distance = round(float(np.linalg.norm(reference - candidate)), 4)
    if distance <= threshold:
        return IdentityCheck(
            status="passed",
            distance=distance,
            threshold=threshold,
            reason=f"same person ({distance} ≤ {threshold})",
        )
    return IdentityCheck(
        status="drifted",
        distance=distance,
        threshold=threshold,
        reason=f"face drifted: distance {distance} > {threshold}",
    )


# -- parallel submission ----------------------------------------------------------------------------------
def run_parallel(tasks: Sequence[Callable[[], T]], workers: int) -> Iterator[T]:
    """Run the tasks on a thread pool and yield each result as it lands; the first failure is raised at
    once (queued tasks are dropped, running ones finish in the background)."""
    if not tasks:
        return
    pool = ThreadPoolExecutor(max_workers=max(1, min(workers, len(tasks))), thread_name_prefix="stage")
    pending: set[Future[T]] = {pool.submit(task) for task in tasks}
    try:
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                yield future.result()
    finally:
        pool.shutdown(wait=not pending, cancel_futures=True)


class StageProgress:
    """Image-level progress with a total that grows when a retry adds work (never 0/0)."""

    def __init__(self, ctx: JobContext, total: int, label: str) -> None:
        self.ctx, self.total, self.done, self.label = ctx, max(1, total), 0, label
        self._lock = threading.Lock()
        ctx.progress(0, self.total, f"{label}: {self.total} images")

    def add(self, extra: int) -> None:
        with self._lock:
            self.total += extra

    def step(self, message: str) -> None:
        with self._lock:
            self.done += 1
            done, total = self.done, self.total
        self.ctx.progress(done, total, message)


# -- edits behind the identity gate -----------------------------------------------------------------------
GateStatus = Literal["passed", "drifted", "not measurable"]


class GatedEdit(Frozen):
    """The last image of an edit that was redrawn while its face drifted, and what the gate said."""

    image: StageImage
    identity: IdentityCheck
    attempts: int
    status: GateStatus


def existing_stage_image(
    project: Project, character_name: str, stage: str, **match: Any
) -> StageImage | None:
    """An image a previous (interrupted) run of the same stage already stored: reused, not paid for again."""
    found = stage_assets(project, character_name, stage, **match)
    if not found:
        return None
    asset = found[-1]
    return StageImage(
        asset_id=asset.id,
        kind=asset.kind,
        seed=asset.seed,
        provider=asset.provider or "",
        model=asset.model or "",
        width=asset.width,
        height=asset.height,
        cost_usd=asset.cost_usd,
        file=str(project.blobs.path(asset.sha256)),
        attributes=dict(asset.attributes),
        note=TINY_NOTE if asset.model == TINY_MODEL_ID else None,
    )


def gated_edit(
    project: Project,
    character_name: str,
    ctx: JobContext,
    engines: StageEngines,
    probe: FaceProbe,
    progress: StageProgress,
    make_request: Callable[[int], GenerationRequest],
    kind: AssetKind,
    attributes: dict[str, Any],
    source_asset_id: int,
    reference: np.ndarray | None,
    retries: int,
) -> GatedEdit:
    """Edit, check the face against `reference`, and redraw with a new seed (attempt n → seed of n) while it
    drifts, at most `retries` times. `not measurable` keeps the image, flagged; it never counts as passed."""
    threshold = project.settings.identity_threshold
    attempt = 0
    while True:
        tagged = {**attributes, "attempt": attempt}
        image = existing_stage_image(
            project, character_name, tagged["stage"], **{k: v for k, v in tagged.items() if k != "stage"}
        )
        if image is None:
            image = generate_asset(
                project,
                character_name,
                make_request(attempt),
                kind,
                tagged,
                engines,
                ctx,
                parents=(source_asset_id,),
            )
        check = identity_check(reference, probe.embedding(image.asset_id), threshold)
        update_attributes(project, image.asset_id, identity=check.status, identity_distance=check.distance)
        label = " ".join(str(v) for k, v in attributes.items() if k != "stage")
        progress.step(f"{kind.value} {label} attempt {attempt + 1}: {check.reason}")
        if check.status != "drifted" or attempt >= retries:
            return GatedEdit(image=image, identity=check, attempts=attempt + 1, status=check.status)
        update_attributes(project, image.asset_id, rejected=True)
        attempt += 1
        progress.add(1)
