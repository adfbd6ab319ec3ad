"""docs/benchmarks.md is generated from docs/benchmarks.json (benchmarks/compare.py): every
figure in the page's tables and profile headings must come from the JSON, so nothing quotable
is typed by hand.

A table cell (or one ``<br>`` line of it) passes when its text is a string of the JSON (row
labels, system names, "cannot" notes); otherwise every code span in it must be a string of the
JSON, and every number left must be a number of the JSON written the way the page writes
numbers (>= 100: ``12,345``; >= 10: one decimal; below: two decimals; integers also plain).
Prose outside tables states settings, not figures, and is not checked.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "benchmarks.md"
DATA = ROOT / "docs" / "benchmarks.json"

NUMBER = re.compile(r"(?<![\w.])\d[\d,]*(?:\.\d+)?(?![\w.])")
CODE = re.compile(r"`([^`]*)`")


def _leaves(obj: Any, strings: set[str], numbers: list[float]) -> None:
    if isinstance(obj, dict):
        for k, v in obj.items():
            strings.add(str(k))
            _leaves(v, strings, numbers)
    elif isinstance(obj, list):
        for v in obj:
            _leaves(v, strings, numbers)
    elif isinstance(obj, bool) or obj is None:
        return
    elif isinstance(obj, (int, float)):
        numbers.append(obj)
    elif isinstance(obj, str):
        strings.add(obj)


def _written(v: float) -> set[str]:
    out = set()
    if abs(v) >= 100:
        out.add(f"{v:,.0f}")
    elif abs(v) >= 10:
        out.add(f"{v:.1f}")
    else:
        out.add(f"{v:.2f}")
    if float(v).is_integer():
        out.add(str(int(v)))
    return out


def _allowed(data: Any) -> tuple[set[str], set[str]]:
    strings: set[str] = set()
    numbers: list[float] = []
    _leaves(data, strings, numbers)
    written: set[str] = set()
    for v in numbers:
        written |= _written(v)
    return strings, written


def _checked_parts(page: str) -> list[str]:
    """Every table cell line and every profile heading of the page."""
    parts: list[str] = []
    for line in page.splitlines():
        if line.startswith("|") and not re.fullmatch(r"\|( --- \|)+", line.strip()):
            for cell in line.strip().strip("|").split(" | "):
                parts += [p.strip() for p in cell.split("<br>")]
        elif line.startswith("### "):
            parts.append(line[4:].strip())
    return [p for p in parts if p]


def unsourced(page: str, data: Any) -> list[str]:
    """The figures of ``page`` that ``data`` does not hold (empty: the page is generated)."""
    strings, written = _allowed(data)
    bad: list[str] = []
    for part in _checked_parts(page):
        if part in strings:
            continue
        for span in CODE.findall(part):
            if span not in strings:
                bad.append(f"`{span}` in {part!r}")
        rest = CODE.sub(" ", part)
        for tok in NUMBER.findall(rest):
            tok = tok.rstrip(",")
            if tok not in written:
                bad.append(f"{tok} in {part!r}")
    return bad


@pytest.fixture(scope="module")
def page() -> str:
    return PAGE.read_text()


@pytest.fixture(scope="module")
def data() -> Any:
    return json.loads(DATA.read_text())


def test_every_figure_in_the_page_comes_from_the_json(page: str, data: Any) -> None:
    assert unsourced(page, data) == []


def test_the_check_is_not_vacuous(page: str, data: Any) -> None:
    parts = _checked_parts(page)
    numbers = [t for p in parts for t in NUMBER.findall(CODE.sub(" ", p))]
    assert len(numbers) > 100, "the page should hold the tables of benchmarks/compare.py"


def test_a_typed_figure_is_caught(page: str, data: Any) -> None:
    m = re.search(r"\*\*([\d,.]+)\*\*", page)
    assert m, "no median in bold on the page"
    typed = page.replace(m.group(0), "**987,654,321**", 1)
    assert any("987,654,321" in b for b in unsourced(typed, data))
    # figures measured again (all 37% faster) make the page stale, too
    again = json.loads(json.dumps(data))
    for fig in again["figures"].values():
        for field in ("value", "p50", "p99", "p999"):
            if field in fig:
                fig[field] = {k: v * 1.37 for k, v in fig[field].items() if k != "all"}
    assert len(unsourced(page, again)) > 20


def test_every_median_is_on_the_page(page: str, data: Any) -> None:
    missing = []
    for key, fig in data["figures"].items():
        for field in ("value", "p50", "p99", "p999"):
            if field in fig and not _written(fig[field]["median"]) & set(
                    t.rstrip(",") for t in NUMBER.findall(page)):
                missing.append(f"{key}.{field}")
    assert missing == []


def test_every_target_has_a_verdict(data: Any, page: str) -> None:
    assert len(data["verdicts"]) == len(data["targets"]) >= 15
    for v in data["verdicts"]:
        assert v["text"] in page
        assert ("met" in v) == ("measured" in v)
