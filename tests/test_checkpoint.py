"""Writer checkpoints: signed snapshots that start new replicas and let the log be compacted."""

from __future__ import annotations

import pytest

from souverix_crdt.checkpoint import open_checkpoint
from souverix_crdt.errors import MalformedEnvelopeError, SignatureError
from souverix_crdt.replica import IngestOutcome
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
