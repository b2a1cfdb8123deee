"""Decoding untrusted uploads: every input is built here with Pillow, in memory."""

from __future__ import annotations

import io
import random
import resource
import struct
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageDraw

from flenwheel.errors import ImageRejected
from flenwheel.images import decode_image, embed_provenance, encode_png, open_stored

RED, BLUE = (220, 20, 30), (20, 40, 220)


def encoded(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def two_colour(size: tuple[int, int] = (120, 90), mode: str = "RGB") -> Image.Image:
    """Left half red, right half blue, so orientation and colour changes are visible."""
    image = Image.new("RGB", size, RED)
    ImageDraw.Draw(image).rectangle((size[0] // 2, 0, size[0], size[1]), fill=BLUE)
    return image.convert(mode)


def looks_like(image: Image.Image, xy: tuple[int, int], colour: tuple[int, int, int]) -> bool:
    """The pixel at xy is within JPEG's rounding of colour."""
    pixel = np.asarray(image)[xy[1], xy[0]].astype(int)
    return bool(np.abs(pixel - np.array(colour)).max() <= 12)


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares its size in IHDR but carries no pixel data at all."""

    def chunk(tag: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def rejection(data: bytes, **kwargs: int) -> ImageRejected:
    with pytest.raises(ImageRejected) as info:
        decode_image(data, **kwargs)
    return info.value


def test_empty_file_is_rejected_as_empty() -> None:
    assert rejection(b"").reason == "empty"


@pytest.mark.parametrize(
    "data",
    [random.Random(0).randbytes(4096), b"shopping list:\n- eggs\n- flour\n" * 20],
    ids=["random-bytes", "text-file"],
)
def test_non_image_bytes_are_rejected_as_not_an_image(data: bytes) -> None:
    assert rejection(data).reason == "not_an_image"


def test_truncated_jpeg_is_rejected_as_corrupt() -> None:
    noise = Image.effect_noise((256, 256), 80).convert("RGB")
    jpeg = encoded(noise, "JPEG", quality=90)
    error = rejection(jpeg[: len(jpeg) // 2])
    assert error.reason == "corrupt"
    assert "truncated" in str(error)


def test_header_claiming_60000x60000_is_refused_before_any_pixels_are_allocated() -> None:
    peak_before_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    error = rejection(png_header_only(60_000, 60_000))
    peak_after_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # the file holds no pixel data, so any attempt to decode it would have said "corrupt" instead
    assert error.reason == "too_many_pixels"
    # 60000x60000 RGB is 10 GiB; refusing from the header alone leaves the peak memory where it was
    assert peak_after_kib - peak_before_kib < 50 * 1024


def test_header_over_our_own_limit_is_refused_with_its_size_in_the_message() -> None:
    # 64 MP: under Pillow's own bomb threshold, over flenwheel's 50 MP limit
    error = rejection(png_header_only(8000, 8000))
    assert error.reason == "too_many_pixels"
    assert "8000x8000" in str(error)


def test_max_pixels_argument_is_honoured() -> None:
    data = encoded(two_colour((200, 200)), "PNG")
    assert rejection(data, max_pixels=10_000).reason == "too_many_pixels"
    assert decode_image(data, max_pixels=40_000).image.size == (200, 200)


def test_animated_gif_is_rejected_as_animated() -> None:
    frames = [Image.new("RGB", (100, 100), colour) for colour in (RED, BLUE, (0, 200, 0))]
    data = encoded(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100)
    error = rejection(data)
    assert error.reason == "animated"
    assert "3 frames" in str(error)


def test_32px_image_is_rejected_as_too_small() -> None:
    error = rejection(encoded(two_colour((32, 32)), "PNG"))
    assert error.reason == "too_small"
    assert "32x32" in str(error)


def test_cmyk_jpeg_becomes_rgb_with_its_colours() -> None:
    decoded = decode_image(encoded(two_colour(mode="CMYK"), "JPEG", quality=95))
    assert decoded.image.mode == "RGB"
    assert looks_like(decoded.image, (10, 45), RED)
    assert looks_like(decoded.image, (110, 45), BLUE)


def test_16_bit_greyscale_png_becomes_8_bit_rgb_keeping_its_tones() -> None:
    grey16 = np.full((80, 100), 32768, dtype=np.uint16)
    grey16[:, 50:] = 16384
    source = Image.fromarray(grey16)
    assert source.mode == "I;16"
    decoded = decode_image(encoded(source, "PNG"))
    pixels = np.asarray(decoded.image)
    assert decoded.image.mode == "RGB"
    assert pixels.dtype == np.uint8
    assert abs(int(pixels[40, 10, 0]) - 128) <= 1  # mid-grey stays mid-grey, not white
    assert abs(int(pixels[40, 90, 0]) - 64) <= 1
    assert (pixels[..., 0] == pixels[..., 1]).all() and (pixels[..., 1] == pixels[..., 2]).all()


def test_transparent_png_is_flattened_onto_white() -> None:
    image = Image.new("RGBA", (100, 100), (*RED, 0))
    ImageDraw.Draw(image).rectangle((30, 30, 70, 70), fill=(*BLUE, 255))
    decoded = decode_image(encoded(image, "PNG"))
    assert decoded.image.mode == "RGB"
    assert decoded.image.getpixel((2, 2)) == (255, 255, 255)
    assert decoded.image.getpixel((50, 50)) == BLUE
    assert any("transparency" in note for note in decoded.notes)


def test_palette_png_becomes_rgb() -> None:
    source = two_colour().convert("P", palette=Image.Palette.ADAPTIVE, colors=4)
    assert source.mode == "P"
    decoded = decode_image(encoded(source, "PNG"))
    assert decoded.image.mode == "RGB"
    assert decoded.image.getpixel((10, 45)) == RED
    assert decoded.image.getpixel((110, 45)) == BLUE


def test_exif_orientation_6_is_applied_and_noted() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    # 160x80 rather than 120x60: a 60 px short side would be refused as too small
    decoded = decode_image(encoded(two_colour((160, 80)), "JPEG", quality=95, exif=exif))
    assert decoded.image.size == (80, 160)
    # the left (red) edge of the stored pixels is the top of the upright photo
    assert looks_like(decoded.image, (40, 5), RED)
    assert looks_like(decoded.image, (40, 155), BLUE)
    assert any("rotated" in note for note in decoded.notes)


def test_ordinary_rgb_jpeg_needs_no_notes() -> None:
    decoded = decode_image(encoded(two_colour(), "JPEG"))
    assert decoded.image.mode == "RGB"
    assert decoded.source_format == "JPEG"
    assert decoded.notes == ()


def test_stored_png_reopens_with_identical_pixels() -> None:
    decoded = decode_image(encoded(two_colour(mode="CMYK"), "JPEG"))
    stored = encode_png(decoded.image)
    assert stored.startswith(b"\x89PNG")
    reopened = open_stored(stored)
    assert reopened.mode == "RGB"
    assert np.array_equal(np.asarray(reopened), np.asarray(decoded.image))


def accepted_or_rejected(data: bytes) -> None:
    """The contract every caller relies on: an RGB image or an `ImageRejected`, nothing else."""
    try:
        decoded = decode_image(data)
    except ImageRejected as error:
        assert error.reason
        return
    assert decoded.image.mode == "RGB"


@pytest.mark.parametrize("fmt", ["PNG", "WEBP"])
def test_broken_exif_block_is_rejected_not_crashing(fmt: str) -> None:
    accepted_or_rejected(encoded(two_colour(), fmt, exif=b"garbage!not-a-tiff-header"))


def test_rotated_jpeg_with_mistyped_exif_tag_is_rejected_not_crashing() -> None:
    # orientation 6 plus XPosition (0x011E, a RATIONAL tag) stored as the ASCII string "Cam"
    exif = (
        b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\x00\x02"
        b"\x01\x1e\x00\x02\x00\x00\x00\x04Cam\x00"
        b"\x01\x12\x00\x03\x00\x00\x00\x01\x00\x06\x00\x00\x00\x00\x00\x00"
    )
    accepted_or_rejected(encoded(two_colour(), "JPEG", exif=exif))


def test_tiff_with_broken_second_page_is_rejected_not_crashing() -> None:
    data = bytearray(encoded(two_colour(), "TIFF"))
    first_ifd = struct.unpack_from("<I", data, 4)[0]
    next_pointer = first_ifd + 2 + 12 * struct.unpack_from("<H", data, first_ifd)[0]
    data += b"\x00" * (len(data) % 2)
    struct.pack_into("<I", data, next_pointer, len(data))
    data += b"\x00\x00" + b"\x00\x00\x00\x00"  # an IFD with no tags, so no width or height
    accepted_or_rejected(bytes(data))


SEEDS = {
    "PNG": encoded(two_colour((80, 72)), "PNG"),
    "JPEG": encoded(two_colour((80, 72)), "JPEG", quality=85),
}


@st.composite
def mutated_images(draw: st.DrawFn) -> bytes:
    data = bytearray(SEEDS[draw(st.sampled_from(sorted(SEEDS)))])
    for _ in range(draw(st.integers(0, 6))):
        position = draw(st.integers(0, len(data) - 1))
        data[position] = draw(st.integers(0, 255))
    if draw(st.booleans()):
        position = draw(st.integers(0, len(data)))
        data[position:position] = draw(st.binary(min_size=1, max_size=16))
    if draw(st.booleans()):
        data = data[: draw(st.integers(0, len(data)))]
    return bytes(data)


FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(st.binary(max_size=2048))
def test_arbitrary_bytes_give_an_rgb_image_or_a_rejection(data: bytes) -> None:
    accepted_or_rejected(data)


@FUZZ
@given(mutated_images())
def test_mutated_png_and_jpeg_give_an_rgb_image_or_a_rejection(data: bytes) -> None:
    accepted_or_rejected(data)


def test_parameters_round_trip_with_quoted_values_and_multiline_prompts() -> None:
    """Values with a comma, colon or newline are JSON-quoted, as A1111's `quote` does, and read back."""
    from flenwheel.images import A1111Parameters, parse_a1111_parameters

    original = A1111Parameters(
        "photo of ohwx woman,\nsmiling",
        "blurry",
        {"Steps": "20", "Model": "owner/flux:abc123", "Source prompt": "a, b\nc", "Seed": "1"},
    )
    assert 'Model: "owner/flux:abc123"' in original.text()
    assert parse_a1111_parameters(original.text()) == original


def test_source_parameters_come_from_the_png_and_nothing_else() -> None:
    """An image's own `parameters` chunk is the source recipe; a JPEG, a broken file or an oversized chunk
    gives none (an upscale then writes only its own settings)."""
    from PIL.PngImagePlugin import PngInfo

    from flenwheel.images import MAX_PARAMETERS_CHARS, stored_parameters

    def png_with(text: str) -> bytes:
        info = PngInfo()
        info.add_itxt("parameters", text)
        buffer = io.BytesIO()
        Image.new("RGB", (64, 64)).save(buffer, "PNG", pnginfo=info)
        return buffer.getvalue()

    found = stored_parameters(png_with("a cat\nNegative prompt: dog\nSteps: 4, Seed: 5, Size: 64x64"))
    assert found is not None and (found.prompt, found.negative, found.settings["Seed"]) == (
        "a cat",
        "dog",
        "5",
    )
    assert stored_parameters(png_with("x" * (MAX_PARAMETERS_CHARS + 1))) is None
    assert stored_parameters(encoded(Image.new("RGB", (64, 64)), "JPEG")) is None
    assert stored_parameters(b"not an image") is None


def test_output_parameters_keep_the_source_recipe_for_upscales_and_edits() -> None:
    """Issue 10 case 13 on the real request types: prompt, negative and settings survive an upscale; an edit
    lists the source's as "Source …" settings."""
    from flenwheel.images import a1111_parameters, output_parameters, parse_a1111_parameters
    from flenwheel.providers.base import ImageToImage, Upscale

    text = a1111_parameters("ohwx woman, park", "blurry, lowres", 20, 7.0, 42, 512, 512, "tiny", [])
    png = embed_provenance(encode_png(Image.new("RGB", (512, 512))), text, {})
    upscaled = parse_a1111_parameters(
        output_parameters(Upscale(image=png, factor=4), None, 2048, 2048, "esr")
    )
    assert (upscaled.prompt, upscaled.negative) == ("ohwx woman, park", "blurry, lowres")
    assert upscaled.settings["Seed"] == "42" and upscaled.settings["Postprocess upscale by"] == "4"
    twice_png = embed_provenance(encode_png(Image.new("RGB", (64, 64))), upscaled.text(), {})
    twice = parse_a1111_parameters(
        output_parameters(Upscale(image=twice_png, factor=2), None, 128, 128, "esr")
    )
    assert twice.settings["Postprocess upscale by"] == "8" and twice.prompt == "ohwx woman, park"
    edit = ImageToImage(image=png, prompt="ohwx woman, hat", negative="text", strength=0.4, seed=3)
    edited = parse_a1111_parameters(output_parameters(edit, 3, 512, 512, "tiny"))
    assert (edited.prompt, edited.negative) == ("ohwx woman, hat", "text")
    assert edited.settings["Denoising strength"] == "0.4" and edited.settings["Source Seed"] == "42"
    assert edited.settings["Source prompt"] == "ohwx woman, park"
    assert edited.settings["Source negative prompt"] == "blurry, lowres"


def test_a_truncated_jpeg_is_corrupt_even_after_face_recognition_is_imported() -> None:
    """face_recognition sets PIL's LOAD_TRUNCATED_IMAGES at import (its api.py); a process that imported it
    (a bench, a plugin) must still refuse a half file rather than ingest it padded with grey."""
    import face_recognition  # noqa: F401
    from PIL import ImageFile

    # What its first import does (an earlier test in this process may have imported it already).
    ImageFile.LOAD_TRUNCATED_IMAGES = True
    noise = Image.effect_noise((256, 256), 80).convert("RGB")
    jpeg = encoded(noise, "JPEG", quality=90)
    assert rejection(jpeg[: len(jpeg) // 2]).reason == "corrupt"
