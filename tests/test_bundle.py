"""Air-gapped bundles: export what a peer lacks, import all-or-nothing, settle debt by receipt.

Every damaged bundle (cut at each byte, a byte flipped anywhere, records spliced from two
exports, another fleet's, addressed to someone else) is refused whole: the importer's digest,
frontiers and pending area are exactly as before. A sound bundle imports once; importing it
again changes nothing. The large-bundle test measures the bundle layer's own memory with
tracemalloc while 20,000 envelopes stream through it.
"""

from __future__ import annotations

import io
import tracemalloc
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest

from souverix_crdt.authority import issue_revocation
from souverix_crdt.errors import BundleError
from souverix_crdt.hlc import Timestamp
from souverix_crdt.limits import DEFAULT_LIMITS
from souverix_crdt.replica import Identity, IngestOutcome, IngestResult, Replica
from souverix_crdt.store.memory import MemoryStore
from souverix_crdt.testing.fleet import NOW, Fleet, make_fleet
from souverix_crdt.transports.bundle import (
    BUNDLE_MAGIC,
    RECEIPT_MAGIC,
    RecordKind,
    export_bundle,
    export_receipt,
    import_bundle,
    import_receipt,
    read_manifest,
    read_receipt,
    read_records,
    verify_bundle,
)

FLEET = make_fleet()
GLOBAL = "global"
REGION = "global/region-a"
EDGE = "global/region-a/edge-a1"
SIBLING = "global/region-a/edge-a2"


def make_replica(name: str, *, fleet: Fleet = FLEET, epoch: int = 1) -> Replica:
    member = fleet[name]
    return Replica(
        Identity(member.key, member.chain),
        fleet.anchors,
        MemoryStore(),
        name=name,
        wall_clock=lambda: NOW,
        epoch=epoch,
    )


def fingerprint(replica: Replica) -> tuple[Any, ...]:
    """Everything an import could change."""
    status = replica.status()
    return (
        replica.digest(),
        tuple(replica.frontiers()),
        status.pending,
        len(replica.conflicts()),
        len(replica.store.audit()),
        tuple(sorted(replica.store.peer_frontiers("region-a").items())),
    )


def rejected(replica: Replica, data: bytes) -> BundleError:
    before = fingerprint(replica)
    with pytest.raises(BundleError) as caught:
        import_bundle(replica, io.BytesIO(data))
    assert fingerprint(replica) == before
    return caught.value


@pytest.fixture
def region() -> Replica:
    replica = make_replica("region-a")
    replica.register_peer("edge-a1", [EDGE])
    return replica


@pytest.fixture
def edge() -> Replica:
    return make_replica("edge-a1")


@pytest.fixture
def small_bundle(tmp_path: Path, region: Replica) -> bytes:
    region.scope(REGION).policies.set("max-unavailable", "10%")
    region.scope(EDGE).policies.set("window", "02:00")
    export_bundle(region, tmp_path / "small.bundle", peer="edge-a1", peer_scope=EDGE)
    return (tmp_path / "small.bundle").read_bytes()


def records_of(data: bytes) -> list[tuple[RecordKind, int]]:
    return [(record.kind, record.offset) for record in read_records(io.BytesIO(data))]


# --------------------------------------------------------------------------- round trips


