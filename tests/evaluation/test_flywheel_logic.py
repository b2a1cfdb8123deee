"""The flywheel's pure parts on real photos measured by the real dlib model: model-card coverage from measured
tags, the prompt matrix that fills gaps first, the candidate filter (others removed, false-negative rate), and
the v(N)-vs-v(N+1) comparison deciding better / worse / not distinguishable / not measurable."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from flenwheel.datasets.analysis import analyze_image
from flenwheel.domain import AssetAnalysis
from flenwheel.errors import InvalidInput
from flenwheel.evaluation.candidate_filter import Candidate, false_negative_rate, filter_candidates
from flenwheel.evaluation.comparison import (
    BenchmarkSide,
    compare_benchmarks,
    mcnemar_exact_p,
    wilson_interval,
)
from flenwheel.evaluation.coverage import ImageTags, coverage
from flenwheel.evaluation.prompts import QUICK_KEYS, prompt_seed
from flenwheel.evaluation.scoring import ReferenceSet
from flenwheel.evaluation.selection import SampleRecord
from flenwheel.faces.identity import IdentityReference
from flenwheel.pipeline.flywheel import FlywheelOptions, prompt_matrix
from flenwheel.quality import QualityThresholds

from photos import LISA, POSES, london

THRESHOLD = 0.48  # config.Settings.identity_threshold
TRAINING = LISA[:4]
GENUINE = LISA[4:]  # the same woman, photos the references do not contain
OTHERS = [london(n) for n in range(1, 7)] + [london(n, "smiling") for n in (1, 2)]
BODIES = [POSES / "t_pose.jpg", POSES / "standing.jpg"]  # people in full body, in two model-card poses


@pytest.fixture(scope="module")
def measured() -> dict[Path, AssetAnalysis]:
    from flenwheel.faces.dlib_backend import DlibFaceAnalyzer
    from flenwheel.poses.mediapipe_backend import shared_pose_analyzer

    analyzer, poses = DlibFaceAnalyzer(), shared_pose_analyzer()
    return {
        path: analyze_image(Image.open(path).convert("RGB"), analyzer, poses)
        for path in [*LISA, *OTHERS, *BODIES]
    }


def tags(analysis: AssetAnalysis) -> ImageTags:
    return ImageTags.of(analysis)


def references(measured: dict[Path, AssetAnalysis]) -> ReferenceSet:
    embeddings = np.stack([np.asarray(measured[p].faces[0].embedding) for p in TRAINING])
    return ReferenceSet(
        identity=IdentityReference(tuple(range(1, 5)), embeddings, "the training images"),
        training_hashes=tuple((i, measured[p].quality.phash) for i, p in enumerate(TRAINING, start=1)),
        threshold=THRESHOLD,
        duplicate_bits=6,
    )


def test_coverage_of_real_photos_against_the_model_card(measured: dict[Path, AssetAnalysis]) -> None:
    training = coverage(tags(measured[p]) for p in TRAINING)  # four frontal, neutral close-ups
    assert len(training.cells) == 23 and training.images == 4
    assert training.cell("front-neutral").state == "covered" and training.cell("front-neutral").count == 4
    assert training.cell("front-smiling").state == "missing"
    # angry and sad cannot be told from neutral by the analyser: never claimed covered, never called missing
    assert training.cell("front-angry").state == "not measured"
    assert training.cell("profile_left-neutral").state == "missing"  # measured: no face turned that way
    assert training.cell("profile_left-angry").state == "missing"  # no image at that angle at all
    assert {training.cell(f"full_body-{pose}").state for pose in ("t_pose", "standing", "sitting")} == {
        "missing"
    }
    assert training.count("covered") == 1

    smiles = [london(1, "smiling"), london(2, "smiling")]
    assert all(measured[p].expression == "smiling" and measured[p].angle == "front" for p in smiles)
    more = coverage(tags(measured[p]) for p in [*TRAINING, *smiles])
    assert more.cell("front-smiling").state == "covered" and more.count("covered") == 2
    bodies = coverage(tags(measured[p]) for p in [*TRAINING, *BODIES])  # the body pose, measured
    assert bodies.cell("full_body-t_pose").state == "thin" and bodies.cell("full_body-t_pose").count == 1
    # the standing card asks a standing body facing front; the T-pose photo stands too
    assert (
        bodies.cell("full_body-standing").state == "covered" and bodies.cell("full_body-standing").count == 2
    )
    assert bodies.cell("full_body-sitting").state == "missing"
    order = [cell.state for cell in more.gap_order()]
    assert order == sorted(order, key=["missing", "thin", "not measured", "covered"].index)


def test_the_prompt_matrix_fills_gaps_first_with_fixed_seeds_per_round(
    measured: dict[Path, AssetAnalysis],
) -> None:
    current = coverage(tags(measured[p]) for p in TRAINING)
    options = FlywheelOptions(prompts=25, variants=4)
    prompts = prompt_matrix(current, "ohwx woman", options, round_number=1)
    keys = [p.key for p in prompts]
    missing = [c.key for c in current.cells if c.state == "missing"]
    assert keys[: len(missing)] == missing  # every missing cell before anything else
    assert "front-neutral" not in keys  # covered: no prompt spent on it
    assert keys[-1].startswith("scenario-")  # novel scenarios after the gaps
    assert all(len(set(p.seeds)) == 4 for p in prompts)
    assert "profile-left view" in prompts[keys.index("profile_left-neutral")].text
    assert prompt_matrix(current, "ohwx woman", options, 1) == prompts  # a rerun draws the same images
    again = prompt_matrix(current, "ohwx woman", options, round_number=2)
    assert {s for p in again for s in p.seeds}.isdisjoint({s for p in prompts for s in p.seeds})
    assert not any(p.nsfw for p in prompts)


def test_the_filter_removes_other_people_and_reports_its_false_negatives(
    measured: dict[Path, AssetAnalysis],
) -> None:
    pool = [*GENUINE, *OTHERS, TRAINING[0]]  # a copy of a training image among them
    ids = {path: index for index, path in enumerate(pool, start=100)}
    report = filter_candidates(
        [Candidate(asset_id=ids[p], analysis=measured[p]) for p in pool],
        references(measured),
        QualityThresholds(),
        coverage(tags(measured[p]) for p in TRAINING).gaps(),
    )
    verdict = {v.asset_id: v for v in report.verdicts}
    assert all(not verdict[ids[p]].kept and "another person" in verdict[ids[p]].removed_for for p in OTHERS)
    assert "near copy" in verdict[ids[TRAINING[0]]].removed_for
    fnr = false_negative_rate(report, {ids[p] for p in GENUINE})
    print(f"filter on {len(pool)} real photos: removed {report.removed_share:.0%}, false negatives {fnr:.0%}")
    assert fnr is not None and fnr <= 0.25  # at most one of lisa's four unseen photos lost
    assert report.removed == report.candidates - report.kept and report.removed_by["another person"] == 8
    queue = report.queue
    assert [v.rank for v in queue] == list(range(1, len(queue) + 1))
    assert [v.margin for v in queue] == sorted((v.margin for v in queue), reverse=True)  # surest first


def sample(key: str, distance: float | None) -> SampleRecord:
    return SampleRecord(
        checkpoint_id=1,
        strength=1.0,
        prompt_key=key,
        face_found=distance is not None,
        identity_distance=distance,
    )


def side(label: str, distances: list[float | None]) -> BenchmarkSide:
    return BenchmarkSide(
        label=label,
        samples=tuple(sample(key, d) for key, d in zip(QUICK_KEYS, distances, strict=True)),
        seeds={key: prompt_seed(key) for key in QUICK_KEYS},
        threshold=THRESHOLD,
    )


def test_the_comparison_decides_on_measured_identity(measured: dict[Path, AssetAnalysis]) -> None:
    refs = references(measured)

    def distance(path: Path) -> float:
        return refs.identity.distance(np.asarray(measured[path].faces[0].embedding))

    lisa = [distance(p) for p in GENUINE] + [distance(GENUINE[0]), distance(GENUINE[1])]
    strangers = [distance(p) for p in OTHERS[:6]]
    assert max(lisa) <= THRESHOLD < min(strangers)

    better = compare_benchmarks(side("v1", strangers), side("v2", lisa))
    assert better.verdict == "better" and better.target_met is True
    assert better.discordant == (0, 6) and better.p_value == pytest.approx(2 / 64, abs=1e-4)
    assert better.after.interval[0] > 0.5 and better.before.interval == (0.0, pytest.approx(0.3903, abs=1e-3))
    assert {c.change for c in better.cells} == {"improved"}
    assert "better" in better.summary and "target is met" in better.summary

    worse = compare_benchmarks(side("v1", lisa), side("v2", strangers))
    assert worse.verdict == "worse" and worse.target_met is False

    # two prompts fixed and one broken out of six: real, but not distinguishable at this sample size
    mixed = compare_benchmarks(
        side("v1", [*strangers[:2], lisa[0], *strangers[2:]][:6]),
        side("v2", [lisa[1], lisa[2], strangers[0], *strangers[1:4]]),
    )
    assert mixed.verdict == "not distinguishable" and mixed.discordant == (1, 2)
    assert "not distinguishable" in mixed.summary and "6 prompts" in mixed.summary

    blind = compare_benchmarks(side("v1", strangers), side("v2", [None] * 6))  # the tiny model: no faces
    assert blind.verdict == "not measurable" and blind.target_met is None and blind.p_value is None
    assert "not measurable" in blind.summary


def test_the_comparison_refuses_different_prompts_or_seeds() -> None:
    other = side("v2", [0.3] * 6).model_copy(update={"seeds": {key: 1 for key in QUICK_KEYS}})
    with pytest.raises(InvalidInput, match="different prompts or seeds"):
        compare_benchmarks(side("v1", [0.3] * 6), other)


@pytest.mark.parametrize(
    ("successes", "n", "low", "high"),
    [(0, 10, 0.0, 0.2775), (10, 10, 0.7225, 1.0), (8, 10, 0.4902, 0.9433), (0, 0, 0.0, 1.0)],
)
def test_wilson_interval_matches_published_values(successes: int, n: int, low: float, high: float) -> None:
    # Values as statsmodels' proportion_confint(method="wilson") gives them.
    assert wilson_interval(successes, n) == (pytest.approx(low, abs=1e-4), pytest.approx(high, abs=1e-4))


def test_mcnemar_exact_p() -> None:
    assert mcnemar_exact_p(0, 0) == 1.0
    assert mcnemar_exact_p(0, 5) == pytest.approx(0.0625)  # 2 · (½)⁵
    assert mcnemar_exact_p(1, 6) == pytest.approx(0.125)  # 2 · (1 + 7) / 128
