"""Group filters (SPEC §5): AMQP topic patterns on the routing key and SNS filter policies on
headers.

A filter spec is a dict::

    {"routing_key": ["order.*", "audit.#",           # ORed; '*' = one word, '#' = zero or more
                     {"exact": "a.*"}],              # ... or exactly this key ("" too)
     "headers": {                                    # an SNS filter policy; keys are ANDed
         "region": ["eu", {"prefix": "us-"}],        # a list: alternatives, ORed
         "amount": [{"numeric": [">=", 10, "<", 20]}],
         "vip": [{"exists": True}],
         "tier": [{"anything-but": ["free"]}],
         "sku": {"prefix": "A-"},                    # a dict: operators, ANDed (TideMQ's own)
         "score": {"gte": 0, "lt": 1}}}

An alternative is a literal (a string matches exactly; a number numerically, ``5`` matches
``"5.0"``; ``true``/``false`` match ``"true"``/``"false"``) or an object with exactly one
operator: ``prefix``, ``suffix``, ``equals-ignore-case``, ``anything-but`` (a literal, a list
of literals, ``{"prefix": s}`` or ``{"suffix": s}``), ``numeric`` (``[op, n]`` or
``[">"|">=", low, "<"|"<=", high]``), ``exists``; TideMQ's older operators ``eq``,
``any_of``, ``gt``, ``gte``, ``lt``, ``lte``, ``between`` work in both places. A plain string
or number is one literal. Header values are strings: numeric conditions parse the value with
``float()``, and a value that is not a number never matches them. Every operator but
``exists: false`` needs the header present (docs/semantics.md, "Filters").

Cost: each header's alternatives compile into one check (literal sets, a tuple of prefixes and
one of suffixes, a list of numeric ranges), so a message costs one look-up per filtered header
plus work linear in that header's value and its operator alternatives, which
:func:`check_filter` caps (:data:`MAX_FILTER_ALTERNATIVES`).

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
from functools import partial
from operator import ge, gt, le, lt
from typing import Any, Final, NoReturn, Protocol

import msgspec

from ..errors import InvalidFilter
from ._limits import GROUP_HEADER, MAX_HEADER_BYTES, MAX_ROUTING_KEY
from ._matcher import PatternSet, check_pattern

__all__ = [
    "Filter", "compile_filter", "check_filter", "exact_keys", "GROUP_HEADER",
    "MAX_FILTER_BYTES", "MAX_FILTER_HEADERS", "MAX_FILTER_PATTERNS", "MAX_FILTER_ALTERNATIVES",
    "MAX_FILTER_STRING_BYTES",
]

# Limits on a filter a user gives (check_filter); see docs/semantics.md ("Filters").
MAX_FILTER_BYTES: Final = 64 * 1024  # the spec, msgpack-encoded
MAX_FILTER_HEADERS: Final = 256  # header conditions (header names)
MAX_FILTER_PATTERNS: Final = 64  # routing-key patterns
# Operator alternatives ({"prefix": ...}, {"numeric": ...}, ...) of one header, each a step per
# message; as many as routing-key patterns. Literals are not counted: they are set look-ups.
MAX_FILTER_ALTERNATIVES: Final = MAX_FILTER_PATTERNS
# A string in a condition: longer than all of a message's headers could be, it never matches.
MAX_FILTER_STRING_BYTES: Final = MAX_HEADER_BYTES

_HAS_EXT: Final = 1 << 3  # storage-format attribute bits (docs/storage-format.md)
_HAS_HEADERS: Final = 1 << 4

_Headers = Mapping[str, str]
_Check = Callable[[str | None], bool]  # gets the header's value, None when absent
_Range = Callable[[float], bool]

# A bound on the left of x, as a C-level partial: x < n is n > x.
_BOUND: Final[dict[str, Callable[[float, float], bool]]] = {"<": gt, "<=": ge, ">": lt, ">=": le}
_LEGACY_BOUND: Final = {"lt": "<", "lte": "<=", "gt": ">", "gte": ">="}
_OPERATORS: Final = (
    "prefix, suffix, equals-ignore-case, anything-but, numeric, exists "
    "(or TideMQ's eq, any_of, gt, gte, lt, lte, between)")
_BODY_FIELDS: Final = frozenset({"body", "payload", "message", "MessageBody", "FilterPolicyScope"})


class _BatchLike(Protocol):
    count: int
    attributes: int

    def extensions(
        self,
    ) -> list[tuple[bytes | None, str | None, dict[str, str] | None, str | None]]: ...


def _as_float(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        return None


class _Alternatives:
    """The alternatives of one header, sorted by kind so one check tries them all cheaply."""

    __slots__ = ("exact", "numbers", "prefixes", "suffixes", "lowered", "ranges", "others",
                 "if_absent", "any_present")

    def __init__(self) -> None:
        self.exact: set[str] = set()
        self.numbers: set[float] = set()
        self.prefixes: list[str] = []
        self.suffixes: list[str] = []
        self.lowered: set[str] = set()
        self.ranges: list[_Range] = []
        self.others: list[_Check] = []
        self.if_absent = False  # an {"exists": false}
        self.any_present = False  # an {"exists": true}

    def check(self) -> _Check:
        exact, numbers = frozenset(self.exact), frozenset(self.numbers)
        prefixes, suffixes = tuple(self.prefixes), tuple(self.suffixes)
        lowered, ranges, others = frozenset(self.lowered), tuple(self.ranges), tuple(self.others)
        if_absent, any_present = self.if_absent, self.any_present
        if any_present and not if_absent:
            return _present
        if any_present:
            return _always
        if not (numbers or prefixes or suffixes or lowered or ranges or others or if_absent):
            return exact.__contains__  # None is in no set of strings: absent never matches
        if len(prefixes) == 1 and not (
                exact or numbers or suffixes or lowered or ranges or others or if_absent):
            p = prefixes[0]
            return lambda v: v is not None and v.startswith(p)
        if len(others) == 1 and not (
                exact or numbers or prefixes or suffixes or lowered or ranges or if_absent):
            return others[0]  # an anything-but (it refuses an absent header itself)
        if len(ranges) == 1 and not (
                exact or numbers or prefixes or suffixes or lowered or others or if_absent):
            in_range = ranges[0]

            def numeric_only(v: str | None) -> bool:
                x = _as_float(v)
                return x is not None and in_range(x)

            return numeric_only
        numeric = bool(numbers or ranges)

        def check(v: str | None) -> bool:
            if v is None:
                return if_absent
            if v in exact:
                return True
            if prefixes and v.startswith(prefixes):
                return True
            if suffixes and v.endswith(suffixes):
                return True
            if lowered and v.lower() in lowered:
                return True
            if numeric:
                x = _as_float(v)
                if x is not None:
                    if x in numbers:
                        return True
                    for r in ranges:
                        if r(x):
                            return True
            return bool(others) and any(c(v) for c in others)

        return check


def _present(v: str | None) -> bool:
    return v is not None


def _always(_v: str | None) -> bool:
    return True


def _all_of(checks: tuple[_Check, ...]) -> _Check:
    def check(v: str | None) -> bool:
        for c in checks:  # noqa: SIM110 - a loop, not all(genexpr): runs per message
            if not c(v):
                return False
        return True

    return check


def _both(low: _Range, high: _Range) -> _Range:
    return lambda x: low(x) and high(x)


class _Compiler:
    """Compiles the condition on one header. ``strict`` (a filter a user gives now, not one
    stored before these rules) also refuses infinite numbers and what is over the limits."""

    __slots__ = ("name", "strict", "counted")

    def __init__(self, name: str, strict: bool) -> None:
        self.name = name
        self.strict = strict
        self.counted = 0  # operator alternatives so far

    def fail(self, problem: str) -> NoReturn:
        raise InvalidFilter(f"header {self.name!r}: {problem}")

    def number(self, value: object, what: str) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.fail(f"{what} needs a number, got {value!r}")
        try:
            x = float(value)
        except OverflowError:
            self.fail(f"{what}: the integer is too large for a 64-bit float")
        if math.isnan(x) or (self.strict and math.isinf(x)):
            self.fail(f"{what} needs a finite number, got {value!r}")
        return x

    def string(self, value: object, what: str) -> str:
        if not isinstance(value, str):
            self.fail(f"{what} needs a string, got {value!r}")
        if self.strict and len(value) * 4 > MAX_FILTER_STRING_BYTES and (
                len(value.encode("utf-8", "surrogatepass")) > MAX_FILTER_STRING_BYTES):
            self.fail(f"{what}: a string of {len(value)} characters can never match; a "
                      f"message's headers hold at most {MAX_FILTER_STRING_BYTES} bytes")
        return value

    def condition(self, cond: object) -> _Check:
        """A header's whole condition: a literal, a list of alternatives or a dict of
        operators (ANDed)."""
        if isinstance(cond, str | int | float) and not isinstance(cond, bool):
            alts = _Alternatives()
            self.literal(alts, cond, "equality")
            return alts.check()
        if isinstance(cond, list):
            return self.alternatives(cond, "the list of alternatives").check()
        if isinstance(cond, dict) and cond:
            checks = [self.operator(op, arg) for op, arg in cond.items()]
            return checks[0] if len(checks) == 1 else _all_of(tuple(checks))
        self.fail(f"condition {cond!r} must be a list of alternatives (SNS: [\"a\", "
                  "{\"prefix\": \"b\"}]), a string, a number or a dict like {\"prefix\": \"x\"}")

    def operator(self, op: object, arg: object) -> _Check:
        alts = _Alternatives()
        self.add_operator(alts, op, arg)
        return alts.check()

    def alternatives(self, items: object, what: str,
                     alts: _Alternatives | None = None) -> _Alternatives:
        if not isinstance(items, list | tuple) or not items:
            self.fail(f"{what} must be a non-empty list")
        alts = _Alternatives() if alts is None else alts
        for item in items:
            if isinstance(item, dict):
                if len(item) != 1:
                    self.fail(f"an alternative object has exactly one operator, got {item!r}; "
                              "to AND operators put them in one dict instead of a list")
                ((op, arg),) = item.items()
                self.add_operator(alts, op, arg)
            else:
                self.literal(alts, item, "an alternative")
        return alts

    def literal(self, alts: _Alternatives, value: object, what: str) -> None:
        if isinstance(value, bool):
            alts.exact.add("true" if value else "false")
        elif isinstance(value, str):
            alts.exact.add(self.string(value, what))
        elif isinstance(value, int | float):
            alts.numbers.add(self.number(value, what))
        elif value is None:
            self.fail(f"{what} is null, which no header value is; use {{\"exists\": false}} "
                      "for an absent header")
        else:
            self.fail(f"{what} {value!r} must be a string, a number, true/false or an "
                      "object like {\"prefix\": \"x\"}")

    def add_operator(self, alts: _Alternatives, op: object, arg: object) -> None:
        self.counted += 1
        if self.strict and self.counted > MAX_FILTER_ALTERNATIVES:
            self.fail(f"more than {MAX_FILTER_ALTERNATIVES} operator alternatives; merge "
                      "them (one numeric range, exact values as plain literals)")
        where = f"operator {op!r}"
        if op == "prefix":
            alts.prefixes.append(self.string(arg, where))
        elif op == "suffix":
            alts.suffixes.append(self.string(arg, where))
        elif op == "equals-ignore-case":
            alts.lowered.add(self.string(arg, where).lower())
        elif op == "exists":
            if not isinstance(arg, bool):
                self.fail(f"exists needs true or false, got {arg!r}")
            if arg:
                alts.any_present = True
            else:
                alts.if_absent = True
        elif op == "numeric":
            self.numeric(alts, arg)
        elif op == "anything-but":
            alts.others.append(self.anything_but(arg))
        elif op == "eq":
            self.literal(alts, arg, where)
        elif op == "any_of":
            self.counted -= 1  # its items count, not the list
            self.alternatives(arg, where, alts)
        elif op in _LEGACY_BOUND:
            alts.ranges.append(partial(_BOUND[_LEGACY_BOUND[op]], self.number(arg, where)))
        elif op == "between":
            if not isinstance(arg, list | tuple) or len(arg) != 2:
                self.fail(f"{where} needs [low, high]")
            lo, hi = self.number(arg[0], where), self.number(arg[1], where)
            if lo > hi:
                self.fail(f"{where}: low {lo} is above high {hi}")
            alts.ranges.append(_both(partial(le, lo), partial(ge, hi)))
        elif op == "cidr":
            self.fail("SNS's cidr (IP address matching) is not supported; match the address "
                      "with prefix alternatives instead")
        else:
            hint = (" (SNS's $or across keys is not supported: use one group per branch)"
                    if self.name == "$or" else "")
            self.fail(f"unknown operator {op!r}; use {_OPERATORS}{hint}")

    def numeric(self, alts: _Alternatives, arg: object) -> None:
        shape = ("numeric takes [op, n] with op one of =, <, <=, >, >=, or a range "
                 "[\">\" or \">=\", low, \"<\" or \"<=\", high]")
        if not isinstance(arg, list | tuple) or len(arg) not in (2, 4):
            self.fail(f"{shape}; got {arg!r}")
        op, n = arg[0], arg[1]
        if not isinstance(op, str) or op not in ("=", *_BOUND):
            self.fail(f"unknown numeric operator {op!r}; {shape}")
        low = self.number(n, f"numeric {op!r}")
        if len(arg) == 2:
            if op == "=":
                alts.numbers.add(low)
            else:
                alts.ranges.append(partial(_BOUND[op], low))
            return
        op2 = arg[2]
        if op not in (">", ">=") or not isinstance(op2, str) or op2 not in ("<", "<="):
            self.fail(f"{shape}; got {arg!r}")
        high = self.number(arg[3], f"numeric {op2!r}")
        if not low < high:
            self.fail(f"numeric range {arg!r}: the low bound must be below the high bound")
        alts.ranges.append(_both(partial(_BOUND[op], low), partial(_BOUND[op2], high)))

    def anything_but(self, arg: object) -> _Check:
        shape = ("anything-but takes a value, a non-empty list of values (strings, numbers, "
                 "true/false) or one {\"prefix\": s} / {\"suffix\": s}")
        if isinstance(arg, dict):
            if len(arg) != 1 or next(iter(arg)) not in ("prefix", "suffix"):
                self.fail(f"{shape}; got {arg!r}")
            ((op, s),) = arg.items()
            s = self.string(s, f"anything-but {op!r}")
            if op == "prefix":
                return lambda v: v is not None and not v.startswith(s)
            return lambda v: v is not None and not v.endswith(s)
        values = arg if isinstance(arg, list | tuple) else [arg]
        if not values:
            self.fail(f"{shape}; got an empty list")
        excluded = _Alternatives()
        for value in values:
            if isinstance(value, dict | list | tuple):
                self.fail(f"{shape}; a list may not hold objects or lists, got {value!r}")
            self.literal(excluded, value, "anything-but")
        matches = excluded.check()
        return lambda v: v is not None and not matches(v)


class Filter:
    """A compiled group filter. Immutable after construction; not thread-safe (it caches).

    ``matches`` decides one message; ``match_batch`` a stored batch (``None``: all match).
    """

    __slots__ = ("group", "spec", "_routes", "_exact", "_headers", "_cache", "trivial")

    _CACHE_LIMIT: Final = 4096

    def __init__(
        self,
        group: str | None,
        spec: dict[str, Any] | None,
        routes: PatternSet | None,
        headers: list[tuple[str, _Check]],
        exact: frozenset[str] | None = None,
    ) -> None:
        self.group = group
        self.spec = spec
        self._routes = routes
        self._exact = exact
        self._headers = headers
        self._cache: dict[str | None, bool] = {}
        # No routing or header condition: only the hidden group header can exclude a message.
        self.trivial = routes is None and exact is None and not headers

    def _routing_ok(self, routing_key: str | None) -> bool:
        routes = self._routes
        exact = self._exact
        if routes is None and exact is None:
            return True
        cache = self._cache
        hit = cache.get(routing_key)
        if hit is None:
            hit = (exact is not None and (routing_key or "") in exact) or (
                routes is not None and routes.matches(routing_key))
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
    header. Checks the syntax but no limit, so a group stored before a limit existed still
    opens; :func:`check_filter` checks both.
    """
    return _compile(spec, group, strict=False)


