#!/usr/bin/env bash
# Install stemworker with its test tools into .venv, then run ruff, mypy and the whole test suite against real
# Redis and S3 servers that the tests start on loopback. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
# promtool (Debian's `prometheus` package) runs the alert rules' unit tests (tests/test_alerts.py); installed here
# when missing on a Debian-like machine where this runs as root (CI), skipped otherwise.
if ! command -v promtool >/dev/null && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus \
        >/dev/null) || echo "test.sh: could not install promtool; the promtool tests will be skipped" >&2
fi
python3 -m venv .venv
.venv/bin/pip install -q torch==2.13.0
.venv/bin/pip install -q -e '.[test]'
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
exec .venv/bin/python -m pytest "$@"
