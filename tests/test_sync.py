"""The sync session: convergence over a faulty network, interest, batching, protocol errors."""

from __future__ import annotations

import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from souverix_crdt.codec import encode
from souverix_crdt.errors import RemoteProtocolError
from souverix_crdt.scope import Scope
from souverix_crdt.sync.handshake import sign_proof
from souverix_crdt.sync.messages import (
    NONCE_SIZE,
    PROTOCOL_VERSION,
    Envelopes,
    Frontiers,
    Hello,
    Proof,
    decode_message,
    encode_message,
)
from souverix_crdt.sync.session import SessionState, SyncSession
from souverix_crdt.testing.cluster import Cluster
from souverix_crdt.testing.fleet import make_fleet

FLEET = make_fleet()
FLEET_ID = FLEET.anchors.fleet_id
NONCE = b"\x05" * NONCE_SIZE
NAMES = ("global", "region-a", "region-b", "edge-a1", "edge-a2", "edge-b1", "edge-c")
TREE = (
    ("global", "region-a"),
    ("global", "region-b"),
    ("region-a", "edge-a1"),
    ("region-a", "edge-a2"),
    ("region-b", "edge-b1"),
    ("global", "edge-c"),
)


def federation(seed: int = 0, **kwargs: object) -> Cluster:
    cluster = Cluster(FLEET, NAMES, seed=seed, **kwargs)  # type: ignore[arg-type]
    for a, b in TREE:
        cluster.link(a, b)
    return cluster


def expected_view(cluster: Cluster, name: str) -> dict[str, object]:
    """What a replica must hold: the root's state, restricted to its subtree and ancestors."""
    home = cluster[name].identity.scope
    return {
        scope: values
        for scope, values in cluster["global"].snapshot().items()
        if Scope.parse(scope).is_related_to(home)
    }


def assert_converged(cluster: Cluster) -> None:
    for name in cluster.replicas:
        assert cluster[name].snapshot() == expected_view(cluster, name), name


def write_everywhere(cluster: Cluster, rounds: int, *, tag: str = "") -> None:
    for i in range(rounds):
        for name, replica in cluster.replicas.items():
            replica.scope(replica.identity.scope).nodes.set(f"{name}-{tag}{i}", i)


# --------------------------------------------------------------------------- convergence


@given(
    seed=st.integers(0, 2**16),
    drop=st.sampled_from([0.0, 0.1, 0.3]),
    duplicate=st.sampled_from([0.0, 0.2]),
    reorder=st.sampled_from([0.0, 0.3]),
)
@settings(deadline=None)
def test_federation_converges_under_loss_duplication_and_reordering(
    seed: int, drop: float, duplicate: float, reorder: float
) -> None:
    cluster = federation(seed)
    cluster.network.set_faults(drop=drop, duplicate=duplicate, reorder=reorder, delay=(0, 3))
    write_everywhere(cluster, 6)
    cluster.pump()
    write_everywhere(cluster, 6, tag="b")
    cluster.settle()
    assert_converged(cluster)
    root = cluster["global"].snapshot()
    assert sum(len(v["nodes"]) for v in root.values()) == 12 * len(NAMES)


def test_partition_and_heal() -> None:
    cluster = federation(7)
    write_everywhere(cluster, 3)
    cluster.settle()
    cluster.partition("global", "region-a")
    write_everywhere(cluster, 5, tag="cut")
    cluster.pump()
    # During the partition region-a's side and the rest diverge...
    assert "global/region-b" not in cluster["edge-a1"].snapshot()
    assert f"region-a-cut{4}" not in cluster["global"].snapshot()["global/region-a"]["nodes"]
    cluster.heal("global", "region-a")
    cluster.settle()
    assert_converged(cluster)
    assert "region-a-cut4" in cluster["global"].snapshot()["global/region-a"]["nodes"]


def test_a_zone_never_receives_a_sibling_zones_data() -> None:
    cluster = federation(1)
    write_everywhere(cluster, 2)
    cluster.settle()
    edge = cluster["edge-a1"].snapshot()
    assert set(edge) == {"global", "global/region-a", "global/region-a/edge-a1"}
    assert set(cluster["region-a"].snapshot()) == {
        "global",
        "global/region-a",
        "global/region-a/edge-a1",
        "global/region-a/edge-a2",
    }
    # Nor its envelopes or chains: the edge holds no chain of its sibling's scope.
    assert not [row for row in cluster["edge-a1"].frontiers() if "edge-a2" in row[0]]


