"""Flywheel 2's training data (seed 001 step 2.1): correction triplets, their versions, and their exports.

Every image a person labels `needs_correction` becomes a triplet (source, edit instruction, corrected target):
the source is the image the flawed output was made from (its first parent asset; the flawed image itself when it
has none), the instruction is the edit prompt that made it (editable), the issue is the review's reason. A target
is attached from an uploaded corrected image. Complete triplets (a target and an instruction) are frozen into
immutable versions c1, c2, … — the editor LoRA's training input — and exported in the shapes editor trainers read:

- `ai-toolkit`: the edit-model dataset of ostris/ai-toolkit (config/examples/train_lora_qwen_image_edit_2509_32gb
  .yaml): `dataset/NNNN.EXT` targets + `dataset/NNNN.txt` (the instruction) and `control/NNNN.EXT` sources with
  the same file names — the layout flenwheel's ai-toolkit trainer takes for Qwen-Image-Edit — and a runnable
  `config.yaml` job (arch qwen_image_edit_plus) whose dataset names `folder_path` and `control_path`.
- `fal`: the zip fal's edit trainers take as `image_data_url` (fal-ai/flux-kontext-trainer, the Qwen-Image-Edit
  trainer): pairs `ROOT_start.EXT` (source) and `ROOT_end.EXT` (target), and `ROOT.txt` with the instruction.
- `diffsynth`: DiffSynth-Studio's edit metadata (examples/qwen_image/model_training, `--data_file_keys
  "image,edit_image" --extra_inputs "edit_image"`): `metadata.csv` with columns `image` (target), `prompt`,
  `edit_image` (source), paths relative to the export folder.

Each export also writes `triplets.json` in seed 001's shape (source_image, edit_prompt, target_image, issue,
improvement).
"""

from __future__ import annotations

import csv
import io
import json
import zipfile
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import yaml
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from flenwheel.captions import normalise_caption
from flenwheel.datasets.curate import current_review
from flenwheel.datasets.ingest import ingest_file
from flenwheel.domain import AssetKind, ReviewLabel
from flenwheel.errors import ExportError, InvalidInput
from flenwheel.store.models import Asset, CorrectionSet, CorrectionTriplet, utcnow
from flenwheel.store.project import Project, get_character

MAX_TEXT = 2000  # characters in an instruction, issue or improvement


class TripletFormat(StrEnum):
    AI_TOOLKIT = "ai-toolkit"
    FAL = "fal"
    DIFFSYNTH = "diffsynth"


@dataclass(frozen=True)
class TripletView:
    """A triplet as the CLI and the API show it. `complete`: it has a target and an instruction."""

    id: int
    flawed_asset_id: int
    source_asset_id: int
    target_asset_id: int | None
    instruction: str
    issue: str
    improvement: str
    dropped: bool

    @property
    def complete(self) -> bool:
        return self.target_asset_id is not None and bool(self.instruction.strip()) and not self.dropped

    def as_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "complete": self.complete}


@dataclass(frozen=True)
class TripletExport:
    format: TripletFormat
    out: Path
    version: str
    triplets: int
    files: list[Path]


def _view(row: CorrectionTriplet) -> TripletView:
    return TripletView(
        row.id,
        row.flawed_asset_id,
        row.source_asset_id,
        row.target_asset_id,
        row.instruction,
        row.issue,
        row.improvement,
        row.dropped,
    )


def _text(value: str, field: str) -> str:
    cleaned = normalise_caption(value)
    if len(cleaned) > MAX_TEXT:
        raise InvalidInput(f"the {field} is {len(cleaned)} characters long: keep it under {MAX_TEXT}")
    return cleaned


