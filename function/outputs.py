"""Where a stem is published: the names STEM_ALIASES gives it, and one upload plus server-side copies.

`STEM_ALIASES=bass:base+bass` publishes the bass stem as `base` (one tier's spelling) and as `bass` (everyone
else's): it is encoded and uploaded once, under the first name, and S3 copies it to the others (no data
passes through the worker again). The job's `outputs` entry for the stem keeps `bucket` and `key` (the first
name's) and, when there are several names, `keys` lists every key in name order.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from function.storage import ObjectStore


def published_names(aliases: dict[str, str], stem: str) -> tuple[str, ...]:
    """The names `stem` is published under: its STEM_ALIASES entry split on '+', or its own name."""
    if stem not in aliases:
        return (stem,)
    return tuple(dict.fromkeys(name.strip() for name in aliases[stem].split("+") if name.strip()))


def publish(store: ObjectStore, bucket: str, keys: list[str], source: Path, content_type: str) -> dict[str, Any]:
    """Upload `source` as `bucket/keys[0]` and copy it server-side to every other key; returns the outputs entry."""
    store.upload(bucket, keys[0], source, content_type)
    for key in keys[1:]:
        store.copy(bucket, keys[0], key)
    entry: dict[str, Any] = {"bucket": bucket, "key": keys[0]}
    if len(keys) > 1:
        entry["keys"] = list(keys)
    return entry
