"""Record a flood run through the local ScaledJob emulator in the format `bench/plan.py validate` reads.

    python -m bench.flood_measure push --ids IDS.txt --rate R --pushes PUSHES.jsonl [--redis-url URL] [--queue toWorker]
    python -m bench.flood_measure collect --pushes PUSHES.jsonl --scaler-log SCALER.log
        --scaler-started-at EPOCH --workdir WORKDIR [--redis-url URL] [--status-key 'status:{id}'] --out FLOOD.json

`push` RPUSHes `{"songhash": ID}` for each id (songs already uploaded under those ids) at R per second and
writes one line per push, `{"id": ..., "pushed_at": <epoch seconds>}`: no Redis key keeps the push time,
so whatever pushes the flood must record it (any tool writing that JSON-lines shape will do).

`collect` joins, for every pushed id:
- the job's status hash: `received_at` (its pod claimed it) and `done_at`, ISO times in UTC;
- the emulator's stdout (`python -m workbench.emulator ... > SCALER.log`): its header gives the strategy,
  maxReplicaCount, listLength and pollingInterval it ran with, and each poll line `[  12.3 s] ... created=+N`
  when it created Jobs, in seconds after the emulator started (`--scaler-started-at`, e.g. from
  `date +%s.%N` just before starting it);
- the pods' logs under the emulator's `--workdir` (`pods/<job>-<NNNN>-<retry>/log`): which jobs each pod
  claimed (`claimed job ID`); Job NNNN was created by the poll at which the running total of `created`
  passed NNNN, and its first pod started then (a retry's start is unknown and left null).
The result is the JSON described in `bench/planning/validation.py`.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from bench.planning.fleet import fleet_from_manifests
from bench.planning.validation import FORMAT

ROOT = Path(__file__).resolve().parents[1]

POLL_LINE = re.compile(r"^\[\s*([\d.]+) s\] queue=\d+ .*created=\+(\d+)")
HEADER_FIELDS = re.compile(r"(strategy|maxReplicaCount|listLength|pollingInterval)=(\S+)")
CLAIM = re.compile(r"claimed job (\S+)")
POD_NAME = re.compile(r"^(?P<job>.+)-(?P<index>\d+)-(?P<retry>\d+)$")


def parse_poll_lines(text: str) -> tuple[dict[str, Any], list[tuple[float, int]]]:
    """The emulator's settings from its header line, and (seconds after its start, Jobs created) per poll."""
    header: dict[str, Any] = {}
    polls = []
    for line in text.splitlines():
        if line.startswith("scaler: ") and "strategy=" in line:
            fields = dict(HEADER_FIELDS.findall(line))
            header = {
                "strategy": fields["strategy"],
                "max_replica_count": int(fields["maxReplicaCount"]),
                "list_length": float(fields["listLength"]),
                "polling_interval_s": float(fields["pollingInterval"]),
                # The emulator counts a Job pending until its pod claims, whatever the conditions say.
                "pending_until": "claim",
            }
        match = POLL_LINE.match(line)
        if match:
            polls.append((float(match.group(1)), int(match.group(2))))
    return header, polls


def pod_claims(logs: dict[str, str]) -> dict[str, list[str]]:
    """The job ids each pod claimed, in order, from its log text."""
    return {name: CLAIM.findall(text) for name, text in sorted(logs.items())}


