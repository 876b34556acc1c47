"""The fast register validation accepts and refuses exactly what the general decoder does.

``Register.decode`` and ``register_stamp`` check registers inline for speed; the reference below
is the plain composition they replace (the codec under ``REGISTER_LIMITS``, then the field
checks, building every timestamp). Any byte string must get the same verdict from all three.
"""

from __future__ import annotations

from typing import Any

import msgpack
from hypothesis import given, settings
from hypothesis import strategies as st

from souverix_crdt.codec import decode
from souverix_crdt.errors import DecodeError
from souverix_crdt.hlc import MAX_LOGICAL, MAX_WALL, Timestamp
from souverix_crdt.lww import REGISTER_FORMAT, REGISTER_LIMITS, Register, register_stamp


def reference(data: bytes) -> tuple[Any, ...]:
    fields = decode(data, REGISTER_LIMITS, unique_keys=False)
    if type(fields) is not list or len(fields) != 8 or fields[0] != REGISTER_FORMAT:
        raise DecodeError("not a register", reason="register-shape")
    _, deleted, value, wall, logical, version, sup, ctx = fields
    if type(deleted) is not bool:
        raise DecodeError("deleted", reason="register")
    if type(version) is not int or version < 1:
        raise DecodeError("version", reason="register")
    if sup is not None and (
        type(sup) is not list
        or len(sup) != 2
        or (sup[0] is not None and type(sup[0]) is not str)
        or type(sup[1]) is not int
    ):
        raise DecodeError("supersedes", reason="register")
    if type(ctx) is not dict:
        raise DecodeError("context", reason="register")
    context = {w: Timestamp.from_list(t) for w, t in ctx.items()}
    if deleted and value is not None:
        raise DecodeError("tombstone", reason="register")
    return deleted, value, Timestamp(wall, logical), version, sup, context


def verdicts(data: bytes) -> tuple[Any, Any, Any]:
    results: list[Any] = []
    for check in (reference, lambda d: Register.decode(d, "w"), register_stamp):
        try:
            results.append(check(data))
        except DecodeError:
            results.append(None)
    return results[0], results[1], results[2]


def assert_same_verdict(data: bytes) -> None:
    expected, register, stamp = verdicts(data)
    if expected is None:
        assert register is None, data
        assert stamp is None, data
        return
    deleted, value, hlc, version, sup, context = expected
    assert register is not None
    assert stamp == (hlc.wall, hlc.logical)
    assert (register.deleted, register.value, register.hlc, register.version) == (
        deleted,
        value,
        hlc,
        version,
    )
    assert dict(register.context) == context
    if sup is None:
        assert register.supersedes is None
    else:
        assert register.supersedes is not None
        assert register.supersedes.version == sup[1]
        assert register.supersedes.writer == ("w" if sup[0] is None else sup[0])


scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=False),
    st.text(max_size=8),
    st.binary(max_size=8),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.one_of(st.text(max_size=4), st.integers(0, 3)), inner, max_size=4),
    ),
    max_leaves=20,
)
wide_ints = st.integers(-(2**63), 2**64 - 1)
stamps = st.one_of(
    st.tuples(st.integers(0, MAX_WALL), st.integers(0, MAX_LOGICAL)).map(list),
    st.lists(values, max_size=3),
    values,
)
fields = st.tuples(
    st.one_of(st.just(REGISTER_FORMAT), values),
    st.one_of(st.booleans(), values),
    values,
    st.one_of(st.integers(0, MAX_WALL), st.integers(-5, 2**64 - 1), values),
    st.one_of(st.integers(0, MAX_LOGICAL), st.integers(-5, 2**40), values),
    st.one_of(st.integers(1, 100), values),
    st.one_of(st.none(), st.tuples(st.one_of(st.none(), st.text(max_size=4)), wide_ints)),
    st.one_of(st.dictionaries(st.text(max_size=4), stamps, max_size=3), values),
)


@settings(max_examples=200)
@given(fields)
def test_structured_registers_get_the_same_verdict(parts: tuple[Any, ...]) -> None:
    assert_same_verdict(msgpack.packb(list(parts), use_bin_type=True))


@settings(max_examples=150)
@given(fields, st.data())
def test_mutated_registers_get_the_same_verdict(
    parts: tuple[Any, ...], data: st.DataObject
) -> None:
    encoded = bytearray(msgpack.packb(list(parts), use_bin_type=True))
    for _ in range(data.draw(st.integers(1, 3))):
        position = data.draw(st.integers(0, len(encoded) - 1))
        encoded[position] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(encoded)))
    assert_same_verdict(bytes(encoded[:cut]))
    assert_same_verdict(bytes(encoded))


@settings(max_examples=200)
@given(st.binary(max_size=64))
def test_random_bytes_get_the_same_verdict(data: bytes) -> None:
    assert_same_verdict(data)


def test_hostile_shapes_are_refused_by_every_path() -> None:
    deep: Any = "leaf"
    for _ in range(REGISTER_LIMITS.max_depth):
        deep = [deep]
    cases = [
        b"",
        msgpack.packb([1, False, {1: "non-str key"}, 1, 0, 1, None, {}]),
        msgpack.packb([1, False, {"a": {b"k": 1}}, 1, 0, 1, None, {}]),
        msgpack.packb([1, False, deep, 1, 0, 1, None, {}]),
        msgpack.packb([1, False, "v", 1, 0, 1, None, {7: [1, 0]}]),
        msgpack.packb([1, False, "v", 1, 0, 1, None, {"w": [1, 0, 0]}]),
        msgpack.packb([1, False, msgpack.ExtType(1, b"x"), 1, 0, 1, None, {}]),
        msgpack.packb([1, True, "a tombstone with a value", 1, 0, 1, None, {}]),
        msgpack.packb([1, False, "v", True, 0, 1, None, {}]),
        msgpack.packb([1, False, "v", 1, 0, 1, None, {}]) + b"\x00",
        b"\xdd\xff\xff\xff\xff",  # an array header announcing 4 billion items
    ]
    for data in cases:
        assert verdicts(data) == (None, None, None), data


def test_a_value_at_the_depth_limit_is_accepted_by_every_path() -> None:
    deep: Any = "leaf"
    for _ in range(REGISTER_LIMITS.max_depth - 2):
        deep = [deep]
    data = msgpack.packb([1, False, {"k": deep}, 1, 0, 1, None, {}])
    expected, register, stamp = verdicts(data)
    assert expected is not None
    assert register is not None
    assert stamp == (1, 0)


def test_long_containers_get_the_same_verdict() -> None:
    for size in (65_536, 65_537):
        assert_same_verdict(msgpack.packb([1, False, list(range(size)), 1, 0, 1, None, {}]))
        value = dict.fromkeys((f"k{i}" for i in range(size)), 0)
        assert_same_verdict(msgpack.packb([1, False, value, 1, 0, 1, None, {}]))
