"""msgpack with limits: the only place in the library that decodes untrusted bytes.

Decoding enforces, before anything is allocated for it, a total size limit, a **whole-message
budget** — total objects, total memory the decoded objects would take (as a multiple of the
input size) and nesting depth, counted across every container by :func:`scan` before any object
is built — and per-container length limits (msgpack checks a length header against ``max_*_len``
before reserving memory). ``str``-only map keys and the absence of extension types (msgpack's
built-in timestamp extension included) are checked too. Trailing bytes after the first
object are an error. Every failure, whatever the bytes, is a
:class:`~souverix_crdt.errors.DecodeError`; nothing else escapes.

Encoding is canonical for the values the library signs: maps are written with their keys
sorted, ``bytes`` as msgpack bin, ``str`` as msgpack str.
"""

from __future__ import annotations

from typing import Any, Final

import attrs
import msgpack

from .errors import DecodeError, TooLargeError
from .limits import DEFAULT_LIMITS as _BUDGETS
from .limits import Limits

__all__ = [
    "DEFAULT_LIMITS",
    "SCALAR_TYPES",
    "DecodeLimits",
    "check_structure",
    "decode",
    "decode_fields",
    "decoded_bytes_cost",
    "encode",
    "encode_canonical",
    "reject_ext",
    "scan",
]


@attrs.frozen(kw_only=True)
class DecodeLimits:
    """Bounds applied while decoding one untrusted message.

    Two kinds of bound: the **whole-message budget** (size, depth, total objects and the memory
    the decoded objects would take, counted across every container of the message before any
    of them is built), and **per-container lengths** (checked by msgpack against each header).
    The budget's defaults come from :data:`souverix_crdt.limits.DEFAULT_LIMITS`; use
    :meth:`within` to derive one from a replica's own :class:`~souverix_crdt.limits.Limits`.

    Attributes:
        max_size: Total input size in bytes.
        max_depth: Maximum container nesting (a scalar at top level has depth 0).
        max_objects: Most msgpack objects (scalars and containers) in the whole message.
        max_expansion: Most memory the decoded message may take, as a multiple of its size
            (estimated from the msgpack structure before anything is built).
        max_str_len: Longest ``str`` in bytes.
        max_bin_len: Longest ``bytes``.
        max_array_len: Most items in one array.
        max_map_len: Most pairs in one map.
    """

    max_size: int = 64 * 1024 * 1024
    max_depth: int = _BUDGETS.decode_depth
    max_objects: int = _BUDGETS.decode_objects
    max_expansion: int = _BUDGETS.decode_expansion
    max_str_len: int = 1024 * 1024
    max_bin_len: int = 64 * 1024 * 1024
    max_array_len: int = 1_000_000
    max_map_len: int = 100_000

    def within(self, limits: Limits, *, max_size: int | None = None) -> DecodeLimits:
        """These bounds under ``limits``' whole-message budget (never looser than either).

        Args:
            limits: The replica's budgets (``decode_objects``, ``decode_depth``,
                ``decode_expansion``).
            max_size: The entry point's size budget from ``limits`` (``max_frame``,
                ``max_envelope``…), if it has one.
        """
        return attrs.evolve(
            self,
            max_size=self.max_size if max_size is None else min(self.max_size, max_size),
            max_depth=min(self.max_depth, limits.decode_depth),
            max_objects=limits.decode_objects,
            max_expansion=limits.decode_expansion,
        )


#: Limits used when a caller gives none.
DEFAULT_LIMITS: Final = DecodeLimits()


def reject_ext(code: int, data: bytes) -> Any:
    """Refuse every extension type, msgpack's timestamp included (an unpacker's ``ext_hook``)."""
    raise DecodeError(f"extension type {code} is not allowed", reason="ext")


def _pairs(pairs: list[tuple[Any, Any]]) -> dict[str, Any]:
    # A map with a repeated key has two readings; refuse it rather than pick one silently.
    result = dict(pairs)
    if len(result) != len(pairs):
        raise DecodeError("map has a repeated key", reason="duplicate-key")
    return result


