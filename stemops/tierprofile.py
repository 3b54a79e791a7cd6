"""What one observed submission says about a REST tier, as the settings that serve it (`stemworker doctor --watch`).

From the commands the tier ran (stemops/tierwatch.py): the list it pushed to and from which end (QUEUE_KEY,
QUEUE_POP), its message read by the worker's own parser (function/messages.py), the song found in S3 by the
message's id (INPUT_BUCKET, INPUT_KEY; a bucket named after the song becomes `{id}`), the status hash it writes
(STATUS_KEY, STATE_FIELDS) and the model names it sends (MODEL_ALIASES). What one submission cannot show (where the
tier's API reads the stems, how it spells them, its callbacks' network) comes back as commented-out choices. The
block is then checked: loaded as settings, and the observed message parsed with them into the input found.
Everything here reads; nothing writes to Redis or S3.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import re
import shlex
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import redis
from minio import Minio
from minio.error import S3Error

from function.buckets import render_bucket
from function.config import Settings, load_settings
from function.errors import ConfigError, InvalidJob
from function.ids import ID_FIELDS
from function.messages import event_from_message, job_from_event, job_id_or_none
from function.storage import input_key
from stemops.tierwatch import EXPIRES, HASH_WRITES, PUSHES, Command

# Objects listed per bucket, at most, while looking for the song (the newest matching key wins).
MAX_LISTED_PER_BUCKET = 20_000
# Values a tier's own status field holds for a job it has just queued.
QUEUED_WORDS = frozenset(
    {
        "queued",
        "pending",
        "waiting",
        "submitted",
        "new",
        "created",
        "received",
        "uploaded",
        "accepted",
        "todo",
        "processing",
        "in_queue",
        "enqueued",
    }
)
STATE_FIELD_NAMES = ("state", "status", "job_status", "jobstatus", "stage")
# Message fields the worker reads (function/messages.py, function/tier.py), besides the id.
READ_FIELDS = frozenset({"model", "format", "callback", "stems", "two_stems", "bucket", "key", "object_name"})
# How long the song is looked for in S3 when it is not there yet (a tier may upload after it pushes).
UPLOAD_WAIT_S = 5.0
# Pushed values weighed as the job, at most (the first ones pushed).
MAX_CANDIDATES = 10
# Settings in the order the block prints them.
ORDER = (
    "QUEUE_KEY",
    "QUEUE_POP",
    "INPUT_BUCKET",
    "INPUT_KEY",
    "INPUT_BUCKETS",
    "STATUS_KEY",
    "STATE_FIELDS",
    "MODEL_ALIASES",
    "CALLBACK_ALLOW_HOSTS",
)


@dataclass
class Profile:
    """The settings found (`block`, with why each), the choices left open (commented out), and what stands in the
    way of serving the tier (`problems`: each one means the block alone does not serve it)."""

    block: dict[str, str] = field(default_factory=dict)
    reasons: dict[str, str] = field(default_factory=dict)
    undetermined: list[tuple[str, str]] = field(default_factory=list)  # (NAME=value line, why it is a guess)
    problems: list[str] = field(default_factory=list)
    observed: dict[str, Any] = field(default_factory=dict)

    def set(self, name: str, value: str, reason: str) -> None:
        self.block[name] = value
        self.reasons[name] = reason

    def ordered(self) -> list[tuple[str, str]]:
        return sorted(self.block.items(), key=lambda item: ORDER.index(item[0]) if item[0] in ORDER else 99)

    def env_lines(self) -> list[str]:
        """The block as NAME=value lines a shell or an env file reads, then the open choices commented out."""
        lines = [f"{name}={env_value(value)}" for name, value in self.ordered()]
        if self.undetermined:
            lines.append("# not determined from one submission; uncomment what matches the tier:")
            lines += [f"# {line}    # {why}" for line, why in self.undetermined]
        return lines

    def as_dict(self) -> dict[str, Any]:
        return {
            "block": dict(self.ordered()),
            "reasons": self.reasons,
            "undetermined": [{"line": line, "why": why} for line, why in self.undetermined],
            "problems": self.problems,
            "observed": self.observed,
            "ok": not self.problems,
        }


# Values written as they are: a shell does no brace expansion in an assignment, and env files (docker --env-file,
# a ConfigMap) take them literally. Anything else is shell-quoted.
PLAIN_VALUE = re.compile(r"[A-Za-z0-9_{}:,./+@%=-]*")


def env_value(value: str) -> str:
    return value if PLAIN_VALUE.fullmatch(value) else shlex.quote(value)


def _text(value: bytes) -> str:
    return value.decode("utf-8", "replace")


def _template(value: str, job_id: str) -> str:
    return "{id}" if value == job_id else value.replace(job_id, "{id}")


@dataclass(frozen=True)
class Submission:
    """The push that carried the job: list, end, raw message, its id and its JSON fields ({} for a bare id)."""

    queue: str
    command: str
    raw: bytes
    job_id: str
    fields: dict[str, Any]


def find_submissions(commands: list[Command], settings: Settings, profile: Profile) -> list[Submission]:
    """Every pushed value the worker's parser reads an id from (a tier may push log lines too); the others are
    noted."""
    found: list[Submission] = []
    for command in commands:
        if command.name not in PUSHES or len(command.args) < 2:
            continue
        queue = _text(command.args[0])
        for raw in command.args[1:]:
            try:
                event = event_from_message(raw, settings.max_message_bytes)
            except InvalidJob as err:
                profile.observed.setdefault("other_pushes", []).append(f"{command.name} {queue}: {err}")
                continue
            job_id = job_id_or_none(event)
            if job_id is None:
                profile.observed.setdefault("other_pushes", []).append(
                    f"{command.name} {queue} {_text(raw)[:120]!r}: no id the worker reads ({', '.join(ID_FIELDS)})"
                )
                continue
            try:
                decoded = json.loads(raw)
            except ValueError:
                decoded = None
            found.append(Submission(queue, command.name, raw, job_id, decoded if isinstance(decoded, dict) else {}))
    return found[:MAX_CANDIDATES]


def named_input(fields: dict[str, Any]) -> tuple[str | None, str | None]:
    """The bucket and key a message names itself (`object_name` read as `key`); None for each it leaves out."""
    bucket = fields.get("bucket") or None
    key = fields.get("key") or fields.get("object_name") or None
    return (bucket if isinstance(bucket, str) else None), (key if isinstance(key, str) else None)


def choose(
    candidates: list[Submission], commands: list[Command], settings: Settings, s3: Minio
) -> tuple[Submission, tuple[str, str] | None]:
    """The job among the pushed values, with its song when found: the one whose song is in S3 first, then one not
    pushed onto LOG_KEY, then a JSON object over a bare id, then one whose id names a hash the tier wrote."""
    hashed = [_text(c.key or b"") for c in commands if c.name in HASH_WRITES]
    best: tuple[int, int, Submission, tuple[str, str] | None] | None = None
    for order, candidate in enumerate(candidates):
        where = locate_object(s3, candidate.job_id, *named_input(candidate.fields))
        score = (
            4 * (where is not None)
            + 2 * (candidate.queue != settings.log_key)
            + bool(candidate.fields)
            + any(candidate.job_id in key for key in hashed)
        )
        if best is None or score > best[0]:
            best = (score, order, candidate, where)
    assert best is not None
    return best[2], best[3]


def locate_object(s3: Minio, job_id: str, named_bucket: str | None, named_key: str | None) -> tuple[str, str] | None:
    """Where the song is: the message's own bucket and key when both are given and exist; else the newest object
    whose bucket or key holds the id (buckets named after the id searched first), restricted to the message's
    bucket or key when it names one."""
    if named_bucket and named_key:
        try:
            s3.stat_object(named_bucket, named_key)
            return named_bucket, named_key
        except S3Error:
            return None
    buckets = [bucket.name for bucket in s3.list_buckets()]
    if named_bucket:
        buckets = [name for name in buckets if name == named_bucket]
    buckets.sort(key=lambda name: job_id not in name)
    found: list[tuple[Any, str, str]] = []
    for bucket in buckets:
        for count, item in enumerate(s3.list_objects(bucket, recursive=True)):
            if count >= MAX_LISTED_PER_BUCKET:
                break
            name = item.object_name or ""
            if named_key is not None and name != named_key:
                continue
            if named_key is not None or job_id in name or job_id in bucket:
                found.append((item.last_modified, bucket, name))
        if found and job_id in bucket:
            break
    if not found:
        return None
    found.sort(key=lambda entry: (entry[0] is not None, entry[0]), reverse=True)
    return found[0][1], found[0][2]


def newest_object(s3: Minio) -> tuple[str, str] | None:
    """The most recently modified object of any bucket (listing at most MAX_LISTED_PER_BUCKET of each)."""
    newest: tuple[Any, str, str] | None = None
    for bucket in s3.list_buckets():
        for count, item in enumerate(s3.list_objects(bucket.name, recursive=True)):
            if count >= MAX_LISTED_PER_BUCKET:
                break
            if item.last_modified is not None and (newest is None or item.last_modified > newest[0]):
                newest = (item.last_modified, bucket.name, item.object_name or "")
    return None if newest is None else (newest[1], newest[2])


def _status_writes(commands: list[Command], job_id: str) -> tuple[str | None, dict[str, str], int | None]:
    """The hash the tier wrote whose key holds the id (the first with a state field, when it wrote several): key,
    fields (last value of each), expiry in seconds when it set one."""
    hashes: dict[str, dict[str, str]] = {}
    ttls: dict[str, int] = {}
    for command in commands:
        name = _text(command.key or b"")
        if job_id not in name:
            continue
        if command.name in HASH_WRITES and len(command.args) >= 3:
            pairs = command.args[1:]
            hashes.setdefault(name, {}).update(
                {_text(pairs[i]): _text(pairs[i + 1]) for i in range(0, len(pairs) - 1, 2)}
            )
        elif command.name in EXPIRES and len(command.args) >= 2:
            with contextlib.suppress(ValueError):
                ttls[name] = int(command.args[1])
    if not hashes:
        return None, {}, None
    key = next((name for name, fields in hashes.items() if _state_field(fields) is not None), next(iter(hashes)))
    return key, hashes[key], ttls.get(key)


def _string_keys(commands: list[Command], job_id: str) -> list[str]:
    """Plain string keys the tier SET that hold the id (a status kept as a string, or a lock)."""
    return list(
        dict.fromkeys(
            _text(c.key or b"")
            for c in commands
            if c.name in ("SET", "SETEX", "PSETEX", "SETNX") and job_id in _text(c.key or b"")
        )
    )


def _state_field(fields: dict[str, str]) -> str | None:
    for name in STATE_FIELD_NAMES:
        if name in fields:
            return name
    return next((name for name, value in fields.items() if value.lower() in QUEUED_WORDS), None)


def _callback_hosts(callback: Any) -> tuple[str | None, str | None]:
    """(CALLBACK_ALLOW_HOSTS entry, note) for a callback URL on a loopback or private address."""
    url = callback.get("url") if isinstance(callback, dict) else callback
    if not isinstance(url, str) or not url:
        return None, None
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return "127.0.0.1/32", f"the callback {url} is on localhost"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return None, f"the callback goes to {host}: if it resolves to a private address, CALLBACK_ALLOW_HOSTS={host}"
    if address.is_loopback or address.is_private or address.is_link_local:
        return f"{address}/{address.max_prefixlen}", f"the callback {url} is on a private or loopback address"
    return None, None


def build_profile(commands: list[Command], settings: Settings, s3: Minio, client: redis.Redis) -> Profile:
    """The settings that serve the tier that ran `commands`, checked against the worker's own parser (the block
    over `settings`' environment)."""
    profile = Profile()
    profile.observed["commands"] = len(commands)
    candidates = find_submissions(commands, settings, profile)
    if not candidates:
        pushes = [f"{c.name} {_text(c.key or b'')}" for c in commands if c.name in PUSHES]
        profile.problems.append(
            f"no pushed message holds an id the worker reads (pushes seen: {pushes}); the "
            f"message needs the id as a bare string or under one of {list(ID_FIELDS)}"
        )
        return profile
    submission, where = choose(candidates, commands, settings, s3)
    job_id, fields = submission.job_id, submission.fields
    profile.observed.update(
        queue=submission.queue,
        push=submission.command,
        message=_text(submission.raw)[:2000],
        id=job_id,
        id_field=next((name for name in ID_FIELDS if name in fields), None),
    )
    unread = sorted(set(fields) - READ_FIELDS - set(ID_FIELDS))
    if unread:
        profile.observed["unread_fields"] = unread
    profile.set("QUEUE_KEY", submission.queue, f"the tier pushed its message onto the list {submission.queue}")
    left = submission.command.startswith("L")
    profile.set(
        "QUEUE_POP",
        "right" if left else "left",
        f"{submission.command} adds at the {'head' if left else 'tail'}: taking from the "
        f"{'right' if left else 'left'} serves the oldest first",
    )

    # The input: the message's own bucket and key (or object_name), else found in S3 by the id.
    named_bucket, named_key = named_input(fields)
    deadline = time.monotonic() + UPLOAD_WAIT_S
    while where is None and time.monotonic() < deadline:
        time.sleep(0.5)
        where = locate_object(s3, job_id, named_bucket, named_key)
    if where is None:
        newest = newest_object(s3)
        seen = (
            f"; the newest object is {newest[0]}/{newest[1]}, whose name does not hold the id (the worker finds "
            "a song by the id in INPUT_BUCKET/INPUT_KEY, or by the message's own bucket and key)"
            if newest is not None
            else ""
        )
        profile.problems.append(
            f"no object in S3 holds the id {job_id} in its bucket or key name"
            + (f" (the message names bucket {named_bucket!r} key {named_key!r})" if named_bucket or named_key else "")
            + f": did the tier upload the song before it pushed?{seen}"
        )
        profile.undetermined.append(("INPUT_BUCKET=queue", "the bucket the tier uploads to ({id} for one per song)"))
        profile.undetermined.append(("INPUT_KEY={id}.mp3", "the song's key in it; must hold {id}"))
    else:
        bucket, key = where
        profile.observed["input"] = f"{bucket}/{key}"
        bucket_template = _template(bucket, job_id)
        how = "a bucket named after the song" if bucket_template == "{id}" else f"the bucket {bucket}"
        profile.set(
            "INPUT_BUCKET",
            bucket_template,
            f"the song is in {how}" + (" (the message names it)" if named_bucket else ""),
        )
        if named_key:
            named_as = "key" if fields.get("key") else "object_name"
            profile.reasons["INPUT_BUCKET"] += f"; the message names the key ({named_as})"
        else:
            key_template = _template(key, job_id)
            if "{id}" in key_template:
                profile.set("INPUT_KEY", key_template, f"the song's key is {key}")
            else:
                profile.problems.append(
                    f"the song's key {key!r} does not hold the id, and the message does not name "
                    "it: INPUT_KEY needs {id}"
                )

    # The status hash the tier writes for the job, if any.
    status_key, status_fields, ttl = _status_writes(commands, job_id)
    strings = _string_keys(commands, job_id)
    if strings:
        profile.observed["string_keys"] = strings
    if status_key is None:
        own = settings.status_key.format(id=job_id)
        if own in strings:
            profile.problems.append(
                f"the tier keeps {own} as a string (SET), where the worker writes its status "
                "hash: give the worker another STATUS_KEY, e.g. STATUS_KEY=stemworker:{id}"
            )
        profile.undetermined.append(
            (
                f"STATUS_KEY={settings.status_key}",
                "the tier wrote no hash holding the id"
                + (f" (it SET {', '.join(strings)})" if strings else "")
                + "; the worker writes this one",
            )
        )
    else:
        profile.observed["status"] = {"key": status_key, "fields": status_fields}
        profile.set("STATUS_KEY", _template(status_key, job_id), f"the tier wrote the hash {status_key}")
        state_field = _state_field(status_fields)
        if state_field is not None:
            names = "state" if state_field == "state" else f"state,{state_field}"
            profile.set(
                "STATE_FIELDS",
                names,
                f"the tier keeps the state in field {state_field!r} ({status_fields[state_field]!r} at submit)",
            )
            profile.undetermined.append(
                (
                    "STATE_MAP=downloading:processing,separating:processing,uploading:processing",
                    "if the tier only knows queued/processing/done/failed",
                )
            )
        if ttl is None:
            try:
                ttl = int(client.ttl(status_key))
            except redis.RedisError:
                ttl = None
        if ttl is not None and ttl > 0:
            profile.observed["status"]["expires_s"] = ttl
            profile.reasons["STATUS_KEY"] += f" (its own expiry of {ttl} s is kept while STATUS_TTL_S is unset)"

    # Model names the tier sends that the worker does not serve.
    model = fields.get("model")
    if isinstance(model, str) and model and model not in settings.allowed_models:
        aliases = {**settings.model_aliases, model: settings.model_aliases.get(model, settings.demucs_model)}
        profile.set(
            "MODEL_ALIASES",
            ",".join(f"{name}:{target}" for name, target in aliases.items()),
            f"the message asks for model {model!r}, which is not served; it runs as {aliases[model]!r} "
            f"(or serve it: DEMUCS_MODELS={model})",
        )

    # Callbacks.
    entry, note = _callback_hosts(fields.get("callback"))
    if entry is not None:
        hosts = dict.fromkeys((*settings.callback_allow_hosts, entry))
        profile.set("CALLBACK_ALLOW_HOSTS", ",".join(hosts), note or "")
    elif note is not None:
        profile.undetermined.append((f"CALLBACK_ALLOW_HOSTS={urlsplit(str(fields.get('callback'))).hostname}", note))
    elif not fields.get("callback"):
        profile.undetermined.append(
            (
                "CALLBACK_ALLOW_HOSTS=127.0.0.1/32",
                "this message asked for no callback; if others call back to a private host",
            )
        )

    # What one submission cannot show: where the tier's API looks for the stems.
    profile.undetermined += [
        (f"OUTPUT_BUCKET={settings.output_bucket}", "where the tier's API reads stems ({id} for a bucket per song)"),
        (f"OUTPUT_KEY={settings.output_key}", "or {id}/{stem}.{ext}; {model} also works"),
        ("STEM_ALIASES=bass:base+bass", "if the tier's API spells the bass stem 'base'"),
    ]
    verify(profile, submission, where)
    return profile


def verify(profile: Profile, submission: Submission, where: tuple[str, str] | None) -> None:
    """Load the block as settings (over the environment) and parse the observed message with them, as the worker
    would; add a problem for each way that fails or reads another input than the one found."""
    try:
        settings = load_settings(**{name.lower(): value for name, value in profile.block.items()})
    except ConfigError as err:
        profile.problems.append(f"the block does not load: {err}")
        return
    try:
        job = job_from_event(event_from_message(submission.raw, settings.max_message_bytes), settings)
        bucket = job.input_bucket or render_bucket("INPUT_BUCKET", settings.input_bucket, id=job.id)
    except InvalidJob as err:
        profile.problems.append(f"with the block, the worker refuses the observed message: {err}")
        return
    key = job.input_key or input_key(settings.input_key, job.id)
    profile.observed["worker_reads"] = f"{bucket}/{key}"
    if where is not None and (bucket, key) != where:
        profile.problems.append(f"with the block the worker would read {bucket}/{key}, not {where[0]}/{where[1]}")
