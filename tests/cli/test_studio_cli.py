"""`flenwheel generate / edit / upscale / providers` as a user runs them, on the embedded engines."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from patience import HANG_S
from photos import LISA

FLENWHEEL = Path(sys.executable).parent / "flenwheel"


def cli(*args: object, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environment = {
        k: v for k, v in os.environ.items() if not k.startswith(("FLENWHEEL_", "FAL_", "REPLICATE_"))
    }
    environment.update(env or {})
    return subprocess.run(
        [str(FLENWHEEL), *map(str, args)], capture_output=True, text=True, env=environment, timeout=HANG_S
    )


def ok_json(*args: object) -> dict:
    result = cli(*args, "--json")
    assert result.returncode == 0, result.stderr + result.stdout
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("studio") / "project"
    ok_json("init", root)
    ok_json("--project", root, "character", "create", "lisa", "--token", "ohwx", "--class", "woman")
    ok_json(
        "--project", root, "character", "create", "nova", "--token", "ohwx_nova", "--class", "woman", "--nsfw"
    )
    return root


def test_generate_twice_with_a_seed_gives_the_same_pixels(project: Path, tmp_path: Path) -> None:
    args = (
        "--project",
        project,
        "generate",
        "lisa",
        "photo of ohwx woman",
        "--seed",
        "42",
        "--aspect",
        "9:16",
    )
    first = ok_json(*args, "--out", tmp_path / "a")
    second = ok_json(*args, "--out", tmp_path / "b")
    [file_a], [file_b] = first["files"], second["files"]
    assert Path(file_a).read_bytes() == Path(file_b).read_bytes()
    assert Image.open(file_a).size == (320, 512)  # 9:16 at the draft tier's 512 px long side
    assert first["provider"] == "local" and first["model"] == "tiny" and "draws no faces" in first["note"]
    assert "Seed: 42" in Image.open(file_a).text["parameters"]


def test_edit_with_a_mask_and_upscale(project: Path, tmp_path: Path) -> None:
    photo = tmp_path / "photo.png"
    Image.open(LISA[0]).convert("RGB").resize((96, 128)).save(photo)
    mask = tmp_path / "mask.png"
    drawn = Image.new("L", (96, 128), 0)
    drawn.paste(255, (32, 32, 64, 64))
    drawn.save(mask)
    edited = ok_json(
        "--project",
        project,
        "edit",
        "lisa",
        photo,
        "ohwx woman wearing a hat",
        "--mask",
        mask,
        "--steps",
        "3",
    )
    [edited_file] = edited["files"]
    before, after = Image.open(photo).convert("RGB"), Image.open(edited_file).convert("RGB")
    assert after.getpixel((5, 5)) == before.getpixel((5, 5))  # outside the mask: kept
    upscaled = ok_json(
        "--project", project, "upscale", "lisa", str(edited["outputs"][0]["asset_id"]), "--factor", "2"
    )
    assert Image.open(upscaled["files"][0]).size == (192, 256) and upscaled["provider"] == "esrgan"


def test_providers_lists_every_known_engine_and_what_it_needs(project: Path) -> None:
    """Issue 10 case 16: the JSON names the engines the table names, configured or not, and what each needs;
    zero prices read as free, never as a bare `*:`."""
    rows = {row["id"]: row for row in ok_json("providers")["providers"]}
    assert {"local", "esrgan", "comfyui", "fal", "replicate"} <= set(rows)
    assert rows["local"]["configured"] and rows["esrgan"]["configured"]
    assert "upscale" in rows["esrgan"]["capabilities"] and rows["local"]["allows_nsfw"]
    for engine, env in (
        ("fal", "FAL_KEY"),
        ("replicate", "REPLICATE_API_TOKEN"),
        ("comfyui", "FLENWHEEL_COMFYUI_URL"),
    ):
        assert rows[engine]["configured"] is False and rows[engine]["env"] == env
        assert env in rows[engine]["needs"]
    assert rows["fal"]["allows_nsfw"] is False and rows["fal"]["prices"]
    configured = cli("providers", "--json", env={"FAL_KEY": "k", "REPLICATE_API_TOKEN": "r"})
    rows = {row["id"]: row for row in json.loads(configured.stdout)["providers"]}
    assert rows["fal"]["configured"] and rows["replicate"]["configured"] and not rows["comfyui"]["configured"]

    table = cli("providers")
    assert table.returncode == 0, table.stderr
    assert "*:" not in table.stdout and "free (runs on your hardware)" in table.stdout
    assert "FAL_KEY" in table.stdout and "REPLICATE_API_TOKEN" in table.stdout


def test_bad_requests_are_clear_errors(project: Path) -> None:
    bad_aspect = cli("--project", project, "generate", "lisa", "x", "--aspect", "wide")
    assert bad_aspect.returncode == 2 and "aspect 'wide' is not like 1:1" in bad_aspect.stderr
    nsfw_external = cli(
        "--project", project, "generate", "nova", "x", "--provider", "fal", env={"FAL_KEY": "k"}
    )
    assert nsfw_external.returncode == 2 and "NSFW work stays on self-hosted engines" in nsfw_external.stderr
    missing = cli("--project", project, "upscale", "lisa", "no-such-image.png")
    assert missing.returncode == 2 and "no-such-image.png" in missing.stderr
    assert "Traceback" not in bad_aspect.stderr + nsfw_external.stderr + missing.stderr


def test_png_provenance_is_readable(project: Path) -> None:
    out = ok_json("--project", project, "generate", "lisa", "ohwx woman", "--seed", "3")
    record = json.loads(Image.open(io.BytesIO(Path(out["files"][0]).read_bytes())).text["flenwheel"])
    assert record["seed"] == 3 and record["provider"] == "local" and record["kind"] == "generated"


# A1111's `parameters` format, as its infotext parser reads it (modules/infotext_utils.py
# parse_generation_parameters): prompt lines, then lines from "Negative prompt: ", then a last line of
# "Key: value, …" settings (a value with a comma, colon or newline is a JSON string), which counts as
# settings only when it holds at least three of them.
A1111_SETTING = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')


def parse_like_a1111(text: str) -> tuple[str, str, dict[str, str]]:
    lines = text.strip().split("\n")
    last = lines[-1]
    if len(A1111_SETTING.findall(last)) < 3:
        lines.append(last)
        last = ""
    prompt, negative, in_negative = "", "", False
    for line in (line.strip() for line in lines[:-1]):
        if line.startswith("Negative prompt:"):
            in_negative, line = True, line[16:].strip()
        if in_negative:
            negative += ("" if negative == "" else "\n") + line
        else:
            prompt += ("" if prompt == "" else "\n") + line
    settings = {}
    for key, value in A1111_SETTING.findall(last):
        settings[key] = json.loads(value) if value[:1] == '"' == value[-1:] else value
    return prompt, negative, settings


def test_upscales_and_edits_keep_the_source_parameters(project: Path, tmp_path: Path) -> None:
    """Issue 10 case 13: an upscale carries its source's prompt and seed, plus A1111 Extras-style
    "Postprocess upscale by / upscaler"; an edit has its own prompt and the source's as extra settings.
    (Small images: Real-ESRGAN on two shared cores is slow.)"""
    photo = tmp_path / "photo.png"
    Image.open(LISA[0]).convert("RGB").resize((96, 128)).save(photo)
    prompt = "photo of ohwx woman, red scarf"
    first = ok_json(
        "--project", project, "edit", "lisa", photo, prompt, "--steps", "2", "--seed", "7", "--out", tmp_path
    )
    source = str(first["outputs"][0]["asset_id"])
    assert parse_like_a1111(Image.open(first["files"][0]).text["parameters"])[0] == prompt

    upscaled = ok_json("--project", project, "upscale", "lisa", source, "--factor", "2", "--out", tmp_path)
    up_prompt, _, up = parse_like_a1111(Image.open(upscaled["files"][0]).text["parameters"])
    assert up_prompt == prompt  # not the settings line, as before
    assert up["Seed"] == "7" and up["Steps"] == "2" and up["Size"] == "96x128"  # the source's recipe
    assert up["Postprocess upscale by"] == "2" and up["Postprocess upscaler"] == upscaled["model"]

    edited = ok_json(
        "--project", project, "edit", "lisa", source, "ohwx woman, blue scarf", "--steps", "2", "--seed", "9",
        "--out", tmp_path,
    )  # fmt: skip
    ed_prompt, _, ed = parse_like_a1111(Image.open(edited["files"][0]).text["parameters"])
    assert ed_prompt == "ohwx woman, blue scarf" and ed["Seed"] == "9" and ed["Steps"] == "2"
    assert ed["Source prompt"] == prompt and ed["Source Seed"] == "7" and "Denoising strength" in ed


def test_an_upscaled_photo_has_no_settings_line_read_as_a_prompt(project: Path, tmp_path: Path) -> None:
    """Issue 10 case 13: a source without parameters (a photo) gives an empty prompt, not a settings line."""
    photo = tmp_path / "photo.png"
    Image.open(LISA[0]).convert("RGB").resize((96, 128)).save(photo)
    upscaled = ok_json("--project", project, "upscale", "lisa", photo, "--factor", "2", "--out", tmp_path)
    prompt, negative, settings = parse_like_a1111(Image.open(upscaled["files"][0]).text["parameters"])
    assert (prompt, negative) == ("", "")
    assert settings["Postprocess upscale by"] == "2" and settings["Size"] == "192x256"