def test_bundle_and_receipt_round_trip_settles_the_exporters_debt(
    tmp_path: Path, region: Replica, edge: Replica
) -> None:
    for index in range(5):
        region.scope(REGION).policies.set(f"p{index}", index)
    edge.scope(EDGE).nodes.set("n1", {"status": "up"})
    assert region.sync_debt("edge-a1").envelopes == 5

    info = export_bundle(region, tmp_path / "1.bundle", peer="edge-a1", peer_scope=EDGE)
    assert (info.envelopes, info.checkpoints, info.complete, info.previous) == (5, 0, True, b"")
    assert info.size == (tmp_path / "1.bundle").stat().st_size
    assert [(r.scope, r.from_seq, r.to_seq) for r in info.ranges] == [(REGION, 0, 5)]

    before = fingerprint(edge)
    manifest = verify_bundle(edge, tmp_path / "1.bundle")  # the first pass alone
    assert fingerprint(edge) == before
    assert (manifest.bundle_id, manifest.source, manifest.peer) == (
        info.bundle_id,
        "region-a",
        "edge-a1",
    )
    assert manifest.records == info.records == 6  # region-a's delegation and 5 envelopes
    assert manifest.count(RecordKind.ENVELOPE) == 5
    assert manifest.ranges == info.ranges
    assert read_manifest(edge, tmp_path / "1.bundle") == manifest

    result = import_bundle(edge, tmp_path / "1.bundle")
    assert (result.applied, result.duplicates, result.rejected) == (5, 0, 0)
    assert result.bundle_id == info.bundle_id
    assert result.source == "region-a"
    assert str(result.source_scope) == REGION
    assert result.chained
    assert result.changed
    assert edge.get(REGION, "policies", "p4") == 4

    receipt = export_receipt(edge, tmp_path / "1.receipt", for_peer="region-a")
    assert receipt.last_bundle == info.bundle_id
    assert import_receipt(region, tmp_path / "1.receipt") == receipt
    assert region.sync_debt("edge-a1").envelopes == 0
    assert region.sync_debt("edge-a1").bytes == 0

    # And back: the edge's bundle carries only what the region lacks (its own chain), because
    # the region's bundle told it what the region holds.
    back = export_bundle(edge, tmp_path / "2.bundle", peer="region-a", peer_scope=REGION)
    assert [r.scope for r in back.ranges] == [EDGE]
    import_bundle(region, str(tmp_path / "2.bundle"))
    assert region.digest() == edge.digest()


def test_importing_the_same_bundle_twice_changes_nothing(
    tmp_path: Path, region: Replica, edge: Replica
) -> None:
    # A conflict on one key, so there are audit entries that must not be written twice.
    edge.scope(EDGE).policies.set("window", "edge")
    region.scope(EDGE).policies.set("window", "region")
    region.scope(REGION).versions.set("agent", "1.2.3")
    export_bundle(region, tmp_path / "b", peer="edge-a1", peer_scope=EDGE)
    first = import_bundle(edge, tmp_path / "b")
    assert first.applied == 2
    assert edge.conflicts()
    before = fingerprint(edge)
    audit = list(edge.store.audit())
    again = import_bundle(edge, tmp_path / "b")
    assert (again.applied, again.duplicates, again.changed) == (0, 2, False)
    assert again.chained
    assert fingerprint(edge) == before
    assert list(edge.store.audit()) == audit


def test_bundles_chain_per_peer_and_a_missing_one_is_noticed(
    tmp_path: Path, region: Replica, edge: Replica
) -> None:
    region.scope(REGION).policies.set("a", 1)
    one = export_bundle(region, tmp_path / "1", peer="edge-a1", peer_scope=EDGE)
    region.scope(REGION).policies.set("b", 2)
    two = export_bundle(region, tmp_path / "2", peer="edge-a1")  # the scope is remembered
    region.scope(REGION).policies.set("c", 3)
    three = export_bundle(region, tmp_path / "3", peer="edge-a1")
    assert (two.previous, three.previous) == (one.bundle_id, two.bundle_id)
    assert import_bundle(edge, tmp_path / "1").chained
    # Bundle 2 never arrives. Bundle 3 still carries everything (no receipt came back, so it
    # starts from what the edge acknowledged), but the break in the chain is reported.
    result = import_bundle(edge, tmp_path / "3")
    assert not result.chained
    assert edge.get(REGION, "policies", "b") == 2
    # Importing an older bundle afterwards is harmless and does not rewind the mark.
    import_bundle(edge, tmp_path / "2")
    receipt = export_receipt(edge, tmp_path / "r", for_peer="region-a")
    assert receipt.last_bundle == three.bundle_id


def test_a_receipt_is_where_the_next_bundle_starts(
    tmp_path: Path, region: Replica, edge: Replica
) -> None:
    for index in range(4):
        region.scope(REGION).policies.set(f"p{index}", index)
    export_bundle(region, tmp_path / "1", peer="edge-a1", peer_scope=EDGE)
    import_bundle(edge, tmp_path / "1")
    export_receipt(edge, tmp_path / "r", for_peer="region-a")
    region.scope(REGION).policies.set("p4", 4)
    receipt = read_receipt(region, tmp_path / "r")  # verified, nothing changed yet
    assert region.sync_debt("edge-a1").envelopes == 5
    info = export_bundle(region, tmp_path / "2", peer="edge-a1", peer_frontiers=receipt)
    assert [(r.from_seq, r.to_seq) for r in info.ranges] == [(4, 5)]
    assert info.envelopes == 1
    # Rows work as well as a receipt.
    rows = [(REGION, region.chain, 2)]
    assert export_bundle(region, tmp_path / "3", peer="edge-a1", peer_frontiers=rows).envelopes == 3


