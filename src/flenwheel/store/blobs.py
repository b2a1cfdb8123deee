"""Content-addressed blob stores: a local folder (blobs/ab/abcdef… named by sha256, written atomically),
or any fsspec URL such as s3://bucket/prefix with a local read cache."""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flenwheel.errors import InvalidInput, MissingDependency

if TYPE_CHECKING:
    from flenwheel.config import Settings

BLOB_CACHE_DIR = "blob-cache"


class LocalBlobStore:
    """Immutable blobs keyed by the sha256 of their bytes. Putting the same bytes twice is a no-op."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, sha256: str) -> Path:
        if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
            raise ValueError(f"not a sha256 hex digest: {sha256!r}")
        return self.root / sha256[:2] / sha256

    def put(self, data: bytes) -> str:
        sha256 = hashlib.sha256(data).hexdigest()
        target = self.path(sha256)
        if target.exists():
            return sha256
        target.parent.mkdir(parents=True, exist_ok=True)
        # Write beside the target and rename: readers never see a half-written blob.
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return sha256

    def get(self, sha256: str) -> bytes:
        return self.path(sha256).read_bytes()

    def exists(self, sha256: str) -> bool:
        return self.path(sha256).exists()

    def url(self, sha256: str) -> str:
        return self.path(sha256).as_uri()

    def delete(self, sha256: str) -> None:
        """Remove a blob no asset uses any more (a deleted character's); a missing one is fine."""
        self.path(sha256).unlink(missing_ok=True)


SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")
OBJECT_STORES = {"s3", "s3a", "gs", "gcs", "az", "abfs", "memory"}  # a single PUT is atomic there


class FsspecBlobStore:
    """The same content-addressed blobs on any fsspec URL (s3://bucket/prefix …), shared by every host.

    Reads are cached in a local folder (`root`) named by sha256, so `path()` can hand a file to code that
    needs one (face analysis, exports) and a blob is downloaded at most once per host.
    """

    def __init__(self, url: str, cache_dir: Path, storage_options: dict[str, Any] | None = None) -> None:
        import fsspec

        self.location = url.rstrip("/")
        self.fs, self._base = fsspec.core.url_to_fs(self.location, **(storage_options or {}))
        self._base = self._base.rstrip("/")
        self._atomic_put = bool(set(_protocols(self.fs)) & OBJECT_STORES)
        self.root = cache_dir  # the local read cache; callers treat it as the blob folder of this host
        self._cache = LocalBlobStore(cache_dir)

    def _key(self, sha256: str) -> str:
        self._cache.path(sha256)  # validates the digest
        return f"{self._base}/{sha256[:2]}/{sha256}"

    def put(self, data: bytes) -> str:
        sha256 = hashlib.sha256(data).hexdigest()
        key = self._key(sha256)
        if not self.fs.exists(key):
            if self._atomic_put:
                self.fs.pipe_file(key, data)  # an object appears whole or not at all
            else:  # a plain file system: write beside the target, then rename
                self.fs.makedirs(key.rsplit("/", 1)[0], exist_ok=True)
                temporary = f"{key}.tmp-{uuid.uuid4().hex}"
                self.fs.pipe_file(temporary, data)
                self.fs.mv(temporary, key)
        self._cache.put(data)
        return sha256

    def get(self, sha256: str) -> bytes:
        if self._cache.exists(sha256):
            return self._cache.get(sha256)
        data = bytes(self.fs.cat_file(self._key(sha256)))
        if hashlib.sha256(data).hexdigest() != sha256:
            raise OSError(f"blob {sha256} at {self.location} is corrupt: its bytes hash to something else")
        self._cache.put(data)
        return data

    def exists(self, sha256: str) -> bool:
        return self._cache.exists(sha256) or bool(self.fs.exists(self._key(sha256)))

    def path(self, sha256: str) -> Path:
        """A local file with the blob's bytes (downloaded into the cache on first use)."""
        if not self._cache.exists(sha256):
            self.get(sha256)
        return self._cache.path(sha256)

    def url(self, sha256: str) -> str:
        protocol = _protocols(self.fs)[0]
        return f"{protocol}://{self._key(sha256)}"

    def delete(self, sha256: str) -> None:
        """Remove a blob (and this host's cached copy) no asset uses any more; a missing one is fine."""
        key = self._key(sha256)
        if self.fs.exists(key):
            self.fs.rm_file(key)
        self._cache.delete(sha256)

    def ensure_container(self) -> None:
        """Create the bucket / folder if it is missing (project init)."""
        self.fs.makedirs(self._base, exist_ok=True)


def _protocols(fs: Any) -> list[str]:
    protocol = fs.protocol
    return [protocol] if isinstance(protocol, str) else list(protocol)


BlobStore = LocalBlobStore | FsspecBlobStore


def open_blob_store(settings: Settings) -> BlobStore:
    """A folder by default; an fsspec store when FLENWHEEL_BLOB_URL is a URL with a scheme (s3://bucket/prefix).
    S3 endpoint from FLENWHEEL_S3_ENDPOINT_URL or AWS_ENDPOINT_URL; credentials the usual AWS_* way."""
    url = settings.blob_url
    if not url or not SCHEME.match(url) or url.startswith("file://"):
        return LocalBlobStore(settings.resolved_blob_dir())
    options: dict[str, Any] = {}
    if url.startswith(("s3://", "s3a://")):
        endpoint = settings.s3_endpoint_url or os.environ.get("AWS_ENDPOINT_URL")
        if endpoint:
            options["endpoint_url"] = endpoint
        options["skip_instance_cache"] = True  # another host's puts must be seen: no shared listing cache
        options["use_listings_cache"] = False
    try:
        return FsspecBlobStore(url, (settings.project / BLOB_CACHE_DIR).resolve(), options)
    except ImportError as exc:
        raise MissingDependency(exc.name or "s3fs", "s3") from None
    except ValueError as exc:
        raise InvalidInput(f"blob URL {url!r} (FLENWHEEL_BLOB_URL): {exc}") from None