def collect_triplets(project: Project, character_name: str) -> list[TripletView]:
    """Make a triplet for every `needs_correction` image that has none yet; returns the new ones.

    The source is the flawed image's first parent that is an asset of this character (the image the edit was
    applied to), else the flawed image itself; the instruction is its prompt, the issue its review's reason."""
    made: list[TripletView] = []
    with project.db.session() as session:
        character = get_character(session, character_name)
        known = set(
            session.scalars(
                select(CorrectionTriplet.flawed_asset_id).where(
                    CorrectionTriplet.character_id == character.id
                )
            )
        )
        assets = session.scalars(select(Asset).where(Asset.character_id == character.id).order_by(Asset.id))
        for asset in assets:
            review = current_review(asset)
            if asset.id in known or review is None or review.label != ReviewLabel.NEEDS_CORRECTION:
                continue
            row = CorrectionTriplet(
                character_id=character.id,
                flawed_asset_id=asset.id,
                source_asset_id=_source_of(session, asset),
                instruction=_text(asset.prompt or "", "instruction"),
                issue=_text(review.reason or "", "issue"),
                improvement="",
            )
            session.add(row)
            try:
                session.flush()
            except IntegrityError:  # a concurrent collect made it first
                session.rollback()
                continue
            made.append(_view(row))
    return made


def _source_of(session: Session, asset: Asset) -> int:
    for parent in asset.parents or []:
        if isinstance(parent, int) and not isinstance(parent, bool):
            found = session.get(Asset, parent)
            if found is not None and found.character_id == asset.character_id:
                return found.id
    return asset.id


def list_triplets(project: Project, character_name: str, include_dropped: bool = False) -> list[TripletView]:
    with project.db.session() as session:
        character = get_character(session, character_name)
        query = select(CorrectionTriplet).where(CorrectionTriplet.character_id == character.id)
        if not include_dropped:
            query = query.where(CorrectionTriplet.dropped.is_(False))
        return [_view(row) for row in session.scalars(query.order_by(CorrectionTriplet.id))]


def _triplet(session: Session, character_name: str, triplet_id: int) -> CorrectionTriplet:
    character = get_character(session, character_name)
    row = session.get(CorrectionTriplet, triplet_id)
    if row is None or row.character_id != character.id:
        raise InvalidInput(
            f"{character.name} has no correction triplet {triplet_id}: "
            f"`flenwheel corrections ls {character.name}` lists them"
        )
    return row


def edit_triplet(
    project: Project,
    character_name: str,
    triplet_id: int,
    instruction: str | None = None,
    issue: str | None = None,
    improvement: str | None = None,
) -> TripletView:
    """Change a triplet's texts (None leaves one as it is); a dropped triplet comes back when edited."""
    with project.db.session() as session:
        row = _triplet(session, character_name, triplet_id)
        if instruction is not None:
            row.instruction = _text(instruction, "instruction")
        if issue is not None:
            row.issue = _text(issue, "issue")
        if improvement is not None:
            row.improvement = _text(improvement, "improvement")
        row.dropped = False
        row.updated_at = utcnow()
        session.flush()
        return _view(row)


def drop_triplet(project: Project, character_name: str, triplet_id: int) -> TripletView:
    """Leave a triplet out of the next versions (kept on record; `edit` brings it back)."""
    with project.db.session() as session:
        row = _triplet(session, character_name, triplet_id)
        row.dropped = True
        row.updated_at = utcnow()
        session.flush()
        return _view(row)


def attach_target(
    project: Project, character_name: str, triplet_id: int, image: Path, improvement: str | None = None
) -> TripletView:
    """Store `image` (checked like any ingested photo) as the triplet's corrected target.

    Raises InvalidInput when the file is not a usable image (the reason and the fix in the message), or is the
    triplet's own source or flawed image (a correction must differ from both)."""
    with project.db.session() as session:
        row = _triplet(session, character_name, triplet_id)
        character_id, name = row.character_id, get_character(session, character_name).name
        flawed, source = row.flawed_asset_id, row.source_asset_id
    outcome = ingest_file(project, character_id, image, image.name, False)
    if outcome.asset_id is None:
        raise InvalidInput(
            f"{image}: {outcome.detail or outcome.reason} — attach a readable JPEG, PNG or WebP"
        )
    if outcome.asset_id in (flawed, source):
        raise InvalidInput(
            f"{image} is the triplet's own {'flawed' if outcome.asset_id == flawed else 'source'} image: "
            "attach the corrected version"
        )
    with project.db.session() as session:
        asset = session.get_one(Asset, outcome.asset_id)
        if outcome.status == "added":
            asset.kind = AssetKind.CORRECTED
            asset.parents = [flawed]
        row = _triplet(session, name, triplet_id)
        row.target_asset_id = asset.id
        if improvement is not None:
            row.improvement = _text(improvement, "improvement")
        row.dropped = False
        row.updated_at = utcnow()
        session.flush()
        return _view(row)


