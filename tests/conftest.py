"""Test-wide setup: the hypothesis profile (see ``tests/_hypothesis.py``)."""

from tests import _hypothesis  # noqa: F401  (registers and loads the profile)