def test_limit_cuts_a_bundle_and_the_next_one_completes_it(
    tmp_path: Path, region: Replica, edge: Replica
) -> None:
    for index in range(7):
        region.scope(REGION).policies.set(f"p{index}", index)
    first = export_bundle(region, tmp_path / "1", peer="edge-a1", peer_scope=EDGE, limit=3)
    assert (first.envelopes, first.complete) == (3, False)
    assert read_manifest(edge, tmp_path / "1").complete is False
    import_bundle(edge, tmp_path / "1")
    export_receipt(edge, tmp_path / "r", for_peer="region-a")
    import_receipt(region, tmp_path / "r")
    second = export_bundle(region, tmp_path / "2", peer="edge-a1")
    assert (second.envelopes, second.complete) == (4, True)
    import_bundle(edge, tmp_path / "2")
    assert edge.get(REGION, "policies", "p6") == 6
    with pytest.raises(ValueError, match="limit"):
        export_bundle(region, tmp_path / "3", peer="edge-a1", limit=0)


def test_a_compacted_log_travels_as_its_checkpoint(
    tmp_path: Path, region: Replica, edge: Replica
) -> None:
    for index in range(10):
        region.scope(REGION).policies.set(f"p{index}", index)
    assert region.checkpoint(REGION) is not None  # compacts the log up to seq 10
    for index in range(10, 13):
        region.scope(REGION).policies.set(f"p{index}", index)
    info = export_bundle(region, tmp_path / "b", peer="edge-a1", peer_scope=EDGE)
    assert (info.checkpoints, info.envelopes) == (1, 3)
    result = import_bundle(edge, tmp_path / "b")
    assert (result.checkpoints, result.applied) == (1, 4)
    assert edge.chain_seq(REGION, region.chain) == 13
    assert edge.get(REGION, "policies", "p0") == 0
    assert edge.get(REGION, "policies", "p12") == 12


def test_a_bundle_holds_only_the_peers_interest(tmp_path: Path) -> None:
    region = make_replica("region-a")
    region.scope(GLOBAL + "/region-a").policies.set("own", 1)
    region.scope(EDGE).policies.set("for-a1", 1)
    region.scope(SIBLING).policies.set("for-a2", 1)
    info = export_bundle(region, tmp_path / "b", peer="edge-a1", peer_scope=EDGE)
    assert sorted(r.scope for r in info.ranges) == [REGION, EDGE]
    edge = make_replica("edge-a1")
    import_bundle(edge, tmp_path / "b")
    assert edge.get(SIBLING, "policies", "for-a2") is None
    assert edge.get(EDGE, "policies", "for-a1") == 1


def test_the_peer_scope_must_be_known(tmp_path: Path, region: Replica) -> None:
    with pytest.raises(ValueError, match="scope"):
        export_bundle(region, tmp_path / "b", peer="edge-a1")
    with pytest.raises(ValueError, match="itself"):
        export_bundle(region, tmp_path / "b", peer="region-a", peer_scope=REGION)
    assert not (tmp_path / "b").exists()
    assert list(tmp_path.iterdir()) == []


def test_authority_travels_with_the_bundle(tmp_path: Path) -> None:
    # The edge has never heard of global's delegation: the bundle brings it, so global's
    # envelopes (relayed by the region) apply instead of waiting.
    top = make_replica("global")
    top.scope(GLOBAL).policies.set("fleet-wide", True)
    region = make_replica("region-a")
    export_bundle(top, tmp_path / "g", peer="region-a", peer_scope=REGION)
    import_bundle(region, tmp_path / "g")
    edge = make_replica("edge-a1")
    export_bundle(region, tmp_path / "r", peer="edge-a1", peer_scope=EDGE)
    result = import_bundle(edge, tmp_path / "r")
    assert result.delegations_added >= 1
    assert (result.applied, result.pending) == (1, 0)
    assert edge.effective(EDGE, "policies", "fleet-wide") is True


# --------------------------------------------------------------------------- refusals


def test_a_bundle_cut_at_any_byte_is_refused_whole(small_bundle: bytes, edge: Replica) -> None:
    reasons = set()
    for cut in range(len(small_bundle)):
        reasons.add(rejected(edge, small_bundle[:cut]).reason)
    assert reasons <= {"magic", "truncated", "missing-records"}
    assert import_bundle(edge, io.BytesIO(small_bundle)).applied == 2


