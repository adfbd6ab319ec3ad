#!/usr/bin/env bash
# Set up a virtualenv with everything the tests need, then lint, type-check and test.
# Usage: bash scripts/test.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -e '.[dev,peers]'
echo "== ruff"
.venv/bin/ruff check src tests benchmarks examples
echo "== mypy (strict on src/)"
.venv/bin/mypy
echo "== examples"
for ex in examples/*.py; do
  echo "-- $ex"
  timeout 120 .venv/bin/python "$ex" >/dev/null
done
echo "== pytest"
command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1 \
  || echo "note: no chromium/chromedriver: the admin page's browser test skips (.ci/run installs them)"
.venv/bin/pytest "$@"
