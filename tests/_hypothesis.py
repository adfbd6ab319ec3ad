"""Hypothesis profiles shared by every test module (loaded by ``tests/conftest.py``).

- ``ci`` (the default, for CI and development alike): derandomized, so a run draws the same
  examples on every machine with the pinned hypothesis version (``pyproject.toml``) and a red
  CI run reproduces locally with the same command.
- ``deep``: random draws and :func:`examples` scaled up 50-fold, for exploring
  (``HYPOTHESIS_PROFILE=deep pytest tests/broker -k Model``; see ``scripts/deep-models.sh``).
"""

from __future__ import annotations

import os

from hypothesis import settings

settings.register_profile("ci", derandomize=True, database=None, print_blob=True)
settings.register_profile("deep", derandomize=False, database=None, print_blob=True)
PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "ci")
settings.load_profile(PROFILE)

_SCALE = {"ci": 1, "deep": int(os.environ.get("TIDEMQ_DEEP_SCALE", "50"))}.get(PROFILE, 1)


def examples(n: int) -> int:
    """``n`` examples under the ``ci`` profile, ``n`` times the deep scale under ``deep``."""
    return n * _SCALE
