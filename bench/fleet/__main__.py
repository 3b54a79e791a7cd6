"""`python -m bench.fleet <scenario>`: see bench/fleet/__init__.py and docs/reliability.md."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bench.fleet import __doc__ as DOC


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.fleet", description=DOC, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=None, help="folder for the JSON summary and runner logs")
    sub = parser.add_subparsers(dest="scenario", required=True)

    timing = sub.add_parser("reap-timing", help="time one reap at several keyspace sizes")
    timing.add_argument("--unrelated-keys", default="0,100000", help="comma-separated keyspace sizes")
    timing.add_argument("--repeat", type=int, default=300, help="reaps timed per size")
    timing.add_argument("--legacy-repeat", type=int, default=20, help="reaps of the previous (KEYS) reaper")

    scale = sub.add_parser("scale", help="many messages through many runners, optionally under faults")
    scale.add_argument("--messages", type=int, default=2000)
    scale.add_argument("--runners", type=int, default=16)
    scale.add_argument("--unrelated-keys", type=int, default=100_000)
    scale.add_argument("--clip-seconds", type=float, default=1.0)
    scale.add_argument(
        "--faults", action="store_true", help="kill -9 and SIGTERM runners, restart Redis once, take S3 away for 10 s"
    )
    scale.add_argument("--seed", type=int, default=7)
    scale.add_argument("--max-minutes", type=float, default=40.0)

    partition = sub.add_parser("partition", help="cut one runner off mid-job for longer than its lease")
    partition.add_argument("--method", choices=("netns", "sigstop"), default="netns")
    partition.add_argument("--lease-seconds", type=int, default=4)

    s3 = sub.add_parser("s3-restart", help="time how long a restarted local S3 takes to serve objects")
    s3.add_argument("--restarts", type=int, default=12)

    lossy = sub.add_parser("no-persistence", help="restart a Redis without persistence mid-run")
    lossy.add_argument("--messages", type=int, default=200)
    lossy.add_argument("--runners", type=int, default=4)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.scenario == "reap-timing":
        from bench.fleet import reap_timing

        counts = [int(part) for part in args.unrelated_keys.split(",")]
        return reap_timing.run(counts, args.repeat, args.legacy_repeat, args.out)
    if args.scenario == "scale":
        from bench.fleet import scale

        return scale.run(
            args.messages,
            args.runners,
            args.unrelated_keys,
            args.clip_seconds,
            args.faults,
            args.seed,
            args.max_minutes,
            args.out,
        )
    if args.scenario == "partition":
        from bench.fleet import partition

        return partition.run(args.method, args.lease_seconds, args.out)
    if args.scenario == "s3-restart":
        from bench.fleet import s3_restart

        return s3_restart.run(args.restarts, args.out)
    from bench.fleet import no_persistence

    return no_persistence.run(args.messages, args.runners, args.out)


if __name__ == "__main__":
    sys.exit(main())
