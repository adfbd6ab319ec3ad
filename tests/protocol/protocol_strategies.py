"""Hypothesis strategies for every protocol frame, derived from the frames' msgspec types."""

from __future__ import annotations

from typing import Any

import msgspec.inspect as mi
from hypothesis import strategies as st

from tidemq import protocol as p

_small_text = st.text(max_size=12)
_any_leaf = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1),
    st.floats(allow_nan=False), _small_text, st.binary(max_size=12),
)
ANY_VALUES = st.recursive(
    _any_leaf,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_small_text, inner, max_size=3),
    max_leaves=8,
)


def _for_type(t: mi.Type) -> st.SearchStrategy[Any]:
    if isinstance(t, mi.IntType):
        lo = t.ge if t.ge is not None else -(2**63)
        hi = t.le if t.le is not None else 2**63 - 1
        return st.integers(lo, hi)
    if isinstance(t, mi.FloatType):
        return st.floats(min_value=t.ge, allow_nan=False, allow_infinity=False)
    if isinstance(t, mi.StrType):
        return _small_text
    if isinstance(t, mi.BytesType):
        return st.binary(max_size=16)
    if isinstance(t, mi.BoolType):
        return st.booleans()
    if isinstance(t, mi.NoneType):
        return st.none()
    if isinstance(t, mi.AnyType):
        return ANY_VALUES
    if isinstance(t, mi.UnionType):
        return st.one_of(*[_for_type(x) for x in t.types])
    if isinstance(t, mi.ListType):
        return st.lists(_for_type(t.item_type), max_size=4)
    if isinstance(t, mi.TupleType):
        return st.tuples(*[_for_type(x) for x in t.item_types])
    if isinstance(t, mi.DictType):
        return st.dictionaries(_for_type(t.key_type), _for_type(t.value_type), max_size=3)
    raise NotImplementedError(t)


def _control(cls: type[p.FrameBase]) -> st.SearchStrategy[p.FrameBase]:
    info = mi.type_info(cls)
    assert isinstance(info, mi.StructType)
    return st.builds(cls, **{f.name: _for_type(f.type) for f in info.fields})


U32 = st.integers(0, 2**32 - 1)
_ids = st.lists(st.text(min_size=1, max_size=20), max_size=4)


@st.composite
def deliver_frames(draw: st.DrawFn) -> p.Deliver:
    n = draw(st.integers(1, 6))

    def col(s: st.SearchStrategy[Any]) -> list[Any]:
        return draw(st.lists(s, min_size=n, max_size=n))

    def opt(s: st.SearchStrategy[Any]) -> list[Any] | None:
        return draw(st.none() | st.lists(st.none() | s, min_size=n, max_size=n))

    return p.Deliver(
        subscription_id=draw(U32),
        ids=col(st.text(max_size=20)),
        partitions=col(U32),
        offsets=col(st.integers(-(2**63), 2**63 - 1)),
        timestamps_us=col(st.integers(-(2**63), 2**63 - 1)),
        delivery_counts=col(U32),
        priorities=col(st.integers(0, 255)),
        bodies=col(st.binary(max_size=30)),
        keys=opt(st.binary(max_size=8)),
        routing_keys=opt(_small_text),
        headers=opt(st.dictionaries(_small_text, _small_text, max_size=2)),
    )


_BULK: dict[type[p.FrameBase], st.SearchStrategy[Any]] = {
    p.Publish: st.builds(
        p.Publish, request_id=U32, topic=st.text(max_size=30),
        partition=st.integers(-1, 2**31 - 1), batch=st.binary(min_size=1, max_size=200)),
    p.Credit: st.builds(p.Credit, request_id=U32, subscription_id=U32, n=U32),
    p.Ack: st.builds(
        p.Ack, request_id=U32, subscription_id=U32,
        ranges=st.lists(
            st.tuples(U32, st.integers(0, 2**62), st.integers(0, 2**62)).map(
                lambda r: (r[0], min(r[1], r[2]), max(r[1], r[2]))),
            max_size=5),
        ids=_ids),
    p.Deliver: deliver_frames(),
}

FRAME_STRATEGIES: dict[type[p.FrameBase], st.SearchStrategy[Any]] = {
    cls: _BULK[cls] if cls in _BULK else _control(cls) for cls in p.ALL_FRAME_TYPES
}
ANY_FRAME: st.SearchStrategy[Any] = st.one_of(*FRAME_STRATEGIES.values())

__all__ = ["ANY_FRAME", "ANY_VALUES", "FRAME_STRATEGIES", "deliver_frames"]
