"""Job fields that REST tiers fill in their own ways, read into what the worker runs: the model and the input.

- Model: a message may name a model the operator does not serve (`"default"`, or a hard-coded `"mdx_extra_q"`).
  MODEL_ALIASES is applied first (`name:model`), then the allowed models themselves (DEMUCS_MODEL and
  DEMUCS_MODELS), then UNKNOWN_MODEL: `reject` (the default) refuses the job, `default` runs DEMUCS_MODEL and
  says so. Both names are kept: the one requested and the one that runs.
- Input: a message may name the object's `bucket` and `key` (or `object_name`, read the same way) itself. The
  bucket must be one of INPUT_BUCKETS (INPUT_BUCKET always is, rendered for the job's id when it is a template);
  the key must be a safe object key. Without them the worker reads INPUT_BUCKET/INPUT_KEY as before.

Everything here raises InvalidJob (permanent) naming the bad value, before any I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from function.buckets import render_bucket
from function.config import Settings
from function.errors import InvalidJob
from function.ids import ID_FIELDS, ID_PATTERN

MAX_KEY_BYTES = 1024  # S3's limit on an object key, in UTF-8 bytes


@dataclass(frozen=True)
class ModelChoice:
    """The model a job runs, the name its message asked for, and a note when they differ."""

    model: str
    requested: str
    note: str | None = None


def resolve_model(raw: Any, settings: Settings) -> ModelChoice:
    """The model to run for a message's `model` field (absent, null or "" mean DEMUCS_MODEL)."""
    if raw is None or raw == "":
        return ModelChoice(settings.demucs_model, settings.demucs_model)
    if not isinstance(raw, str):
        raise InvalidJob(f"model must be a string, got {type(raw).__name__}")
    if raw in settings.model_aliases:
        target = settings.model_aliases[raw]
        note = None if target == raw else f"model {raw!r} runs as {target!r} (MODEL_ALIASES)"
        return ModelChoice(target, raw, note)
    if raw in settings.allowed_models:
        return ModelChoice(raw, raw)
    if settings.unknown_model == "default":
        shown = raw if len(raw) <= 80 else raw[:80] + "..."
        return ModelChoice(
            settings.demucs_model,
            raw,
            f"model {shown!r} is not served; running {settings.demucs_model!r} (UNKNOWN_MODEL=default)",
        )
    allowed = sorted({*settings.allowed_models, *settings.model_aliases})
    raise InvalidJob(f"model {raw[:80]!r} is not allowed; allowed: {allowed}")


def require_object_key(key: Any, field: str = "key") -> str:
    """An object key a message may name (under `field`): a non-empty string of at most MAX_KEY_BYTES UTF-8 bytes,
    with no control characters, no leading '/' and no '.' or '..' path segment (nothing that walks out of a prefix)."""
    if not isinstance(key, str) or not key:
        raise InvalidJob(f"{field} must be a non-empty string, got {key!r}"[:200])
    shown = repr(key[:80]) + ("..." if len(key) > 80 else "")
    try:
        size = len(key.encode("utf-8"))
    except UnicodeEncodeError:
        raise InvalidJob(f"{field} {shown} is not valid UTF-8 text") from None
    if size > MAX_KEY_BYTES:
        raise InvalidJob(f"{field} is {size} bytes of UTF-8, over the {MAX_KEY_BYTES} an object key may have")
    if any(ord(ch) < 0x20 or 0x7F <= ord(ch) < 0xA0 for ch in key):
        raise InvalidJob(f"{field} {shown} contains control characters")
    if key.startswith("/"):
        raise InvalidJob(f"{field} {shown} must not start with '/'")
    if any(segment in (".", "..") for segment in key.replace("\\", "/").split("/")):
        raise InvalidJob(f"{field} {shown} must not contain a '.' or '..' path segment")
    return key


def allowed_input_buckets(data: dict[str, Any], settings: Settings) -> frozenset[str]:
    """INPUT_BUCKETS and INPUT_BUCKET, the latter rendered for the message's id when it is a template (a message
    may name its own per-song bucket)."""
    if "{" not in settings.input_bucket:
        return settings.allowed_input_buckets
    job_id = next((data[name] for name in ID_FIELDS if name in data), None)
    if not isinstance(job_id, str) or ID_PATTERN.fullmatch(job_id) is None:
        return frozenset(settings.input_buckets)
    return frozenset((render_bucket("INPUT_BUCKET", settings.input_bucket, id=job_id), *settings.input_buckets))


def input_location(data: dict[str, Any], settings: Settings) -> tuple[str | None, str | None]:
    """The (bucket, key) a message names for its input; None for each one it leaves to INPUT_BUCKET/INPUT_KEY."""
    bucket = data.get("bucket")
    key = data.get("key")
    bucket = None if bucket == "" else bucket  # an empty field is an absent one, as tiers send them
    key = None if key == "" else key
    object_name = data.get("object_name")  # some tiers' name for the key (minio's own word for it)
    object_name = None if object_name == "" else object_name
    if object_name is not None:
        object_name = require_object_key(object_name, "object_name")
        if key is not None and key != object_name:
            raise InvalidJob(f"key {key!r:.80} and object_name {object_name!r:.80} name different objects")
        key = object_name
    if bucket is not None and (not isinstance(bucket, str) or bucket not in allowed_input_buckets(data, settings)):
        shown = repr(bucket[:80]) if isinstance(bucket, str) else type(bucket).__name__
        raise InvalidJob(
            f"bucket {shown} is not an input bucket; allowed (INPUT_BUCKETS): {sorted(settings.allowed_input_buckets)}"
        )
    if key is not None:
        key = require_object_key(key)
    return bucket, key
