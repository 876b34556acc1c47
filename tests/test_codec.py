"""The bounded msgpack codec: hostile input raises DecodeError (and only that), cheaply."""

from __future__ import annotations

import array
import random
import struct
import tracemalloc
from typing import Any

import msgpack
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from souverix_crdt.codec import DEFAULT_LIMITS, DecodeLimits, decode, encode, encode_canonical
from souverix_crdt.errors import DecodeError

from .strategies import plain_values

_PLAIN_SCALARS = (type(None), bool, int, float, str, bytes)


def _assert_plain(obj: Any, max_depth: int = DEFAULT_LIMITS.max_depth) -> None:
    """Check that ``obj`` is plain data within ``max_depth`` (iteratively, like the codec)."""
    stack = [(obj, 0)]
    while stack:
        item, depth = stack.pop()
        if type(item) is list:
            assert depth < max_depth
            stack.extend((child, depth + 1) for child in item)
        elif type(item) is dict:
            assert depth < max_depth
            assert all(type(key) is str for key in item)
            stack.extend((child, depth + 1) for child in item.values())
        else:
            assert type(item) in _PLAIN_SCALARS, type(item)


def _nested(depth: int, *, kind: str = "list") -> bytes:
    """``depth`` nested containers around ``nil``: a list of a list… or ``{"a": {"a": …}}``."""
    head = b"\x91" if kind == "list" else b"\x81\xa1a"
    return head * depth + b"\xc0"


# A message that uses every format family the codec accepts, at several widths.
RICH: dict[str, Any] = {
    "nil": None,
    "true": True,
    "false": False,
    "fixint": 7,
    "negfixint": -5,
    "uint8": 200,
    "uint16": 60_000,
    "uint32": 2**32 - 1,
    "uint64": 2**64 - 1,
    "int8": -100,
    "int16": -30_000,
    "int32": -(2**31),
    "int64": -(2**63),
    "float64": 1.5,
    "fixstr": "héllo",
    "str8": "x" * 40,
    "str16": "y" * 300,
    "bin8": b"\x00\x01\xff",
    "bin16": b"z" * 300,
    "array": [1, [2, [3, []]], {}],
    "array16": list(range(20)),
    "map16": {f"k{i}": i for i in range(20)},
    "nested": {"a": {"b": {"c": [None, "d", b"e"]}}},
    "": "",
}
RICH_BYTES = encode(RICH)


def test_rich_message_round_trips() -> None:
    assert decode(RICH_BYTES) == RICH
    assert decode(bytearray(RICH_BYTES)) == RICH
    assert decode(memoryview(RICH_BYTES)) == RICH


# --------------------------------------------------------------------------- valid vectors


@pytest.mark.parametrize(
    ("data", "value"),
    [
        (b"\xc0", None),
        (b"\xc2", False),
        (b"\xc3", True),
        (b"\x00", 0),
        (b"\xff", -1),
        (b"\xcf" + b"\xff" * 8, 2**64 - 1),
        (b"\xd3\x80" + b"\x00" * 7, -(2**63)),
        (b"\xca" + struct.pack(">f", 0.5), 0.5),
        (b"\xcb" + struct.pack(">d", -2.25), -2.25),
        (b"\xa0", ""),
        (b"\xd9\x01a", "a"),
        (b"\xc4\x00", b""),
        (b"\x90", []),
        (b"\x80", {}),
        (b"\xdc\x00\x01\xc0", [None]),
        (b"\xde\x00\x01\xa1a\x01", {"a": 1}),
        (b"\xdd\x00\x00\x00\x02\x01\x02", [1, 2]),
    ],
)
def test_valid_vectors_decode(data: bytes, value: Any) -> None:
    assert decode(data) == value


# --------------------------------------------------------------------------- hostile vectors


def _decode_error(data: object, limits: DecodeLimits = DEFAULT_LIMITS) -> DecodeError:
    with pytest.raises(DecodeError) as info:
        decode(data, limits)  # type: ignore[arg-type]
    return info.value


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"\x91" * 100_000, id="array-depth-bomb"),
        pytest.param(b"\x81\xa1a" * 50_000, id="map-depth-bomb"),
        pytest.param(b"\x91" * 100_000 + b"\xc0", id="complete-array-depth-bomb"),
        pytest.param(_nested(1_000), id="within-msgpack-stack"),
        pytest.param(_nested(1_000, kind="map"), id="map-within-msgpack-stack"),
        pytest.param(b"\x91\x81\xa1a" * 30_000 + b"\xc0", id="mixed-depth-bomb"),
    ],
)
def test_depth_bombs_are_rejected(data: bytes) -> None:
    error = _decode_error(data)
    assert error.reason in {"depth", "malformed"}


