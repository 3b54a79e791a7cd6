"""Send jobs the way the REST tier does: upload a song to the input bucket as `{id}.mp3`, push a message.

    python scripts/send-request.py --song my.mp3                 # one job, JSON message {"songhash": ...}
    python scripts/send-request.py --form bare                   # a bare id message, generated 3 s song
    python scripts/send-request.py --count 20 --wait             # 20 distinct jobs, then follow them to the end
    python scripts/send-request.py --print-event --no-push > ev.json   # upload only; ev.json is ready to replay
    python scripts/send-request.py --no-upload --id gone         # a job whose input is missing (fails for good)

Shapes other REST tiers send (docs/rest-tiers.md has one example per variant):

    python scripts/send-request.py --push lpush --id-field hash  # LPUSH {"hash": ...}
    python scripts/send-request.py --bucket uploads --key 'songs/{id}.mp3'   # the message names its input
    python scripts/send-request.py --key 'up/{id}.mp3' --key-field object_name   # ... under object_name
    python scripts/send-request.py --empty-callback object       # "callback": {} (also null, string, array)
    python scripts/send-request.py --model default               # a model name the tier made up
    python scripts/send-request.py --no-status --tier-field status=queued   # the tier's own status fields

The worker's environment variables say where Redis and S3 are (REDIS_URL, MINIO_ENDPOINT, MINIO_ACCESS_KEY,
MINIO_SECRET_KEY, INPUT_BUCKET, QUEUE_KEY, ...). `--count N` uploads the song once and makes N-1 server-side
copies (S3 copy_object), one per job id: identical bytes, so the worker's result cache separates it once and
serves the rest (a measure of hits and single flight). `--count N --distinct` uploads N different files instead,
each the song with its own seeded +-1 LSB dither, re-encoded: inaudible, but no two share a cache key, so N
jobs are N separations (a measure of separation capacity); every run draws new dither (docs/cache.md).
Each job's status hash is set to `queued` before its message is pushed.
Human-readable lines go to stderr; stdout holds only the events of `--print-event`, one JSON object per line.
Exit codes: 0 pushed (with --wait: every job done); 1 a job failed or the --wait deadline passed; 2 bad options.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import secrets
import sys
import time
from pathlib import Path
from typing import Any

# Run as a script from anywhere: the package lives in the repository root.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import redis

from function.clients import redis_client, s3_client
from function.config import FORMATS, STEMS, Settings, load_settings
from function.errors import ConfigError, InvalidJob, Transient
from function.keys import status_key
from function.messages import event_from_message, new_event, require_job_id
from function.replay import event_json
from function.status import State, StatusRecord
from function.storage import ObjectStore, input_key
from stemops import flood
from workbench import sample_song

FORMS = ("bare", "json", "cloudevent")
FINAL = {State.DONE.value, State.FAILED.value}
ID_FIELDS = ("songhash", "hash", "id")
# What tiers send to mean "no callback".
EMPTY_CALLBACKS: dict[str, Any] = {"object": {}, "null": None, "string": "", "array": []}


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").lower() in ("1", "true", "yes")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    env = os.environ.get
    parser = argparse.ArgumentParser(
        prog="send-request", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--song",
        type=Path,
        default=env("SONG"),
        help="MP3 to upload (env SONG; default: a generated clip of --seconds)",
    )
    parser.add_argument(
        "--seconds",
        type=float,
        default=float(env("SONG_SECONDS", "3")),
        help="length of the generated clip (env SONG_SECONDS, default 3)",
    )
    parser.add_argument(
        "--id", default=env("JOB_ID"), help="job id (env JOB_ID; default: the first 16 hex digits of the song's sha256)"
    )
    parser.add_argument(
        "--form",
        choices=FORMS,
        default=env("MESSAGE_FORM", "json"),
        help="message form on the queue (env MESSAGE_FORM, default json)",
    )
    parser.add_argument("--model", default=env("JOB_MODEL"), help="model name (env JOB_MODEL)")
    parser.add_argument("--callback", default=env("JOB_CALLBACK"), help="webhook URL (env JOB_CALLBACK)")
    parser.add_argument(
        "--distinct",
        action="store_true",
        default=_env_flag("DISTINCT"),
        help="with --count, upload a different inaudibly dithered copy per job (env DISTINCT=1), so "
        "the result cache serves none and N jobs are N separations",
    )
    parser.add_argument("--stems", default=env("JOB_STEMS"), help=f"comma list from {','.join(STEMS)} (env JOB_STEMS)")
    parser.add_argument(
        "--two-stems",
        default=env("JOB_TWO_STEMS"),
        help="one stem and the rest mixed, e.g. vocals or guitar (env JOB_TWO_STEMS)",
    )
    parser.add_argument("--format", choices=FORMATS, default=env("JOB_FORMAT"), help="stem format (env JOB_FORMAT)")
    parser.add_argument(
        "--push",
        choices=("lpush", "rpush"),
        default=env("PUSH"),
        help="LPUSH or RPUSH the messages (env PUSH; default: the end QUEUE_POP takes last, FIFO)",
    )
    parser.add_argument(
        "--id-field",
        choices=ID_FIELDS,
        default=env("ID_FIELD", "songhash"),
        help="field carrying the id in a JSON message (env ID_FIELD, default songhash)",
    )
    parser.add_argument(
        "--bucket", default=env("JOB_BUCKET"), help="upload to this bucket and name it in the message (env JOB_BUCKET)"
    )
    parser.add_argument(
        "--key",
        default=env("JOB_KEY"),
        help="upload under this key ({id} is replaced) and name it in the message (env JOB_KEY)",
    )
    parser.add_argument(
        "--key-field",
        choices=("key", "object_name"),
        default=env("JOB_KEY_FIELD", "key"),
        help="the message field --key goes under (env JOB_KEY_FIELD, default key)",
    )
    parser.add_argument(
        "--empty-callback",
        choices=sorted(EMPTY_CALLBACKS),
        default=env("JOB_EMPTY_CALLBACK"),
        help='an empty callback: {} (object), null, "" (string) or [] (array) (env JOB_EMPTY_CALLBACK)',
    )
    parser.add_argument(
        "--tier-field",
        action="append",
        default=_env_list("TIER_FIELDS"),
        metavar="NAME=VALUE",
        help="a field the tier keeps in the status hash, written before the push "
        "(repeatable; env TIER_FIELDS, comma-separated)",
    )
    parser.add_argument(
        "--no-status",
        action="store_true",
        default=_env_flag("NO_STATUS"),
        help="write no `queued` status record (a tier that keeps only its own fields; env NO_STATUS=1)",
    )
    parser.add_argument(
        "--count",
        type=int,
        default=int(env("COUNT", "1")),
        help="number of distinct jobs to push (env COUNT, default 1)",
    )
    parser.add_argument(
        "--wait",
        action="store_true",
        default=_env_flag("WAIT"),
        help="follow the jobs' status hashes until each is done or failed (env WAIT=1)",
    )
    parser.add_argument(
        "--timeout-s",
        type=float,
        default=float(env("WAIT_TIMEOUT_S", "900")),
        help="deadline of --wait (env WAIT_TIMEOUT_S, default 900)",
    )
    parser.add_argument(
        "--print-event",
        action="store_true",
        default=_env_flag("PRINT_EVENT"),
        help="print the CloudEvent the worker will receive for each message (env PRINT_EVENT=1)",
    )
    parser.add_argument(
        "--no-push",
        action="store_true",
        default=_env_flag("NO_PUSH"),
        help="upload the song(s) but push nothing (env NO_PUSH=1)",
    )
    parser.add_argument(
        "--no-upload",
        action="store_true",
        default=_env_flag("NO_UPLOAD"),
        help="push without uploading, so the input is missing: a failure drill (env NO_UPLOAD=1)",
    )
    args = parser.parse_args(argv)
    if args.count < 1:
        parser.error("--count must be at least 1")
    extras = [
        name
        for name in ("model", "callback", "stems", "two_stems", "format", "bucket", "key", "empty_callback")
        if getattr(args, name)
    ]
    if args.form == "bare" and (extras or args.id_field != "songhash"):
        parser.error(f"a bare id message carries only the id; drop {extras or ['id_field']} or use --form json")
    if args.callback and args.empty_callback:
        parser.error("--callback and --empty-callback exclude each other")
    for field in args.tier_field:
        if "=" not in field or not field.split("=", 1)[0].strip():
            parser.error(f"--tier-field expects NAME=VALUE, got {field!r}")
    return args


def _env_list(name: str) -> list[str]:
    return [part.strip() for part in os.environ.get(name, "").split(",") if part.strip()]


def job_body(job_id: str, args: argparse.Namespace) -> dict[str, Any]:
    body: dict[str, Any] = {args.id_field: job_id}
    if args.model:
        body["model"] = args.model
    if args.bucket:
        body["bucket"] = args.bucket.replace("{id}", job_id)
    if args.key:
        body[args.key_field] = object_key(args, job_id)
    if args.callback:
        body["callback"] = args.callback
    if args.empty_callback:
        body["callback"] = EMPTY_CALLBACKS[args.empty_callback]
    if args.stems:
        body["stems"] = [stem.strip() for stem in args.stems.split(",") if stem.strip()]
    if args.two_stems:
        body["two_stems"] = args.two_stems
    if args.format:
        body["format"] = args.format
    return body


def message_for(job_id: str, args: argparse.Namespace) -> str:
    """The queue message of one job in the chosen form."""
    if args.form == "bare":
        return job_id
    if args.form == "json":
        return json.dumps(job_body(job_id, args))
    return event_json(new_event(job_body(job_id, args)))


def object_key(args: argparse.Namespace, job_id: str) -> str:
    """The input key of `job_id`: --key with {id} replaced, else the worker's INPUT_KEY."""
    return args.key.replace("{id}", job_id) if args.key else ""


