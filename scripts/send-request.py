"""Send jobs the way the REST tier does: upload a song to the input bucket as `{id}.mp3`, push a message.

    python scripts/send-request.py --song my.mp3                 # one job, JSON message {"songhash": ...}
    python scripts/send-request.py --form bare                   # a bare id message, generated 3 s song
    python scripts/send-request.py --count 20 --wait             # 20 jobs of one song, then follow them to the end
    python scripts/send-request.py --count 20 --distinct         # 20 jobs, each a different (dithered) copy
    python scripts/send-request.py --print-event --no-push > ev.json   # upload only; ev.json is ready to replay
    python scripts/send-request.py --no-upload --id gone         # a job whose input is missing (fails for good)

The worker's environment variables say where Redis and S3 are (REDIS_URL, MINIO_ENDPOINT, MINIO_ACCESS_KEY,
MINIO_SECRET_KEY, INPUT_BUCKET, QUEUE_KEY, ...). `--count N` uploads the song once and makes N-1 server-side
copies (S3 copy_object), one per job id: identical bytes, so the worker's result cache separates it once and
serves the rest (a measure of hits and single flight). `--count N --distinct` uploads N different files instead,
each the song with its own seeded +-1 LSB dither, re-encoded: inaudible, but no two share a cache key, so N
jobs are N separations (a measure of separation capacity); every run draws new dither. docs/cache.md.
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
import tempfile
import time
from pathlib import Path
from typing import Any

# Run as a script from anywhere: the package lives in the repository root.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import redis

from function.clients import s3_client
from function.config import FORMATS, STEMS, Settings, load_settings
from function.errors import ConfigError, InvalidJob, Transient
from function.keys import status_key
from function.messages import event_from_message, new_event, require_job_id
from function.replay import event_json
from function.status import State, StatusRecord
from function.storage import ObjectStore, input_key
from workbench import sample_song

FORMS = ("bare", "json", "cloudevent")
FINAL = {State.DONE.value, State.FAILED.value}


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").lower() in ("1", "true", "yes")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    env = os.environ.get
    parser = argparse.ArgumentParser(prog="send-request", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--song", type=Path, default=env("SONG"),
                        help="MP3 to upload (env SONG; default: a generated clip of --seconds)")
    parser.add_argument("--seconds", type=float, default=float(env("SONG_SECONDS", "3")),
                        help="length of the generated clip (env SONG_SECONDS, default 3)")
    parser.add_argument("--id", default=env("JOB_ID"),
                        help="job id (env JOB_ID; default: the first 16 hex digits of the song's sha256)")
    parser.add_argument("--form", choices=FORMS, default=env("MESSAGE_FORM", "json"),
                        help="message form on the queue (env MESSAGE_FORM, default json)")
    parser.add_argument("--model", default=env("JOB_MODEL"), help="model name (env JOB_MODEL)")
    parser.add_argument("--callback", default=env("JOB_CALLBACK"), help="webhook URL (env JOB_CALLBACK)")
    parser.add_argument("--stems", default=env("JOB_STEMS"), help=f"comma list from {','.join(STEMS)} (env JOB_STEMS)")
    parser.add_argument("--two-stems", choices=STEMS, default=env("JOB_TWO_STEMS"),
                        help="one stem and the rest mixed (env JOB_TWO_STEMS)")
    parser.add_argument("--format", choices=FORMATS, default=env("JOB_FORMAT"), help="stem format (env JOB_FORMAT)")
    parser.add_argument("--count", type=int, default=int(env("COUNT", "1")),
                        help="number of distinct jobs to push (env COUNT, default 1)")
    parser.add_argument("--distinct", action="store_true", default=_env_flag("DISTINCT"),
                        help="make each of the --count copies different audio (a seeded +-1 LSB dither), so the "
                             "result cache serves none of them from another (env DISTINCT=1)")
    parser.add_argument("--wait", action="store_true", default=_env_flag("WAIT"),
                        help="follow the jobs' status hashes until each is done or failed (env WAIT=1)")
    parser.add_argument("--timeout-s", type=float, default=float(env("WAIT_TIMEOUT_S", "900")),
                        help="deadline of --wait (env WAIT_TIMEOUT_S, default 900)")
    parser.add_argument("--print-event", action="store_true", default=_env_flag("PRINT_EVENT"),
                        help="print the CloudEvent the worker will receive for each message (env PRINT_EVENT=1)")
    parser.add_argument("--no-push", action="store_true", default=_env_flag("NO_PUSH"),
                        help="upload the song(s) but push nothing (env NO_PUSH=1)")
    parser.add_argument("--no-upload", action="store_true", default=_env_flag("NO_UPLOAD"),
                        help="push without uploading, so the input is missing: a failure drill (env NO_UPLOAD=1)")
    args = parser.parse_args(argv)
    if args.count < 1:
        parser.error("--count must be at least 1")
    extras = [name for name in ("model", "callback", "stems", "two_stems", "format") if getattr(args, name)]
    if args.form == "bare" and extras:
        parser.error(f"a bare id message carries only the id; drop {extras} or use --form json")
    return args


def job_body(job_id: str, args: argparse.Namespace) -> dict[str, Any]:
    body: dict[str, Any] = {"songhash": job_id}
    if args.model:
        body["model"] = args.model
    if args.callback:
        body["callback"] = args.callback
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


def distinct_copies(song: bytes, count: int, nonce: int) -> list[bytes]:
    """`count` MP3s of `song` whose bytes all differ: each is the decoded song plus a +-1 LSB (16-bit) dither
    seeded by (`nonce`, its index), re-encoded at 320 kbps. They sound the same and cost the same to separate (the
    re-encode adds LAME's ~25 ms of delay), but each has its own SHA-256, so the result cache serves none."""
    import numpy as np
    import sphn

    with tempfile.NamedTemporaryFile(suffix=".audio") as source:
        source.write(song)
        source.flush()
        wav, rate = sphn.read(source.name)
    copies: list[bytes] = []
    seen = {hashlib.sha256(song).digest()}
    for index in range(count):
        for attempt in range(8):  # a dither MP3 quantises away entirely is all but impossible; bounded anyway
            rng = np.random.default_rng([nonce, index, attempt])
            lsb = rng.integers(-1, 2, size=wav.shape).astype(np.float32) / 32767
            data = sample_song.mp3_bytes(np.clip(wav + lsb, -1, 1), int(rate), bitrate=320)
            if hashlib.sha256(data).digest() not in seen:
                break
        seen.add(hashlib.sha256(data).digest())
        copies.append(data)
    return copies


def upload(settings: Settings, song: bytes, ids: list[str], distinct: bool = False) -> None:
    """Put the song under the first id's key, then copy it server-side to every other id's key; with `distinct`,
    put a different dithered copy under every id's key instead."""
    store = ObjectStore(s3_client(settings))
    store.ensure_bucket(settings.input_bucket)
    if distinct:
        for job_id, data in zip(ids, distinct_copies(song, len(ids), secrets.randbits(64)), strict=True):
            store.put_bytes(settings.input_bucket, input_key(settings.input_key, job_id), data, "audio/mpeg")
        return
    first = input_key(settings.input_key, ids[0])
    store.put_bytes(settings.input_bucket, first, song, "audio/mpeg")
    for job_id in ids[1:]:
        store.copy(settings.input_bucket, first, input_key(settings.input_key, job_id))


def push(client: redis.Redis, settings: Settings, ids: list[str], messages: list[str]) -> None:
    """Mark each job queued, then push every message in one round trip (at the tail the runner pops last)."""
    for job_id in ids:
        StatusRecord(client, status_key(settings.status_key, job_id), settings.status_ttl_s).start()
    with client.pipeline(transaction=False) as pipe:
        for message in messages:
            if settings.queue_pop == "left":
                pipe.rpush(settings.queue_key, message)
            else:
                pipe.lpush(settings.queue_key, message)
        pipe.execute()


def follow(client: redis.Redis, settings: Settings, ids: list[str], timeout_s: float) -> int:
    """Print each state change of the jobs until all are done or failed, or the deadline passes."""
    started = time.monotonic()
    seen: dict[str, tuple[str, str]] = {}
    while True:
        for job_id in ids:
            raw = client.hgetall(status_key(settings.status_key, job_id))
            record = {k.decode(): v.decode() for k, v in raw.items()}
            now = (record.get("state", "unknown"), record.get("progress", ""))
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
    print(f"{done} done, {failed} failed, {unfinished} unfinished after {time.monotonic() - started:.2f} s",
          file=sys.stderr)
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
    client = redis.Redis.from_url(settings.redis_connection_url, socket_timeout=settings.redis_timeout_s)
    try:
        if not args.no_upload and args.distinct:
            upload(settings, song, ids, distinct=True)
            print(f"uploaded {len(ids)} distinct dithered copies of the song to {settings.input_bucket}/"
                  f"{input_key(settings.input_key, ids[0])} ..", file=sys.stderr)
        elif not args.no_upload:
            upload(settings, song, ids)
            print(f"uploaded {len(song)} bytes to {settings.input_bucket}/{input_key(settings.input_key, ids[0])}"
                  + (f" and copied it to {len(ids) - 1} more key(s)" if len(ids) > 1 else ""), file=sys.stderr)
        if args.print_event:
            for event in events:
                print(event_json(event), flush=True)
        if args.no_push:
            return 0
        push(client, settings, ids, messages)
        print(f"pushed {len(ids)} {args.form} message(s) onto {settings.queue_key}: {ids[0]}"
              + (f" .. {ids[-1]}" if len(ids) > 1 else ""), file=sys.stderr)
        return follow(client, settings, ids, args.timeout_s) if args.wait else 0
    except (Transient, redis.RedisError) as err:
        print(f"send-request: {type(err).__name__}: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
