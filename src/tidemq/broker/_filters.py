"""Group filters (SPEC §5): AMQP topic patterns on the routing key and SNS-style header conditions.

A filter spec is a dict::

    {"routing_key": ["order.*", "audit.#"],          # ORed; '*' = one word, '#' = zero or more
     "headers": {"region": "eu",                     # equals
                 "tier": {"any_of": ["gold", "silver"]},
                 "sku": {"prefix": "A-"},
                 "amount": {"gte": 10, "lt": 100},    # several operators on one header: ANDed
                 "score": {"between": [0, 1]},        # inclusive
                 "trace": {"exists": True}}}          # conditions on different headers: ANDed

Numeric conditions compare ``float(header)``; a header that is absent or not a number does not
match. Equality with a number (``{"eq": 5}`` or ``"x": 5``) is numeric; with a string it is exact.

Hidden header: a message carrying ``x-tidemq-group`` (set by redrive) is meant for the named
group only; every other group treats it as filtered out. :func:`compile_filter` therefore takes
the group's name.

:meth:`Filter.match_batch` decides a whole stored batch at once and returns ``None`` when every
record matches without looking at any record (no conditions and no headers in the batch), so
unfiltered groups pay nothing per message.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, Final, Protocol

import msgspec

from ..errors import InvalidFilter
from ._limits import GROUP_HEADER
from ._matcher import PatternSet, check_pattern

__all__ = [
    "Filter", "compile_filter", "check_filter", "GROUP_HEADER",
    "MAX_FILTER_BYTES", "MAX_FILTER_HEADERS", "MAX_FILTER_PATTERNS",
]

# Limits on a filter a user gives (check_filter); see docs/semantics.md ("Filters").
MAX_FILTER_BYTES: Final = 64 * 1024  # the spec, msgpack-encoded
MAX_FILTER_HEADERS: Final = 256  # header conditions (header names)
MAX_FILTER_PATTERNS: Final = 64  # routing-key patterns

_HAS_EXT: Final = 1 << 3  # storage-format attribute bits (docs/storage-format.md)
_HAS_HEADERS: Final = 1 << 4

_Headers = Mapping[str, str]
_Check = Callable[[str | None], bool]  # gets the header's value, None when absent


class _BatchLike(Protocol):
    count: int
    attributes: int

    def extensions(
        self,
    ) -> list[tuple[bytes | None, str | None, dict[str, str] | None, str | None]]: ...


def _number(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidFilter(f"{what} needs a number, got {value!r}")
    if math.isnan(value):
        raise InvalidFilter(f"{what} must not be NaN")
    return float(value)


def _as_float(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        return None


def _equals(name: str, expected: object) -> _Check:
    if isinstance(expected, str):
        return lambda v: v == expected
    target = _number(expected, f"header {name!r} equality")

    def numeric_eq(v: str | None) -> bool:
        return _as_float(v) == target

    return numeric_eq


def _compare(op: str, bound: float) -> _Check:
    def check(v: str | None) -> bool:
        x = _as_float(v)
        if x is None:
            return False
        if op == "gt":
            return x > bound
        if op == "gte":
            return x >= bound
        if op == "lt":
            return x < bound
        return x <= bound

    return check


def _operator(name: str, op: str, arg: object) -> _Check:
    where = f"header {name!r} condition {op!r}"
    if op == "eq":
        return _equals(name, arg)
    if op == "any_of":
        if not isinstance(arg, list | tuple) or not arg:
            raise InvalidFilter(f"{where} needs a non-empty list")
        checks = [_equals(name, a) for a in arg]
        strings = frozenset(a for a in arg if isinstance(a, str))
        if len(strings) == len(checks):
            return lambda v: v in strings
        return lambda v: any(c(v) for c in checks)
    if op == "prefix":
        if not isinstance(arg, str):
            raise InvalidFilter(f"{where} needs a string")
        return lambda v: v is not None and v.startswith(arg)
    if op in ("gt", "gte", "lt", "lte"):
        return _compare(op, _number(arg, where))
    if op == "between":
        if not isinstance(arg, list | tuple) or len(arg) != 2:
            raise InvalidFilter(f"{where} needs [low, high]")
        lo, hi = _number(arg[0], where), _number(arg[1], where)
        if lo > hi:
            raise InvalidFilter(f"{where}: low {lo} is above high {hi}")

        def between(v: str | None) -> bool:
            x = _as_float(v)
            return x is not None and lo <= x <= hi

        return between
    if op == "exists":
        if not isinstance(arg, bool):
            raise InvalidFilter(f"{where} needs true or false")
        return (lambda v: v is not None) if arg else (lambda v: v is None)
    raise InvalidFilter(
        f"{where} is unknown; use eq, any_of, prefix, gt, gte, lt, lte, between or exists"
    )


def _header_check(name: str, cond: object) -> _Check:
    if isinstance(cond, str | int | float) and not isinstance(cond, bool):
        return _equals(name, cond)
    if isinstance(cond, list):
        return _operator(name, "any_of", cond)
    if isinstance(cond, dict) and cond:
        checks = [_operator(name, str(op), arg) for op, arg in cond.items()]
        if len(checks) == 1:
            return checks[0]
        return lambda v: all(c(v) for c in checks)
    raise InvalidFilter(
        f"header {name!r} condition {cond!r} must be a string, a number, a list (any of) "
        "or a dict like {'prefix': 'x'}"
    )


class Filter:
    """A compiled group filter. Immutable after construction; not thread-safe (it caches).

    ``matches`` decides one message; ``match_batch`` a stored batch (``None``: all match).
    """

    __slots__ = ("group", "spec", "_routes", "_headers", "_cache", "trivial")

    _CACHE_LIMIT: Final = 4096

    def __init__(
        self,
        group: str | None,
        spec: dict[str, Any] | None,
        routes: PatternSet | None,
        headers: list[tuple[str, _Check]],
    ) -> None:
        self.group = group
        self.spec = spec
        self._routes = routes
        self._headers = headers
        self._cache: dict[str | None, bool] = {}
        # No routing or header condition: only the hidden group header can exclude a message.
        self.trivial = routes is None and not headers

    def _routing_ok(self, routing_key: str | None) -> bool:
        routes = self._routes
        if routes is None:
            return True
        cache = self._cache
        hit = cache.get(routing_key)
        if hit is None:
            hit = routes.matches(routing_key)
            if len(cache) >= self._CACHE_LIMIT:
                cache.clear()
            cache[routing_key] = hit
        return hit

    def matches(self, routing_key: str | None, headers: _Headers | None) -> bool:
        """True when a message with this routing key and headers passes the filter."""
        if headers:
            owner = headers.get(GROUP_HEADER)
            if owner is not None and owner != self.group:
                return False
        if not self._routing_ok(routing_key):
            return False
        if self._headers:
            get = headers.get if headers else _absent
            for name, check in self._headers:
                if not check(get(name)):
                    return False
        return True

    def match_batch(self, view: _BatchLike) -> list[bool] | None:
        """Per-record verdicts for a stored batch, or ``None`` when every record matches.

        Touches no record when the filter is trivial and the batch has no headers; decodes the
        extension section once otherwise.
        """
        attributes = view.attributes
        if self.trivial and not attributes & _HAS_HEADERS:
            return None
        if not attributes & _HAS_EXT:
            # No key, routing key or headers in this batch: one verdict for all of it.
            return None if self.matches(None, None) else [False] * view.count
        matches = self.matches
        verdicts = [matches(rk, h) for _k, rk, h, _d in view.extensions()]
        return None if all(verdicts) else verdicts


def _absent(_name: str) -> None:
    return None


def compile_filter(spec: dict[str, Any] | None, *, group: str | None = None) -> Filter:
    """Compile a filter spec (see the module docstring); raises :class:`InvalidFilter`.

    ``None`` or ``{}`` gives the trivial filter (everything passes except messages redriven to
    another group). ``group`` is the owning group's name, for the hidden ``x-tidemq-group``
    header.
    """
    if spec is None:
        return Filter(group, None, None, [])
    if not isinstance(spec, dict):
        raise InvalidFilter(f"a filter must be a dict, got {type(spec).__name__}")
    unknown = set(spec) - {"routing_key", "headers"}
    if unknown:
        raise InvalidFilter(
            f"unknown filter field(s) {sorted(map(str, unknown))}; use 'routing_key' and 'headers'"
        )
    routes = None
    patterns = _patterns(spec)
    if patterns is not None:
        routes = PatternSet(patterns)
    checks: list[tuple[str, _Check]] = []
    headers = spec.get("headers")
    if headers is not None:
        if not isinstance(headers, dict):
            raise InvalidFilter("filter 'headers' must be a dict of header name -> condition")
        for name, cond in headers.items():
            if not isinstance(name, str) or not name:
                raise InvalidFilter(f"header name {name!r} must be a non-empty string")
            checks.append((name, _header_check(name, cond)))
    return Filter(group, spec, routes, checks)


def _patterns(spec: dict[str, Any]) -> list[Any] | None:
    patterns = spec.get("routing_key")
    if patterns is None:
        return None
    if isinstance(patterns, str):
        return [patterns]
    if not isinstance(patterns, list | tuple) or not patterns:
        raise InvalidFilter("filter 'routing_key' must be a pattern or a non-empty list")
    return list(patterns)


def check_filter(spec: object) -> None:
    """Check a filter a user gives: well formed (as :func:`compile_filter`) and within the
    limits: at most :data:`MAX_FILTER_BYTES` msgpack-encoded, :data:`MAX_FILTER_PATTERNS`
    routing-key patterns of at most 255 characters and 128 words each, and
    :data:`MAX_FILTER_HEADERS` header conditions. Raises :class:`InvalidFilter`.

    Compiling alone (as a group restored from disk does) checks no size: state written before
    these limits existed still opens.
    """
    if spec is None:
        return
    if not isinstance(spec, dict):
        raise InvalidFilter(f"a filter must be a dict, got {type(spec).__name__}")
    try:
        size = len(msgspec.msgpack.encode(spec))
    except (TypeError, ValueError, RecursionError, msgspec.EncodeError) as exc:
        raise InvalidFilter(f"a filter must be plain data (dicts, lists, str, numbers): {exc}") from None
    if size > MAX_FILTER_BYTES:
        raise InvalidFilter(
            f"the filter takes {size} bytes encoded; use at most {MAX_FILTER_BYTES} "
            "(fewer patterns or conditions, or shorter lists)")
    patterns = _patterns(spec)
    if patterns is not None:
        if len(patterns) > MAX_FILTER_PATTERNS:
            raise InvalidFilter(
                f"the filter has {len(patterns)} routing-key patterns; use at most "
                f"{MAX_FILTER_PATTERNS} (a '#' or '*' word can often merge several)")
        for p in patterns:
            check_pattern(p)
    headers = spec.get("headers")
    if isinstance(headers, dict) and len(headers) > MAX_FILTER_HEADERS:
        raise InvalidFilter(
            f"the filter has {len(headers)} header conditions; use at most {MAX_FILTER_HEADERS}")
    compile_filter(spec)