def _compile(spec: object, group: str | None, *, strict: bool) -> Filter:
    if spec is None:
        return Filter(group, None, None, [])
    if not isinstance(spec, dict):
        raise InvalidFilter(f"a filter must be a dict, got {type(spec).__name__}")
    unknown = set(spec) - {"routing_key", "headers"}
    if unknown:
        _refuse_fields(spec, unknown)
    routes = exact = None
    items = _patterns(spec)
    if items is not None:
        patterns, keys = _split(items)
        routes = PatternSet(patterns) if patterns else None
        exact = frozenset(keys) if keys else None
    checks: list[tuple[str, _Check]] = []
    headers = spec.get("headers")
    if headers is not None:
        if not isinstance(headers, dict):
            raise InvalidFilter("filter 'headers' must be a dict of header name -> condition "
                                "(an SNS filter policy)")
        for name, cond in headers.items():
            if not isinstance(name, str) or not name:
                raise InvalidFilter(f"header name {name!r} must be a non-empty string")
            compiler = _Compiler(name, strict)
            if strict:
                compiler.string(name, "the header name")
            checks.append((name, compiler.condition(cond)))
    return Filter(group, spec, routes, checks, exact)


def _refuse_fields(spec: dict[Any, Any], unknown: set[Any]) -> NoReturn:
    if unknown & _BODY_FIELDS:
        raise InvalidFilter(
            f"filter field(s) {sorted(map(str, unknown & _BODY_FIELDS))}: filtering on the "
            "message body (SNS FilterPolicyScope 'MessageBody') is not supported; filters "
            "look at headers (SNS message attributes) and the routing key only, so put what "
            "you filter on in a header")
    hint = ""
    if all(isinstance(spec[k], list) for k in unknown):
        hint = (f"; to filter on header(s) {sorted(map(str, unknown))} with an SNS filter "
                "policy, put it under 'headers': {'headers': {...}}")
    raise InvalidFilter(
        f"unknown filter field(s) {sorted(map(str, unknown))}; use 'routing_key' and "
        f"'headers'{hint}")