def build_triplet_set(project: Project, character_name: str) -> tuple[CorrectionSet, bool]:
    """Freeze the complete triplets into the next version; returns (version, created).

    The same triplets as the newest version give that version back (created False); two builds at once both
    answer with one version (the loser of the number retries and compares with it). Raises InvalidInput when no
    triplet is complete, naming what the incomplete ones lack."""
    for attempt in range(3):
        try:
            return _build_triplet_set(project, character_name)
        except IntegrityError:
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


def _build_triplet_set(project: Project, character_name: str) -> tuple[CorrectionSet, bool]:
    with project.db.session() as session:
        character = get_character(session, character_name)
        rows = list(
            session.scalars(
                select(CorrectionTriplet)
                .where(CorrectionTriplet.character_id == character.id, CorrectionTriplet.dropped.is_(False))
                .order_by(CorrectionTriplet.id)
            )
        )
        complete = [row for row in rows if _view(row).complete]
        if not complete:
            lacking = [
                f"#{row.id} needs {'a corrected image' if row.target_asset_id is None else 'an instruction'}"
                for row in rows
            ]
            raise InvalidInput(
                f"{character.name} has no complete correction triplet"
                + (
                    f" ({'; '.join(lacking[:5])})"
                    if lacking
                    else " (label images needs_correction, then collect)"
                )
                + ": attach corrected images with `flenwheel corrections attach`"
            )
        items = [_frozen(session, row) for row in complete]
        newest = session.scalar(
            select(CorrectionSet)
            .where(CorrectionSet.character_id == character.id)
            .order_by(CorrectionSet.number.desc())
            .limit(1)
        )
        if newest is not None and newest.items == items:
            session.expunge(newest)
            return newest, False
        number = (newest.number if newest is not None else 0) + 1  # a concurrent build collides (versions.py)
        version = CorrectionSet(character_id=character.id, number=number, items=items)
        session.add(version)
        session.flush()
        session.refresh(version)
        session.expunge(version)
        return version, True


def _frozen(session: Session, row: CorrectionTriplet) -> dict[str, Any]:
    assert row.target_asset_id is not None
    source = session.get_one(Asset, row.source_asset_id)
    target = session.get_one(Asset, row.target_asset_id)
    return {
        "triplet": row.id,
        "source": {"asset": source.id, "sha256": source.sha256, "format": source.format},
        "target": {"asset": target.id, "sha256": target.sha256, "format": target.format},
        "instruction": row.instruction,
        "issue": row.issue,
        "improvement": row.improvement,
    }


def get_triplet_set(project: Project, character_name: str, number: int | None = None) -> CorrectionSet:
    with project.db.session() as session:
        character = get_character(session, character_name)
        query = select(CorrectionSet).where(CorrectionSet.character_id == character.id)
        query = query.where(CorrectionSet.number == number) if number is not None else query
        version = session.scalar(query.order_by(CorrectionSet.number.desc()).limit(1))
        if version is None:
            what = f"no correction set c{number}" if number is not None else "no correction set yet"
            raise InvalidInput(f"{character.name} has {what}: `flenwheel corrections build {character.name}`")
        session.expunge(version)
        return version


EDITOR_BASE_MODEL = "Qwen/Qwen-Image-Edit-2509"  # seeds 001 and 002's editor


