"""Writer checkpoints: signed snapshots that start new replicas and let the log be compacted."""

from __future__ import annotations

import attrs
import pytest

import souverix_crdt.document as document
from souverix_crdt.authority import cut_key, issue_revocation
from souverix_crdt.checkpoint import open_checkpoint, seal_checkpoint
from souverix_crdt.codec import decode, encode
from souverix_crdt.document import ScopeState, WriteOp
from souverix_crdt.errors import MalformedEnvelopeError, SignatureError
from souverix_crdt.hlc import Timestamp
from souverix_crdt.lww import Register
from souverix_crdt.replica import IngestOutcome, Replica
from souverix_crdt.scope import Scope
from souverix_crdt.store.base import Batch
from souverix_crdt.sync.messages import Checkpoint, Envelopes, decode_message
from souverix_crdt.testing.cluster import Cluster
from souverix_crdt.testing.fleet import NOW, make_fleet

FLEET = make_fleet()
SCOPE = "global/region-a"


def writer_with_history(count: int = 50) -> Cluster:
    cluster = Cluster(FLEET, ["region-a", "global", "edge-a1"])
    policies = cluster["region-a"].scope(SCOPE).policies
    for i in range(count):
        policies.set(f"k{i % 7}", i)
    return cluster


def test_checkpoint_compacts_the_log_and_starts_a_new_replica() -> None:
    cluster = writer_with_history()
    region = cluster["region-a"]
    checkpoint = region.checkpoint(SCOPE)
    assert checkpoint is not None
    assert cluster.stores["region-a"].envelopes_after(SCOPE, region.chain, 0, 100) == []
    for i in range(5):
        region.scope(SCOPE).policies.set("after", i)
    link = cluster.link("region-a", "global")
    kinds: list[str] = []
    for _ in range(100):
        for session, end in link.sessions():
            for frame in session.data_to_send():
                message = decode_message(frame)
                if isinstance(message, Checkpoint | Envelopes):
                    kinds.append(type(message).__name__)
                end.send_nowait(frame)
        cluster.network.step()
        if not cluster.deliver() and not cluster.network.totals.in_flight:
            break
    assert kinds == ["Checkpoint", "Envelopes"]
    assert cluster["global"].snapshot() == region.snapshot()
    assert cluster["global"].chain_seq(SCOPE, region.chain) == 55
    # The receiver keeps the checkpoint and serves it onwards, as a relay would.
    cluster.link("global", "edge-a1")
    cluster.settle()
    assert cluster["edge-a1"].snapshot() == region.snapshot()


def test_history_survives_a_restart_from_checkpoint_and_tail() -> None:
    cluster = writer_with_history()
    region = cluster["region-a"]
    region.checkpoint(SCOPE)
    region.scope(SCOPE).policies.set("tail", True)
    digest = region.digest()
    assert cluster.restart("region-a").digest() == digest


def test_checkpoint_and_envelope_signatures_never_cross() -> None:
    cluster = writer_with_history(3)
    region, other = cluster["region-a"], cluster["global"]
    other.add_delegations(region.delegations())
    checkpoint = region.checkpoint(SCOPE)
    assert checkpoint is not None
    result = other.ingest(checkpoint)
    assert result.outcome is IngestOutcome.REJECTED
    assert isinstance(result.error, SignatureError)
    region.scope(SCOPE).policies.set("x", 1)
    [envelope] = region.envelopes_after(SCOPE, region.chain, 3, 10)
    with pytest.raises((SignatureError, MalformedEnvelopeError)):
        open_checkpoint(envelope, other.authority, physical_now=NOW, max_offset=500)