def check_structure(obj: Any, max_depth: int) -> None:
    """Walk ``obj`` iteratively (no recursion): depth, key types, no foreign objects.

    Every decoded message passes through here, so the loop avoids generators and per-item
    function calls. Leaves need no type check: extension types (msgpack's timestamp included)
    are refused by the unpacker itself (``max_ext_len=0``), so only plain types can appear.
    """
    kind = type(obj)
    if kind is not list and kind is not dict:
        if kind not in SCALAR_TYPES:
            raise DecodeError(f"type {kind.__name__} is not allowed", reason="type")
        return
    stack: list[tuple[Any, int]] = [(obj, 0)]
    pop, push = stack.pop, stack.append
    while stack:
        item, depth = pop()
        if depth >= max_depth:
            raise DecodeError(f"nesting deeper than {max_depth}", reason="depth")
        if type(item) is dict:
            for key in item:
                if type(key) is not str:
                    raise DecodeError(
                        f"map keys must be str, got {type(key).__name__}", reason="map-key"
                    )
            children = item.values()
        else:
            children = item
        for child in children:
            child_kind = type(child)
            if child_kind is list or child_kind is dict:
                push((child, depth + 1))


#: The only leaf types decoding can produce (extension types are refused by the unpacker).
SCALAR_TYPES: Final = frozenset({type(None), bool, int, float, str, bytes})


#: Inputs up to this size skip the budget scan: they cannot hold more objects than bytes, and
#: even a worst case of that many empty maps (about 200 bytes each) stays under a megabyte.
SCAN_ABOVE: Final = 4096

# Estimated CPython (3.11, 64-bit) memory of each decoded object, in bytes, rounded up: every
# object takes an 8-byte slot in its parent; containers add their own header (a dict grows
# with its pairs), str and bin their payload. Empty and one-byte str/bin, None, booleans and
# ints up to 256 are shared singletons and cost nothing but their slot.
_SLOT: Final = 8
_LIST: Final = 72
_DICT: Final = 200
_DICT_PAIR: Final = 40
_STR: Final = 80
_BIN: Final = 40
_INT: Final = 36
_FLOAT: Final = 24

# msgpack first bytes whose object is a fixed-size scalar: its length after the first byte.
_FIXED: Final = {
    0xC0: 0, 0xC2: 0, 0xC3: 0,  # nil, false, true
    0xCA: 4, 0xCB: 8,  # float 32, 64
    0xCC: 1, 0xCD: 2, 0xCE: 4, 0xCF: 8,  # uint 8..64
    0xD0: 1, 0xD1: 2, 0xD2: 4, 0xD3: 8,  # int 8..64
}  # fmt: skip
_FIXED_COST: Final = {
    0xC0: 0, 0xC2: 0, 0xC3: 0, 0xCA: _FLOAT, 0xCB: _FLOAT, 0xCC: 0,
    0xCD: _INT, 0xCE: _INT, 0xCF: _INT, 0xD0: _INT, 0xD1: _INT, 0xD2: _INT, 0xD3: _INT,
}  # fmt: skip
_STR_WIDTH: Final = {0xD9: 1, 0xDA: 2, 0xDB: 4}
_BIN_WIDTH: Final = {0xC4: 1, 0xC5: 2, 0xC6: 4}
_EXT: Final = frozenset({0xC7, 0xC8, 0xC9, 0xD4, 0xD5, 0xD6, 0xD7, 0xD8})


def decoded_bytes_cost(length: int) -> int:
    """Estimated memory of one decoded ``bytes`` of ``length`` (its slot included), as scanned."""
    return _SLOT + (_BIN + length if length > 1 else 0)


def _over_budget(what: str, limit: int, reason: str) -> TooLargeError:
    return TooLargeError(f"message holds more than {limit} {what}", reason=reason)


