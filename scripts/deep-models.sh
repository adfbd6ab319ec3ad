#!/usr/bin/env bash
# Explore the model-based tests far beyond CI's budget: random draws, examples scaled up
# (TIDEMQ_DEEP_SCALE, default 50). Not run by CI. Usage: bash scripts/deep-models.sh [pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
HYPOTHESIS_PROFILE=deep exec .venv/bin/pytest -p no:cacheprovider -q --timeout=0 \
  tests/broker/test_group_model.py tests/broker/test_model.py "$@"
