"""What the result cache records (`Entry`: the stems of the job that separated an input), whether a recorded
entry can still be trusted, and copying its stems to another job's keys, server-side."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

from function.buckets import render_bucket
from function.config import Settings
from function.messages import Job
from function.outputs import published_names
from function.storage import ObjectStore, output_key


@dataclass(frozen=True)
class StoredStem:
    """One recorded stem object, with what proves it unchanged."""

    bucket: str
    key: str
    size: int
    etag: str


@dataclass(frozen=True)
class Entry:
    """A cached result: the job that separated it and its stems (by the model's stem names, before STEM_ALIASES)."""

    job_id: str
    stems: dict[str, StoredStem]
    audio_seconds: float
    device: str
    recorded_at: str

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, raw: bytes | str) -> Entry:
        """Parse an entry; anything malformed raises ValueError."""
        try:
            data = json.loads(raw)
            stems = {name: StoredStem(**fields) for name, fields in data["stems"].items()}
            return cls(
                job_id=str(data["job_id"]),
                stems=stems,
                audio_seconds=float(data["audio_seconds"]),
                device=str(data["device"]),
                recorded_at=str(data["recorded_at"]),
            )
        except (KeyError, TypeError, AttributeError, json.JSONDecodeError) as err:
            raise ValueError(f"malformed result cache entry: {err}") from None


def stale_reason(store: ObjectStore, entry: Entry) -> str | None:
    """Why `entry` cannot be trusted (a recorded object is gone or changed), or None when all are intact."""
    for stem, stored in entry.stems.items():
        found = store.stat(stored.bucket, stored.key)
        if found is None:
            return f"stem {stem} {stored.bucket}/{stored.key} is gone"
        size, etag = found
        if (size, etag) != (stored.size, stored.etag):
            return (
                f"stem {stem} {stored.bucket}/{stored.key} changed (size {size}, ETag {etag}; recorded "
                f"{stored.size}, {stored.etag})"
            )
    return None


def copy_entry(store: ObjectStore, settings: Settings, entry: Entry, job: Job) -> dict[str, dict[str, Any]] | None:
    """Copy every recorded stem to every name a fresh run of the job publishes it under (its bucket rendered for the
    job, STEM_ALIASES' names from outputs.published_names), server-side; None when a source changed meanwhile."""
    s = settings
    bucket = render_bucket("OUTPUT_BUCKET", s.output_bucket, id=job.id, model=job.model, ext=job.format)
    store.ensure_bucket(bucket)
    outputs: dict[str, dict[str, Any]] = {}
    for stem, stored in entry.stems.items():
        names = [
            output_key(s.output_key, job.id, name, job.format, job.model)
            for name in published_names(s.stem_aliases, stem)
        ]
        for key in names:
            same_object = (stored.bucket, stored.key) == (bucket, key)
            if not same_object and not store.copy(
                stored.bucket, stored.key, key, dest_bucket=bucket, match_etag=stored.etag
            ):
                return None
        outputs[stem] = {"bucket": bucket, "key": names[0], **({"keys": names} if len(names) > 1 else {})}
    return outputs