def test_a_flipped_byte_anywhere_is_refused_whole(small_bundle: bytes, edge: Replica) -> None:
    reasons = set()
    for index in range(len(small_bundle)):
        damaged = bytearray(small_bundle)
        damaged[index] ^= 0x01 if index % 2 else 0xFF
        reasons.add(rejected(edge, bytes(damaged)).reason)
    assert "hash-mismatch" in reasons
    assert "signature" in reasons or "malformed" in reasons
    assert import_bundle(edge, io.BytesIO(small_bundle)).applied == 2


def test_records_mixed_from_two_exports_are_refused(
    tmp_path: Path, region: Replica, edge: Replica
) -> None:
    for index in range(3):
        region.scope(REGION).policies.set(f"p{index}", index)
    export_bundle(region, tmp_path / "a", peer="edge-a1", peer_scope=EDGE)
    region.scope(REGION).policies.set("p3", 3)
    region.scope(EDGE).policies.set("q", 1)
    export_bundle(region, tmp_path / "b", peer="edge-a1", peer_scope=EDGE)
    a, b = (tmp_path / "a").read_bytes(), (tmp_path / "b").read_bytes()
    a_records, b_records = records_of(a), records_of(b)
    assert [kind for kind, _ in a_records[:2]] == [RecordKind.MANIFEST, RecordKind.TABLE]
    a_table, b_table = a_records[1][1], b_records[1][1]
    a_body, b_body = a_records[2][1], b_records[2][1]
    # One export's manifest over the other's table and records, both ways.
    assert rejected(edge, a[:a_table] + b[b_table:]).reason == "hash-mismatch"
    assert rejected(edge, b[:b_table] + a[a_table:]).reason == "hash-mismatch"
    # One export's manifest and table over the other's records, both ways.
    assert rejected(edge, a[:a_body] + b[b_body:]).reason in {"hash-mismatch", "extra-records"}
    assert rejected(edge, b[:b_body] + a[a_body:]).reason in {"hash-mismatch", "missing-records"}
    # The first records of one, the rest of the other, at every record boundary.
    for _, offset in a_records[3:]:
        spliced = a[:offset] + b[offset:]
        assert spliced != a
        rejected(edge, spliced)
    # A record dropped, or repeated.
    first, second = a_records[-2][1], a_records[-1][1]
    assert rejected(edge, a[:first] + a[second:]).reason in {"hash-mismatch", "missing-records"}
    assert rejected(edge, a + a[second:]).reason == "extra-records"
    assert import_bundle(edge, io.BytesIO(a)).applied == 3


def test_another_fleets_bundle_is_refused(tmp_path: Path, edge: Replica) -> None:
    other = make_fleet("other-fleet", seed=b"another fleet\x00")
    stranger = make_replica("region-a", fleet=other)
    stranger.scope(REGION).policies.set("p", 1)
    export_bundle(stranger, tmp_path / "b", peer="edge-a1", peer_scope=EDGE)
    error = rejected(edge, (tmp_path / "b").read_bytes())
    assert error.reason == "foreign-fleet"

    # Same fleet id, other roots: the exporter does not chain to our anchors.
    impostors = make_fleet(seed=b"impostor roots\x00")
    impostor = make_replica("region-a", fleet=impostors)
    impostor.scope(REGION).policies.set("p", 2)
    export_bundle(impostor, tmp_path / "c", peer="edge-a1", peer_scope=EDGE)
    assert rejected(edge, (tmp_path / "c").read_bytes()).reason == "untrusted"


def test_a_bundle_for_someone_else_is_refused(tmp_path: Path, region: Replica) -> None:
    region.scope(REGION).policies.set("p", 1)
    export_bundle(region, tmp_path / "b", peer="edge-a2", peer_scope=SIBLING)
    assert rejected(make_replica("edge-a1"), (tmp_path / "b").read_bytes()).reason == "wrong-peer"


def test_a_revoked_exporter_is_refused(tmp_path: Path, region: Replica, edge: Replica) -> None:
    region.scope(REGION).policies.set("p", 1)
    export_bundle(region, tmp_path / "b", peer="edge-a1", peer_scope=EDGE)
    revocation = issue_revocation(
        FLEET.quorum_keys,
        fleet_id=FLEET.fleet_id,
        revoked=FLEET["region-a"].public,
        cut={REGION: 0},
        hlc=Timestamp(NOW),
    )
    assert edge.add_revocations([revocation.encode()]) == 1
    assert rejected(edge, (tmp_path / "b").read_bytes()).reason == "revoked"


