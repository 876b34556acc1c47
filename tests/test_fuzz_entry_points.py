"""Fuzz every byte entry point: typed errors only, and bounded time and memory per input.

Inputs are mutations of valid ones (byte flips, truncations, insertions, splices), random
msgpack of every shape, and random bytes. Whatever the bytes, an entry point either accepts
them or raises a :class:`~souverix_crdt.errors.SouverixError`: no other exception, and no
``BaseException`` (pycrdt's ``PanicException`` is one) escapes. Each input costs at most a
second of time per MiB (at least one second) and a bounded multiple of its size in memory
(``tracemalloc`` peak).
"""

from __future__ import annotations

import io
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from souverix_crdt.authority import Delegation
from souverix_crdt.authority.revocation import Revocation, issue_revocation
from souverix_crdt.document import WriteOp
from souverix_crdt.envelope import open_envelope
from souverix_crdt.errors import SouverixError
from souverix_crdt.hlc import Timestamp
from souverix_crdt.replica import Replica
from souverix_crdt.sync.messages import (
    AuthorityItems,
    Envelopes,
    FrontierRow,
    Frontiers,
    decode_message,
    encode_message,
)
from souverix_crdt.testing.cluster import Cluster
from souverix_crdt.testing.fleet import NOW, make_fleet
from souverix_crdt.transports.bundle import (
    export_bundle,
    export_receipt,
    import_bundle,
    import_receipt,
)

MIB = 1024 * 1024
#: Memory an input may cost while it is judged: a multiple of its size, plus the fixed cost of
#: verifying anything at all (a replica's bookkeeping, a pycrdt transaction).
MEMORY_FACTOR = 8
MEMORY_FLOOR = 2 * MIB
ZONE_SCOPE = "global/region-a/edge-a1"


class _World:
    """Valid inputs for every entry point, made once, and the replica that judges them."""

    def __init__(self, folder: Path) -> None:
        self.fleet = make_fleet()
        cluster = Cluster(self.fleet, ["edge-a1", "region-a"])
        zone, region = cluster["edge-a1"], cluster["region-a"]
        self.cluster = cluster
        receipt = zone.write(ZONE_SCOPE, [WriteOp("nodes", "n1", {"state": "up", "n": [1, 2]})])
        zone.write(ZONE_SCOPE, [WriteOp("nodes", "n2", "down")])
        self.envelopes = zone.envelopes_after(ZONE_SCOPE, receipt.chain, 0, 10)
        self.delegation = self.fleet["edge-a1"].delegation.encode()
        self.revocation = issue_revocation(
            self.fleet["region-a"].key,
            fleet_id=self.fleet.fleet_id,
            revoked=self.fleet["edge-a2"].public,
            cut={"global/region-a/edge-a2": 1},
            hlc=Timestamp(NOW),
        ).encode()
        zone_checkpoint = zone.checkpoint(ZONE_SCOPE)
        assert zone_checkpoint is not None
        self.checkpoint = zone_checkpoint
        self.frames = [
            encode_message(Envelopes(tuple(self.envelopes))),
            encode_message(Envelopes(tuple(self.envelopes * 20))),  # compressed
            encode_message(Frontiers((FrontierRow(ZONE_SCOPE, receipt.chain, 2, b"x" * 32),))),
            encode_message(AuthorityItems(delegations=(self.delegation,))),
        ]
        export_bundle(zone, folder / "z.bundle", peer="region-a", peer_scope="global/region-a")
        self.bundle = (folder / "z.bundle").read_bytes()
        export_receipt(region, folder / "r.receipt", for_peer="edge-a1")
        self.receipt = (folder / "r.receipt").read_bytes()
        self.region = region
        self.zone = zone
        region.add_delegations([link.encode() for link in zone.identity.chain])

    def fresh(self) -> Replica:
        """The judging replica, as it was (the fuzz must not depend on earlier examples)."""
        return self.region


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> _World:
    return _World(tmp_path_factory.mktemp("fuzz"))


def _entry_points(world: _World) -> dict[str, tuple[Callable[[bytes], Any], list[bytes]]]:
    region = world.region
    authority = region.authority
    return {
        "envelope": (
            lambda data: open_envelope(
                data, authority, physical_now=NOW, max_offset=region.clock.max_offset
            ),
            world.envelopes,
        ),
        "ingest": (lambda data: region.ingest(data, source="fuzz"), world.envelopes),
        "delegation": (Delegation.decode, [world.delegation]),
        "revocation": (Revocation.decode, [world.revocation]),
        "frame": (decode_message, world.frames),
        "checkpoint": (
            lambda data: region.ingest_checkpoint(data, source="fuzz"),
            [world.checkpoint],
        ),
        "bundle": (lambda data: import_bundle(region, io.BytesIO(data)), [world.bundle]),
        "receipt": (lambda data: import_receipt(world.zone, io.BytesIO(data)), [world.receipt]),
    }


ENTRIES = [
    "envelope",
    "ingest",
    "delegation",
    "revocation",
    "frame",
    "checkpoint",
    "bundle",
    "receipt",
]

_plain = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
    | st.binary(max_size=40),
    lambda inner: (
        st.lists(inner, max_size=8) | st.dictionaries(st.text(max_size=8), inner, max_size=6)
    ),
    max_leaves=40,
)


@st.composite
def _mutation(draw: st.DrawFn, valid: list[bytes]) -> bytes:
    data = bytearray(draw(st.sampled_from(valid)))
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "truncate", "insert", "splice", "header"]))
        at = draw(st.integers(0, max(0, len(data) - 1)))
        if kind == "flip" and data:
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "truncate":
            del data[at:]
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif kind == "splice":
            other = draw(st.sampled_from(valid))
            data[at:] = other[draw(st.integers(0, len(other))) :]
        elif data:
            # A length header announcing far more than follows.
            data[at] = draw(st.sampled_from([0xC6, 0xDB, 0xDD, 0xDF, 0xC9]))
            data[at + 1 : at + 1] = b"\x7f\xff\xff\xff"
    return bytes(data)


def _inputs(valid: list[bytes]) -> st.SearchStrategy[bytes]:
    return st.one_of(
        _mutation(valid),
        _plain.map(lambda value: msgpack.packb(value, use_bin_type=True)),
        st.sampled_from(valid).map(lambda data: msgpack.packb([data, data], use_bin_type=True)),
        st.binary(max_size=256),
    )


def _judge(entry: Callable[[bytes], Any], data: bytes) -> None:
    tracemalloc.start()
    started = time.process_time()
    try:
        entry(data)
    except SouverixError:
        pass
    except BaseException as exc:
        tracemalloc.stop()
        pytest.fail(f"{type(exc).__name__} escaped for {data[:64]!r}: {exc}")
    elapsed = time.process_time() - started
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert elapsed <= max(1.0, len(data) / MIB), (elapsed, data[:64])
    assert peak <= MEMORY_FACTOR * len(data) + MEMORY_FLOOR, (peak, data[:64])


@pytest.mark.parametrize("name", ENTRIES)
def test_every_byte_entry_point_raises_only_typed_errors_within_budget(
    world: _World, name: str
) -> None:
    entry, valid = _entry_points(world)[name]
    for data in valid:
        _judge(entry, data)  # the valid inputs themselves

    @settings(
        max_examples=60,
        deadline=None,
        derandomize=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(data=_inputs(valid))
    def fuzz(data: bytes) -> None:
        _judge(entry, data)

    fuzz()