_LENGTH_BOMBS = [
    pytest.param(b"\xdd\xff\xff\xff\xff", id="array32"),
    pytest.param(b"\xdf\xff\xff\xff\xff", id="map32"),
    pytest.param(b"\xdb\xff\xff\xff\xff", id="str32"),
    pytest.param(b"\xc6\xff\xff\xff\xff", id="bin32"),
    pytest.param(b"\xc9\xff\xff\xff\xff\x01", id="ext32"),
    pytest.param(b"\xdc\xff\xff", id="array16"),
    pytest.param(b"\xde\xff\xff", id="map16"),
    pytest.param(b"\xda\xff\xff", id="str16"),
    pytest.param(b"\xc5\xff\xff", id="bin16"),
    pytest.param(b"\x91\x91\xdd\xff\xff\xff\xff", id="nested-array32"),
    pytest.param(b"\x81\xa1a\xdf\xff\xff\xff\xff", id="map32-in-map"),
    pytest.param(b"\xdd\xff\xff\xff\xff" + b"\xc0" * 65_536, id="array32-padded"),
    pytest.param(b"\xdf\xff\xff\xff\xff" + b"\xa0\xc0" * 32_768, id="map32-padded"),
    pytest.param(b"\xdb\xff\xff\xff\xff" + b"a" * 65_536, id="str32-padded"),
    pytest.param(b"\xc6\xff\xff\xff\xff" + b"a" * 65_536, id="bin32-padded"),
    pytest.param(b"\xdd\x00\x0f\x42\x40" + b"\xc0" * 1_000, id="array-at-max-len"),
]


@pytest.mark.parametrize("data", _LENGTH_BOMBS)
def test_length_headers_beyond_the_input_are_rejected(data: bytes) -> None:
    _decode_error(data)


def test_length_bombs_are_refused_before_allocation() -> None:
    bombs = [param.values[0] for param in _LENGTH_BOMBS]
    tracemalloc.start()
    try:
        for data in bombs:
            with pytest.raises(DecodeError):
                decode(data)  # type: ignore[arg-type]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1024 * 1024, f"peak {peak} bytes while refusing length bombs"


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"\xd4\x01\x00", id="fixext1"),
        pytest.param(b"\xd5\x01\x00\x00", id="fixext2"),
        pytest.param(b"\xd6\x01" + b"\x00" * 4, id="fixext4"),
        pytest.param(b"\xd7\x01" + b"\x00" * 8, id="fixext8"),
        pytest.param(b"\xd8\x01" + b"\x00" * 16, id="fixext16"),
        pytest.param(b"\xc7\x01\x05\x00", id="ext8"),
        pytest.param(b"\xc7\x00\x05", id="ext8-empty"),
        pytest.param(b"\xc8\x00\x01\x05\x00", id="ext16"),
        pytest.param(b"\xc9\x00\x00\x00\x01\x05\x00", id="ext32"),
        pytest.param(b"\xd6\xff" + b"\x00" * 4, id="timestamp32"),
        pytest.param(b"\xd7\xff" + b"\x00" * 8, id="timestamp64"),
        pytest.param(b"\xc7\x0c\xff" + b"\x00" * 12, id="timestamp96"),
        pytest.param(b"\xc7\x00\xff", id="timestamp-empty"),
        pytest.param(b"\x91\xd4\x01\x00", id="ext-in-array"),
        pytest.param(b"\x81\xa1a\xd6\xff" + b"\x00" * 4, id="timestamp-in-map"),
        pytest.param(b"\x81\xc7\x00\x05\xc0", id="ext-as-map-key"),
    ],
)
def test_extension_types_are_rejected(data: bytes) -> None:
    _decode_error(data)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        pytest.param(b"\x81\x01\xc0", "map-key", id="int"),
        pytest.param(b"\x81\xff\xc0", "map-key", id="negative-int"),
        pytest.param(b"\x81\xc4\x01a\xc0", "map-key", id="bytes"),
        pytest.param(b"\x81\xc0\xc0", "map-key", id="nil"),
        pytest.param(b"\x81\xc3\xc0", "map-key", id="true"),
        pytest.param(b"\x81\xc2\xc0", "map-key", id="false"),
        pytest.param(b"\x81\xcb" + struct.pack(">d", 1.5) + b"\xc0", "map-key", id="float"),
        pytest.param(b"\x81\x90\xc0", "malformed", id="array"),
        pytest.param(b"\x81\x80\xc0", "malformed", id="map"),
        pytest.param(b"\x81\xa1a\x81\x01\xc0", "map-key", id="int-in-nested-map"),
        pytest.param(b"\x91\x81\xc0\xc0", "map-key", id="nil-in-map-in-array"),
        pytest.param(b"\x82\x01\xc0\xc3\xc0", "duplicate-key", id="int-and-true-collide"),
    ],
)
def test_non_str_map_keys_are_rejected(data: bytes, reason: str) -> None:
    assert _decode_error(data).reason == reason


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"\x82\xa1a\x01\xa1a\x02", id="different-values"),
        pytest.param(b"\x82\xa1a\x01\xa1a\x01", id="same-value"),
        pytest.param(b"\x82\xa0\xc0\xd9\x00\xc0", id="empty-key-two-widths"),
        pytest.param(b"\x91\x81\xa1x\x82\xa1a\x01\xa1a\x02", id="nested"),
        pytest.param(b"\x83\xa1a\x01\xa1b\x02\xa1a\x03", id="not-adjacent"),
    ],
)
def test_duplicate_map_keys_are_rejected(data: bytes) -> None:
    assert _decode_error(data).reason == "duplicate-key"


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"\xc0\xc0", id="two-nils"),
        pytest.param(b"\x01\x00", id="two-ints"),
        pytest.param(b"\x90\x90", id="two-arrays"),
        pytest.param(b"\xa1a\x00", id="str-then-zero"),
        pytest.param(RICH_BYTES + b"\x00", id="rich-plus-one"),
        pytest.param(RICH_BYTES + b"\xc1", id="rich-plus-never-used"),
        pytest.param(RICH_BYTES * 2, id="rich-twice"),
    ],
)
def test_trailing_bytes_are_rejected(data: bytes) -> None:
    assert _decode_error(data).reason == "trailing-bytes"


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"\xa1\xff", id="ff"),
        pytest.param(b"\xa1\x80", id="lone-continuation"),
        pytest.param(b"\xa2\xc3\x28", id="bad-continuation"),
        pytest.param(b"\xa2\xc0\xaf", id="overlong-slash"),
        pytest.param(b"\xa3\xed\xa0\x80", id="surrogate"),
        pytest.param(b"\xa4\xf4\x90\x80\x80", id="beyond-unicode"),
        pytest.param(b"\xa1\xc3", id="truncated-sequence"),
        pytest.param(b"\x81\xa1\xff\xc0", id="in-map-key"),
        pytest.param(b"\x91\xd9\x01\xfe", id="str8-in-array"),
    ],
)
def test_invalid_utf8_is_rejected(data: bytes) -> None:
    assert _decode_error(data).reason == "malformed"