def test_framing_is_checked_before_allocation(small_bundle: bytes, edge: Replica) -> None:
    assert rejected(edge, b"NOTABNDL" + small_bundle[8:]).reason == "magic"
    assert rejected(edge, RECEIPT_MAGIC + small_bundle[8:]).reason == "magic"
    # A record announcing 4 GiB in a file of a few kilobytes: refused without reading it.
    huge = BUNDLE_MAGIC + (2**32 - 1).to_bytes(4, "big") + b"M"
    tracemalloc.start()
    try:
        assert rejected(edge, huge).reason == "too-large"
        assert tracemalloc.get_traced_memory()[1] < 1024 * 1024
    finally:
        tracemalloc.stop()
    # Within the limit but past the end of the file.
    short = BUNDLE_MAGIC + (1000).to_bytes(4, "big") + b"M" + bytes(10)
    assert rejected(edge, short).reason == "truncated"
    assert rejected(edge, BUNDLE_MAGIC + bytes(4)).reason == "malformed"
    unknown = BUNDLE_MAGIC + (1).to_bytes(4, "big") + b"Z"
    assert rejected(edge, unknown).reason == "malformed"
    with pytest.raises(BundleError) as caught:
        import_bundle(edge, io.BytesIO(small_bundle), max_record=64)
    assert caught.value.reason == "too-large"
    assert caught.value.record == 0


def test_a_bundle_changed_between_the_passes_stops_the_import(
    small_bundle: bytes, edge: Replica
) -> None:
    class Swapping(io.BytesIO):
        """Serves the sound bundle to the first pass and a damaged one to the second."""

        def __init__(self, first: bytes, second: bytes) -> None:
            super().__init__(first)
            self.second = second
            self.passes = 0

        def seek(self, offset: int, whence: int = 0) -> int:
            if whence == 0 and offset == 0:
                self.passes += 1
                if self.passes == 2:
                    self.__init__(self.second, b"")  # type: ignore[misc]
                    self.passes = 2
            return super().seek(offset, whence)

    damaged = bytearray(small_bundle)
    damaged[-1] ^= 0xFF
    with pytest.raises(BundleError) as caught:
        import_bundle(edge, Swapping(small_bundle, bytes(damaged)))
    assert caught.value.reason == "changed"


def test_receipts_are_verified(tmp_path: Path, region: Replica, edge: Replica) -> None:
    export_receipt(edge, tmp_path / "r", for_peer="region-a")
    data = (tmp_path / "r").read_bytes()
    for index in range(len(data)):
        damaged = bytearray(data)
        damaged[index] ^= 0xFF
        with pytest.raises(BundleError):
            read_receipt(region, io.BytesIO(bytes(damaged)))
    for cut in range(len(data)):
        with pytest.raises(BundleError):
            read_receipt(region, io.BytesIO(data[:cut]))
    with pytest.raises(BundleError) as caught:
        read_receipt(make_replica("region-b"), tmp_path / "r")
    assert caught.value.reason == "wrong-peer"
    with pytest.raises(BundleError) as caught:
        import_bundle(region, tmp_path / "r")
    assert caught.value.reason == "magic"
    assert read_receipt(region, tmp_path / "r").source == "edge-a1"


def test_a_receipt_from_another_peer_does_not_start_a_bundle(
    tmp_path: Path, region: Replica
) -> None:
    export_receipt(make_replica("edge-a2"), tmp_path / "r", for_peer="region-a")
    receipt = read_receipt(region, tmp_path / "r")
    with pytest.raises(BundleError) as caught:
        export_bundle(region, tmp_path / "b", peer="edge-a1", peer_frontiers=receipt)
    assert caught.value.reason == "wrong-peer"


def test_unseekable_streams_are_refused(small_bundle: bytes, edge: Replica) -> None:
    class Pipe(io.RawIOBase):
        def readable(self) -> bool:
            return True

        def seekable(self) -> bool:
            return False

    with pytest.raises(ValueError, match="seekable"):
        import_bundle(edge, Pipe())  # type: ignore[arg-type]


# --------------------------------------------------------------------------- large bundles