def input_location(settings: Settings, args: argparse.Namespace, job_id: str) -> tuple[str, str]:
    """(bucket, key) the song of `job_id` is uploaded to: --bucket/--key, else INPUT_BUCKET/INPUT_KEY (`{id}` in
    either is the job id: a bucket per song)."""
    bucket = (args.bucket or settings.input_bucket).replace("{id}", job_id)
    return bucket, object_key(args, job_id) or input_key(settings.input_key, job_id)


def upload(settings: Settings, song: bytes, ids: list[str], args: argparse.Namespace) -> tuple[str, str]:
    """Put the song under the first id's key, then copy it server-side to every other id's key (with --distinct,
    a different dithered copy under every id's key: no two share a cache key); returns where the first went."""
    store = ObjectStore(s3_client(settings))
    bucket, first = input_location(settings, args, ids[0])
    store.ensure_bucket(bucket)
    if getattr(args, "distinct", False):
        for job_id, data in zip(ids, flood.distinct_copies(song, len(ids), secrets.randbits(64)), strict=True):
            where, key = input_location(settings, args, job_id)
            store.ensure_bucket(where)
            store.put_bytes(where, key, data, "audio/mpeg")
        return bucket, first
    store.put_bytes(bucket, first, song, "audio/mpeg")
    for job_id in ids[1:]:
        where, key = input_location(settings, args, job_id)
        if (where, key) != (bucket, first):
            store.ensure_bucket(where)
            store.copy(bucket, first, key, dest_bucket=where)
    return bucket, first


