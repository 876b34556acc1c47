"""Acknowledgements belong to their sender: spoofed acks, receipts and manifests settle nothing.

A peer's frontiers settle this replica's sync debt towards it and decide where the next bundle
for it starts, and they only ever grow. So each attack here is a statement about someone else
(another plane's debt, a sibling's chain, chains that do not exist, more than exists), made
the way an attacker holding an ordinary fleet key would make it: a direct acknowledgement from
a registered peer, or a bundle or receipt re-signed with the attacker's own key after editing
the name in its body.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest

from souverix_crdt.codec import decode, encode, encode_canonical
from souverix_crdt.errors import BundleError
from souverix_crdt.replica import Identity, Replica
from souverix_crdt.store.base import Store
from souverix_crdt.store.memory import MemoryStore
from souverix_crdt.store.sqlite import SqliteStore
from souverix_crdt.testing.fleet import NOW, make_fleet
from souverix_crdt.transports.bundle import (
    BUNDLE_DOMAIN,
    BUNDLE_MAGIC,
    RECEIPT_DOMAIN,
    RECEIPT_MAGIC,
    RecordKind,
    export_bundle,
    export_receipt,
    import_bundle,
    import_receipt,
    read_receipt,
    read_records,
)

FLEET = make_fleet()
REGION_A = "global/region-a"
EDGE_A1 = "global/region-a/edge-a1"
EDGE_A2 = "global/region-a/edge-a2"
REGION_B = "global/region-b"
EDGE_B1 = "global/region-b/edge-b1"
FLOOD = 20_000


def make_replica(member: str, *, store: Store | None = None, name: str = "") -> Replica:
    """A replica holding ``member``'s key and chain (``name`` may claim to be someone else)."""
    identity = FLEET[member]
    return Replica(
        Identity(identity.key, identity.chain),
        FLEET.anchors,
        MemoryStore() if store is None else store,
        name=name or member,
        wall_clock=lambda: NOW,
        epoch=1,
    )


def resign(data: bytes, magic: bytes, domain: bytes, signer: str, **changes: Any) -> bytes:
    """Edit the signed body of a bundle's manifest (or a receipt) and sign it as ``signer``.

    What an attacker with one fleet key does: its signature is genuine, its chain verifies to
    the anchors; only the names and frontiers in the body are lies. The other records (and the
    manifest's table of them) are kept as they were, so they still match.
    """
    records = list(read_records(io.BytesIO(data), magic=magic))
    encoded, _ = decode(records[0].data)
    body = decode(encoded)
    assert set(changes) <= set(body)
    body.update(changes)
    encoded = encode_canonical(body)
    signed = encode([encoded, FLEET[signer].key.sign(domain + encoded)])
    out = bytearray(magic)
    out += (len(signed) + 1).to_bytes(4, "big") + bytes([records[0].kind.value]) + signed
    for record in records[1:]:
        out += (len(record.data) + 1).to_bytes(4, "big") + bytes([record.kind.value])
        out += record.data
    return bytes(out)


def rows_of(replica: Replica) -> list[list[Any]]:
    """Every chain ``replica`` holds, as frontier rows at the seq it holds."""
    return [[scope, chain, seq] for scope, chain, seq, _ in replica.frontiers()]


# --------------------------------------------------------------------------- acknowledgements


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    if request.param == "memory":
        return MemoryStore()
    return SqliteStore.open(tmp_path / "region-a.db")


def test_an_ack_flood_for_chains_that_do_not_exist_stores_no_row(store: Store) -> None:
    region = make_replica("region-a", store=store)
    region.register_peer("edge-a1", [EDGE_A1])
    region.scope(EDGE_A1).policies.set("window", "02:00")
    assert region.sync_debt("edge-a1").envelopes == 1
    # Chains in the peer's own scope, so only their existence is wrong.
    flood = [(EDGE_A1, f"{index:064x}~1", 1_000_000) for index in range(FLOOD)]
    result = region.acknowledge("edge-a1", flood)
    assert (result.accepted, result.refused) == (0, FLOOD)
    assert region.store.peer_frontiers("edge-a1") == {}
    assert region.sync_debt("edge-a1").envelopes == 1
    # Malformed rows are refused like the rest, never raised through.
    bad: list[Any] = [("not a scope!", "x", 1), (EDGE_A1, ["x"], 1), (EDGE_A1, region.chain, -1)]
    assert region.acknowledge("edge-a1", bad).refused == 3
    assert region.store.peer_frontiers("edge-a1") == {}
    region.close()


def test_a_peer_that_was_never_registered_gets_nothing_stored() -> None:
    region = make_replica("region-a")
    region.scope(REGION_A).policies.set("p", 1)
    result = region.acknowledge("stranger", [(REGION_A, region.chain, 1)])
    assert (result.accepted, result.refused) == (0, 1)
    assert region.store.peer_frontiers("stranger") == {}
    assert "stranger" not in region.store.peers()


