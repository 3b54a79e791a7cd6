"""The object store, through the minio client: download a bounded input, upload stems, ensure buckets."""

from __future__ import annotations

import io
import threading
from pathlib import Path
from typing import Protocol

import urllib3
from minio import Minio
from minio.commonconfig import CopySource
from minio.error import MinioException, S3Error, ServerError

from function.errors import Transient, UnprocessableInput

MISSING_CODES = {"NoSuchKey", "NoSuchBucket", "NoSuchObject"}
CHUNK_BYTES = 1 << 20

CONTENT_TYPES = {"mp3": "audio/mpeg", "wav": "audio/wav", "flac": "audio/flac"}


class Hasher(Protocol):
    """What `download` feeds every chunk to (a `hashlib` object)."""

    def update(self, data: bytes, /) -> None: ...


def _transient(action: str, err: Exception) -> Transient:
    return Transient(f"object store unavailable while {action}: {type(err).__name__}: {err}")


class ObjectStore:
    """Input download and stem upload for one S3 endpoint; safe to share between threads."""

    def __init__(self, client: Minio) -> None:
        self._client = client
        self._known_buckets: set[str] = set()
        self._lock = threading.Lock()

    def download(self, bucket: str, key: str, dest: Path, max_bytes: int, hasher: Hasher | None = None) -> int:
        """Write object `bucket/key` to `dest` and return its size; refuses objects over `max_bytes`.
        `hasher` (e.g. `hashlib.sha256()`) is fed every chunk as it is written: the digest costs no extra read."""
        where = f"{bucket}/{key}"
        try:
            size = self._client.stat_object(bucket, key).size or 0
            if size > max_bytes:
                raise UnprocessableInput(f"input {where} is {size} bytes, over MAX_INPUT_BYTES={max_bytes}")
            if size == 0:
                raise UnprocessableInput(f"input {where} is empty (0 bytes)")
            response = self._client.get_object(bucket, key)
            try:
                written = self._stream_to(response, dest, max_bytes, where, hasher)
            finally:
                response.close()
                response.release_conn()
        except S3Error as err:
            if err.code in MISSING_CODES:
                raise UnprocessableInput(f"input {where} not found ({err.code})") from None
            raise _transient(f"reading {where}", err) from None
        except (MinioException, ServerError, urllib3.exceptions.HTTPError) as err:
            raise _transient(f"reading {where}", err) from None
        return written

    @staticmethod
    def _stream_to(
        response: urllib3.BaseHTTPResponse, dest: Path, max_bytes: int, where: str, hasher: Hasher | None = None
    ) -> int:
        written = 0
        try:
            with dest.open("wb") as out:
                for chunk in response.stream(CHUNK_BYTES):
                    written += len(chunk)
                    if written > max_bytes:
                        raise UnprocessableInput(f"input {where} grew past MAX_INPUT_BYTES={max_bytes}")
                    out.write(chunk)
                    if hasher is not None:
                        hasher.update(chunk)
        except OSError as err:
            raise Transient(f"cannot write the input to the temp dir: {err}") from None
        return written

    def reachable(self) -> None:
        """One cheap read (ListBuckets) that proves the store answers; Transient when it does not."""
        try:
            self._client.list_buckets()
        except (MinioException, urllib3.exceptions.HTTPError) as err:
            raise _transient("listing buckets", err) from None

    def ensure_bucket(self, bucket: str) -> None:
        """Create `bucket` if it does not exist (checked once per process)."""
        with self._lock:
            if bucket in self._known_buckets:
                return
        try:
            if not self._client.bucket_exists(bucket):
                try:
                    self._client.make_bucket(bucket)
                except S3Error as err:
                    if err.code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                        raise
        except (MinioException, urllib3.exceptions.HTTPError) as err:
            raise _transient(f"creating bucket {bucket}", err) from None
        with self._lock:
            self._known_buckets.add(bucket)

    def upload(self, bucket: str, key: str, source: Path, content_type: str) -> None:
        """Upload the file `source` as `bucket/key`."""
        try:
            self._client.fput_object(bucket, key, str(source), content_type=content_type)
        except (MinioException, urllib3.exceptions.HTTPError) as err:
            raise _transient(f"uploading {bucket}/{key}", err) from None
        except OSError as err:
            raise Transient(f"cannot read stem file {source.name}: {err}") from None

    def copy(
        self, bucket: str, source_key: str, dest_key: str, dest_bucket: str | None = None, match_etag: str | None = None
    ) -> bool:
        """Server-side copy of `bucket/source_key` to `dest_bucket/dest_key` (`dest_bucket`, which must exist, defaults
        to `bucket`; no data passes through the worker). Returns False, copying nothing, when the source is gone or
        its ETag is no longer `match_etag`."""
        where = f"{bucket}/{source_key}"
        try:
            self._client.copy_object(
                dest_bucket or bucket, dest_key, CopySource(bucket, source_key, match_etag=match_etag)
            )
        except S3Error as err:
            if err.code in MISSING_CODES or err.code == "PreconditionFailed":
                return False
            raise _transient(f"copying {where}", err) from None
        except (MinioException, urllib3.exceptions.HTTPError) as err:
            raise _transient(f"copying {where}", err) from None
        return True

    def stat(self, bucket: str, key: str) -> tuple[int, str] | None:
        """(size in bytes, ETag) of object `bucket/key`, or None when it does not exist."""
        try:
            info = self._client.stat_object(bucket, key)
        except S3Error as err:
            if err.code in MISSING_CODES:
                return None
            raise _transient(f"reading {bucket}/{key}", err) from None
        except (MinioException, ServerError, urllib3.exceptions.HTTPError) as err:
            raise _transient(f"reading {bucket}/{key}", err) from None
        return int(info.size or 0), str(info.etag or "")

    def put_bytes(self, bucket: str, key: str, data: bytes, content_type: str) -> None:
        """Upload a small in-memory object."""
        try:
            self._client.put_object(bucket, key, io.BytesIO(data), len(data), content_type=content_type)
        except (MinioException, urllib3.exceptions.HTTPError) as err:
            raise _transient(f"uploading {bucket}/{key}", err) from None


def output_key(template: str, job_id: str, stem: str, ext: str, model: str) -> str:
    """The object key of one stem."""
    return template.format(id=job_id, stem=stem, ext=ext, model=model)


def input_key(template: str, job_id: str) -> str:
    """The object key of a job's input song."""
    return template.format(id=job_id)