def _patterns(spec: dict[str, Any]) -> list[Any] | None:
    patterns = spec.get("routing_key")
    if patterns is None:
        return None
    if isinstance(patterns, str):
        return [patterns]
    if not isinstance(patterns, list | tuple) or not patterns:
        raise InvalidFilter("filter 'routing_key' must be a pattern or a non-empty list")
    return list(patterns)


def _split(items: list[Any]) -> tuple[list[str], list[str]]:
    """A routing_key list's patterns (strings) and exact keys (``{"exact": key}``); raises
    InvalidFilter for anything else."""
    patterns: list[str] = []
    keys: list[str] = []
    for item in items:
        if isinstance(item, dict):
            key = item.get("exact") if set(item) == {"exact"} else None
            if not isinstance(key, str):
                raise InvalidFilter(
                    f"routing-key alternative {item!r}: use a pattern string or "
                    "{'exact': key} (a key matched as it is: '*' and '#' are plain words, "
                    "'' the empty key)")
            keys.append(key)
        else:
            patterns.append(item)  # PatternSet / check_pattern name what is wrong
    return patterns, keys


def exact_keys(spec: dict[str, Any] | None) -> list[str]:
    """The exact keys of a filter's routing_key alternatives (a well-formed filter)."""
    items = _patterns(spec) if spec else None
    return _split(items)[1] if items else []


