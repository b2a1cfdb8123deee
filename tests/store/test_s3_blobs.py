"""Blobs on S3 (moto's real server) through fsspec: the same content-addressed store, shared by hosts."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from sqlalchemy import select

from flenwheel.characters import create_character
from flenwheel.config import Settings
from flenwheel.datasets.ingest import ingest
from flenwheel.jobs.base import JobRequest, JobStatus
from flenwheel.jobs.embedded import EmbeddedBackend
from flenwheel.pipeline.kinds import register_pipeline_kinds
from flenwheel.store.blobs import FsspecBlobStore
from flenwheel.store.models import Analysis, Asset
from flenwheel.store.project import Project

from patience import finished
from photos import LISA


def test_put_get_exists_url_and_another_host_reads_it(s3_blob_url: str, tmp_path: Path) -> None:
    here = Project.init(Settings(project=tmp_path / "here", blob_url=s3_blob_url))
    assert isinstance(here.blobs, FsspecBlobStore)
    data = b"not really a PNG"
    sha256 = here.blobs.put(data)
    assert sha256 == hashlib.sha256(data).hexdigest() and here.blobs.put(data) == sha256
    assert here.blobs.url(sha256) == f"{s3_blob_url}/{sha256[:2]}/{sha256}"
    there = Project.init(Settings(project=tmp_path / "there", blob_url=s3_blob_url))
    assert there.blobs.exists(sha256) and not there.blobs.exists("0" * 64)
    assert there.blobs.get(sha256) == data and there.blobs.path(sha256).read_bytes() == data
    with pytest.raises(ValueError, match="not a sha256"):
        there.blobs.get("../etc/passwd")


@pytest.mark.parametrize("any_project", ["postgres"], indirect=True)
def test_photos_ingested_on_one_host_are_curated_on_another(
    any_project: Project, s3_blob_url: str, tmp_path: Path
) -> None:
    url = any_project.settings.database_url
    first = Project.init(Settings(project=tmp_path / "host-a", database_url=url, blob_url=s3_blob_url))
    create_character(first, "lisa", "ohwx", "woman")
    outcomes = ingest(first, "lisa", LISA[:3])
    assert all(outcome.asset_id is not None for outcome in outcomes)

    second = Project.init(Settings(project=tmp_path / "host-b", database_url=url, blob_url=s3_blob_url))
    assert not any(second.blobs.root.rglob("*")), "host B starts with no local copy of any blob"
    register_pipeline_kinds()  # host B's pool runs `curate`, as `flenwheel worker` would
    with EmbeddedBackend(second, workers=1) as pool:
        job_id = pool.submit(JobRequest(kind="curate", payload={"character": "lisa"}))
        done = finished(pool, job_id)
    assert done.status == JobStatus.SUCCEEDED, done.error
    assert done.result["analysed_now"] == 3 and (done.progress_done, done.progress_total) == (3, 3)

    with first.db.session() as session:
        assets = session.scalars(select(Asset).order_by(Asset.id)).all()
        analysed = set(session.scalars(select(Analysis.asset_id)))
    assert {asset.id for asset in assets} == analysed  # host A sees host B's curation
    for asset in assets:
        assert second.blobs.get(asset.sha256) == first.blobs.get(asset.sha256)
        assert first.blobs.fs.exists(f"{s3_blob_url.removeprefix('s3://')}/{asset.sha256[:2]}/{asset.sha256}")
    first.close()
    second.close()
