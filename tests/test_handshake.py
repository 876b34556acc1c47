"""The session handshake, attacked: nothing moves before the peer proves its key.

Each test plays the attacker by hand against a real :class:`SyncSession` and decodes every
frame the session sends, so "gets nothing" means exactly that: no frontier, no authority item,
no envelope, no checkpoint — only the session's own hello, its proof, and a close.
"""

from __future__ import annotations

import pytest

from souverix_crdt.authority import issue_revocation
from souverix_crdt.errors import RemoteProtocolError
from souverix_crdt.hlc import Timestamp
from souverix_crdt.replica import Replica
from souverix_crdt.sync.handshake import HANDSHAKE_DOMAIN, sign_proof, transcript_hash
from souverix_crdt.sync.messages import (
    NONCE_SIZE,
    Ack,
    AuthorityItems,
    Close,
    Envelopes,
    FrontierRow,
    Frontiers,
    Hello,
    Message,
    Proof,
    decode_message,
    encode_message,
)
from souverix_crdt.sync.session import SessionState, SyncSession
from souverix_crdt.testing.cluster import Cluster
from souverix_crdt.testing.fleet import NOW, Member, make_fleet

FLEET = make_fleet()
FLEET_ID = FLEET.anchors.fleet_id
HANDSHAKE_ONLY = (Hello, Proof, Close)


def hello_of(member: Member, nonce: bytes = b"\x07" * NONCE_SIZE) -> bytes:
    return encode_message(Hello(FLEET_ID, tuple(d.encode() for d in member.chain), nonce))


def sent(session: SyncSession) -> list[Message]:
    return [decode_message(frame) for frame in session.data_to_send()]


def served(names: list[str], *, secret: bool = True) -> Cluster:
    """region-a holding data of its own, of edge-a1 and of edge-a1's sibling edge-a2."""
    cluster = Cluster(FLEET, names)
    if secret:
        cluster["edge-a2"].scope("global/region-a/edge-a2").policies.set("secret", "s3cr3t")
        cluster["region-a"].scope("global/region-a").policies.set("regional", 1)
        cluster.link("region-a", "edge-a2")
        cluster.settle()
    return cluster


def handshake(session: SyncSession, member: Member, nonce: bytes = b"\x07" * 32) -> list[Message]:
    """Complete a handshake with ``session`` as ``member`` (holding its key); return the rest."""
    mine = hello_of(member, nonce)
    session.receive(mine)
    frames = session.data_to_send()
    theirs = next(f for f in frames if isinstance(decode_message(f), Hello))
    proof = sign_proof(member.key, FLEET_ID, mine, theirs)
    session.receive(encode_message(Proof(proof)))
    return [decode_message(f) for f in frames] + sent(session)


def envelope_of(replica: Replica, value: str) -> bytes:
    """A genuine, signed envelope of ``replica``'s own scope."""
    scope = str(replica.identity.scope)
    replica.scope(scope).policies.set("x", value)
    [(_, chain, seq, _)] = [row for row in replica.frontiers() if row[0] == scope]
    return replica.store.envelopes_after(scope, chain, seq - 1, 1)[0].data


def data_messages(messages: list[Message]) -> list[Message]:
    return [m for m in messages if not isinstance(m, HANDSHAKE_ONLY)]


# --------------------------------------------------------------------------- a keyless client


def test_a_keyless_client_with_a_public_chain_gets_nothing() -> None:
    cluster = served(["region-a", "edge-a2"])
    session = SyncSession(cluster["region-a"])
    session.receive(hello_of(FLEET["edge-a1"]))  # the chain is public; the key is not
    first = sent(session)
    assert [type(m) for m in first] == [Hello, Proof]
    # Any proof it can make without edge-a1's key: a random one, or one by a key it holds.
    with pytest.raises(RemoteProtocolError) as caught:
        session.receive(encode_message(Proof(b"\x00" * 64)))
    assert caught.value.reason == "proof"
    assert session.state is SessionState.CLOSED
    assert [type(m) for m in sent(session)] == [Close]
    assert cluster["region-a"].store.peer_frontiers("edge-a1") == {}


def test_a_proof_by_another_key_is_refused() -> None:
    cluster = served(["region-a", "edge-a2"])
    session = SyncSession(cluster["region-a"])
    mine = hello_of(FLEET["edge-a1"])
    session.receive(mine)
    theirs = sent(session)[0]
    # edge-a2's own key signs edge-a1's transcript: right shape, wrong signer.
    forged = sign_proof(FLEET["edge-a2"].key, FLEET_ID, mine, encode_message(theirs))
    with pytest.raises(RemoteProtocolError):
        session.receive(encode_message(Proof(forged)))
    assert session.state is SessionState.CLOSED
    assert data_messages(sent(session)) == []


