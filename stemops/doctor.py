"""`stemworker doctor`: the checks to run before anything else, and `--watch`, which reads a REST tier's settings
off one live submission.

Static checks, in order (a failed one that later ones need stops there): the settings load; Redis answers and
keeps data across a restart (CONFIG GET save/appendonly); S3 answers; the input and output buckets exist (or are
valid templates); the model loads (from DEMUCS_REPO or by name); a claim's wait fits the socket timeout; the queue
key exists, and if it does not while another list holds messages, which one (a bounded SCAN by type).

`--watch`: observe the tier's commands while the person submits one song (stemops/tierwatch.py), then print the
settings that serve it (stemops/tierprofile.py). Both only read the tier's data.
"""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass
from typing import Literal

import redis
import urllib3
from minio import Minio
from minio.error import MinioException

from function.clients import redis_client, s3_client
from function.config import Settings
from function.errors import InvalidJob, StemworkerError
from function.messages import event_from_message, job_id_or_none
from function.queue import block_slice_s
from stemops.persistence import read_persistence
from stemops.tierprofile import Profile, build_profile
from stemops.tierwatch import watch

# Keys looked at, at most, when the queue key is missing and doctor looks for the tier's list.
SCAN_LIMIT = 10_000
# Lists of the worker's own (suffixes of QUEUE_KEY) and the log list are never suggested as the queue.
OWN_SUFFIXES = (":processing", ":dead", ":leases", ":leased", ":attempts", ":orphans")

Level = Literal["ok", "warn", "fail"]


@dataclass(frozen=True)
class Check:
    name: str
    level: Level
    detail: str


def check_redis(client: redis.Redis, settings: Settings) -> list[Check]:
    try:
        client.ping()
    except redis.RedisError as err:
        return [Check("redis", "fail", f"cannot reach {settings.redis_connection_url.split('@')[-1]}: {err}")]
    checks = [Check("redis", "ok", f"answers at {settings.redis_connection_url.split('@')[-1]}")]
    persistence = read_persistence(client)
    level: Level = "warn" if persistence.none or (persistence.aof is None and persistence.rdb_save is None) else "ok"
    checks.append(Check("persistence", level, persistence.describe()))
    return checks


def check_s3(s3: Minio, settings: Settings) -> list[Check]:
    try:
        names = {bucket.name for bucket in s3.list_buckets()}
    except (MinioException, urllib3.exceptions.HTTPError, ValueError) as err:
        return [Check("s3", "fail", f"cannot list buckets at {settings.s3_endpoint}: {type(err).__name__}: {err}")]
    checks = [Check("s3", "ok", f"answers at {settings.s3_endpoint} ({len(names)} buckets)")]
    for name, bucket, missing in (
        ("input bucket", settings.input_bucket, "fail"),
        ("output bucket", settings.output_bucket, "warn"),
    ):
        if "{" in bucket:
            checks.append(Check(name, "ok", f"template {bucket!r}: rendered per job (checked at start)"))
        elif bucket in names:
            checks.append(Check(name, "ok", f"{bucket} exists"))
        elif missing == "fail":
            checks.append(
                Check(
                    name,
                    "fail",
                    f"{bucket} does not exist: where does the tier upload? (`stemworker doctor --watch` finds out)",
                )
            )
        else:
            checks.append(Check(name, "warn", f"{bucket} does not exist yet: the first job creates it"))
    return checks


def check_model(settings: Settings) -> Check:
    """Load the default model as a job would (from DEMUCS_REPO when set)."""
    from function.separation import get_separator  # deferred: loading torch takes seconds

    where = f"from DEMUCS_REPO={settings.demucs_repo}" if settings.demucs_repo else "by name (downloaded on first use)"
    try:
        separator = get_separator(settings.demucs_model, settings)
    except StemworkerError as err:
        hint = "" if settings.demucs_repo else "; offline, point DEMUCS_REPO at a local model folder"
        return Check("model", "fail", f"{settings.demucs_model} {where} does not load: {err}{hint}")
    return Check("model", "ok", f"{settings.demucs_model} loads {where} (stems {', '.join(separator.model.sources)})")


def check_claim_wait(client: redis.Redis, settings: Settings) -> Check:
    block_s = block_slice_s(settings.redis_timeout_s)
    detail = (
        f"CLAIM_WAIT_S={settings.claim_wait_s:g} is waited in BLMOVEs of at most {block_s:g} s, "
        f"under the socket timeout REDIS_TIMEOUT_S={settings.redis_timeout_s:g}"
    )
    if block_s >= settings.redis_timeout_s:
        return Check("claim wait", "warn", f"{detail}: too short for a blocking wait; raise REDIS_TIMEOUT_S")
    return Check("claim wait", "ok", detail)


