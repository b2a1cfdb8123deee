"""The studio checks each image it draws against the character's face, and seed 000's identity pass rate per
mode is counted from those checks: the same person passes, another person drifts, an image without a face is
`not measurable` — counted apart, never as a pass."""

from __future__ import annotations

from pathlib import Path

from flenwheel.characters import create_character
from flenwheel.datasets.ingest import ingest
from flenwheel.metrics import compute_stats
from flenwheel.pipeline.stage import RenderSize
from flenwheel.pipeline.studio import studio_generate
from flenwheel.store.models import Asset
from flenwheel.store.project import Project

from face_engines import PhotoEngine
from photos import FACES, LISA, london

SMALL = RenderSize(width=64, height=64, steps=1)


def test_studio_images_carry_their_identity_check_and_the_pass_rate_counts_only_measured_faces(
    project: Project,
) -> None:
    create_character(project, "lisa", "ohwx", "woman")
    ingest(project, "lisa", LISA[:2], reference=True)  # who lisa is
    shown: list[Path] = [*LISA[2:7], london(1), FACES / "non_face" / "4_brick.jpg"]
    engine = PhotoEngine("photo", pick=lambda request: shown[request.seed])
    results = [
        studio_generate(project, "lisa", "portrait", mode="text", seed=n, size=SMALL, providers=[engine])
        for n in range(len(shown))
    ]
    verdicts = [result.identity[0].status for result in results]
    assert verdicts == ["passed"] * 5 + ["drifted", "not measurable"]
    assert "the reference photos" in results[0].identity[0].reason
    with project.db.session() as session:
        stored = session.get_one(Asset, results[5].outputs[0].asset_id)
        assert stored.attributes["identity"] == "drifted"
        assert stored.attributes["identity_distance"] > project.settings.identity_threshold
        stats = compute_stats(session)
    [text] = stats.identity
    assert (text.mode, text.images, text.passed, text.drifted, text.not_measurable) == ("text", 7, 5, 1, 1)
    assert text.pass_rate == round(5 / 6, 4)  # the brick is not a pass and not a failure: not measurable
