"""Fixtures shared by the storage tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.storage.helpers import LogFactory


@pytest.fixture(params=["file", "memory"])
def factory(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[LogFactory]:
    f = LogFactory(request.param, tmp_path / "data")
    yield f
    f.close()