def check_filter(spec: object) -> None:
    """Check a filter a user gives: well formed (as :func:`compile_filter`) and within the
    limits: at most :data:`MAX_FILTER_BYTES` msgpack-encoded, :data:`MAX_FILTER_PATTERNS`
    routing-key patterns of at most 255 characters and 128 words each,
    :data:`MAX_FILTER_HEADERS` header conditions, :data:`MAX_FILTER_ALTERNATIVES` operator
    alternatives per header, strings of at most :data:`MAX_FILTER_STRING_BYTES` bytes, and
    finite numbers. Raises :class:`InvalidFilter`.

    Compiling alone (as a group restored from disk does) checks no limit: state written before
    these limits existed still opens.
    """
    if spec is None:
        return
    if not isinstance(spec, dict):
        raise InvalidFilter(f"a filter must be a dict, got {type(spec).__name__}")
    try:
        size = len(msgspec.msgpack.encode(spec))
    except (TypeError, ValueError, OverflowError, RecursionError, msgspec.EncodeError) as exc:
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
        strings, keys = _split(patterns)
        for p in strings:
            check_pattern(p)
        for k in keys:
            if len(k) > MAX_ROUTING_KEY:
                raise InvalidFilter(f"exact routing key {k[:40]!r}... has {len(k)} characters; "
                                    f"use at most {MAX_ROUTING_KEY}")
    headers = spec.get("headers")
    if isinstance(headers, dict) and len(headers) > MAX_FILTER_HEADERS:
        raise InvalidFilter(
            f"the filter has {len(headers)} header conditions; use at most {MAX_FILTER_HEADERS}")
    _compile(spec, None, strict=True)