def push(
    client: redis.Redis, settings: Settings, ids: list[str], messages: list[str], args: argparse.Namespace | None = None
) -> None:
    """Mark each job queued (unless --no-status) and write the tier's own status fields, then push every message
    in one round trip: RPUSH when the runner pops left (FIFO), LPUSH when it pops right, or as --push says."""
    side = getattr(args, "push", None) or ("rpush" if settings.queue_pop == "left" else "lpush")
    tier_fields = dict(field.split("=", 1) for field in getattr(args, "tier_field", None) or [])
    for job_id in ids:
        key = status_key(settings.status_key, job_id)
        if not getattr(args, "no_status", False):
            StatusRecord(client, key, settings.status_ttl_s, settings.state_fields).start()
        if tier_fields:
            client.hset(key, mapping=tier_fields)
    with client.pipeline(transaction=False) as pipe:
        for message in messages:
            (pipe.rpush if side == "rpush" else pipe.lpush)(settings.queue_key, message)
        pipe.execute()


def follow(client: redis.Redis, settings: Settings, ids: list[str], timeout_s: float) -> int:
    """Print each state change of the jobs until all are done or failed, or the deadline passes."""
    started = time.monotonic()
    seen: dict[str, tuple[str, str]] = {}
    while True:
        for job_id in ids:
            raw = client.hgetall(status_key(settings.status_key, job_id))
            record = {k.decode(): v.decode() for k, v in raw.items()}
            now = (record.get(settings.state_fields[0], "unknown"), record.get("progress", ""))
            if seen.get(job_id) != now:
                seen[job_id] = now
                detail = record.get("error", "") if now[0] == State.FAILED.value else f"{now[1]}%"
                print(f"{time.monotonic() - started:7.2f} s  {job_id}: {now[0]} {detail}", file=sys.stderr)
        states = [state for state, _ in seen.values()]
        if all(state in FINAL for state in states) or time.monotonic() - started > timeout_s:
            break
        time.sleep(0.25)
    done, failed = states.count(State.DONE.value), states.count(State.FAILED.value)
    unfinished = len(ids) - done - failed
    print(
        f"{done} done, {failed} failed, {unfinished} unfinished after {time.monotonic() - started:.2f} s",
        file=sys.stderr,
    )
    return 0 if done == len(ids) else 1


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        settings = load_settings()
        song = args.song.read_bytes() if args.song else sample_song.song_mp3(seconds=args.seconds)
        base = require_job_id(args.id or hashlib.sha256(song).hexdigest()[:16])
        ids = [base] if args.count == 1 else [require_job_id(f"{base}-{n}") for n in range(args.count)]
        messages = [message_for(job_id, args) for job_id in ids]
        events = [event_from_message(message, settings.max_message_bytes) for message in messages]
    except (ConfigError, InvalidJob, OSError) as err:
        print(f"send-request: {err}", file=sys.stderr)
        return 2
    client = redis_client(settings)
    try:
        if not args.no_upload:
            bucket, first = upload(settings, song, ids, args)
            copies = len({input_location(settings, args, job_id)[1] for job_id in ids}) - 1
            print(
                f"uploaded {len(song)} bytes to {bucket}/{first}"
                + (f" and copied it to {copies} more key(s)" if copies else ""),
                file=sys.stderr,
            )
        if args.print_event:
            for event in events:
                print(event_json(event), flush=True)
        if args.no_push:
            return 0
        push(client, settings, ids, messages, args)
        print(
            f"pushed {len(ids)} {args.form} message(s) onto {settings.queue_key}: {ids[0]}"
            + (f" .. {ids[-1]}" if len(ids) > 1 else ""),
            file=sys.stderr,
        )
        return follow(client, settings, ids, args.timeout_s) if args.wait else 0
    except (Transient, redis.RedisError) as err:
        print(f"send-request: {type(err).__name__}: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