def iso_seconds(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def _pod_start(name: str, created_at: list[float]) -> float | None:
    match = POD_NAME.match(name)
    if match is None or int(match.group("retry")) != 0 or int(match.group("index")) >= len(created_at):
        return None
    return created_at[int(match.group("index"))]


def build_measured(
    pushes: dict[str, float],
    statuses: dict[str, dict[str, str]],
    header: dict[str, Any],
    polls: list[tuple[float, int]],
    scaler_started_at: float,
    claims: dict[str, list[str]],
    claim_wait_s: float,
    max_messages: int,
) -> dict[str, Any]:
    """The flood JSON: every time in seconds after the first push (`pushes` and the result are epoch-based)."""
    t0 = min(pushes.values())
    jobs = []
    for job_id, pushed in sorted(pushes.items(), key=lambda item: item[1]):
        status = statuses.get(job_id, {})
        start, end = status.get("received_at"), status.get("done_at")
        jobs.append(
            {
                "id": job_id,
                "push_s": pushed - t0,
                "start_s": iso_seconds(start) - t0 if start else None,
                "end_s": iso_seconds(end) - t0 if end else None,
            }
        )
    # Job number k was created by the poll at which the running total of created Jobs first exceeded k.
    created_at = [scaler_started_at + elapsed - t0 for elapsed, count in polls for _ in range(count)]
    pods = [{"name": name, "start_s": _pod_start(name, created_at), "jobs": ids} for name, ids in claims.items()]
    return {
        "format": FORMAT,
        "t0": datetime.fromtimestamp(t0).astimezone().isoformat(),
        "fleet": {**header, "activation_list_length": 0, "claim_wait_s": claim_wait_s, "max_messages": max_messages},
        "poll_offset_s": scaler_started_at + polls[0][0] - t0 if polls else 0.0,
        "jobs": jobs,
        "pods": pods,
    }


# ----- I/O


def read_pushes(path: Path) -> dict[str, float]:
    out = {}
    for line in path.read_text().splitlines():
        if line.strip():
            record = json.loads(line)
            when = record["pushed_at"]
            out[record["id"]] = float(when) if isinstance(when, int | float) else iso_seconds(when)
    return out


def read_pod_logs(workdir: Path) -> dict[str, str]:
    return {log.parent.name: log.read_text(errors="replace") for log in (workdir / "pods").glob("*/log")}


def read_statuses(redis_url: str, ids: list[str], template: str) -> dict[str, dict[str, str]]:
    import redis

    client = redis.Redis.from_url(redis_url)
    with client.pipeline(transaction=False) as pipe:
        for job_id in ids:
            pipe.hgetall(template.format(id=job_id))
        raw = pipe.execute()
    return {
        job_id: {k.decode(): v.decode() for k, v in fields.items()} for job_id, fields in zip(ids, raw, strict=True)
    }


def epoch(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return iso_seconds(text)


def cmd_push(args: argparse.Namespace) -> int:
    import redis

    client = redis.Redis.from_url(args.redis_url)
    ids = [line.strip() for line in args.ids.read_text().splitlines() if line.strip()]
    start = time.time()
    with args.pushes.open("a") as out:
        for index, job_id in enumerate(ids):
            time.sleep(max(0.0, start + index / args.rate - time.time()))
            client.rpush(args.queue, json.dumps({"songhash": job_id}))
            out.write(json.dumps({"id": job_id, "pushed_at": time.time()}) + "\n")
            out.flush()
    return 0


def cmd_collect(args: argparse.Namespace) -> int:
    pushes = read_pushes(args.pushes)
    header, polls = parse_poll_lines(args.scaler_log.read_text())
    if not header or not polls:
        raise SystemExit(f"{args.scaler_log}: no scaler header or poll lines; is it the emulator's stdout?")
    manifest = fleet_from_manifests(args.manifests)
    measured = build_measured(
        pushes,
        read_statuses(args.redis_url, list(pushes), args.status_key),
        header,
        polls,
        epoch(args.scaler_started_at),
        pod_claims(read_pod_logs(args.workdir)),
        manifest.claim_wait_s if args.claim_wait is None else args.claim_wait,
        manifest.max_messages if args.max_messages is None else args.max_messages,
    )
    args.out.write_text(json.dumps(measured, indent=1))
    missing = sum(job["end_s"] is None for job in measured["jobs"])
    print(f"{args.out}: {len(measured['jobs'])} jobs ({missing} without done_at), {len(measured['pods'])} pods")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.flood_measure", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    push = sub.add_parser("push")
    push.add_argument("--ids", type=Path, required=True, help="one job id per line, songs uploaded under them")
    push.add_argument("--rate", type=float, required=True, help="pushes per second")
    push.add_argument("--pushes", type=Path, required=True, help="JSON lines of id and push time (appended)")
    push.add_argument("--queue", default="toWorker")
    push.add_argument("--redis-url", default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
    collect = sub.add_parser("collect")
    collect.add_argument("--pushes", type=Path, required=True)
    collect.add_argument("--scaler-log", type=Path, required=True, help="the emulator's stdout")
    collect.add_argument("--scaler-started-at", required=True, help="epoch seconds or ISO time of its start")
    collect.add_argument("--workdir", type=Path, required=True, help="the emulator's --workdir")
    collect.add_argument("--redis-url", default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
    collect.add_argument("--status-key", default="status:{id}", help="STATUS_KEY template")
    collect.add_argument("--manifests", type=Path, default=ROOT / "keda")
    collect.add_argument("--claim-wait", type=float, help="CLAIM_WAIT_S the pods ran with")
    collect.add_argument("--max-messages", type=int, help="MAX_MESSAGES the pods ran with")
    collect.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    return cmd_push(args) if args.command == "push" else cmd_collect(args)


if __name__ == "__main__":
    raise SystemExit(main())