def test_an_ack_for_a_siblings_chain_stores_and_settles_nothing() -> None:
    region = make_replica("region-a")
    region.register_peer("edge-a1", [EDGE_A1])
    region.register_peer("edge-a2", [EDGE_A2])
    region.scope(EDGE_A2).policies.set("sibling-only", 1)
    region.scope(EDGE_A1).policies.set("mine", 1)
    sibling = (EDGE_A2, region.chain, 1)
    before = (region.sync_debt("edge-a1"), region.sync_debt("edge-a2"))
    result = region.acknowledge("edge-a1", [sibling])
    assert (result.accepted, result.refused) == (0, 1)
    assert region.store.peer_frontiers("edge-a1") == {}
    assert (region.sync_debt("edge-a1"), region.sync_debt("edge-a2")) == before
    # Its own chain in the same acknowledgement is kept.
    assert region.acknowledge("edge-a1", [sibling, (EDGE_A1, region.chain, 1)]).accepted == 1
    assert region.store.peer_frontiers("edge-a1") == {(EDGE_A1, region.chain): 1}
    assert region.sync_debt("edge-a1").envelopes == 0
    assert region.sync_debt("edge-a2").envelopes == 1


def test_an_ack_beyond_what_exists_is_clamped(tmp_path: Path) -> None:
    region = make_replica("region-a")
    region.register_peer("edge-a1", [EDGE_A1])
    for index in range(3):
        region.scope(REGION_A).policies.set(f"p{index}", index)
    result = region.acknowledge("edge-a1", [(REGION_A, region.chain, 10**9)])
    assert (result.accepted, result.clamped, result.refused) == (1, 1, 0)
    assert region.store.peer_frontiers("edge-a1") == {(REGION_A, region.chain): 3}
    # What is written next still reaches the edge: the claim did not move past it.
    region.scope(REGION_A).policies.set("p3", 3)
    region.scope(REGION_A).policies.set("p4", 4)
    info = export_bundle(region, tmp_path / "b", peer="edge-a1", peer_scope=EDGE_A1)
    assert [(r.from_seq, r.to_seq) for r in info.ranges] == [(3, 5)]
    assert info.envelopes == 2


# --------------------------------------------------------------------------- receipts


@pytest.fixture
def region_b(tmp_path: Path) -> Replica:
    """region-b with five envelopes edge-b1 lacks: a bundle for it was written, never carried."""
    region = make_replica("region-b")
    region.register_peer("edge-b1", [EDGE_B1])
    for index in range(5):
        region.scope(REGION_B).policies.set(f"p{index}", index)
    export_bundle(region, tmp_path / "lost.bundle", peer="edge-b1", peer_scope=EDGE_B1)
    assert region.sync_debt("edge-b1").envelopes == 5
    return region


def test_a_receipt_naming_another_plane_settles_nothing(tmp_path: Path, region_b: Replica) -> None:
    # edge-a1 writes a genuine receipt for region-b, then renames it edge-b1's and claims
    # edge-b1 holds everything region-b has.
    export_receipt(make_replica("edge-a1"), tmp_path / "own.receipt", for_peer="region-b")
    forged = resign(
        (tmp_path / "own.receipt").read_bytes(),
        RECEIPT_MAGIC,
        RECEIPT_DOMAIN,
        "edge-a1",
        source="edge-b1",
        frontiers=rows_of(region_b),
    )
    with pytest.raises(BundleError) as caught:
        import_receipt(region_b, io.BytesIO(forged))
    assert caught.value.reason == "wrong-source"
    assert region_b.sync_debt("edge-b1").envelopes == 5
    assert region_b.store.peer_frontiers("edge-b1") == {}
    info = export_bundle(region_b, tmp_path / "next.bundle", peer="edge-b1")
    assert info.envelopes == 5
    edge = make_replica("edge-b1")
    import_bundle(edge, tmp_path / "next.bundle")
    assert edge.get(REGION_B, "policies", "p4") == 4


def test_a_receipt_in_the_signers_own_name_settles_only_its_own_debt(
    tmp_path: Path, region_b: Replica
) -> None:
    # The same claim, signed honestly as edge-a1's: it is edge-a1's word about edge-a1, and
    # region-b's chains are outside edge-a1's interest, so nothing is stored for it either.
    export_receipt(make_replica("edge-a1"), tmp_path / "own.receipt", for_peer="region-b")
    claim = resign(
        (tmp_path / "own.receipt").read_bytes(),
        RECEIPT_MAGIC,
        RECEIPT_DOMAIN,
        "edge-a1",
        frontiers=rows_of(region_b),
    )
    receipt = import_receipt(region_b, io.BytesIO(claim))
    assert receipt.source == "edge-a1"
    assert region_b.store.peer_frontiers("edge-a1") == {}
    assert region_b.store.peer_frontiers("edge-b1") == {}
    assert region_b.sync_debt("edge-b1").envelopes == 5


