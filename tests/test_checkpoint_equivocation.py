"""A checkpoint that contradicts its chain is an equivocation, proven the same everywhere."""

from __future__ import annotations

import pytest

from souverix_crdt.checkpoint import open_checkpoint, seal_checkpoint
from souverix_crdt.document import ScopeState, WriteOp
from souverix_crdt.envelope import envelope_id, read_header
from souverix_crdt.errors import EquivocationError
from souverix_crdt.replica import IngestOutcome, Replica
from souverix_crdt.scope import Scope
from souverix_crdt.testing.cluster import Cluster
from souverix_crdt.testing.fleet import NOW, make_fleet

FLEET = make_fleet()
SCOPE = "global/region-a"


def forged_checkpoint(region: Replica, seq: int) -> bytes:
    """What a compromised zone signs: a checkpoint at ``seq`` whose state is not its chain's."""
    envelope = region.envelope_at(SCOPE, region.chain, seq)
    assert envelope is not None
    header = read_header(envelope)
    other = ScopeState(Scope.parse(SCOPE))
    for i in range(seq + 1):
        other.write(region.chain, header.hlc, [WriteOp("policies", f"k{i}", "forged")])
    document = other.document(region.chain)
    return seal_checkpoint(
        region.identity.signing_key,
        fleet_id=region.fleet_id,
        scope=SCOPE,
        epoch=region.epoch,
        seq=seq,
        prev=header.prev,
        last_id=envelope_id(envelope),  # the right envelope: only the state is forged
        hlc=header.hlc,
        state_vector=document.state_vector(),
        state=document.encode_state(),
        delegation_digest=header.delegation,
    )


def zone_with_three_writes() -> Cluster:
    cluster = Cluster(FLEET, ["region-a", "global", "edge-a1"])
    region = cluster["region-a"]
    for i in range(3):
        region.scope(SCOPE).policies.set(f"k{i}", i)
    cluster.link("region-a", "global")
    cluster.settle()
    return cluster


def test_a_contradicting_checkpoint_gives_one_proof_and_one_state_everywhere() -> None:
    cluster = zone_with_three_writes()
    region, holder, fresh = cluster["region-a"], cluster["global"], cluster["edge-a1"]
    forged = forged_checkpoint(region, 3)
    # The replica that holds envelopes 1-3 sees the contradiction at once.
    result = holder.ingest_checkpoint(forged)
    assert result.outcome is IngestOutcome.EQUIVOCATION
    assert isinstance(result.error, EquivocationError)
    [proof] = holder.proofs()
    # A fresh replica knows nothing better and adopts it...
    fresh.add_delegations(holder.delegations())
    assert fresh.ingest_checkpoint(forged).outcome is IngestOutcome.APPLIED
    assert fresh.get(SCOPE, "policies", "k0") == "forged"
    # ...until the proof reaches it: then both drop seq 3 on, and converge.
    cluster.link("global", "edge-a1")
    cluster.settle()
    assert fresh.proofs() == [proof]
    assert fresh.chain_cut(SCOPE, region.chain) == holder.chain_cut(SCOPE, region.chain) == 3
    assert fresh.digest() == holder.digest()
    assert fresh.snapshot() == holder.snapshot()
    assert fresh.get(SCOPE, "policies", "k1") == 1
    assert fresh.get(SCOPE, "policies", "k2") is None
    restarted = cluster.restart("edge-a1")
    assert restarted.proofs() == [proof]
    assert restarted.digest() == holder.digest()


def test_a_fresh_replica_finds_the_same_proof_from_the_envelope() -> None:
    cluster = zone_with_three_writes()
    region, holder, fresh = cluster["region-a"], cluster["global"], cluster["edge-a1"]
    forged = forged_checkpoint(region, 3)
    holder.ingest_checkpoint(forged)
    fresh.add_delegations(holder.delegations())
    fresh.ingest_checkpoint(forged)
    envelope = region.envelope_at(SCOPE, region.chain, 3)
    assert envelope is not None
    assert fresh.ingest(envelope).outcome is IngestOutcome.EQUIVOCATION
    assert fresh.proofs() == holder.proofs()


def test_a_proof_from_a_checkpoint_travels_and_is_checked() -> None:
    cluster = zone_with_three_writes()
    region, holder, fresh = cluster["region-a"], cluster["global"], cluster["edge-a1"]
    holder.ingest_checkpoint(forged_checkpoint(region, 3))
    [(first, second)] = holder.proofs()
    fresh.add_delegations(holder.delegations())
    assert fresh.add_proof(first, second)
    assert fresh.proofs() == holder.proofs()
    # The honest checkpoint and its own envelope prove nothing.
    honest = region.checkpoint(SCOPE)
    envelope = holder.envelope_at(SCOPE, region.chain, 3)
    assert honest is not None
    assert envelope is not None
    with pytest.raises(EquivocationError):
        cluster["edge-a1"].add_proof(honest, envelope)
    verified = open_checkpoint(honest, holder.authority, physical_now=NOW, max_offset=1 << 40)
    assert verified.header.seq == 3


def test_an_honest_checkpoint_over_held_envelopes_is_a_duplicate() -> None:
    cluster = zone_with_three_writes()
    region, holder = cluster["region-a"], cluster["global"]
    honest = region.checkpoint(SCOPE)
    assert honest is not None
    assert holder.ingest_checkpoint(honest).outcome is IngestOutcome.DUPLICATE
    assert holder.proofs() == []