def editor_job_config(label: str, root: Path, samples: list[dict[str, str]]) -> dict[str, Any]:
    """ai-toolkit's job for an editor LoRA on Qwen-Image-Edit-2509 (arch qwen_image_edit_plus) over an export
    in `root` (`dataset/` targets with their instructions, `control/` sources of the same names): seed 002's
    LoRA settings (rank 16, alpha 16, lr 2e-4, adamw8bit, int8), about 10 epochs, a checkpoint every ~2 epochs,
    and samples that edit the first triplets' own sources (ai-toolkit's `ctrl_img_1`)."""
    from flenwheel.datasets.export import AiToolkitRun, ai_toolkit_config

    steps = max(100, 10 * len(samples))
    run = AiToolkitRun(
        base_model=EDITOR_BASE_MODEL,
        family="qwen-image-edit",
        learning_rate=2e-4,
        steps=steps,
        save_every=max(1, steps // 5),
        max_step_saves_to_keep=6,
        control_dir=str(root / "control"),
    )
    config = ai_toolkit_config(f"editor_{label}", root / "dataset", "", run)
    process = config["config"]["process"][0]
    process.pop("trigger_word", None)  # an editor follows instructions; it has no trigger word
    process["sample"]["samples"] = samples[:4]
    process["sample"].pop("prompts", None)
    return config


def export_triplets(
    project: Project, character_name: str, fmt: TripletFormat | str, out: Path, number: int | None = None
) -> TripletExport:
    """Write a correction set (the newest by default) into `out` (new or empty) in `fmt`'s layout.

    Raises ExportError for an unknown format or an unusable folder, InvalidInput when there is no set."""
    from flenwheel.datasets.export import prepare_out

    try:
        fmt = TripletFormat(fmt)
    except ValueError:
        allowed = ", ".join(f.value for f in TripletFormat)
        raise ExportError(f"unknown correction export format {fmt!r}: use one of {allowed}") from None
    version = get_triplet_set(project, character_name, number)
    root = prepare_out(out, project)
    pairs = [
        (
            f"{position + 1:04d}",
            item,
            project.blobs.get(item["source"]["sha256"]),
            project.blobs.get(item["target"]["sha256"]),
        )
        for position, item in enumerate(version.items)
    ]
    files: list[Path] = []
    if fmt == TripletFormat.AI_TOOLKIT:
        (root / "dataset").mkdir()
        (root / "control").mkdir()
        samples = []
        for stem, item, source, target in pairs:
            control = root / "control" / f"{stem}.{item['source']['format']}"
            control.write_bytes(source)
            (root / "dataset" / f"{stem}.{item['target']['format']}").write_bytes(target)
            (root / "dataset" / f"{stem}.txt").write_text(item["instruction"] + "\n", encoding="utf-8")
            samples.append({"prompt": item["instruction"], "ctrl_img_1": str(control)})
        files.append(root / "config.yaml")
        files[-1].write_text(
            yaml.safe_dump(
                editor_job_config(version.label, root, samples), sort_keys=False, allow_unicode=True
            ),
            encoding="utf-8",
        )
    elif fmt == TripletFormat.FAL:
        target_zip = root / f"corrections_{version.label}.zip"
        with zipfile.ZipFile(target_zip, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            for stem, item, source, target in pairs:
                archive.writestr(f"{stem}_start.{item['source']['format']}", source)
                archive.writestr(f"{stem}_end.{item['target']['format']}", target)
                archive.writestr(f"{stem}.txt", item["instruction"] + "\n")
        files.append(target_zip)
    else:
        (root / "images").mkdir()
        (root / "edit_images").mkdir()
        table = io.StringIO()
        writer = csv.writer(table, lineterminator="\n")
        writer.writerow(["image", "prompt", "edit_image"])
        for stem, item, source, target in pairs:
            image = f"images/{stem}.{item['target']['format']}"
            edit_image = f"edit_images/{stem}.{item['source']['format']}"
            (root / image).write_bytes(target)
            (root / edit_image).write_bytes(source)
            writer.writerow([image, item["instruction"], edit_image])
        files.append(root / "metadata.csv")
        files[-1].write_text(table.getvalue(), encoding="utf-8")
    document = [
        {
            "source_image": f"{stem}.{item['source']['format']}",
            "edit_prompt": item["instruction"],
            "target_image": f"{stem}.{item['target']['format']}",
            "issue": item["issue"],
            "improvement": item["improvement"],
            "source_sha256": item["source"]["sha256"],
            "target_sha256": item["target"]["sha256"],
        }
        for stem, item, _source, _target in pairs
    ]
    files.append(root / "triplets.json")
    files[-1].write_text(json.dumps({"version": version.label, "triplets": document}, indent=2) + "\n")
    return TripletExport(fmt, root, version.label, len(pairs), files)