LARGE = 20_000
#: Makes each envelope about 600 bytes, like a node record with its labels.
NOTE = "rack 12, row C; firmware 4.2.1; labels: zone=a1, tier=edge, owner=ops " * 3


@pytest.fixture(scope="module")
def large(tmp_path_factory: pytest.TempPathFactory) -> tuple[Replica, Path, int]:
    """A region with 20,000 envelopes (about 12 MB of them) and their bundle for edge-a1.

    The export's own peak memory is measured here, while the bundle is written.
    """
    region = make_replica("region-a")
    handle = region.scope(REGION).nodes
    for index in range(LARGE):
        handle.set(
            f"node-{index % 64}", {"serial": f"SN-{index:08d}", "status": "up", "note": NOTE}
        )
    path = tmp_path_factory.mktemp("large") / "large.bundle"
    tracemalloc.start()
    try:
        info = export_bundle(region, path, peer="edge-a1", peer_scope=EDGE)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert info.envelopes == LARGE
    return region, path, peak


def measured(action: Callable[[], object]) -> int:
    tracemalloc.start()
    try:
        action()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_a_large_bundle_streams_with_bounded_memory(large: tuple[Replica, Path, int]) -> None:
    _, path, export_peak = large
    size = path.stat().st_size
    assert size > 10_000_000
    # The manifest holds 32 bytes per record; everything else is one record or one batch.
    assert export_peak < size / 5

    # The import's own memory, with the replica's ingest replaced by a counter: a replica
    # keeps what it ingests (its store, its documents), which is not the bundle layer's doing.
    # Both passes run: every record is read, hashed and checked twice.
    edge = make_replica("edge-a1")
    batches: list[int] = []

    def ingest_many(frames: Iterable[bytes], *, source: str | None = None) -> list[IngestResult]:
        items = list(frames)
        assert source == "region-a"
        batches.append(len(items))
        return [IngestResult(IngestOutcome.APPLIED) for _ in items]

    edge.ingest_many = ingest_many  # type: ignore[method-assign]
    results: list[Any] = []
    peak = measured(lambda: results.append(import_bundle(edge, path)))
    assert peak < size / 5
    assert sum(batches) == LARGE
    assert max(batches) == 100
    assert results[0].applied == LARGE


def test_a_bundle_of_thousands_imports_into_a_real_replica(
    large: tuple[Replica, Path, int], tmp_path: Path
) -> None:
    region, _, _ = large
    edge = make_replica("edge-a1")
    info = export_bundle(region, tmp_path / "part", peer="edge-a1", limit=2_000)
    result = import_bundle(edge, tmp_path / "part")
    assert (result.applied, result.rejected, result.pending) == (2_000, 0, 0)
    assert edge.chain_seq(REGION, region.chain) == 2_000
    assert not info.complete


@pytest.mark.slow
def test_a_large_bundle_imports_into_a_real_replica(large: tuple[Replica, Path, int]) -> None:
    region, path, _ = large
    edge = make_replica("edge-a1")
    result = import_bundle(edge, path)
    assert (result.applied, result.rejected, result.pending) == (LARGE, 0, 0)
    assert edge.digest() == region.digest()
    assert edge.chain_seq(REGION, region.chain) == LARGE


def test_the_importer_s_limits_bound_records_and_the_manifest(
    tmp_path: Path, region: Replica
) -> None:
    region.scope(EDGE).policies.set("big", "x" * 200_000)
    export_bundle(region, tmp_path / "big.bundle", peer="edge-a1", peer_scope=EDGE)
    data = (tmp_path / "big.bundle").read_bytes()
    member = FLEET["edge-a1"]

    def importer(**limits: int) -> Replica:
        return Replica(
            Identity(member.key, member.chain),
            FLEET.anchors,
            MemoryStore(),
            wall_clock=lambda: NOW,
            epoch=1,
            limits=DEFAULT_LIMITS.evolve(**limits),
        )

    small_records = importer(max_bundle_record=64 * 1024)
    error = rejected(small_records, data)
    assert error.reason == "too-large"
    assert error.record is not None
    assert error.record > 0  # an item record: the manifest was within its own budget
    small_manifest = importer(max_manifest=64)
    assert rejected(small_manifest, data).record == 0
    roomy = importer()
    import_bundle(roomy, io.BytesIO(data))
    assert roomy.get(EDGE, "policies", "big") == "x" * 200_000