def test_a_captured_handshake_cannot_be_replayed() -> None:
    cluster = served(["region-a", "edge-a1", "edge-a2"])
    # The honest edge-a1 handshakes with region-a; the attacker records edge-a1's frames.
    honest = SyncSession(cluster["region-a"])
    captured = [hello_of(FLEET["edge-a1"])]
    honest.receive(captured[0])
    theirs = next(f for f in honest.data_to_send() if isinstance(decode_message(f), Hello))
    captured.append(
        encode_message(Proof(sign_proof(FLEET["edge-a1"].key, FLEET_ID, captured[0], theirs)))
    )
    honest.receive(captured[1])
    assert honest.authenticated
    # Replayed to a new session of region-a (a new nonce on its side), in order, twice.
    replay = SyncSession(cluster["region-a"])
    replay.receive(captured[0])
    out = sent(replay)
    with pytest.raises(RemoteProtocolError) as caught:
        replay.receive(captured[1])
    out += sent(replay)
    replay.receive(captured[0])  # and again, once closed: ignored
    out += sent(replay)
    assert caught.value.reason == "proof"
    assert data_messages(out) == []
    assert not replay.authenticated


def test_data_sent_before_the_proof_is_dropped_unread() -> None:
    cluster = served(["region-a", "edge-a1", "edge-a2"])
    region = cluster["region-a"]
    before = region.digest()
    # A genuine envelope of edge-a1, pushed by someone who cannot prove edge-a1's key.
    envelope = envelope_of(cluster["edge-a1"], "planted")
    session = SyncSession(region)
    session.receive(hello_of(FLEET["edge-a1"]))
    for message in (
        Envelopes((envelope,)),
        Ack((FrontierRow("global/region-a", region.frontiers()[0][1], 10_000),)),
        AuthorityItems(delegations=tuple(d.encode() for d in FLEET["edge-a1"].chain)),
        Frontiers((FrontierRow("global/region-a/edge-a2", "x", 1),), b""),
    ):
        session.receive(encode_message(message))
    assert session.dropped == 3  # the frontiers are held, unread, until a proof verifies
    assert data_messages(sent(session)) == []
    assert region.digest() == before
    assert region.store.peer_frontiers("edge-a1") == {}


# --------------------------------------------------------------------------- who may connect


def test_a_fleet_key_the_policy_refuses_gets_nothing() -> None:
    cluster = served(["region-a", "edge-a2"])
    session = SyncSession(cluster["region-a"], accept=lambda grant: grant.plane == "edge-a2")
    with pytest.raises(RemoteProtocolError) as caught:
        session.receive(hello_of(FLEET["edge-a1"]))
    assert caught.value.reason == "not-a-peer"
    assert [type(m) for m in sent(session)] == [Hello, Close]


def test_the_peer_name_is_the_verified_chain_s() -> None:
    cluster = served(["region-a", "edge-a2"])
    seen = []
    session = SyncSession(cluster["region-a"], accept=lambda grant: seen.append(grant) or True)
    handshake(session, FLEET["edge-a1"])
    assert session.authenticated
    assert session.peer_name == "edge-a1"
    assert [grant.subject_key_id for grant in seen] == [FLEET["edge-a1"].key_id]


def test_our_own_hello_reflected_back_is_refused() -> None:
    cluster = served(["region-a", "edge-a2"])
    session = SyncSession(cluster["region-a"])
    session.start()
    [ours] = session.data_to_send()
    with pytest.raises(RemoteProtocolError) as caught:
        session.receive(ours)
    assert caught.value.reason == "self"
    assert data_messages(sent(session)) == []


def test_a_proof_signs_both_nonces_in_the_signer_s_order() -> None:
    a, b = hello_of(FLEET["edge-a1"], b"\x01" * 32), hello_of(FLEET["region-a"], b"\x02" * 32)
    assert transcript_hash(FLEET_ID, a, b) != transcript_hash(FLEET_ID, b, a)
    other_nonce = hello_of(FLEET["region-a"], b"\x03" * 32)
    assert transcript_hash(FLEET_ID, a, b) != transcript_hash(FLEET_ID, a, other_nonce)
    assert transcript_hash(FLEET_ID, a, b) != transcript_hash("souverix-other", a, b)
    assert HANDSHAKE_DOMAIN.endswith(b"\x00")


@pytest.mark.parametrize("nonce", [b"", b"\x00" * 31, b"\x00" * 33])
def test_a_hello_without_a_full_nonce_is_malformed(nonce: bytes) -> None:
    cluster = served(["region-a"], secret=False)
    session = SyncSession(cluster["region-a"])
    frame = encode_message(
        Hello(FLEET_ID, tuple(d.encode() for d in FLEET["edge-a1"].chain), nonce)
    )
    with pytest.raises(RemoteProtocolError) as caught:
        session.receive(frame)
    assert caught.value.reason == "schema"
    assert data_messages(sent(session)) == []


# --------------------------------------------------------------------------- revoked keys


def revoke(replica: Replica, member: str, issuer: str = "region-a") -> None:
    # A revocation counts once the replica holds the revoked key's chain (and sees its issuer
    # above it there).
    replica.add_delegations(d.encode() for d in FLEET[member].chain)
    revocation = issue_revocation(
        FLEET[issuer].key,
        fleet_id=FLEET_ID,
        revoked=FLEET[member].public,
        cut={},
        hlc=Timestamp(NOW),
    )
    assert replica.add_revocations([revocation.encode()]) == 1