def other_queues(client: redis.Redis, settings: Settings) -> list[tuple[str, int, bool]]:
    """Lists with messages other than the worker's own: (name, length, whether its head parses as a job)."""
    found = []
    own = {settings.log_key, *(settings.queue_key + suffix for suffix in OWN_SUFFIXES)}
    for count, raw in enumerate(client.scan_iter(count=1000, _type="list")):
        if count >= SCAN_LIMIT:
            break
        name = raw.decode("utf-8", "replace")
        if name in own or name.endswith(OWN_SUFFIXES):
            continue
        length = int(client.llen(raw))
        if length == 0:
            continue
        head = client.lindex(raw, 0) or b""
        try:
            parses = job_id_or_none(event_from_message(head, settings.max_message_bytes)) is not None
        except InvalidJob:
            parses = False
        found.append((name, length, parses))
    return sorted(found, key=lambda entry: (not entry[2], -entry[1]))


def check_queue(client: redis.Redis, settings: Settings) -> Check:
    raw_kind = client.type(settings.queue_key)
    kind = raw_kind.decode() if isinstance(raw_kind, bytes) else str(raw_kind)
    length = int(client.llen(settings.queue_key)) if kind == "list" else 0
    if kind not in ("list", "none"):
        return Check("queue", "fail", f"QUEUE_KEY={settings.queue_key} is a {kind}, not a list")
    others = other_queues(client, settings) if length == 0 else []
    if others:
        name, count, parses = others[0]
        what = "messages the worker reads as jobs" if parses else "entries"
        return Check(
            "queue",
            "warn",
            f"{settings.queue_key} {'is empty' if kind == 'list' else 'does not exist'}, but "
            f"{name} holds {count} {what}: is that the tier's queue? Set QUEUE_KEY={name}",
        )
    if kind == "none":
        return Check("queue", "ok", f"{settings.queue_key} does not exist yet (empty); no other list holds messages")
    return Check("queue", "ok", f"{settings.queue_key} holds {length} message{'s' if length != 1 else ''}")


def static_checks(settings: Settings, with_model: bool = True) -> list[Check]:
    checks = [Check("settings", "ok", "loaded from the environment")]
    client = redis_client(settings)
    checks += check_redis(client, settings)
    checks += check_s3(s3_client(settings), settings)
    if with_model:
        checks.append(check_model(settings))
    checks.append(check_claim_wait(client, settings))
    if checks[1].level != "fail":
        checks.append(check_queue(client, settings))
    return checks


def checks_as_dict(checks: list[Check]) -> dict[str, object]:
    return {"checks": [asdict(check) for check in checks], "ok": all(check.level != "fail" for check in checks)}


def watch_tier(settings: Settings, timeout_s: float, ready: threading.Event | None = None) -> tuple[str, Profile]:
    """Watch one submission and profile it: (how it was watched, the profile)."""
    client = redis_client(settings)
    how, commands = watch(client, timeout_s, ready=(ready.set if ready is not None else lambda: None))
    profile = build_profile(commands, settings, s3_client(settings), client)
    profile.observed["watched_with"] = how
    return how, profile


def watch_text(how: str, profile: Profile) -> list[str]:
    """The report: what was seen (comments), then the block."""
    seen = profile.observed
    lines = [f"# watched with {how}: {seen.get('commands', 0)} commands"]
    for label, key in (("pushed", "message"), ("input", "input"), ("worker reads", "worker_reads")):
        if key in seen:
            prefix = f"{seen.get('push')} {seen.get('queue')} " if key == "message" else ""
            lines.append(f"# {label}: {prefix}{seen[key]}")
    if "status" in seen:
        lines.append(f"# status hash: {seen['status']['key']} {seen['status']['fields']}")
    if seen.get("unread_fields"):
        lines.append(
            f"# message fields the worker does not read: {', '.join(seen['unread_fields'])} (it reads the id, "
            "model, format, callback, stems, two_stems, bucket, key and object_name)"
        )
    lines += [f"#   {name}: {reason}" for name, reason in profile.reasons.items() if reason]
    lines += [f"# PROBLEM: {problem}" for problem in profile.problems]
    lines += profile.env_lines()
    return lines
