"""Fleet-scale reliability scenarios against real Redis, real S3 and many `python -m function.runner` processes.

    python -m bench.fleet reap-timing      # time one reap at 0 and 100,000 unrelated keys (and the old KEYS reaper)
    python -m bench.fleet scale            # 2,000 messages, 100,000 unrelated keys, 16 runners: each done once
    python -m bench.fleet scale --faults   # the same, with kill -9 / SIGTERM, a Redis restart, a 10 s S3 outage
    python -m bench.fleet partition        # a runner in its own network namespace is cut off mid-job (a zombie)
    python -m bench.fleet no-persistence   # Redis restarted without persistence mid-run: what is lost
    python -m bench.fleet s3-restart       # how long a restarted local S3 answers before it serves objects

Each prints what it measured and `PASS` or `FAIL` per property, writes a JSON summary with `--out`, and exits 0
only when every property holds. Results and how to read them: docs/reliability.md.
"""
