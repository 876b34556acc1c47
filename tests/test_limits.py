"""The one Limits value: documented defaults, validated overrides."""

from __future__ import annotations

import pytest

from souverix_crdt.errors import RemoteProtocolError, TooLargeError
from souverix_crdt.limits import DEFAULT_LIMITS, Limits
from souverix_crdt.replica import Identity, IngestOutcome, Replica
from souverix_crdt.store.memory import MemoryStore
from souverix_crdt.sync.messages import Envelopes, encode_message
from souverix_crdt.sync.session import SyncSession
from souverix_crdt.testing.fleet import NOW, make_fleet


def test_defaults_are_positive_and_named() -> None:
    names = Limits.field_names()
    assert "pending_bytes_per_source" in names
    assert "handshake_timeout" in names
    for name in names:
        assert getattr(DEFAULT_LIMITS, name) > 0


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_frame", 0),
        ("max_frame", -1),
        ("max_frame", 1.5),
        ("idle_timeout", 0),
        ("idle_timeout", "5s"),
    ],
)
def test_bad_overrides_are_refused(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=field):
        DEFAULT_LIMITS.evolve(**{field: value})  # type: ignore[arg-type]


def test_evolve_keeps_the_rest() -> None:
    tighter = DEFAULT_LIMITS.evolve(max_frame=1024)
    assert tighter.max_frame == 1024
    assert tighter.idle_timeout == DEFAULT_LIMITS.idle_timeout


def test_a_replica_decodes_what_it_receives_under_its_own_budgets() -> None:

    fleet = make_fleet()

    def replica(name: str, limits: Limits = DEFAULT_LIMITS) -> Replica:
        member = fleet[name]
        return Replica(
            Identity(member.key, member.chain),
            fleet.anchors,
            MemoryStore(),
            wall_clock=lambda: NOW,
            epoch=1,
            limits=limits,
        )

    edge = replica("edge-a1")
    edge.scope("global/region-a/edge-a1").policies.set("big", "x" * 10_000)
    [row] = edge.store.envelopes_after("global/region-a/edge-a1", edge.chain, 0, 1)
    strict = replica("region-a", DEFAULT_LIMITS.evolve(decode_objects=8))
    strict.add_delegations(d.encode() for d in fleet["edge-a1"].chain)
    [result] = strict.ingest_many([row.data])
    assert result.outcome is IngestOutcome.REJECTED
    assert isinstance(result.error, TooLargeError)
    assert result.error.reason == "decode_objects"
    roomy = replica("region-a")
    roomy.add_delegations(d.encode() for d in fleet["edge-a1"].chain)
    assert roomy.ingest_many([row.data])[0].outcome is IngestOutcome.APPLIED
    # And a session refuses frames past its replica's max_frame.
    session = SyncSession(replica("region-a", DEFAULT_LIMITS.evolve(max_frame=4096)))
    with pytest.raises(RemoteProtocolError):
        session.receive(encode_message(Envelopes((row.data,))))
