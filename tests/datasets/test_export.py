"""Exports read back the way kohya sd-scripts, ai-toolkit and fal's trainer read them."""

from __future__ import annotations

import json
import re
import tomllib
import zipfile
from pathlib import Path

import pytest
import yaml
from PIL import Image

from flenwheel.characters import create_character
from flenwheel.datasets.curate import curate
from flenwheel.datasets.export import export_dataset
from flenwheel.datasets.ingest import ingest
from flenwheel.datasets.review import review_asset, set_caption
from flenwheel.datasets.versions import build_dataset_version
from flenwheel.errors import DatasetEmpty, ExportError
from flenwheel.store.project import Project

from photos import LISA, london

# sd-scripts library/train_util.py IMAGE_EXTENSIONS; ai-toolkit's data loader list.
KOHYA_EXTENSIONS = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}
AI_TOOLKIT_EXTENSIONS = {".jpg", ".jpeg", ".png", ".webp"}


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Project:
    from flenwheel.config import Settings

    project = Project.init(Settings(project=tmp_path_factory.mktemp("export") / "p"))
    create_character(project, "lisa", "ohwx", "woman")
    ingest(project, "lisa", [*LISA, london(4)])
    curate(project, "lisa")
    build_dataset_version(project, "lisa")
    return project


def read_like_kohya(config_path: Path) -> list[tuple[Path, str, int, str]]:
    """What sd-scripts' DreamBooth dataset sees: (image, caption, repeats, class_tokens) per image."""
    config = tomllib.loads(config_path.read_text())
    seen = []
    for dataset in config["datasets"]:
        for subset in dataset["subsets"]:
            extension = subset.get(
                "caption_extension", config["general"].get("caption_extension", ".caption")
            )
            image_dir = Path(subset["image_dir"])
            for image in sorted(p for p in image_dir.glob("*") if p.suffix.lower() in KOHYA_EXTENSIONS):
                caption_file = image.with_suffix(extension)
                lines = caption_file.read_text(encoding="utf-8").splitlines()
                assert lines and lines[0].strip(), f"kohya: caption file is empty for {image}"
                seen.append((image, lines[0].strip(), subset["num_repeats"], subset["class_tokens"]))
    return seen


def test_kohya_export(built: Project, tmp_path: Path) -> None:
    result = export_dataset(built, "lisa", "kohya", tmp_path / "kohya")
    images = read_like_kohya(result.files[0])
    assert len(images) == 8
    folder = images[0][0].parent
    match = re.fullmatch(r"(\d+)_(.+)", folder.name)  # also right for kohya runs without the TOML
    assert match and int(match.group(1)) == images[0][2] and match.group(2) == "ohwx woman"
    assert all(caption.startswith("photo of ohwx woman") for _, caption, _, _ in images)
    assert all(Image.open(image).size == (600, 800) for image, *_ in images)
    assert all(tokens == "ohwx woman" for *_, tokens in images)


def test_ai_toolkit_export(built: Project, tmp_path: Path) -> None:
    result = export_dataset(built, "lisa", "ai-toolkit", tmp_path / "ait")
    config = yaml.safe_load(result.files[0].read_text())
    assert config["job"] == "extension" and "meta" in config
    [process] = config["config"]["process"]
    assert process["type"] == "sd_trainer" and process["network"]["type"] == "lora"
    trigger = process["trigger_word"]
    [dataset] = process["datasets"]
    folder = Path(dataset["folder_path"])
    images = sorted(p for p in folder.rglob("*") if p.suffix.lower() in AI_TOOLKIT_EXTENSIONS)
    assert len(images) == 8
    for image in images:
        raw = image.with_suffix("." + dataset["caption_ext"].lstrip(".")).read_text(encoding="utf-8")
        assert "[trigger]" in raw
        caption = raw.replace("[trigger]", trigger).strip()  # ai-toolkit's inject_trigger_into_prompt
        assert caption.startswith("photo of ohwx woman")
    assert all("[trigger]" in prompt for prompt in process["sample"]["prompts"])