def test_tampered_checkpoint_is_rejected_and_changes_nothing() -> None:
    cluster = writer_with_history(10)
    region, other = cluster["region-a"], cluster["global"]
    other.add_delegations(region.delegations())
    checkpoint = region.checkpoint(SCOPE)
    assert checkpoint is not None
    before = other.digest()
    for offset in range(0, len(checkpoint), max(1, len(checkpoint) // 200)):
        tampered = bytearray(checkpoint)
        tampered[offset] ^= 0x01
        assert other.ingest_checkpoint(bytes(tampered)).outcome is IngestOutcome.REJECTED
    assert other.digest() == before
    assert other.ingest_checkpoint(checkpoint).outcome is IngestOutcome.APPLIED
    assert other.ingest_checkpoint(checkpoint).outcome is IngestOutcome.DUPLICATE


# ------------------------------------------------------- the verdict kept with a checkpoint

EDGE = "global/region-a/edge-a1"


def hostile_checkpoint() -> tuple[bytes, str]:
    """A checkpoint, properly signed by edge-a1, whose state holds entries that must not count.

    A valid register, one dated after the checkpoint, one that is not a register at all, and
    one under a key region-a writes too (so reopening needs full tracking for it).
    """

    member = FLEET["edge-a1"]
    chain = f"{member.key_id}~0"
    forger = ScopeState(Scope.parse(EDGE))
    forger.write(chain, Timestamp(NOW), [WriteOp("policies", "fine", 1)])
    forger.write(chain, Timestamp(NOW), [WriteOp("policies", "shared", "edge")])
    forger.write(chain, Timestamp(NOW + 10**9), [WriteOp("policies", "future", "forever")])
    document = forger.document(chain)
    document.write([("policies", "junk", b"\xc1 not msgpack")])
    checkpoint = seal_checkpoint(
        member.key,
        fleet_id=member.fleet_id,
        scope=EDGE,
        epoch=0,
        seq=4,
        prev=b"\x01" * 32,
        last_id=b"\x02" * 32,
        hlc=Timestamp(NOW + 1),
        state_vector=document.state_vector(),
        state=document.encode_state(),
        delegation_digest=member.digest,
    )
    return checkpoint, chain


def region_with_hostile_checkpoint() -> tuple[Cluster, str]:
    cluster = Cluster(FLEET, ["region-a"])
    region = cluster["region-a"]
    region.add_delegations([d.encode() for d in FLEET["edge-a1"].chain])
    region.scope(EDGE).policies.set("shared", "region")
    checkpoint, chain = hostile_checkpoint()
    assert region.ingest_checkpoint(checkpoint).outcome is IngestOutcome.APPLIED
    return cluster, chain


def visible(replica: object) -> dict[str, object]:
    return dict(replica.scope(EDGE).policies.items())  # type: ignore[attr-defined]


def test_entries_of_a_checkpoint_that_are_not_registers_never_count() -> None:
    cluster, _ = region_with_hostile_checkpoint()
    region = cluster["region-a"]
    assert visible(region) == {"fine": 1, "shared": "region"}
    assert region.fleet.scope(EDGE).invalid_entries == 2


def test_reopening_keeps_the_verdict_and_judges_no_entry_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cluster, chain = region_with_hostile_checkpoint()
    region = cluster["region-a"]
    region.checkpoint(EDGE)  # region-a's own document gets a checkpoint (and a verdict) too
    digest, before = region.digest(), visible(region)
    stored = cluster.stores["region-a"].meta(f"verdict:{EDGE}|{chain}")
    assert stored is not None
    assert decode(stored) == [4, [["policies", "future"], ["policies", "junk"]]]

    def judged(data: bytes) -> tuple[int, int]:
        raise AssertionError("an entry was judged again on reopening")

    monkeypatch.setattr(document, "register_stamp", judged)
    reopened = cluster.restart("region-a")
    assert reopened.digest() == digest
    assert visible(reopened) == before
    # The key two writers hold is tracked in full again: its conflict is still resolved.
    assert reopened.scope(EDGE).policies["shared"] == "region"


@pytest.mark.parametrize("damage", ["missing", "other-seq", "garbage"])
def test_without_a_usable_verdict_reopening_judges_every_entry(damage: str) -> None:
    cluster, chain = region_with_hostile_checkpoint()
    region = cluster["region-a"]
    digest, before = region.digest(), visible(region)
    store = cluster.stores["region-a"]
    key = f"verdict:{EDGE}|{chain}"
    replacement = {"missing": None, "other-seq": encode([3, []]), "garbage": b"\xc1"}[damage]
    if replacement is None:
        store._meta.pop(key)  # type: ignore[attr-defined]
    else:
        store.commit(Batch(meta={key: replacement}))
    reopened = cluster.restart("region-a")
    assert reopened.digest() == digest
    assert visible(reopened) == before


def _history(replica: Replica, key: str = "k") -> list[tuple[str, Timestamp]]:
    return [(r.writer, r.hlc) for r in replica.fleet.scope(SCOPE).history("policies", key)]


def test_conflicts_and_history_settled_before_a_checkpoint_survive_it() -> None:
    cluster = Cluster(FLEET, ["region-a", "global", "edge-a1"])
    region, top = cluster["region-a"], cluster["global"]
    region.scope(SCOPE).policies.set("k", "x-1")  # blind: concurrent with y-1
    top.scope(SCOPE).policies.set("k", "y-1")
    cluster.link("region-a", "global")
    cluster.settle()
    region.scope(SCOPE).policies.set("k", "x-2")  # has seen y-1: no conflict with it
    cluster.settle()  # global replays region-a from its first envelope
    [record] = top.conflicts()
    assert {record.winner.writer, record.loser.writer} == {region.chain, top.chain}
    assert region.checkpoint(SCOPE) is not None
    assert cluster.stores["region-a"].envelopes_after(SCOPE, region.chain, 0, 100) == []
    cluster.link("region-a", "edge-a1")  # edge-a1 starts from region-a's checkpoint
    cluster.settle()
    fresh = cluster["edge-a1"]
    assert fresh.chain_seq(SCOPE, region.chain) == 2
    assert cluster.stores["edge-a1"].envelopes_after(SCOPE, region.chain, 0, 100) == []
    for replica in (region, fresh, cluster.restart("region-a"), cluster.restart("edge-a1")):
        assert replica.conflicts() == [record]
        assert _history(replica) == _history(top)
        assert replica.digest() == top.digest()
    assert len(_history(top)) == 3


def test_past_registers_a_checkpoint_carries_count_only_if_older_than_the_head() -> None:
    cluster = Cluster(FLEET, ["region-a", "global"])
    region = cluster["region-a"]
    region.scope(SCOPE).policies.set("k", "x-1")
    region.scope(SCOPE).policies.set("k", "x-2")
    region.scope(SCOPE).policies.set("later", True)  # the checkpoint's HLC is past k's head
    honest = region.checkpoint(SCOPE)
    assert honest is not None
    verified = open_checkpoint(
        honest, region.authority, physical_now=NOW, max_offset=region.clock.max_offset
    )
    [(collection, key, past)] = verified.history
    # A forged past register dated after the head (within the checkpoint's own HLC) would
    # show in history above the value the writer's envelopes actually left.
    forged = attrs.evolve(Register.decode(past, region.chain), hlc=verified.header.hlc)
    data = seal_checkpoint(
        region.identity.signing_key,
        fleet_id=region.fleet_id,
        scope=SCOPE,
        epoch=region.epoch,
        seq=verified.header.seq,
        prev=verified.header.prev,
        last_id=verified.last_id,
        hlc=verified.header.hlc,
        state_vector=verified.header.state_vector,
        state=verified.state,
        delegation_digest=verified.header.delegation,
        history=[(collection, key, past), (collection, key, forged.encode())],
    )
    top = cluster["global"]
    top.add_delegations(region.delegations())
    assert top.ingest_checkpoint(data).outcome is IngestOutcome.APPLIED
    assert [r.value for r in top.fleet.scope(SCOPE).history("policies", "k")] == ["x-2", "x-1"]


def test_a_revocation_cut_below_a_checkpoint_counts_the_same_everywhere() -> None:
    zone = "global/region-a/edge-a1"
    cluster = Cluster(FLEET, ["edge-a1", "global", "region-a"])
    edge, top, region = cluster["edge-a1"], cluster["global"], cluster["region-a"]
    for i in range(1, 5):
        edge.scope(zone).policies.set("p", f"write {i}")
    cluster.link("edge-a1", "global")
    cluster.settle()  # global keeps the envelopes
    assert edge.checkpoint(zone) is not None  # edge-a1 compacts its log
    cluster.link("edge-a1", "region-a")
    cluster.settle()  # region-a starts from the checkpoint
    assert cluster.stores["region-a"].envelopes_after(zone, edge.chain, 0, 10) == []
    cluster.link("global", "region-a")
    cluster.settle()  # each sees the other at seq 4
    revocation = issue_revocation(
        FLEET["region-a"].key,
        fleet_id=FLEET.anchors.fleet_id,
        revoked=edge.identity.key_id,
        cut={cut_key(zone, edge.epoch): 2},  # what was verifiably written before the leak
        hlc=Timestamp(NOW + 10),
    )
    for replica in (edge, top, region):
        replica.add_revocations([revocation.encode()])
    # region-a held only the checkpoint, past the cut: it counts nothing of the chain now, and
    # lists it at seq 0, so global, which kept the envelopes, sends 1-2 again.
    assert region.chain_seq(zone, edge.chain) == 0
    cluster.partition("edge-a1", "global")  # a revoked key holds no sessions
    cluster.partition("edge-a1", "region-a")
    cluster.tick()  # the next periodic frontiers exchange
    cluster.settle()
    assert region.get(zone, "policies", "p") == top.get(zone, "policies", "p") == "write 2"
    assert region.digest() == top.digest()
    # The revoked zone itself, handed the envelopes (a bundle), comes to the same.
    edge.ingest_many(top.envelopes_after(zone, edge.chain, 0, 10))
    assert edge.digest() == top.digest()
