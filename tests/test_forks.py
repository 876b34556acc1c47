"""Sync finds forks: a key that signs two branches at one sequence number is caught everywhere.

edge-a1's key is stolen. The thief holds a twin replica with the same key and chain (same epoch)
and, after a common prefix, both sign different envelopes for the same sequence numbers. Each
branch reaches a different replica first. Sync must bring the branches together so that every
replica records the same proof, names the same equivocator, ends with the same digest, and the
federation settles in a bounded number of rounds — under loss, duplication, reordering and delay.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from souverix_crdt.authority import cut_key, issue_revocation
from souverix_crdt.hlc import Timestamp
from souverix_crdt.replica import Identity, Replica
from souverix_crdt.store.memory import MemoryStore
from souverix_crdt.sync.messages import Ack, FrontierRow, decode_message, encode_message
from souverix_crdt.sync.session import SyncSession
from souverix_crdt.testing.cluster import Cluster
from souverix_crdt.testing.fleet import NOW, make_fleet

FLEET = make_fleet()
ZONE = "global/region-a/edge-a1"
NAMES = ("global", "region-a", "edge-a1")
#: Ticks the federation may take to settle after the fork is delivered (the asserted bound).
SETTLE_BOUND = 60


def twin_of(cluster: Cluster, name: str) -> Replica:
    """A second replica signing with ``name``'s key under the same chain: a thief's copy."""
    original = cluster[name]
    member = FLEET[name]
    return Replica(
        Identity(member.key, member.chain),
        FLEET.anchors,
        MemoryStore(),
        name=f"{name}-twin",
        wall_clock=cluster.wall_clock,
        epoch=original.epoch,
    )


def envelopes_of(replica: Replica, after: int) -> list[bytes]:
    return replica.envelopes_after(ZONE, replica.chain, after, 1_000)


def forked_cluster(
    seed: int,
    *,
    common: int,
    branch: int,
    branches: int = 2,
    own_extra: int = 0,
    drop: float = 0.0,
    duplicate: float = 0.0,
    reorder: float = 0.0,
    delay: int = 0,
) -> tuple[Cluster, list[Replica]]:
    cluster = Cluster(FLEET, NAMES, seed=seed)
    cluster.link("global", "region-a")
    cluster.link("region-a", "edge-a1")
    edge = cluster["edge-a1"]
    for i in range(common):
        edge.scope(ZONE).policies.set("common", i)
    cluster.settle()
    # The branches are made while region-a and edge-a1 are cut apart, so no live push shows
    # one side the other's branch: only the sync after the heal can find the fork.
    cluster.partition("region-a", "edge-a1")
    twins = [twin_of(cluster, "edge-a1") for _ in range(branches - 1)]
    for number, twin in enumerate(twins):
        twin.ingest_many(envelopes_of(edge, 0))
        assert twin.chain_seq(ZONE, edge.chain) == common
        for i in range(branch):
            twin.scope(ZONE).policies.set("window", f"twin{number}-{i}")
    # Branch A (the zone's own) goes on being written where it lives; each twin's branch is
    # handed to region-a first, as a thief next to the region would.
    for i in range(branch + own_extra):
        edge.scope(ZONE).policies.set("window", f"own-{i}")
    for twin in twins:
        cluster["region-a"].ingest_many(envelopes_of(twin, common))
    cluster.pump()
    cluster.network.set_faults(drop=drop, duplicate=duplicate, reorder=reorder, delay=(0, delay))
    cluster.heal("region-a", "edge-a1")
    # A new session (a reconnect): each side knows the other only from its frontiers.
    cluster.relink("region-a", "edge-a1")
    return cluster, twins


def assert_one_truth(cluster: Cluster, fork_seq: int) -> None:
    chain = cluster["edge-a1"].chain
    proofs = {name: sorted(cluster[name].proofs()) for name in NAMES}
    assert all(proofs[name] == proofs["global"] for name in NAMES), "different proofs"
    assert proofs["global"], "no replica holds a proof"
    equivocators = {name: cluster[name].status().equivocators for name in NAMES}
    assert all(e == {f"{ZONE}|{chain}": fork_seq} for e in equivocators.values()), equivocators
    digests = cluster.digests()
    assert len(set(digests.values())) == 1, digests


def test_two_branches_delivered_to_different_replicas_give_one_proof_everywhere() -> None:
    cluster, _ = forked_cluster(0, common=1, branch=2)
    ticks = cluster.settle(max_ticks=SETTLE_BOUND)
    assert_one_truth(cluster, fork_seq=2)
    # What the chain wrote from the fork on counts nowhere; the common prefix still does.
    for name in NAMES:
        assert cluster[name].get(ZONE, "policies", "common") == 0
        assert cluster[name].get(ZONE, "policies", "window") is None
    assert ticks < SETTLE_BOUND


def test_branches_of_one_length_are_told_apart_by_their_last_ids() -> None:
    # Both sides at one seq: only the last envelope ids in the frontiers differ.
    cluster, _ = forked_cluster(4, common=2, branch=2)
    cluster.settle(max_ticks=SETTLE_BOUND)
    assert_one_truth(cluster, fork_seq=3)


def test_a_deep_fork_is_walked_back_to_where_the_branches_part() -> None:
    # The zone's own branch is longer: region-a sees a seq it lacks whose prev is not its own.
    cluster, _ = forked_cluster(1, common=3, branch=4, own_extra=2)
    cluster.settle(max_ticks=SETTLE_BOUND)
    assert_one_truth(cluster, fork_seq=4)


def test_three_branches() -> None:
    cluster, _ = forked_cluster(2, common=2, branch=3, branches=3)
    cluster.settle(max_ticks=SETTLE_BOUND)
    assert_one_truth(cluster, fork_seq=3)


def test_a_refused_fork_is_not_resent_for_ever() -> None:
    cluster, _ = forked_cluster(3, common=1, branch=3)
    cluster.settle(max_ticks=SETTLE_BOUND)
    sent = {
        key: link.a_session.envelopes_sent + link.b_session.envelopes_sent
        for key, link in cluster.links.items()
    }
    # Once settled, more ticks move no envelope: nothing refused is offered again.
    for _ in range(5):
        cluster.tick()
        cluster.pump()
    after = {
        key: link.a_session.envelopes_sent + link.b_session.envelopes_sent
        for key, link in cluster.links.items()
    }
    assert after == sent


@settings(deadline=None)
@given(
    seed=st.integers(0, 2**16),
    common=st.integers(1, 3),
    branch=st.integers(1, 3),
    branches=st.integers(2, 3),
    own_extra=st.integers(0, 2),
    drop=st.sampled_from([0.0, 0.1, 0.3]),
    duplicate=st.sampled_from([0.0, 0.2, 0.5]),
    reorder=st.sampled_from([0.0, 0.3]),
    delay=st.integers(0, 3),
)
def test_forks_are_found_under_faults(
    seed: int,
    common: int,
    branch: int,
    branches: int,
    own_extra: int,
    drop: float,
    duplicate: float,
    reorder: float,
    delay: int,
) -> None:
    cluster, _ = forked_cluster(
        seed,
        common=common,
        branch=branch,
        branches=branches,
        own_extra=own_extra,
        drop=drop,
        duplicate=duplicate,
        reorder=reorder,
        delay=delay,
    )
    ticks = cluster.settle(max_ticks=SETTLE_BOUND)
    assert ticks < SETTLE_BOUND
    assert_one_truth(cluster, fork_seq=common + 1)


def test_envelopes_refused_for_good_are_not_offered_again() -> None:
    # region-a holds three envelopes of edge-a1; global holds a revocation of edge-a1 cut at 1
    # that region-a learns only through the session. What region-a holds past the cut, global
    # refuses for good: after one refusal it is never offered again on that session.
    cluster = Cluster(FLEET, ["global", "region-a", "edge-a1"])
    edge = cluster["edge-a1"]
    for i in range(3):
        edge.scope(ZONE).policies.set("k", i)
    region, top = cluster["region-a"], cluster["global"]
    region.ingest_many(envelopes_of(edge, 0))
    top.add_delegations(d.encode() for d in FLEET["edge-a1"].chain)
    revocation = issue_revocation(
        FLEET["region-a"].key,
        fleet_id=FLEET.anchors.fleet_id,
        revoked=FLEET["edge-a1"].public,
        cut={cut_key(ZONE, edge.epoch): 1},
        hlc=Timestamp(NOW),
    )
    assert top.add_revocations([revocation.encode()]) == 1
    link = cluster.link("global", "region-a")
    cluster.settle(max_ticks=SETTLE_BOUND)
    assert top.get(ZONE, "policies", "k") == 0
    assert region.get(ZONE, "policies", "k") == 0
    sent = link.b_session.envelopes_sent
    for _ in range(5):
        cluster.tick()
        cluster.pump()
    assert link.b_session.envelopes_sent == sent
    assert top.status().refused["revoked"]["count"] == 2


# --------------------------------------------------------------------------- authority at once


def test_a_revocation_reaches_every_open_session_without_a_tick() -> None:
    cluster = Cluster(FLEET, NAMES)
    upper = cluster.link("global", "region-a")
    cluster.link("region-a", "edge-a1")
    edge = cluster["edge-a1"]
    edge.scope(ZONE).policies.set("k", "before")
    cluster.settle()
    seen: dict[str, list[object]] = {name: [] for name in ("global", "region-a")}
    for name, values in seen.items():
        cluster[name].on_change(
            lambda changes, values=values: values.extend(
                cluster["global"].get(ZONE, "policies", "k") for _ in changes
            )
        )
    revocation = issue_revocation(
        FLEET["region-a"].key,
        fleet_id=FLEET.anchors.fleet_id,
        revoked=FLEET["edge-a1"].public,
        cut={cut_key(ZONE, edge.epoch): 1},
        hlc=Timestamp(NOW),
    )
    # region-a revokes edge-a1 while edge-a1, not knowing yet, writes on: the write and the
    # revocation race over the open sessions. Frames move; no session ticks.
    assert cluster["region-a"].add_revocations([revocation.encode()]) == 1
    edge.scope(ZONE).policies.set("k", "after the cut")
    cluster.pump()
    for name in NAMES:
        assert [r.digest for r in cluster[name].authority.revocations()] == [revocation.digest]
    # And both sides of the open link know the other holds it: caught up, still without a tick.
    assert upper.a_session.caught_up
    assert upper.b_session.caught_up
    assert cluster["global"].get(ZONE, "policies", "k") == "before"
    assert cluster["region-a"].get(ZONE, "policies", "k") == "before"
    # Not even for a moment did a replica above the zone show the post-cut value.
    assert all("after the cut" not in values for values in seen.values()), seen
    # The zone learned its revocation before its session closed, and counts its own post-cut
    # write as refused, like everyone else would.
    assert edge.get(ZONE, "policies", "k") == "before"
    assert edge.status().refused["revoked"]["count"] == 1


def test_a_session_is_not_caught_up_while_the_peer_lacks_shared_authority() -> None:
    cluster = Cluster(FLEET, ["global", "region-a"])
    link = cluster.link("global", "region-a")
    cluster.settle()
    cluster.partition("global", "region-a")
    top = cluster["global"]
    top.add_delegations(d.encode() for d in FLEET["edge-a1"].chain)  # region-a's business too
    cluster.pump()
    # The push was lost: global may not call the session caught up while region-a lacks it.
    assert not link.a_session.caught_up
    cluster.heal("global", "region-a")
    cluster.settle()
    assert link.a_session.caught_up
    assert FLEET["edge-a1"].delegation.encode() in cluster["region-a"].delegations()


def test_a_peer_s_lasting_refusal_stops_that_chain_on_the_session() -> None:
    # The peer says it refused seq 2 of region-a's chain for good (its own limits, say): the
    # session never offers seq 2 or later of that chain again, however often it ticks.
    cluster = Cluster(FLEET, ["global", "region-a"])
    region = cluster["region-a"]
    for i in range(3):
        region.scope("global/region-a").policies.set("k", i)
    sender, receiver = SyncSession(region), SyncSession(cluster["global"])
    sender.start()
    receiver.start()
    for _ in range(20):
        for frame in sender.data_to_send():
            receiver.receive(frame)
        for frame in receiver.data_to_send():
            message = decode_message(frame)
            if isinstance(message, Ack) and message.frontiers:
                row = message.frontiers[0]
                held = FrontierRow(row.scope, row.writer, 1, b"")
                refused = FrontierRow(row.scope, row.writer, 2, b"")
                frame = encode_message(Ack((held,), (refused,)))  # noqa: PLW2901
            sender.receive(frame)
        sender.tick()
        assert sender.envelopes_sent <= 3
    assert sender.envelopes_sent == 3  # sent once; 2 and 3 never again
    assert not sender._lacking()


def test_what_an_equivocation_cut_is_not_offered_to_a_newcomer() -> None:
    cluster, _ = forked_cluster(5, common=2, branch=3)
    cluster.settle(max_ticks=SETTLE_BOUND)
    assert_one_truth(cluster, fork_seq=3)
    # global starts again from nothing: region-a offers it the chain up to the cut, no further.
    cluster.restart("global", store=MemoryStore())
    cluster.settle(max_ticks=SETTLE_BOUND)
    link = cluster.links[("global", "region-a")]
    assert link.a_session.envelopes_received == 2
    assert cluster.digests()["global"] == cluster.digests()["region-a"]


def test_an_envelope_set_aside_for_now_is_offered_again_after_a_tick_not_at_once() -> None:
    cluster = Cluster(FLEET, ["global", "region-a"])
    region = cluster["region-a"]
    region.scope("global/region-a").policies.set("k", 1)
    sender, receiver = SyncSession(region), SyncSession(cluster["global"])
    sender.start()
    receiver.start()

    def exchange(defer: bool) -> None:
        for _ in range(20):
            for frame in sender.data_to_send():
                receiver.receive(frame)
            for frame in receiver.data_to_send():
                message = decode_message(frame)
                if defer and isinstance(message, Ack) and message.frontiers:
                    row = message.frontiers[0]
                    behind = FrontierRow(row.scope, row.writer, 0, b"")
                    frame = encode_message(Ack((behind,), (), (row,)))  # noqa: PLW2901
                sender.receive(frame)

    exchange(defer=True)
    assert sender.envelopes_sent == 1  # set aside by the peer: not resent in a loop
    sender.tick()
    exchange(defer=False)
    assert sender.envelopes_sent == 2  # after the tick, once more; now it is taken
    assert cluster["global"].get("global/region-a", "policies", "k") == 1