def test_fal_zip_export(built: Project, tmp_path: Path) -> None:
    result = export_dataset(built, "lisa", "zip", tmp_path / "fal")
    archive = next(f for f in result.files if f.suffix == ".zip")
    with zipfile.ZipFile(archive) as z:
        names = z.namelist()
        images = [n for n in names if Path(n).suffix.lower() in {".jpg", ".jpeg", ".png", ".webp"}]
        assert len(images) >= 4  # fal's trainer wants at least four
        for name in images:
            assert "/" not in name and not name.startswith("__MACOSX")
            caption = z.read(str(Path(name).with_suffix(".txt"))).decode()
            assert "ohwx" in caption  # fal ignores trigger_word when captions exist
        assert len(names) == 2 * len(images)


def test_metadata_json_has_seed_001_shape(built: Project, tmp_path: Path) -> None:
    result = export_dataset(built, "lisa", "kohya", tmp_path / "k")
    document = json.loads((result.out / "metadata.json").read_text())
    assert document["dataset_version"] == "v1"
    first = document["images"][0]
    assert {"filename", "caption", "angle", "expression", "quality"} <= set(first)
    exported = {p.name for p in (result.out / "img").rglob("*.jpg")}
    assert {image["filename"] for image in document["images"]} == exported


def test_export_refuses_to_overwrite_or_escape(built: Project, tmp_path: Path) -> None:
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "keep.txt").write_text("mine")
    with pytest.raises(ExportError, match="not empty"):
        export_dataset(built, "lisa", "kohya", occupied)
    assert (occupied / "keep.txt").read_text() == "mine"
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(ExportError, match="is a file"):
        export_dataset(built, "lisa", "zip", tmp_path / "a_file")
    with pytest.raises(ExportError, match="unknown export format"):
        export_dataset(built, "lisa", "diffusers", tmp_path / "new")
    before = {p for p in tmp_path.parent.iterdir()}
    export_dataset(built, "lisa", "kohya", tmp_path / "inside")
    assert {p for p in tmp_path.parent.iterdir()} == before  # nothing written beside --out


def test_composition_report_marks_targets(built: Project) -> None:
    from flenwheel.datasets.versions import get_dataset_version

    composition = get_dataset_version(built, "lisa").composition
    targets = {t["target"]: t for t in composition["targets"]}
    assert targets["at least 10 images"]["met"] is False and targets["at least 10 images"]["actual"] == "8"
    assert targets["all images captioned"]["met"] is True
    assert targets["at least 2 angles"]["met"] is False  # every demo photo is frontal
    assert sum(composition["shots"].values()) == 8


def test_building_with_nothing_good_says_what_to_do(project: Project) -> None:
    create_character(project, "empty", "ohwx_e", "person")
    with pytest.raises(DatasetEmpty, match="flenwheel curate empty"):
        build_dataset_version(project, "empty")


BOM_CAPTION = "\ufeffphoto of ohwx\u200b woman, smiling\u200d at the camera"
CLEAN_CAPTION = "photo of ohwx woman, smiling at the camera"


def _exported_captions(project: Project, out: Path) -> dict[str, bytes]:
    """Every caption byte string a trainer would read, per export format and file."""
    found: dict[str, bytes] = {}
    for fmt in ("kohya", "ai-toolkit", "zip"):
        result = export_dataset(project, "lisa", fmt, out / fmt)
        for path in result.out.rglob("*.txt"):
            found[f"{fmt}/{path.name}"] = path.read_bytes()
        for archive in result.out.rglob("*.zip"):
            with zipfile.ZipFile(archive) as z:
                for name in z.namelist():
                    if name.endswith(".txt"):
                        found[f"{fmt}/zip/{name}"] = z.read(name)
        document = json.loads((result.out / "metadata.json").read_bytes().decode("utf-8"))
        for image in document["images"]:
            found[f"{fmt}/metadata.json/{image['filename']}"] = image["caption"].encode()
    return found