def test_a_peer_cannot_widen_its_interest_by_asking() -> None:
    # There is nothing to ask with: interest is the verified grant's. edge-a1, with its own key,
    # completes a handshake and says it holds nothing; edge-a2's data still never comes.
    cluster = Cluster(FLEET, ["region-a", "edge-a1", "edge-a2"])
    cluster["edge-a2"].scope("global/region-a/edge-a2").nodes.set("secret", 1)
    region = cluster["region-a"]
    cluster.link("region-a", "edge-a2")
    cluster.settle()
    session = SyncSession(region)
    mine = encode_message(Hello(FLEET_ID, tuple(d.encode() for d in FLEET["edge-a1"].chain), NONCE))
    session.receive(mine)
    theirs = next(f for f in session.data_to_send() if isinstance(decode_message(f), Hello))
    session.receive(encode_message(Proof(sign_proof(FLEET["edge-a1"].key, FLEET_ID, mine, theirs))))
    session.receive(encode_message(Frontiers((), b"")))
    sent = [decode_message(f) for f in session.data_to_send()]
    envelopes = [m for m in sent if isinstance(m, Envelopes)]
    assert envelopes == []  # edge-a2's data is not for edge-a1


# --------------------------------------------------------------------------- batching


def test_catch_up_after_10000_writes_uses_bounded_batches() -> None:
    cluster = Cluster(FLEET, ["global", "region-a"], batch_size=100)
    root = cluster["global"]
    policies = root.scope("global").policies
    for i in range(10_000):
        policies.set(f"k{i % 2500}", i)
    link = cluster.link("global", "region-a")
    largest = 0
    frames = 0
    for _ in range(1000):
        for session, end in link.sessions():
            for frame in session.data_to_send():
                message = decode_message(frame)
                if isinstance(message, Envelopes):
                    largest = max(largest, len(message.items))
                    frames += 1
                end.send_nowait(frame)
        cluster.network.step()
        if not cluster.deliver() and not cluster.network.totals.in_flight:
            break
    assert cluster["region-a"].digest() == root.digest()
    assert largest == 100
    assert frames == 100  # exactly what was lacking: no envelope sent twice
    assert link.a_session.envelopes_sent == 10_000


# --------------------------------------------------------------------------- protocol errors


def opened_session() -> tuple[Cluster, SyncSession]:
    cluster = Cluster(FLEET, ["global", "region-a"])
    link = cluster.link("global", "region-a")
    cluster.settle()
    return cluster, link.a_session


def test_unknown_version_is_a_typed_error_and_closes_cleanly() -> None:
    _, session = opened_session()
    with pytest.raises(RemoteProtocolError) as info:
        session.receive(encode([PROTOCOL_VERSION + 1, "hello", {}]))
    assert info.value.reason == "version"
    assert session.state is SessionState.CLOSED
    [close] = [decode_message(f) for f in session.data_to_send()]
    assert "version" in close.reason  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "frame",
    [
        encode([PROTOCOL_VERSION, "gossip", {}]),  # unknown message type
        encode([PROTOCOL_VERSION, "ack", {"frontiers": "nope"}]),  # schema
        encode([PROTOCOL_VERSION, "ack", {"frontiers": [], "extra": 1}]),  # extra field
        b"\xc1garbage",  # not msgpack
    ],
)
def test_unknown_or_malformed_messages_leave_the_session_usable(frame: bytes) -> None:
    cluster, session = opened_session()
    with pytest.raises(RemoteProtocolError):
        session.receive(frame)
    assert session.state is SessionState.OPEN
    cluster["global"].scope("global").policies.set("after", 1)
    cluster.settle()
    assert cluster["region-a"].scope("global").policies["after"] == 1