def scan(data: bytes | bytearray | memoryview, limits: DecodeLimits) -> None:  # noqa: PLR0912, PLR0915 -- one flat loop on purpose: a call per object would double its cost
    """Check one msgpack message against the whole-message budget, building nothing.

    Walks the encoding (one loop, no recursion) and counts, across every container of the
    message, the objects it holds and an estimate of the memory decoding them would take;
    also checks nesting depth, ``str`` map keys and the absence of extension types. A
    container's item count is charged when its header is read, so a message announcing more
    than the budget is refused before its items are even looked at.

    The scan costs a little per object and nothing per byte (str and bin payloads are stepped
    over): far less than building the objects, and bounded by ``limits.max_objects``.

    Raises:
        TooLargeError: ``reason="decode_objects"`` over ``max_objects`` objects,
            ``reason="decode_expansion"`` if decoding would take more than ``max_expansion``
            times the message's size in memory.
        DecodeError: too deep (``"depth"``), a non-``str`` map key (``"map-key"``), an
            extension type (``"ext"``), truncated input, or an invalid first byte.
    """
    size = len(data)
    max_objects = limits.max_objects
    max_cost = limits.max_expansion * size
    max_depth = limits.max_depth
    fixed, fixed_cost = _FIXED, _FIXED_COST
    objects = 1
    cost = _SLOT
    pos = 0
    left = 1  # items still to read in the innermost open container (the top level: one)
    keys = False  # the innermost container is a map: its even-numbered items are keys
    stack: list[tuple[int, bool]] = []
    push, pop = stack.append, stack.pop
    while True:
        if not left:
            if not stack:
                break
            left, keys = pop()
            continue
        if pos >= size:
            raise DecodeError("truncated msgpack", reason="truncated")
        first = data[pos]
        # ``left`` counts a map's items down from 2n: an even count left means a key is next.
        if keys and not left & 1 and not (0xA0 <= first <= 0xBF or 0xD9 <= first <= 0xDB):
            raise DecodeError("map keys must be str", reason="map-key")
        left -= 1
        if first < 0x80 or first >= 0xE0:  # fixint
            pos += 1
            if 0xE0 <= first < 0xFB:  # below -5: not a shared small int
                cost += _INT
            continue
        if first >= 0xA0 and first <= 0xBF:  # fixstr
            length = first & 0x1F
            pos += 1 + length
            if length > 1:
                cost += _STR + length
            continue
        if first < 0xA0:  # fixmap, fixarray
            count = first & 0x0F
            is_map = first < 0x90
            pos += 1
        elif first in fixed:
            pos += 1 + fixed[first]
            cost += fixed_cost[first]
            continue
        elif first in _STR_WIDTH or first in _BIN_WIDTH:
            width = _STR_WIDTH.get(first) or _BIN_WIDTH[first]
            length = int.from_bytes(data[pos + 1 : pos + 1 + width], "big")
            pos += 1 + width + length
            if length > 1:
                cost += (_STR if first in _STR_WIDTH else _BIN) + length
            continue
        elif first in (0xDC, 0xDD, 0xDE, 0xDF):
            width = 2 if first in (0xDC, 0xDE) else 4
            count = int.from_bytes(data[pos + 1 : pos + 1 + width], "big")
            is_map = first >= 0xDE
            pos += 1 + width
        elif first in _EXT:
            raise DecodeError(
                f"extension type (first byte {first:#x}) is not allowed", reason="ext"
            )
        else:
            raise DecodeError(f"invalid msgpack first byte {first:#x}", reason="malformed")
        # A container: depth, then its items charged up front.
        if len(stack) >= max_depth:
            raise DecodeError(f"nesting deeper than {max_depth}", reason="depth")
        items = 2 * count if is_map else count
        objects += items
        cost += (_DICT + _DICT_PAIR * count if is_map else _LIST) + _SLOT * items
        if objects > max_objects:
            raise _over_budget("objects", max_objects, "decode_objects")
        if cost > max_cost:
            raise _over_budget(
                f"bytes of decoded objects ({limits.max_expansion}x its size)",
                max_cost,
                "decode_expansion",
            )
        if items:
            push((left, keys))
            left, keys = items, is_map
    if cost > max_cost:
        raise _over_budget(
            f"bytes of decoded objects ({limits.max_expansion}x its size)",
            max_cost,
            "decode_expansion",
        )


