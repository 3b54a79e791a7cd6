#!/usr/bin/env bash
# Install stemworker with its test tools into .venv, then run ruff, mypy and the whole test suite against real
# Redis and S3 servers that the tests start on loopback. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/pip install -q torch==2.13.0
.venv/bin/pip install -q -e '.[test]'
.venv/bin/ruff check .
.venv/bin/mypy
exec .venv/bin/python -m pytest "$@"
