"""Seed 002's two-folder dataset: the identity-gated character set plus face-less body photos, built and exported
with each subset's own repeats (kohya folders + [[datasets.subsets]], ai-toolkit dataset entries, fal zip)."""

from __future__ import annotations

import tomllib
import zipfile
from pathlib import Path

import pytest
import yaml
from PIL import Image, ImageFilter

from flenwheel.characters import create_character
from flenwheel.config import Settings
from flenwheel.datasets.curate import curate
from flenwheel.datasets.export import export_dataset
from flenwheel.datasets.ingest import ingest
from flenwheel.datasets.subsets import REALBODY, preset
from flenwheel.datasets.versions import build_dataset_version
from flenwheel.domain import ReviewLabel
from flenwheel.poses.mediapipe_backend import shared_pose_analyzer
from flenwheel.store.project import Project

from photos import LISA, POSES, london


def faceless(source: Path, target: Path) -> Path:
    """The photo with the head blurred away (located by the body-pose model's face landmarks 0–10), at least
    512 px on its short side."""
    image = Image.open(source).convert("RGB")
    body = shared_pose_analyzer().analyze(image)
    assert body is not None, source
    xs, ys = [p[0] for p in body.landmarks[:11]], [p[1] for p in body.landmarks[:11]]
    pad = max(max(xs) - min(xs), max(ys) - min(ys)) * 0.8
    box = tuple(int(v) for v in (min(xs) - pad, min(ys) - 1.3 * pad, max(xs) + pad, max(ys) + 0.6 * pad))
    image.paste(image.crop(box).filter(ImageFilter.GaussianBlur(12)), box[:2])
    scale = max(1.0, 512 / min(image.size))  # the quality gate's minimum short side is 256 px
    image = image.resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.LANCZOS)
    image.save(target, quality=95)
    return target


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Project:
    root = tmp_path_factory.mktemp("subsets")
    bodies = root / "bodies"
    bodies.mkdir()
    for name in ("standing", "arms_up", "t_pose", "squat"):
        faceless(POSES / f"{name}.jpg", bodies / f"{name}.jpg")
    project = Project.init(Settings(project=root / "project"))
    create_character(project, "lisa", "ohwx", "woman")
    ingest(project, "lisa", LISA)  # the character subset (no --subset)
    ingest(project, "lisa", [bodies, london(4)], subset=REALBODY)  # a face where a body should be
    curate(project, "lisa")
    return project


def test_body_photos_pass_their_own_gate_and_faces_stay_with_the_character(project: Project) -> None:
    report = curate(project, "lisa")
    by_file = {Path(d.file).stem: d for d in report.decisions}
    for name in ("standing", "arms_up", "t_pose", "squat"):  # face-less: "no face found" would reject them
        assert by_file[name].label == ReviewLabel.GOOD, by_file[name].reason
        assert "face-less body photo" in by_file[name].reason and "full body" in by_file[name].reason
        assert by_file[name].caption and "realistic_body" in by_file[name].caption
    face = by_file["neutral"]  # london_004/neutral.jpg: a face photo in the body subset
    assert face.label == ReviewLabel.REJECT and "a face is visible" in face.reason, face.reason
    character = [d for d in report.decisions if d.file in {p.name for p in LISA}]
    assert len(character) == len(LISA) and any(d.label == ReviewLabel.GOOD for d in character)
    assert all("realistic_body" not in (d.caption or "") for d in character)


def test_the_version_and_every_export_keep_each_subsets_repeats(project: Project, tmp_path: Path) -> None:
    version = build_dataset_version(project, "lisa").version
    report = version.composition["subsets"]
    groups = {group["name"]: group for group in report["subsets"]}
    assert set(groups) == {"char", "char_realbody"}
    char, body = groups["char"], groups["char_realbody"]
    assert body["images"] == 4 and (char["repeats"], body["repeats"]) == (40, 20)
    assert report["images_ratio"] == f"{round(100 * char['images'] / (char['images'] + 4))}:" + (
        f"{round(100 * 4 / (char['images'] + 4))}"
    )
    assert char["steps_per_epoch"] == char["images"] * 40 and body["steps_per_epoch"] == 80

    kohya = export_dataset(project, "lisa", "kohya", tmp_path / "kohya")
    config = tomllib.loads((kohya.out / "dataset_config.toml").read_text())
    subsets = {Path(s["image_dir"]).name: s for s in config["datasets"][0]["subsets"]}
    assert {name: s["num_repeats"] for name, s in subsets.items()} == {
        "40_ohwx_char": 40,
        "20_ohwx_char_realbody": 20,
    }
    body_dir = kohya.out / "img" / "20_ohwx_char_realbody"
    captions = [p.read_text() for p in body_dir.glob("*.txt")]
    assert len(captions) == 4 and all("ohwx woman, realistic_body" in c for c in captions)
    assert len(list((kohya.out / "img" / "40_ohwx_char").glob("*.txt"))) == char["images"]

    toolkit = export_dataset(project, "lisa", "ai-toolkit", tmp_path / "toolkit")
    [process] = yaml.safe_load((toolkit.out / "config.yaml").read_text())["config"]["process"]
    entries = {Path(d["folder_path"]).name: d["num_repeats"] for d in process["datasets"]}
    assert entries == {"dataset_char": 40, "dataset_char_realbody": 20}

    fal = export_dataset(project, "lisa", "zip", tmp_path / "zip")
    with zipfile.ZipFile(next(fal.out.glob("*.zip"))) as archive:
        texts = [archive.read(n).decode() for n in archive.namelist() if n.endswith(".txt")]
    assert len(texts) == char["images"] + 4 and sum("realistic_body" in t for t in texts) == 4


def test_unknown_subsets_are_refused_with_the_known_ones() -> None:
    with pytest.raises(Exception, match="use one of char, realbody"):
        preset("bodies")
    assert preset("realbody", 15).repeats == 15