def test_a_revoked_key_is_refused_at_the_hello() -> None:
    cluster = served(["region-a", "edge-a2"])
    revoke(cluster["region-a"], "edge-a1")
    session = SyncSession(cluster["region-a"])
    with pytest.raises(RemoteProtocolError) as caught:
        session.receive(hello_of(FLEET["edge-a1"]))
    assert caught.value.reason == "revoked"
    assert data_messages(sent(session)) == []


def test_a_revocation_closes_an_open_session() -> None:
    cluster = served(["region-a", "edge-a1", "edge-a2"])
    edge = cluster["edge-a1"]
    session = SyncSession(cluster["region-a"])
    handshake(session, FLEET["edge-a1"])
    assert session.authenticated
    revoke(cluster["region-a"], "edge-a1")
    assert session.state is SessionState.CLOSED
    assert "revoked" in session.close_reason
    # Nothing the revoked key sends afterwards is read.
    envelope = envelope_of(edge, "late")
    before = cluster["region-a"].digest()
    session.receive(encode_message(Envelopes((envelope,))))
    assert cluster["region-a"].digest() == before


# --------------------------------------------------------------------------- need to know


def test_a_zone_never_learns_a_sibling_s_data_writers_or_chains() -> None:
    cluster = served(["region-a", "edge-a2"])
    region = cluster["region-a"]
    sibling = FLEET["edge-a2"]
    session = SyncSession(region)
    messages = handshake(session, FLEET["edge-a1"])
    # The peer's frontiers say it holds nothing: the session sends all it may.
    session.receive(encode_message(Frontiers((), b"")))
    for _ in range(20):
        messages += sent(session)
        acks = [m for m in messages if isinstance(m, Envelopes)]
        if not acks:
            break
        session.receive(encode_message(Ack(())))
    frontier_scopes = {r.scope for m in messages if isinstance(m, Frontiers) for r in m.rows}
    assert frontier_scopes == {"global/region-a"}
    sibling_writer = sibling.key_id
    for message in messages:
        if isinstance(message, Frontiers):
            assert all(sibling_writer not in row.writer for row in message.rows)
        if isinstance(message, AuthorityItems):
            assert sibling.delegation.encode() not in message.delegations
        if isinstance(message, Envelopes):
            assert all(b"s3cr3t" not in item for item in message.items)
    assert any(isinstance(m, Envelopes) for m in messages)  # it did get region-a's own data


# --------------------------------------------------------------------------- honest sessions


def test_a_handshake_survives_reordering_and_duplication() -> None:
    for seed in range(20):
        cluster = Cluster(FLEET, ["global", "region-a"], seed=seed)
        cluster["global"].scope("global").policies.set("k", seed)
        cluster.network.set_faults(duplicate=0.3, reorder=0.5, delay=(0, 3))
        cluster.link("global", "region-a")
        cluster.settle()
        assert cluster["region-a"].scope("global").policies["k"] == seed, seed


def test_a_peer_that_starts_over_proves_itself_again_and_sync_resumes() -> None:
    cluster = Cluster(FLEET, ["global", "region-a"])
    link = cluster.link("global", "region-a")
    cluster.settle()
    upper = link.a_session
    assert upper.authenticated
    # region-a restarts its side (a new session, a new nonce) on the same channel.
    fresh = SyncSession(cluster["region-a"])
    fresh.start()
    for frame in fresh.data_to_send():
        upper.receive(frame)
    assert upper.state is SessionState.PROVING
    for _ in range(10):
        for frame in upper.data_to_send():
            fresh.receive(frame)
        for frame in fresh.data_to_send():
            upper.receive(frame)
    assert upper.authenticated
    assert fresh.authenticated
    cluster["global"].scope("global").policies.set("after", 1)
    for _ in range(10):
        for frame in upper.data_to_send():
            fresh.receive(frame)
        for frame in fresh.data_to_send():
            upper.receive(frame)
    assert cluster["region-a"].scope("global").policies["after"] == 1


def test_an_expired_key_is_refused_at_the_hello() -> None:
    fleet = make_fleet()
    expired = fleet.delegate(
        "edge-a1",
        parent="region-a",
        scope="global/region-a/edge-a1",
        capabilities=fleet["edge-a1"].delegation.capabilities,
        tier=fleet["edge-a1"].delegation.tier,
        autonomy=fleet["edge-a1"].delegation.autonomy,
        not_after=Timestamp(NOW - 1),  # the cluster's clock reads NOW
    )
    cluster = Cluster(fleet, ["region-a"])
    session = SyncSession(cluster["region-a"])
    hello = encode_message(Hello(FLEET_ID, tuple(d.encode() for d in expired.chain), b"\x01" * 32))
    with pytest.raises(RemoteProtocolError) as caught:
        session.receive(hello)
    assert caught.value.reason == "identity"
    assert "expired" in str(caught.value)
    assert data_messages(sent(session)) == []
