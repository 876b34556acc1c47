"""Build one decode bomb and decode it in this process, reporting peak memory and CPU time.

Run as ``python -m tests.helpers.decode_bomb SHAPE SIZE ENTRY``; prints one JSON object: the
peak resident growth while decoding (``VmHWM`` after resetting it, minus ``VmRSS`` before),
the CPU seconds spent, and the typed error the decoder raised (if any). The bomb is built
before the baseline is taken: what is measured is the cost of decoding it, nothing else.
"""

from __future__ import annotations

import gc
import json
import os
import random
import sys
import time
import zlib
from collections.abc import Callable
from pathlib import Path

from souverix_crdt.codec import decode_fields
from souverix_crdt.envelope import read_header
from souverix_crdt.errors import SouverixError
from souverix_crdt.sync.messages import decode_message
from souverix_crdt.transports import bundle

CHUNK = 0xFFFF  # items per array: far under every per-container limit


def _array(items: bytes, count: int) -> bytes:
    header = (
        b"\xdc" + count.to_bytes(2, "big")
        if count <= 0xFFFF
        else b"\xdd" + count.to_bytes(4, "big")
    )
    return header + items


def _chunks(item: bytes, size: int) -> bytes:
    """Arrays of ``CHUNK`` copies of ``item``, as many as fit in ``size`` bytes, in one array."""
    chunk = _array(item * CHUNK, CHUNK)
    count = max(1, size // len(chunk))
    return _array(chunk * count, count)


SHAPES: dict[str, Callable[[int], bytes]] = {
    "nested-arrays": lambda size: _chunks(b"\x9f" + b"\x90" * 15, size),
    "tiny-maps": lambda size: _chunks(b"\x80", size),
    "small-strings": lambda size: _chunks(b"\xa2ab", size),
    "deep-nesting": lambda size: _chunks(b"\x91\x90", size),
}


def _frame(items: bytes, packed: bytes = b"") -> bytes:
    # [2, "envelopes", {"items": items, "z": packed}] written by hand: the bomb is the items.
    z = b"\xc6" + len(packed).to_bytes(4, "big") + packed
    return b"\x93\x02\xa9envelopes\x82\xa5items" + items + b"\xa1z" + z


def build(shape: str, size: int, entry: str) -> bytes:
    if shape == "deflate-bomb":  # incompressible bytes, then empty envelopes: 1000:1
        noise = random.Random(0).randbytes(size * 9 // 10)
        count = 2 * size
        plain = (
            _array(b"", 1 + count)
            + b"\xc6"
            + len(noise).to_bytes(4, "big")
            + noise
            + b"\xc4\x00" * count
        )
        return _frame(b"\x90", zlib.compress(plain, 9))
    if shape == "deflate-mixed":  # envelopes of low-entropy bytes: about 3:1, the edge
        count = min(200_000, size // 8)
        length = max(2, 2 * size // count - 2)
        symbols = bytes(b"abcd"[byte & 3] for byte in range(256))
        noise = random.Random(0).randbytes(count * length).translate(symbols)
        header = b"\xc4" + bytes([length]) if length < 256 else b"\xc5" + length.to_bytes(2, "big")
        body = b"".join(header + noise[k * length : (k + 1) * length] for k in range(count))
        return _frame(b"\x90", zlib.compress(_array(body, count), 6))
    body = SHAPES[shape](size - 64)
    if entry == "frame":
        return _frame(body)
    if entry == "manifest":  # a signed body's signer fields, and a bomb beside them
        return b"\x82\xa1v\x01\xa9frontiers" + body
    return body  # an envelope: the outer decode sees it first


ENTRIES: dict[str, Callable[[bytes], object]] = {
    "frame": decode_message,
    "envelope": read_header,
    "manifest": lambda data: decode_fields(
        data, frozenset({"v"}), bundle._limits(bundle.DEFAULT_MAX_RECORD)
    ),
}


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise LookupError(field)


def main(shape: str, size: int, entry: str) -> dict[str, object]:
    data = build(shape, size, entry)
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current resident size
    baseline = _status("VmRSS")
    started = time.process_time()
    error = None
    try:
        ENTRIES[entry](data)
    except SouverixError as exc:
        error = f"{type(exc).__name__}:{getattr(exc, 'reason', '')}"
    cpu = time.process_time() - started
    return {
        "size": len(data),
        "peak": _status("VmHWM") - baseline,
        "cpu": cpu,
        "error": error,
        "pid": os.getpid(),
    }


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], int(sys.argv[2]), sys.argv[3])))