def test_peer_of_another_fleet_is_refused() -> None:
    other = make_fleet("souverix-other")
    cluster = Cluster(FLEET, ["global"])
    session = SyncSession(cluster["global"])
    hello = Hello("souverix-other", tuple(d.encode() for d in other["global"].chain), NONCE)
    with pytest.raises(RemoteProtocolError) as info:
        session.receive(encode_message(hello))
    assert info.value.reason == "foreign-fleet"
    assert session.state is SessionState.CLOSED


def test_self_signed_peer_is_refused() -> None:
    impostor = make_fleet(seed=b"impostor")  # same fleet id, different roots
    cluster = Cluster(FLEET, ["global"])
    session = SyncSession(cluster["global"])
    hello = Hello(FLEET_ID, tuple(d.encode() for d in impostor["global"].chain), NONCE)
    with pytest.raises(RemoteProtocolError) as info:
        session.receive(encode_message(hello))
    assert info.value.reason == "identity"
    assert session.state is SessionState.CLOSED


def test_sync_debt_grows_while_cut_off_and_settles_after_heal() -> None:
    cluster = Cluster(FLEET, ["global", "region-a"])
    cluster.link("global", "region-a")
    cluster.settle()
    region = cluster["region-a"]
    assert region.sync_debt("global").envelopes == 0
    cluster.partition("global", "region-a")
    for i in range(5):
        region.scope("global/region-a").nodes.set(f"n{i}", i)
        cluster.advance(1_000)
    cluster.pump()
    debt = region.sync_debt("global")
    assert debt.envelopes == 5
    assert debt.bytes > 0
    assert debt.oldest_age_ms == 5_000
    assert region.status().sync_debt["global"] == debt
    cluster.heal("global", "region-a")
    cluster.settle()
    assert region.sync_debt("global").envelopes == 0
    assert region.sync_debt("global").oldest_age_ms == 0


def test_a_relay_sends_each_envelope_once_to_a_peer_that_lacks_the_writers_delegation() -> None:
    # Both hellos between global and region-a cross before region-a hears from its edge, so
    # global does not know the edge's delegation when the edge's envelopes arrive through
    # region-a. The relay sends it the delegations it learned ahead of them: nothing is parked,
    # nothing is sent twice, and nothing global received from region-a is pushed back.
    cluster = Cluster(FLEET, ["global", "region-a", "edge-a1"])
    up = cluster.link("global", "region-a")
    down = cluster.link("region-a", "edge-a1")
    cluster.settle()
    edge = cluster["edge-a1"]
    for i in range(3):
        edge.scope("global/region-a/edge-a1").nodes.set(f"n{i}", i)
    cluster.settle()
    assert cluster["global"].snapshot()["global/region-a/edge-a1"]["nodes"] == {
        "n0": 0,
        "n1": 1,
        "n2": 2,
    }
    assert down.b_session.envelopes_sent == 3  # edge -> region
    assert up.b_session.envelopes_sent == 3  # region -> global, once each
    assert up.a_session.envelopes_sent == 0  # global -> region: nothing echoed back
    assert cluster["global"].awaiting_authority == 0


# --------------------------------------------------------------------------- batch compression


def test_large_batches_travel_compressed_and_round_trip() -> None:
    items = tuple(b"envelope-%05d " % i + b"x" * 200 for i in range(100))
    frame = encode_message(Envelopes(items))
    assert len(frame) < sum(map(len, items)) // 2
    assert decode_message(frame) == Envelopes(items)
    small = (b"tiny",)
    assert decode_message(encode_message(Envelopes(small))) == Envelopes(small)


@pytest.mark.parametrize(
    "body",
    [
        {"items": [], "z": zlib.compress(b"\x00" * (64 * 1024 * 1024))},  # inflates past the limit
        {"items": [], "z": zlib.compress(encode([b"a"]))[:-3]},  # truncated stream
        {"items": [], "z": b"not zlib at all"},
        {"items": [b"a"], "z": zlib.compress(encode([b"b"]))},  # both plain and compressed
        {"items": [], "z": zlib.compress(encode({"not": "a list"}))},
    ],
)
def test_hostile_compressed_batches_are_typed_errors(body: dict[str, object]) -> None:
    with pytest.raises(RemoteProtocolError):
        decode_message(encode([PROTOCOL_VERSION, "envelopes", body]))
