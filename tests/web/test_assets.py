"""Assets over the API: uploads checked exactly like `flenwheel ingest`, listing with filters and paging,
metadata and image download; another user's assets are 404 everywhere."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from sqlalchemy import update
from webapi import Api, make_api

from flenwheel.datasets.ingest import ingest
from flenwheel.store.models import Asset

from photos import FACES, LISA

NOT_AN_IMAGE = b"just some notes, not a photo\n"


def test_upload_a_batch_goes_on_past_a_bad_file(api: Api, tmp_path: Path) -> None:
    character_id = api.character()
    files = [
        ("files", ("1.jpg", LISA[4].read_bytes(), "image/jpeg")),
        ("files", ("notes.txt", NOT_AN_IMAGE, "text/plain")),
        ("files", ("2.jpg", LISA[5].read_bytes(), "image/jpeg")),
        ("files", ("1-again.jpg", LISA[4].read_bytes(), "image/jpeg")),
    ]
    response = api.client.post(f"/characters/{character_id}/assets", files=files, headers=api.alice)
    assert response.status_code == 200
    report = response.json()
    assert [r["status"] for r in report["results"]] == ["added", "rejected", "added", "duplicate"]
    assert (report["added"], report["rejected"], report["duplicates"]) == (2, 1, 1)
    assert report["results"][3]["asset_id"] == report["results"][0]["asset_id"]
    # The same reason `flenwheel ingest` gives for the same bytes.
    text_file = tmp_path / "notes.txt"
    text_file.write_bytes(NOT_AN_IMAGE)
    api.character("other")
    (cli,) = ingest(api.project, "other", [text_file])
    assert report["results"][1]["reason"] == cli.reason and report["results"][1]["detail"] == cli.detail


def test_a_text_file_alone_is_422_with_the_ingest_reason(api: Api) -> None:
    character_id = api.character()
    response = api.client.post(
        f"/characters/{character_id}/assets",
        files=[("files", ("notes.txt", NOT_AN_IMAGE, "text/plain"))],
        headers=api.alice,
    )
    assert response.status_code == 422
    assert "notes.txt: not_an_image" in response.json()["detail"]


def test_a_file_over_the_limit_is_413_naming_the_limit(project) -> None:  # type: ignore[no-untyped-def]
    for api in make_api(project, upload_max_mb=0.25):
        character_id = api.character()
        big = LISA[0]  # about 400 kB
        assert big.stat().st_size > 0.25 * 2**20
        response = api.client.post(
            f"/characters/{character_id}/assets",
            files=[("files", (big.name, big.read_bytes(), "image/jpeg"))],
            headers=api.alice,
        )
        assert response.status_code == 413
        assert (
            "0.25 MiB" in response.json()["detail"] and "FLENWHEEL_UPLOAD_MAX_MB" in response.json()["detail"]
        )
        # In a batch, the small photo still goes in.
        mixed = api.upload(character_id, big, LISA[4])
        assert [r["status"] for r in mixed["results"]] == ["rejected", "added"]
        assert mixed["results"][0]["reason"] == "too_large"


def test_list_filters_and_pages_with_total(api: Api) -> None:
    character_id = api.character()
    photos = [*LISA[4:7], *sorted((FACES / "non_face").glob("*.jpg"))[:3]]
    uploaded = api.upload(character_id, *photos)
    ids = [r["asset_id"] for r in uploaded["results"]]
    with api.project.db.session() as session:
        session.execute(update(Asset).where(Asset.id.in_(ids[:2])).values(attributes={"stage": "anchor"}))
        session.execute(update(Asset).where(Asset.id == ids[2]).values(kind="generated", job_id=7))
    url = f"/characters/{character_id}/assets"
    seen: list[int] = []
    offset = 0
    while True:
        page = api.client.get(f"{url}?limit=4&offset={offset}", headers=api.alice).json()
        assert page["total"] == len(photos)
        seen += [a["id"] for a in page["items"]]
        offset += 4
        if offset >= page["total"]:
            break
    assert seen == ids
    assert [a["id"] for a in api.client.get(f"{url}?stage=anchor", headers=api.alice).json()["items"]] == ids[
        :2
    ]
    generated = api.client.get(f"{url}?kind=generated", headers=api.alice).json()
    assert generated["total"] == 1 and generated["items"][0]["id"] == ids[2]
    by_job = api.client.get(f"{url}?job_id=7", headers=api.alice).json()
    assert [a["id"] for a in by_job["items"]] == [ids[2]]
    api.client.post(
        f"/assets/{ids[3]}/reviews", json={"label": "reject", "reason": "blurry"}, headers=api.alice
    )
    api.client.post(f"/assets/{ids[4]}/reviews", json={"label": "good"}, headers=api.alice)
    rejected = api.client.get(f"{url}?label=reject", headers=api.alice).json()
    assert [a["id"] for a in rejected["items"]] == [ids[3]] and rejected["items"][0][
        "label_reason"
    ] == "blurry"
    unlabelled = api.client.get(f"{url}?unlabelled=true", headers=api.alice).json()
    assert unlabelled["total"] == len(photos) - 2
    bad = api.client.get(f"{url}?kind=photo", headers=api.alice)
    assert bad.status_code == 422 and "kind" in bad.json()["detail"]


def test_get_metadata_and_download_the_image(api: Api) -> None:
    character_id = api.character()
    (result,) = api.upload(character_id, LISA[5])["results"]
    asset = api.client.get(f"/assets/{result['asset_id']}", headers=api.alice).json()
    assert (asset["kind"], asset["source_name"], asset["format"]) == ("source", LISA[5].name, "jpg")
    image = api.client.get(asset["image_url"], headers=api.alice)
    assert image.status_code == 200
    assert image.headers["content-type"] == "image/jpeg"
    assert image.content == LISA[5].read_bytes()
    cached = api.client.get(asset["image_url"], headers={**api.alice, "If-None-Match": image.headers["etag"]})
    assert cached.status_code == 304


def test_another_users_assets_are_404(api: Api) -> None:
    character_id = api.character()
    (result,) = api.upload(character_id, LISA[5])["results"]
    asset_id = result["asset_id"]
    for path in (f"/characters/{character_id}/assets", f"/assets/{asset_id}", f"/assets/{asset_id}/image"):
        assert api.client.get(path, headers=api.bob).status_code == 404, path
    upload = api.client.post(
        f"/characters/{character_id}/assets",
        files=[("files", ("x.jpg", LISA[6].read_bytes(), "image/jpeg"))],
        headers=api.bob,
    )
    assert upload.status_code == 404
    assert api.client.get(f"/characters/{character_id}/assets", headers=api.alice).json()["total"] == 1


def test_a_request_body_over_the_whole_limit_is_413_before_it_is_read(project) -> None:  # type: ignore[no-untyped-def]
    for api in make_api(project, upload_max_mb=0.01):  # whole body: 50 × 0.01 MiB + 1 MiB ≈ 1.5 MiB
        character_id = api.character()
        url = f"/characters/{character_id}/assets"
        multipart = {**api.alice, "content-type": "multipart/form-data; boundary=zzz"}
        declared = api.client.post(url, content=b"x" * (2 * 2**20), headers=multipart)
        assert declared.status_code == 413
        assert "at most 50 images of at most 0.01 MiB" in declared.json()["detail"]

        def chunked() -> Iterator[bytes]:  # no Content-Length: counted while it is read
            yield b'--zzz\r\nContent-Disposition: form-data; name="files"; filename="a.jpg"\r\n\r\n'
            for _ in range(40):
                yield b"x" * 2**16
            yield b"\r\n--zzz--\r\n"

        streamed = api.client.post(url, content=chunked(), headers=multipart)
        assert streamed.status_code == 413 and "0.01 MiB" in streamed.json()["detail"]
        assert api.client.get(url, headers=api.alice).json()["total"] == 0


def test_an_uploaded_file_name_keeps_no_folders(api: Api) -> None:
    character_id = api.character()
    response = api.client.post(
        f"/characters/{character_id}/assets",
        files=[("files", ("../../etc/passwd.jpg", LISA[5].read_bytes(), "image/jpeg"))],
        headers=api.alice,
    )
    (result,) = response.json()["results"]
    assert result["filename"] == "passwd.jpg"
    assert (
        api.client.get(f"/assets/{result['asset_id']}", headers=api.alice).json()["source_name"]
        == "passwd.jpg"
    )


def test_upload_as_identity_reference(api: Api) -> None:
    character_id = api.character()
    response = api.client.post(
        f"/characters/{character_id}/assets",
        files=[("files", ("ref.jpg", LISA[5].read_bytes(), "image/jpeg"))],
        data={"reference": "true"},
        headers=api.alice,
    )
    (result,) = response.json()["results"]
    assert api.client.get(f"/assets/{result['asset_id']}", headers=api.alice).json()["is_reference"] is True


def test_an_asset_names_its_children_and_its_loras_by_file_name_only(sqlite_api: Api) -> None:
    """The provenance panel: parents and children both ways; a LoRA is shown by its file name and strength,
    never by its folder on the server."""
    from flenwheel.pipeline.generation import run_generation
    from flenwheel.providers.base import ImageToImage, LoraRef

    from engines import ScriptedEngine, png

    api = sqlite_api
    character_id = api.character()
    source = api.upload(character_id, LISA[0])["results"][0]["asset_id"]
    secret = str(api.project.root / "training" / "7" / "run3" / "checkpoints" / "lisa-000004.safetensors")
    edit = ImageToImage(
        prompt="in a forest",
        image=png(),
        seed=5,
        width=64,
        height=64,
        loras=(LoraRef(path=secret, strength=0.8),),
    )
    made = run_generation(
        api.project, f"#{character_id}", edit, parents=(source,), providers=[ScriptedEngine("comfyui")]
    )
    child = made.outputs[0].asset_id
    parent = api.client.get(f"/assets/{source}", headers=api.alice).json()
    assert parent["children"] == [child] and parent["parents"] == []
    shown = api.client.get(f"/assets/{child}", headers=api.alice)
    assert shown.json()["parents"] == [source] and shown.json()["children"] == []
    assert shown.json()["loras"] == [{"name": "lisa-000004.safetensors", "strength": 0.8}]
    assert str(api.project.root) not in shown.text  # no server folder anywhere in the answer