@pytest.mark.parametrize("data", [b"\xc1", b"\x91\xc1", b"\x81\xa1a\xc1"])
def test_never_used_format_byte_is_rejected(data: bytes) -> None:
    _decode_error(data)


def test_every_truncation_of_a_valid_message_is_rejected() -> None:
    for end in range(len(RICH_BYTES)):
        with pytest.raises(DecodeError):
            decode(RICH_BYTES[:end])
    assert _decode_error(b"").reason == "truncated"


@pytest.mark.parametrize("data", ["abc", "", 1, None, 1.5, [1], object(), array.array("B", [0])])
def test_wrong_python_type_is_rejected(data: object) -> None:
    assert _decode_error(data).reason == "type"


@pytest.mark.parametrize(
    "view",
    [
        pytest.param(memoryview(array.array("q", [0])), id="multi-byte-items"),
        pytest.param(memoryview(array.array("H", [0x90C0])), id="two-byte-items"),
        pytest.param(memoryview(b"\x90" * 4).cast("B", (2, 2)), id="two-dimensional"),
    ],
)
def test_memoryview_that_is_not_a_flat_byte_view_is_rejected(view: memoryview) -> None:
    assert _decode_error(view).reason == "type"


def test_released_memoryview_is_rejected() -> None:
    view = memoryview(b"\xc0")
    view.release()
    assert _decode_error(view).reason == "type"


def test_non_contiguous_byte_view_decodes_its_items() -> None:
    assert decode(memoryview(b"\x92\xff\x01\xff\x02\xff")[::2]) == [1, 2]


def test_input_over_max_size_is_rejected_before_decoding() -> None:
    limits = DecodeLimits(max_size=5)
    assert decode(b"\xa4abcd", limits) == "abcd"
    assert _decode_error(b"\xa5abcde", limits).reason == "size"
    # Refused on its size alone: these bytes are not even msgpack.
    assert _decode_error(b"\xc1" * 6, limits).reason == "size"


# --------------------------------------------------------------------------- limits


@pytest.mark.parametrize("kind", ["list", "map"])
@pytest.mark.parametrize("max_depth", [0, 1, 3, DEFAULT_LIMITS.max_depth])
def test_nesting_at_max_depth_is_accepted_and_one_more_is_not(kind: str, max_depth: int) -> None:
    limits = DecodeLimits(max_depth=max_depth)
    _assert_plain(decode(_nested(max_depth, kind=kind), limits), max_depth)
    assert _decode_error(_nested(max_depth + 1, kind=kind), limits).reason == "depth"