def test_a_receipt_from_the_right_plane_settles_its_own_debt_only(tmp_path: Path) -> None:
    region = make_replica("region-a")
    region.register_peer("edge-a1", [EDGE_A1])
    region.register_peer("edge-a2", [EDGE_A2])
    for index in range(3):
        region.scope(REGION_A).policies.set(f"p{index}", index)
    export_bundle(region, tmp_path / "a1.bundle", peer="edge-a1", peer_scope=EDGE_A1)
    export_bundle(region, tmp_path / "a2.bundle", peer="edge-a2", peer_scope=EDGE_A2)
    assert (region.sync_debt("edge-a1").envelopes, region.sync_debt("edge-a2").envelopes) == (3, 3)
    edge = make_replica("edge-a1")
    import_bundle(edge, tmp_path / "a1.bundle")
    edge.scope(EDGE_A1).policies.set("own", 1)  # a chain region-a does not hold
    receipt = export_receipt(edge, tmp_path / "a1.receipt", for_peer="region-a")
    assert len(receipt.frontiers) == 2
    import_receipt(region, tmp_path / "a1.receipt")
    assert region.sync_debt("edge-a1").envelopes == 0
    assert region.sync_debt("edge-a2").envelopes == 3
    # Only the chain region-a holds is recorded; edge-a1's own chain does not exist here.
    assert region.store.peer_frontiers("edge-a1") == {(REGION_A, region.chain): 3}
    assert region.store.peer_frontiers("edge-a2") == {}


def test_a_receipt_addressed_to_another_plane_is_refused(tmp_path: Path) -> None:
    export_receipt(make_replica("edge-b1"), tmp_path / "r", for_peer="region-b")
    # region-a's key, whatever name its replica goes by.
    impostor = make_replica("region-a", name="region-b")
    with pytest.raises(BundleError) as caught:
        read_receipt(impostor, tmp_path / "r")
    assert caught.value.reason == "wrong-peer"


# --------------------------------------------------------------------------- bundles


def test_a_manifest_naming_another_source_is_refused_before_import(tmp_path: Path) -> None:
    # edge-a1 owes region-a three envelopes. edge-a2 writes a bundle for edge-a1, renames it
    # region-a's and claims region-a already holds all of edge-a1's chains: imported, it would
    # clear edge-a1's debt to region-a and empty edge-a1's next bundle for it.
    edge = make_replica("edge-a1")
    edge.register_peer("region-a", [REGION_A])
    for index in range(3):
        edge.scope(EDGE_A1).policies.set(f"p{index}", index)
    sibling = make_replica("edge-a2")
    sibling.scope(EDGE_A2).policies.set("x", 1)
    export_bundle(sibling, tmp_path / "b", peer="edge-a1", peer_scope=EDGE_A1)
    forged = resign(
        (tmp_path / "b").read_bytes(),
        BUNDLE_MAGIC,
        BUNDLE_DOMAIN,
        "edge-a2",
        source="region-a",
        frontiers=rows_of(edge),
    )
    digest = edge.digest()
    with pytest.raises(BundleError) as caught:
        import_bundle(edge, io.BytesIO(forged))
    assert caught.value.reason == "wrong-source"
    assert edge.digest() == digest
    assert edge.sync_debt("region-a").envelopes == 3
    assert edge.store.peer_frontiers("region-a") == {}
    assert edge.store.meta("bundle:imported:region-a") is None
    info = export_bundle(edge, tmp_path / "up", peer="region-a", peer_scope=REGION_A)
    assert info.envelopes == 3


def test_a_replica_calling_itself_another_plane_cannot_import_its_bundle(
    tmp_path: Path, region_b: Replica
) -> None:
    impostor = make_replica("edge-a1", name="edge-b1")
    with pytest.raises(BundleError) as caught:
        import_bundle(impostor, tmp_path / "lost.bundle")
    assert caught.value.reason == "wrong-peer"
    assert impostor.get(REGION_B, "policies", "p0") is None


def test_the_signature_is_checked_before_the_body_is_trusted(tmp_path: Path) -> None:
    # A body changed after signing, in a field the schema would refuse: what refuses it is the
    # signature, checked on the signer's fields alone, before the body is decoded as a whole.
    region = make_replica("region-a")
    region.scope(REGION_A).policies.set("p", 1)
    export_bundle(region, tmp_path / "b", peer="edge-a1", peer_scope=EDGE_A1)
    data = (tmp_path / "b").read_bytes()
    records = list(read_records(io.BytesIO(data)))
    assert records[0].kind is RecordKind.MANIFEST
    encoded, signature = decode(records[0].data)
    body = decode(encoded)
    body["unsigned"] = b"x" * 1000
    signed = encode([encode_canonical(body), signature])
    damaged = BUNDLE_MAGIC + (len(signed) + 1).to_bytes(4, "big") + b"M" + signed
    damaged += data[records[1].offset :]
    with pytest.raises(BundleError) as caught:
        import_bundle(make_replica("edge-a1"), io.BytesIO(damaged))
    assert caught.value.reason == "signature"
