"""The reaper on its own: requeue the messages whose runner died, then exit.

    python -m function.reaper

What `python -m function.runner --reap` does (one REAP script: expired leases, then lease-less processing entries
older than ORPHAN_GRACE_SECONDS), without the worker: it imports the queue, the Redis client and the settings,
never torch or demucs, so the reaper CronJob starts in well under a second and needs a few tens of MiB
(tests/test_reaper.py checks that torch stays out). Prints `requeued N`.

Exit codes: 0 reaped (N may be 0); 1 Redis unreachable; 2 configuration error.
"""

from __future__ import annotations

import sys

from function.clients import redis_client
from function.config import Settings, load_settings
from function.errors import ConfigError, Transient
from function.logs import configure_logging
from function.queue import WorkQueue
from function.status import EventLog


def reap(settings: Settings) -> int:
    """Requeue the messages of dead runners once; returns how many went back to the queue."""
    client = redis_client(settings)
    queue = WorkQueue(
        client, settings.queue_key, settings.queue_pop, settings.lease_s, settings.orphan_grace_s, settings.max_attempts
    )
    moved = queue.reap()
    if moved:
        EventLog(client, settings.log_key).info(f"reaper: requeued {moved} message(s) whose worker died")
    return moved


def main(argv: list[str] | None = None) -> int:
    if argv if argv is not None else sys.argv[1:]:
        print("usage: python -m function.reaper (no arguments; settings come from the environment)", file=sys.stderr)
        return 2
    try:
        settings = load_settings()
    except ConfigError as err:
        print(f"stemworker-reaper: {err}", file=sys.stderr)
        return 2
    configure_logging(settings)
    try:
        moved = reap(settings)
    except Transient as err:
        print(f"stemworker-reaper: {err}", file=sys.stderr)
        return 1
    print(f"requeued {moved}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