def test_default_depth_limit() -> None:
    deepest: Any = None
    for _ in range(DEFAULT_LIMITS.max_depth):
        deepest = {"k": deepest} if isinstance(deepest, list) else [deepest]
    assert decode(encode(deepest)) == deepest
    assert _decode_error(encode([deepest])).reason == "depth"


@pytest.mark.parametrize(
    ("field", "at_limit", "over_limit"),
    [
        ("max_array_len", [1, 2, 3], [1, 2, 3, 4]),
        ("max_map_len", {"a": 1, "b": 2, "c": 3}, {"a": 1, "b": 2, "c": 3, "d": 4}),
        ("max_str_len", "abc", "abcd"),
        ("max_bin_len", b"abc", b"abcd"),
    ],
)
def test_per_container_limits(field: str, at_limit: Any, over_limit: Any) -> None:
    limits = DecodeLimits(**{field: 3})
    assert decode(encode(at_limit), limits) == at_limit
    assert decode(encode([at_limit]), limits) == [at_limit]
    _decode_error(encode(over_limit), limits)
    _decode_error(encode([over_limit]), limits)


# --------------------------------------------------------------------------- properties


def _mutate(data: bytes, edits: list[tuple[int, int]]) -> bytes:
    buffer = bytearray(data)
    for position, byte in edits:
        buffer[position % len(buffer)] = byte
    return bytes(buffer)


_hostile_bytes = st.one_of(
    st.binary(),
    # Valid container and string headers followed by noise reach deeper into the decoder.
    st.builds(
        bytes.__add__,
        st.sampled_from(
            [b"\x91", b"\x92", b"\x81\xa1a", b"\xdc\x00\x03", b"\xde\x00\x02", b"\xd9\x04"]
        ),
        st.binary(),
    ),
    st.builds(
        _mutate,
        st.just(RICH_BYTES),
        st.lists(st.tuples(st.integers(0, len(RICH_BYTES)), st.integers(0, 255)), max_size=4),
    ),
)


@given(_hostile_bytes)
@example(b"\x91" * 2_000)
@example(b"\xd6\xff\x00\x00\x00\x00")
@example(b"\x81\x90\xc0")
def test_arbitrary_bytes_decode_to_plain_data_or_raise_decode_error(data: bytes) -> None:
    try:
        value = decode(data)
    except DecodeError:
        return
    except BaseException as exc:
        raise AssertionError(f"{type(exc).__name__} escaped the codec: {exc!r}") from exc
    _assert_plain(value)
    # What decodes re-encodes to bytes that decode again (compared as bytes: NaN != NaN).
    assert encode(decode(encode(value))) == encode(value)


@given(plain_values())
def test_decode_inverts_encode(value: Any) -> None:
    assert decode(encode(value)) == value
    assert decode(encode_canonical(value)) == value


@given(st.lists(plain_values(), max_size=4).map(tuple))
def test_tuples_decode_as_lists(value: tuple[Any, ...]) -> None:
    assert decode(encode(value)) == list(value)
    assert encode_canonical(value) == encode_canonical(list(value))


def _reordered(value: Any, rng: random.Random) -> Any:
    """The same value with every dict's insertion order shuffled."""
    if isinstance(value, dict):
        items = list(value.items())
        rng.shuffle(items)
        return {key: _reordered(item, rng) for key, item in items}
    if isinstance(value, list):
        return [_reordered(item, rng) for item in value]
    return value


def _keys_sorted(value: Any) -> bool:
    if isinstance(value, dict):
        return list(value) == sorted(value) and all(map(_keys_sorted, value.values()))
    if isinstance(value, list):
        return all(map(_keys_sorted, value))
    return True


@given(
    st.dictionaries(st.text(max_size=6), plain_values(), max_size=8) | plain_values(),
    st.randoms(use_true_random=False),
)
def test_canonical_encoding_ignores_insertion_order(value: Any, rng: random.Random) -> None:
    shuffled = _reordered(value, rng)
    assert shuffled == value
    assert encode_canonical(shuffled) == encode_canonical(value)
    decoded = decode(encode_canonical(value))
    assert _keys_sorted(decoded)
    assert encode_canonical(decoded) == encode_canonical(value)


def test_canonical_encoding_sorts_keys_at_every_level() -> None:
    value = {"b": [{"z": 1, "a": 2}], "a": {"y": None, "x": b""}}
    assert encode_canonical(value) == msgpack.packb(
        {"a": {"x": b"", "y": None}, "b": [{"a": 2, "z": 1}]}, use_bin_type=True
    )
