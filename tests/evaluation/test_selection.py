"""Selection rules and troubleshooting advice on scored samples: ties, symptoms, and nothing invented."""

from __future__ import annotations

from pathlib import Path

from flenwheel.evaluation.advice import troubleshoot
from flenwheel.evaluation.grid import CheckpointRef
from flenwheel.evaluation.selection import SampleRecord, select_best, summarise_cells

THRESHOLD = 0.48
KEYS = ("front-neutral", "half_left-smiling", "profile_left-angry", "full_body-standing", "front-sad")
CHECKPOINTS = [CheckpointRef(id=i, step=100 * i, epoch=i, path=Path(f"e{i}.safetensors")) for i in (1, 2, 3)]


def samples(checkpoint: int, strength: float, distances: list[float | None], **extra) -> list[SampleRecord]:
    """One sample per prompt; None = no face found."""
    return [
        SampleRecord(
            checkpoint_id=checkpoint,
            strength=strength,
            prompt_key=key,
            face_found=distance is not None,
            identity_distance=distance,
            **extra,
        )
        for key, distance in zip(KEYS, distances, strict=True)
    ]


def grid(rows: dict[tuple[int, float], list[float | None]], **extra) -> list[SampleRecord]:
    return [
        s for (checkpoint, strength), d in rows.items() for s in samples(checkpoint, strength, d, **extra)
    ]


def decide(records: list[SampleRecord], strengths=(0.6, 1.0), nsfw_character: bool = False, gaps=()):
    cells = summarise_cells(records, CHECKPOINTS, strengths, THRESHOLD, allow_nsfw=nsfw_character)
    selection = select_best(cells, THRESHOLD)
    advice = troubleshoot(
        cells, records, selection, THRESHOLD, 1e-4, dataset_gaps=gaps, character_nsfw=nsfw_character
    )
    return cells, selection, {item.code: item for item in advice}


def test_ties_go_to_the_earlier_checkpoint_and_the_lower_strength() -> None:
    same = [0.35, 0.36, 0.37, 0.38, 0.39]
    records = grid({(c, s): same for c in (1, 2, 3) for s in (0.6, 1.0)})
    _cells, selection, _advice = decide(records)
    assert (selection.step, selection.strength) == (100, 0.6)
    assert "a tie, so the earlier checkpoint / lower strength wins" in selection.reason


def test_likeness_only_at_full_strength_reads_as_undertrained() -> None:
    weak, strong = [0.6, 0.62, 0.3, 0.65, 0.7], [0.3, 0.32, 0.31, 0.35, 0.33]
    records = grid({(c, 0.6): weak for c in (1, 2, 3)} | {(c, 1.0): strong for c in (1, 2, 3)})
    _cells, selection, advice = decide(records)
    assert selection.strength == 1.0 and selection.meets_target
    assert "undertrained" in advice["undertrained"].remedy
    assert "100% at strength 1.0 but 20% at 0.6" in advice["undertrained"].evidence


def test_low_identity_everywhere_reads_as_underfit_and_names_the_dataset_gaps() -> None:
    strangers = [0.62, 0.7, 0.58, None, 0.66]
    records = grid({(c, s): strangers for c in (1, 2, 3) for s in (0.6, 1.0)})
    cells, selection, advice = decide(records, gaps=["at least 10 images (has 4)"])
    assert all(cell.success_rate == 0 for cell in cells) and not selection.meets_target
    underfit = advice["underfit"]
    assert "0% success" in underfit.evidence and "mean identity distance 0.64" in underfit.evidence
    assert "1e-04 → 3e-04" in underfit.remedy and "at least 10 images (has 4)" in underfit.remedy
    assert "ready" not in advice and "overfit" not in advice


def test_identity_still_rising_at_the_last_checkpoint_says_train_longer() -> None:
    records = grid(
        {
            (1, 1.0): [0.6, 0.6, 0.6, 0.6, 0.4],
            (2, 1.0): [0.6, 0.6, 0.6, 0.4, 0.4],
            (3, 1.0): [0.6, 0.6, 0.4, 0.4, 0.4],
        }
    )
    _cells, selection, advice = decide(records, strengths=(1.0,))
    assert selection.step == 300
    assert advice["still_improving"].evidence == "step 100 (epoch 1): 20% → step 300 (epoch 3): 60%"


def test_nsfw_images_fail_for_an_sfw_character_only() -> None:
    faces = [0.3, 0.31, 0.32, 0.33, 0.34]
    records = grid({(1, 1.0): faces}, nsfw_score=0.9)
    checkpoints_used = CHECKPOINTS[:1]
    cells = summarise_cells(records, checkpoints_used, (1.0,), THRESHOLD, allow_nsfw=False)
    selection = select_best(cells, THRESHOLD)
    advice = {a.code: a for a in troubleshoot(cells, records, selection, THRESHOLD)}
    assert cells[0].success_rate == 0 and cells[0].nsfw_flags == 5
    assert "5 of 5 images were flagged NSFW" in advice["nsfw"].evidence
    allowed = summarise_cells(records, checkpoints_used, (1.0,), THRESHOLD, allow_nsfw=True)
    assert allowed[0].success_rate == 1.0


def test_no_faces_anywhere_gives_no_numbers_and_says_so() -> None:
    records = grid({(c, s): [None] * 5 for c in (1, 2, 3) for s in (0.6, 1.0)})
    cells, selection, advice = decide(records)
    assert all(c.mean_similarity is None and c.spread is None and c.mean_distance is None for c in cells)
    assert not selection.measured and (selection.step, selection.strength) == (100, 0.6)
    assert selection.reason.startswith("No face was found in any of the 30 evaluation images")
    assert list(advice) == ["no_faces"]
    assert "identity cannot be measured" in advice["no_faces"].remedy


def test_a_body_image_in_the_wrong_pose_or_unmeasured_is_no_success() -> None:
    base = {"checkpoint_id": 1, "strength": 1.0, "prompt_key": "full_body-sitting", "face_found": True}
    match = {**base, "identity_distance": 0.3}
    assert SampleRecord(**match, pose="passed").success(0.48, allow_nsfw=False)
    assert not SampleRecord(**match, pose="drifted").success(0.48, allow_nsfw=False)
    assert not SampleRecord(**match, pose="not measurable").success(0.48, allow_nsfw=False)
    assert SampleRecord(**{**match, "prompt_key": "front-neutral"}).success(0.48, allow_nsfw=False)