def test_invisible_characters_never_reach_an_export(project: Project, tmp_path: Path) -> None:
    """Issue 10 case 12: a caption pasted with a BOM and zero-width characters is stored clean, and an export
    of a version stored with them (by an older flenwheel) writes clean bytes to every format."""
    from sqlalchemy import select

    from flenwheel.store.models import DatasetItem

    create_character(project, "lisa", "ohwx", "woman")
    ingest(project, "lisa", LISA[:2])
    for photo in LISA[:2]:
        review_asset(project, "lisa", photo.name, "good")
    curate(project, "lisa")
    assert set_caption(project, "lisa", LISA[0].name, BOM_CAPTION) == CLEAN_CAPTION
    build_dataset_version(project, "lisa")
    captions = _exported_captions(project, tmp_path / "new")
    assert CLEAN_CAPTION.encode() + b"\n" in captions.values()
    with project.db.session() as session:  # a version an older flenwheel built with the raw caption
        item = session.scalars(select(DatasetItem).where(DatasetItem.caption == CLEAN_CAPTION)).one()
        item.caption = BOM_CAPTION
    captions = _exported_captions(project, tmp_path / "legacy")
    assert len(captions) == 3 * 2 + 3 * 2  # .txt (kohya, ai-toolkit, inside the zip) + metadata.json entries
    for where, data in captions.items():
        text = data.decode("utf-8")
        assert not any(char in text for char in "\ufeff\u200b\u200d"), where
        assert text.startswith("photo of ohwx woman") or text.startswith("photo of [trigger] woman"), where
    assert CLEAN_CAPTION.encode() + b"\n" in captions.values()


def test_the_kohya_toml_keeps_any_folder_name_and_class_tokens_exactly() -> None:
    from flenwheel.datasets.export import kohya_dataset_toml

    folder = Path('/data/"quoted" \\ back\tslash/ünï 🙂/10_ohwx woman')
    written = kohya_dataset_toml(folder, 10, 'ohwx "woman"\n]] [x]', resolution=768, enable_bucket=False)
    config = tomllib.loads(written)
    assert config["general"] == {"shuffle_caption": False, "caption_extension": ".txt", "keep_tokens": 1}
    [dataset] = config["datasets"]
    assert (dataset["resolution"], dataset["batch_size"], dataset["enable_bucket"]) == (768, 1, False)
    assert dataset["subsets"] == [
        {
            "image_dir": str(folder),
            "num_repeats": 10,
            "class_tokens": 'ohwx "woman"\n]] [x]',
            "caption_extension": ".txt",
        }
    ]


def test_a_version_rebuilt_from_its_record_gives_the_same_bytes(built: Project, tmp_path: Path) -> None:
    """Seed 001 step 1.8: a dataset version is a record, not a folder — exported again later (after more photos
    and labels changed), every format gives the same files, byte for byte, as the first time."""
    import hashlib

    def digest(folder: Path) -> dict[str, str]:
        found: dict[str, str] = {}
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            data = path.read_bytes().replace(str(folder).encode(), b"<out>")  # configs name their own folder
            if path.suffix == ".zip":
                with zipfile.ZipFile(path) as archive:
                    data = b"".join(n.encode() + archive.read(n) for n in sorted(archive.namelist()))
            found[path.relative_to(folder).as_posix()] = hashlib.sha256(data).hexdigest()
        return found

    version = 1
    before = {
        fmt: digest(export_dataset(built, "lisa", fmt, tmp_path / f"a-{fmt}", version).out)
        for fmt in ("kohya", "ai-toolkit", "zip")
    }
    ingest(built, "lisa", [london(5)])  # the character moves on: a new photo, a changed label
    review_asset(built, "lisa", "1", "reject", "changed my mind")
    after = {
        fmt: digest(export_dataset(built, "lisa", fmt, tmp_path / f"b-{fmt}", version).out)
        for fmt in ("kohya", "ai-toolkit", "zip")
    }
    assert before == after and all(before.values())
