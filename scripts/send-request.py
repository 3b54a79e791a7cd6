"""Send jobs the way the REST tier does: upload a song to the input bucket as `{id}.mp3`, push a message.
The sample client; the shared part is stemops/flood.py, which `stemworker flood` runs too.

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
import os
import sys
from pathlib import Path

# Run as a script from anywhere: the package lives in the repository root.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import redis

from function.clients import redis_client
from function.config import FORMATS, STEMS, Settings, load_settings
from function.errors import ConfigError, InvalidJob, Transient
from function.messages import event_from_message, event_json, require_job_id
from function.storage import input_key
from stemops import flood
from workbench import sample_song

FORMS = flood.FORMS


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


def options_of(args: argparse.Namespace) -> flood.JobOptions:
    stems = tuple(stem.strip() for stem in args.stems.split(",") if stem.strip()) if args.stems else None
    return flood.JobOptions(form=args.form, model=args.model, callback=args.callback, stems=stems,
                            two_stems=args.two_stems, format=args.format)


def follow(client: redis.Redis, settings: Settings, ids: list[str], timeout_s: float) -> int:
    """Print each state change of the jobs until all are done or failed, or the deadline passes; 0 when all
    are done."""
    return 0 if flood.follow(client, settings, ids, timeout_s).done == len(ids) else 1


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        settings = load_settings()
        song = args.song.read_bytes() if args.song else sample_song.song_mp3(seconds=args.seconds)
        base = require_job_id(args.id or hashlib.sha256(song).hexdigest()[:16])
        ids = [require_job_id(job_id) for job_id in flood.job_ids(base, args.count)]
        options = options_of(args)
        messages = [flood.message_for(job_id, options) for job_id in ids]
        events = [event_from_message(message, settings.max_message_bytes) for message in messages]
    except (ConfigError, InvalidJob, OSError) as err:
        print(f"send-request: {err}", file=sys.stderr)
        return 2
    client = redis_client(settings)
    try:
        if not args.no_upload and args.distinct:
            flood.upload(settings, song, ids, distinct=True)
            print(f"uploaded {len(ids)} distinct dithered copies of the song to {settings.input_bucket}/"
                  f"{input_key(settings.input_key, ids[0])} ..", file=sys.stderr)
        elif not args.no_upload:
            flood.upload(settings, song, ids)
            print(f"uploaded {len(song)} bytes to {settings.input_bucket}/{input_key(settings.input_key, ids[0])}"
                  + (f" and copied it to {len(ids) - 1} more key(s)" if len(ids) > 1 else ""), file=sys.stderr)
        if args.print_event:
            for event in events:
                print(event_json(event), flush=True)
        if args.no_push:
            return 0
        flood.push(client, settings, ids, messages)
        print(f"pushed {len(ids)} {args.form} message(s) onto {settings.queue_key}: {ids[0]}"
              + (f" .. {ids[-1]}" if len(ids) > 1 else ""), file=sys.stderr)
        if not args.wait:
            return 0
        return follow(client, settings, ids, args.timeout_s)
    except (Transient, redis.RedisError) as err:
        print(f"send-request: {type(err).__name__}: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