def _check_byte_view(view: memoryview) -> None:
    # len() of a memoryview counts items, not bytes, so the size limit would be off by the item
    # size, and msgpack refuses multi-byte items with a BufferError that must not escape.
    try:
        if view.ndim == 1 and view.itemsize == 1:
            return
    except ValueError as exc:  # a released view
        raise DecodeError("memoryview is released", reason="type") from exc
    raise DecodeError(
        f"memoryview must be one-dimensional bytes, got format {view.format!r} "
        f"with {view.ndim} dimension(s)",
        reason="type",
    )


def decode(
    data: bytes | bytearray | memoryview,
    limits: DecodeLimits = DEFAULT_LIMITS,
    *,
    unique_keys: bool = True,
) -> Any:
    """Decode one msgpack object from untrusted bytes under ``limits``.

    Returns plain Python data: ``None``, ``bool``, ``int``, ``float``, ``str``, ``bytes``,
    ``list`` and ``dict`` with ``str`` keys.

    ``unique_keys=False`` lets a repeated map key keep its last value instead of raising. It
    is for data that is never re-encoded or signed (register values): every replica still
    reads the same bytes the same way, and skipping the per-map check makes decoding about
    three times faster.

    Raises:
        TooLargeError: over the whole-message budget (``reason="decode_objects"`` or
            ``"decode_expansion"``, see :func:`scan`).
        DecodeError: for anything else: oversize input, a container or string over its limit,
            nesting too deep, a non-``str`` map key, a repeated map key, an extension type,
            invalid UTF-8, truncated input or trailing bytes.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise DecodeError(f"expected bytes, got {type(data).__name__}", reason="type")
    if isinstance(data, memoryview):
        _check_byte_view(data)
    size = len(data)
    if size > limits.max_size:
        raise DecodeError(f"{size} bytes exceeds the {limits.max_size}-byte limit", reason="size")
    if size == 0:
        raise DecodeError("empty input", reason="truncated")
    # The whole-message budget, before anything is built; the scan also checks depth and map
    # keys, so the walk after decoding is needed only where the scan was skipped.
    scanned = size > SCAN_ABOVE or size > limits.max_objects
    if scanned:
        scan(data, limits)
    try:
        obj = msgpack.unpackb(
            data,
            raw=False,
            use_list=True,
            strict_map_key=False,  # checked in the walk, so the error names the key type
            object_pairs_hook=_pairs if unique_keys else None,
            ext_hook=reject_ext,
            timestamp=0,
            # Every item takes at least one byte (a pair two), so no header may announce more
            # than the input could hold: this caps what msgpack reserves up front.
            max_str_len=min(limits.max_str_len, size),
            max_bin_len=min(limits.max_bin_len, size),
            max_array_len=min(limits.max_array_len, size),
            max_map_len=min(limits.max_map_len, size // 2),
            max_ext_len=0,
        )
    except DecodeError:
        raise
    except msgpack.ExtraData as exc:
        raise DecodeError("trailing bytes after the message", reason="trailing-bytes") from exc
    except msgpack.StackError as exc:
        raise DecodeError("nesting too deep", reason="depth") from exc
    except (ValueError, TypeError, OverflowError, MemoryError, RecursionError) as exc:
        # msgpack reports truncation, bad formats, over-limit lengths and bad UTF-8 as ValueError
        # subclasses (UnicodeDecodeError, FormatError, OutOfData...).
        raise DecodeError(f"malformed msgpack: {exc}", reason="malformed") from exc
    if not scanned:
        check_structure(obj, limits.max_depth)
    return obj


def _read_fields(
    unpacker: msgpack.Unpacker, fields: frozenset[str], max_pairs: int, max_depth: int
) -> dict[str, Any]:
    pairs = unpacker.read_map_header()
    # read_map_header does not apply max_map_len itself.
    if pairs > max_pairs:
        raise DecodeError(f"map of {pairs} pairs exceeds the limit", reason="malformed")
    found: dict[str, Any] = {}
    seen: set[str] = set()
    for _ in range(pairs):
        key = unpacker.unpack()
        if type(key) is not str:
            raise DecodeError(f"map keys must be str, got {type(key).__name__}", reason="map-key")
        if key in seen:
            raise DecodeError("map has a repeated key", reason="duplicate-key")
        seen.add(key)
        if key in fields:
            value = unpacker.unpack()
            check_structure(value, max_depth - 1)  # one level below the map
            found[key] = value
        else:
            unpacker.skip()
    return found


def decode_fields(
    data: bytes | bytearray | memoryview,
    fields: frozenset[str],
    limits: DecodeLimits = DEFAULT_LIMITS,
) -> dict[str, Any]:
    """Decode only ``fields`` of a top-level msgpack map; every other value is skipped unbuilt.

    For signed bodies: what is needed to check the signature (who signed it) is read first, and
    the rest of the body is decoded only once the signature holds, so unverified bytes cost no
    more than one walk over them. The map itself is checked as :func:`decode` would (one map,
    ``str`` keys, no repeated key, no trailing bytes, the limits); a wanted field that is absent
    is simply absent from the result.

    Raises:
        TooLargeError: the whole message is over its budget (see :func:`scan`), whichever
            fields are wanted.
        DecodeError: the bytes are not one msgpack map within ``limits``, or a wanted value
            does not decode.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise DecodeError(f"expected bytes, got {type(data).__name__}", reason="type")
    if isinstance(data, memoryview):
        _check_byte_view(data)
    size = len(data)
    if size > limits.max_size:
        raise DecodeError(f"{size} bytes exceeds the {limits.max_size}-byte limit", reason="size")
    if size > SCAN_ABOVE or size > limits.max_objects:
        # The whole message, skipped fields included: it is decoded in full once verified.
        scan(data, limits)
    unpacker = msgpack.Unpacker(
        raw=False,
        use_list=True,
        strict_map_key=False,
        object_pairs_hook=_pairs,
        ext_hook=reject_ext,
        timestamp=0,
        max_buffer_size=max(size, 1),
        max_str_len=min(limits.max_str_len, size),
        max_bin_len=min(limits.max_bin_len, size),
        max_array_len=min(limits.max_array_len, size),
        max_map_len=min(limits.max_map_len, size // 2),
        max_ext_len=0,
    )
    try:
        unpacker.feed(data)
        found = _read_fields(unpacker, fields, min(limits.max_map_len, size // 2), limits.max_depth)
    except DecodeError:
        raise
    except msgpack.OutOfData as exc:
        raise DecodeError("truncated msgpack", reason="truncated") from exc
    except msgpack.StackError as exc:
        raise DecodeError("nesting too deep", reason="depth") from exc
    except (ValueError, TypeError, OverflowError, MemoryError, RecursionError) as exc:
        raise DecodeError(f"malformed msgpack: {exc}", reason="malformed") from exc
    if unpacker.tell() != size:
        raise DecodeError("trailing bytes after the message", reason="trailing-bytes")
    return found


def encode(obj: Any) -> bytes:
    """Encode plain data to msgpack (bin for ``bytes``, str for ``str``).

    Raises:
        TypeError: if ``obj`` holds a type msgpack cannot encode.
    """
    return msgpack.packb(obj, use_bin_type=True)  # type: ignore[no-any-return]


def _canonical(obj: Any) -> Any:
    if type(obj) is dict:
        return {key: _canonical(obj[key]) for key in sorted(obj)}
    if type(obj) in (list, tuple):
        return [_canonical(item) for item in obj]
    return obj


def encode_canonical(obj: Any) -> bytes:
    """Encode with map keys sorted, so equal data always gives equal bytes (for signing)."""
    return encode(_canonical(obj))
