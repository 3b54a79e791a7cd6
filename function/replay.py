"""Replay one saved CloudEvent, for debugging: in-process through `handle`, or POSTed to a running server.

    python -m function.replay EVENT.json                     # run it here; print the result or the error
    python -m function.replay EVENT.json --url URL           # POST it instead (--mode binary|structured)
    python -m function.replay --from-dead-letter [INDEX]     # take it from `<QUEUE_KEY>:dead` (default -1, newest)
    python -m function.replay EVENT.json --dry-run           # parse and validate only: print the Job

An event file is a structured-mode CloudEvent (JSON), as the worker writes it to `SAVE_EVENTS_DIR/<id>.json`
and `scripts/send-request.py --print-event` prints it. Settings (Redis, S3, model) come from the environment.
Exit codes: 0 done; 1 the job failed or the server answered non-2xx; 2 no event could be loaded.
"""

from __future__ import annotations

import argparse
import json
import sys
import uuid
from dataclasses import asdict
from pathlib import Path
from typing import Any

import redis
import requests
from cloudevents.conversion import to_binary, to_structured
from cloudevents.http import CloudEvent

from function.clients import redis_client
from function.config import Settings, load_settings
from function.errors import ConfigError, InvalidJob, StemworkerError
from function.keys import dead_key
from function.messages import event_from_dict, event_from_message, event_json, job_from_event, read_event_file


def read_dead_letter(client: redis.Redis, queue_key: str, index: int, max_message_bytes: int) -> CloudEvent:
    """The event of dead-letter entry `index` of `<queue_key>:dead` (negative counts from the newest).

    Entries whose message never parsed have no `event`; their raw `message` is parsed again instead."""
    raw = client.lindex(dead_key(queue_key), index)
    if raw is None:
        raise InvalidJob(
            f"no dead-letter entry at index {index} of {dead_key(queue_key)} "
            f"(length {client.llen(dead_key(queue_key))})"
        )
    try:
        entry = json.loads(raw)
    except ValueError as err:
        raise InvalidJob(f"dead-letter entry {index} is not JSON: {err}") from None
    if not isinstance(entry, dict):
        raise InvalidJob(f"dead-letter entry {index} is a JSON {type(entry).__name__}, not an object")
    if isinstance(entry.get("event"), dict):
        return event_from_dict(entry["event"])
    if isinstance(entry.get("message"), str):
        return event_from_message(entry["message"], max_message_bytes)
    raise InvalidJob(f"dead-letter entry {index} has neither 'event' nor 'message'")


def with_new_id(event: CloudEvent) -> CloudEvent:
    """A copy of `event` with a fresh id (receivers that de-duplicate on the id will not drop the replay)."""
    attributes = {**event.get_attributes(), "id": str(uuid.uuid4())}
    return CloudEvent(attributes, event.data)


def post(event: CloudEvent, url: str, mode: str, timeout_s: float) -> requests.Response:
    """POST `event` to a running server in binary (ce-* headers) or structured mode."""
    headers, body = (to_binary if mode == "binary" else to_structured)(event)
    return requests.post(url, data=body, headers=headers, timeout=timeout_s)


def run_here(event: CloudEvent, settings: Settings) -> dict[str, Any]:
    """Run `event` through the worker in this process (loads the model)."""
    from function.core import Worker  # deferred: only a local run loads torch and demucs

    return Worker(settings).handle(event)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="stemworker-replay", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("event", nargs="?", type=Path, help="structured CloudEvent JSON file")
    parser.add_argument(
        "--from-dead-letter",
        nargs="?",
        type=int,
        const=-1,
        default=None,
        metavar="INDEX",
        help="take the event from dead-letter entry INDEX (default -1, the newest)",
    )
    parser.add_argument(
        "--url", default=None, help="POST the event to this server instead of running it here (env REPLAY_URL)"
    )
    parser.add_argument(
        "--mode",
        choices=("binary", "structured"),
        default=None,
        help="HTTP content mode with --url (env REPLAY_MODE, default binary)",
    )
    parser.add_argument(
        "--timeout-s", type=float, default=None, help="HTTP timeout with --url (env REPLAY_TIMEOUT_S, default 900)"
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        default=None,
        help="validate only: parse the event and print the Job (env REPLAY_DRY_RUN=1)",
    )
    parser.add_argument("--new-id", action="store_true", help="give the replayed event a fresh id")
    parser.add_argument("--print-event", action="store_true", help="print the event before replaying it")
    args = parser.parse_args(argv)
    if (args.event is None) == (args.from_dead_letter is None):
        parser.error("give exactly one of EVENT.json or --from-dead-letter")
    return args


def _print_json(value: Any, stream: Any = None) -> None:
    print(json.dumps(value, indent=2, sort_keys=True, default=str), file=stream or sys.stdout)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        settings = load_settings()
    except ConfigError as err:
        print(f"stemworker-replay: {err}", file=sys.stderr)
        return 2
    url = args.url if args.url is not None else settings.replay_url
    mode = args.mode or settings.replay_mode
    timeout_s = args.timeout_s if args.timeout_s is not None else settings.replay_timeout_s
    dry_run = args.dry_run or settings.replay_dry_run
    try:
        if args.event is not None:
            event = read_event_file(args.event)
        else:
            client = redis_client(settings)
            event = read_dead_letter(client, settings.queue_key, args.from_dead_letter, settings.max_message_bytes)
    except (InvalidJob, redis.RedisError) as err:
        print(f"stemworker-replay: {err}", file=sys.stderr)
        return 2
    if args.new_id:
        event = with_new_id(event)
    if args.print_event:
        print(event_json(event))
    if dry_run:
        try:
            job = job_from_event(event, settings)
        except InvalidJob as err:
            _print_json({"error": str(err), "type": type(err).__name__}, sys.stderr)
            return 1
        _print_json({"valid": True, "job": asdict(job)})
        return 0
    if url:
        try:
            response = post(event, url, mode, timeout_s)
        except requests.RequestException as err:
            print(f"stemworker-replay: POST {url} failed: {type(err).__name__}: {err}", file=sys.stderr)
            return 1
        ce_headers = {k.lower(): v for k, v in response.headers.items() if k.lower().startswith("ce-")}
        print(f"HTTP {response.status_code} {ce_headers.get('ce-type', '')}".rstrip())
        try:
            _print_json(response.json())
        except ValueError:
            print(response.text)
        return 0 if response.ok else 1
    try:
        result = run_here(event, settings)
    except StemworkerError as err:
        _print_json(
            {"error": str(err), "type": type(err).__name__, "status": err.http_status, "permanent": err.permanent},
            sys.stderr,
        )
        return 1
    _print_json(result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
