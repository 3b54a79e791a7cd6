"""A REST-tier emulator for the tests: it submits a song the way one tier does and reads back what that tier's
API would show.

Tiers in the wild differ in how they push (LPUSH or RPUSH), what their message looks like (a bare id; the id under
`hash` or `songhash`; the input's own `bucket` and `key`; an empty callback; a model name of their own), which
fields they keep in the status hash (a `status` field their status endpoint reads, the file name, the user) and
how they spell the stems they hand out (`base` for bass). A `Tier` describes one; a `TierClient` acts it out
against the real Redis and S3 the tests run, the worker's settings telling it where the worker reads and writes.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from typing import Any, Literal

import redis
from minio import Minio

from function.config import Settings
from function.keys import status_key
from function.storage import input_key, output_key


@dataclass(frozen=True)
class Tier:
    """How one REST tier submits a job and reads it back."""

    name: str
    push: Literal["lpush", "rpush"] = "rpush"
    id_field: str | None = "songhash"  # None: the message is the bare id
    fields: dict[str, Any] = field(default_factory=dict)  # what else its message carries (model, callback, ...)
    bucket: str | None = None  # the bucket it uploads to and names in the message (None: INPUT_BUCKET, unnamed)
    upload_bucket: str | None = None  # a bucket template ({id}) it uploads to without naming it (None: INPUT_BUCKET)
    key: str | None = None  # its object key template ({id}), named in the message (None: INPUT_KEY, unnamed)
    key_field: str = "key"  # the message field the key goes under (`object_name` in some tiers)
    own_status: dict[str, str] = field(default_factory=dict)  # its fields in the status hash, written at submit
    own_status_ttl_s: int | None = None  # the expiry it gives its status hash (None: none)
    status_field: str = "state"  # the field its status endpoint reads
    stem_names: dict[str, str] = field(default_factory=dict)  # how its API spells a stem in object keys


class TierClient:
    """One tier against the real services: upload, status fields, push; then its API's view of the job."""

    def __init__(self, tier: Tier, settings: Settings, client: redis.Redis, s3: Minio) -> None:
        self.tier = tier
        self.settings = settings
        self.redis = client
        self.s3 = s3

    def input_location(self, job_id: str) -> tuple[str, str]:
        bucket = (self.tier.bucket or self.tier.upload_bucket or self.settings.input_bucket).replace("{id}", job_id)
        key = self.tier.key.replace("{id}", job_id) if self.tier.key else input_key(self.settings.input_key, job_id)
        return bucket, key

    def message(self, job_id: str) -> str:
        if self.tier.id_field is None:
            return job_id
        body: dict[str, Any] = {self.tier.id_field: job_id, **self.tier.fields}
        if self.tier.bucket:
            body["bucket"] = self.tier.bucket.replace("{id}", job_id)
        if self.tier.key:
            body[self.tier.key_field] = self.input_location(job_id)[1]
        return json.dumps(body)

    def submit(self, job_id: str, song: bytes | None) -> str:
        """Upload `song` (None: upload nothing), write the tier's own status fields, push; returns the message."""
        if song is not None:
            bucket, key = self.input_location(job_id)
            if not self.s3.bucket_exists(bucket):
                self.s3.make_bucket(bucket)
            self.s3.put_object(bucket, key, io.BytesIO(song), len(song), content_type="audio/mpeg")
        if self.tier.own_status:
            self.redis.hset(self.status_key(job_id), mapping=self.tier.own_status)
            if self.tier.own_status_ttl_s is not None:
                self.redis.expire(self.status_key(job_id), self.tier.own_status_ttl_s)
        message = self.message(job_id)
        (self.redis.lpush if self.tier.push == "lpush" else self.redis.rpush)(self.settings.queue_key, message)
        return message

    def status_key(self, job_id: str) -> str:
        return status_key(self.settings.status_key, job_id)

    def record(self, job_id: str) -> dict[str, str]:
        """The whole status hash, as the tier's Redis client reads it."""
        return {k.decode(): v.decode() for k, v in self.redis.hgetall(self.status_key(job_id)).items()}

    def status(self, job_id: str) -> str | None:
        """What the tier's status endpoint shows."""
        return self.record(job_id).get(self.tier.status_field)

    def stem_key(self, job_id: str, stem: str, ext: str = "mp3", model: str | None = None) -> str:
        """The object key the tier's API hands out for `stem`, in its own spelling."""
        name = self.tier.stem_names.get(stem, stem)
        return output_key(self.settings.output_key, job_id, name, ext, model or self.settings.demucs_model)

    def output_bucket(self, job_id: str) -> str:
        """The bucket the tier's API hands stems out of."""
        return self.settings.output_bucket.replace("{id}", job_id)

    def download(self, job_id: str, stem: str, ext: str = "mp3") -> bytes:
        """GET the stem the way the tier's API does."""
        response = self.s3.get_object(self.output_bucket(job_id), self.stem_key(job_id, stem, ext))
        try:
            return response.read()
        finally:
            response.close()
            response.release_conn()
