"""How long a restarted local S3 (SeaweedFS `weed mini`) takes to really serve objects.

Each round stops the server and starts it without waiting, then times, from the start: the first answered
`list_buckets` (what readiness used to check), the first successful GET of an object written before the restart,
and the first successful PUT of a new object, all three at once, each tried with urllib3 retries off (the PUT with
a 60 s read timeout, so a held write is timed to its end). It shows the window in which the S3 API answers but
objects do not, which the worker's retry budget (function/clients.py) must cover and the fixtures' readiness must
wait out.
"""

from __future__ import annotations

import io
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import urllib3
from minio import Minio

from bench.fleet.common import Report, say
from workbench.local_services import S3Server

PROBE = b"written before the restart"


def client(server: S3Server, read_timeout_s: float) -> Minio:
    http = urllib3.PoolManager(
        timeout=urllib3.Timeout(connect=1, read=read_timeout_s), retries=urllib3.Retry(total=0, raise_on_status=False)
    )
    return Minio(
        server.endpoint, access_key=server.access_key, secret_key=server.secret_key, secure=False, http_client=http
    )


def first_success(action, started: float, limit_s: float = 90) -> float | None:
    while time.monotonic() - started < limit_s:
        try:
            action()
            return time.monotonic() - started
        except Exception:  # any failure means "not yet"
            time.sleep(0.05)
    return None


def run(restarts: int, out: Path | None) -> int:
    report = Report("s3-restart")
    server = S3Server(Path(tempfile.mkdtemp(prefix="fleet-s3-"))).start()
    quick, patient = client(server, 3), client(server, 60)
    quick.make_bucket("restart-probe")
    quick.put_object("restart-probe", "old", io.BytesIO(PROBE), len(PROBE))
    rows = []
    try:
        for n in range(restarts):
            server.stop()
            started = time.monotonic()
            server.start(wait=False)
            # The three probes run at once, so a held write is not hidden behind the reads.
            with ThreadPoolExecutor(3) as pool:
                api_f = pool.submit(first_success, quick.list_buckets, started)
                read_f = pool.submit(
                    first_success, lambda: quick.get_object("restart-probe", "old").read() == PROBE or 1 / 0, started
                )
                write_f = pool.submit(
                    first_success,
                    lambda n=n: patient.put_object("restart-probe", f"new{n}", io.BytesIO(PROBE), len(PROBE)),
                    started,
                )
                api, read, write = api_f.result(), read_f.result(), write_f.result()
            rows.append({"api_s": api, "read_s": read, "write_s": write})
            say(
                f"restart {n + 1}: API {api:.1f} s, old object readable {read:.1f} s, first write done {write:.1f} s"
                if None not in (api, read, write)
                else f"restart {n + 1}: {rows[-1]}"
            )
    finally:
        server.stop()
    complete = [row for row in rows if None not in row.values()]
    read_lag = sorted(row["read_s"] - row["api_s"] for row in complete)
    write_lag = sorted(row["write_s"] - row["api_s"] for row in complete)
    report.figures.update(rows=rows, read_after_api_s=read_lag, write_after_api_s=write_lag)
    report.check("every restart came back", len(complete) == restarts, f"{len(complete)}/{restarts}")
    if complete:
        say(
            f"reads lag the API by max {read_lag[-1]:.1f} s (median {statistics.median(read_lag):.1f}); the first "
            f"write completes max {write_lag[-1]:.1f} s after the API (median {statistics.median(write_lag):.1f})"
        )
        # function/clients.py sleeps 15 s in all between 7 tries of a request answered 500.
        report.check(
            "the worker's 500 budget (15 s of sleeps) covers the read lag", read_lag[-1] < 15, f"{read_lag[-1]:.1f} s"
        )
    report.write(out)
    return 0 if report.ok else 1
