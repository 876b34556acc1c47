"""msgpack with limits: the only place in the library that decodes untrusted bytes.

Decoding enforces, before anything is allocated for it, a total size limit and per-container
length limits (msgpack checks a length header against ``max_*_len`` before reserving memory),
then walks the result once to enforce the nesting depth, ``str``-only map keys and the absence of
extension types (msgpack's built-in timestamp extension included). Trailing bytes after the first
object are an error. Every failure, whatever the bytes, is a
:class:`~souverix_crdt.errors.DecodeError`; nothing else escapes.

Encoding is canonical for the values the library signs: maps are written with their keys
sorted, ``bytes`` as msgpack bin, ``str`` as msgpack str.
"""

from __future__ import annotations

from typing import Any, Final

import attrs
import msgpack

from .errors import DecodeError

__all__ = [
    "DEFAULT_LIMITS",
    "SCALAR_TYPES",
    "Limits",
    "check_structure",
    "decode",
    "decode_fields",
    "encode",
    "encode_canonical",
    "reject_ext",
]


@attrs.frozen(kw_only=True)
class Limits:
    """Bounds applied while decoding untrusted bytes.

    Attributes:
        max_size: Total input size in bytes.
        max_depth: Maximum container nesting (a scalar at top level has depth 0).
        max_str_len: Longest ``str`` in bytes.
        max_bin_len: Longest ``bytes``.
        max_array_len: Most items in one array.
        max_map_len: Most pairs in one map.
    """

    max_size: int = 64 * 1024 * 1024
    max_depth: int = 32
    max_str_len: int = 1024 * 1024
    max_bin_len: int = 64 * 1024 * 1024
    max_array_len: int = 1_000_000
    max_map_len: int = 100_000


#: Limits used when a caller gives none.
DEFAULT_LIMITS: Final = Limits()


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
    limits: Limits = DEFAULT_LIMITS,
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
    limits: Limits = DEFAULT_LIMITS,
) -> dict[str, Any]:
    """Decode only ``fields`` of a top-level msgpack map; every other value is skipped unbuilt.

    For signed bodies: what is needed to check the signature (who signed it) is read first, and
    the rest of the body is decoded only once the signature holds, so unverified bytes cost no
    more than one walk over them. The map itself is checked as :func:`decode` would (one map,
    ``str`` keys, no repeated key, no trailing bytes, the limits); a wanted field that is absent
    is simply absent from the result.

    Raises:
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
