"""Refusals are visible: each refused envelope is named with its reason, and every replica keeps
the same bounded record of them whatever order it was given them in, across restarts."""

from __future__ import annotations

import random
from pathlib import Path

from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from souverix_crdt.authority import cut_key, issue_revocation
from souverix_crdt.cli import cli
from souverix_crdt.hlc import Timestamp
from souverix_crdt.plane.keyring import load_keys
from souverix_crdt.plane.peer import load_peer_config, open_replica
from souverix_crdt.refusals import KEPT_PER_REASON, RefusalLog, RefusedEnvelope
from souverix_crdt.replica import Identity, IngestOutcome, Replica
from souverix_crdt.store.memory import MemoryStore
from souverix_crdt.store.sqlite import SqliteStore
from souverix_crdt.testing.fleet import NOW, make_fleet

FLEET = make_fleet()
ZONE = "global/region-a/edge-a1"
EPOCH = 7


def replica(name: str, store: object | None = None, epoch: int = 1) -> Replica:
    member = FLEET[name]
    return Replica(
        Identity(member.key, member.chain),
        FLEET.anchors,
        MemoryStore() if store is None else store,  # type: ignore[arg-type]
        wall_clock=lambda: NOW + 10_000,
        epoch=epoch,
    )


def tampered(data: bytes) -> bytes:
    return data[:-1] + bytes([data[-1] ^ 1])  # the signature's last byte


def inputs() -> tuple[list[bytes], bytes]:
    """Envelopes a region may be handed: some that count, some refused for lasting reasons."""
    edge = replica("edge-a1", epoch=EPOCH)
    for i in range(4):
        edge.scope(ZONE).policies.set("k", i)
    chain = edge.chain
    own = [row.data for row in edge.store.envelopes_after(ZONE, chain, 0, 10)]
    outside = FLEET["edge-a1"].seal(scope="global/region-a", seq=1).data  # outside its zone
    revocation = issue_revocation(
        FLEET["region-a"].key,
        fleet_id=FLEET.anchors.fleet_id,
        revoked=FLEET["edge-a1"].public,
        cut={cut_key(ZONE, EPOCH): 2},
        hlc=Timestamp(NOW),
    )
    return [*own, tampered(own[0]), tampered(own[1]), outside], revocation.encode()


def fed(target: Replica, envelopes: list[bytes], revocation: bytes, *, first: bool) -> Replica:
    target.add_delegations(d.encode() for d in FLEET["edge-a1"].chain)
    if first:
        target.add_revocations([revocation])
    for data in envelopes:
        target.ingest_many([data])
    if not first:
        target.add_revocations([revocation])
    return target


def test_a_refused_envelope_is_named_with_its_reason() -> None:
    envelopes, _ = inputs()
    region = replica("region-a")
    region.add_delegations(d.encode() for d in FLEET["edge-a1"].chain)
    bad_signature, outside = envelopes[4], envelopes[6]
    [signed_badly] = region.ingest_many([bad_signature])
    assert signed_badly.outcome is IngestOutcome.REJECTED
    assert signed_badly.reason == "signature"
    assert signed_badly.envelope_id
    assert signed_badly.scope == ZONE
    assert signed_badly.seq == 1
    assert signed_badly.chain.endswith(f"~{EPOCH:x}")
    [out_of_scope] = region.ingest_many([outside])
    assert out_of_scope.reason == "out-of-scope"
    assert out_of_scope.scope == "global/region-a"
    record = region.status().refused
    assert record["signature"]["count"] == 1
    assert record["out-of-scope"]["envelopes"][0]["scope"] == "global/region-a"


def test_the_record_is_the_same_whatever_the_order_and_across_restarts(tmp_path: Path) -> None:
    envelopes, revocation = inputs()
    before = fed(replica("region-a"), envelopes, revocation, first=True)
    after = fed(replica("region-a"), envelopes, revocation, first=False)
    shuffled = list(envelopes)
    random.Random(3).shuffle(shuffled)
    store = SqliteStore.open(tmp_path / "r.sqlite3")
    mixed = fed(replica("region-a", store), shuffled[:4], revocation, first=False)
    mixed.close()
    reopened = replica("region-a", SqliteStore.open(tmp_path / "r.sqlite3"))
    assert reopened.status().refused == mixed.status().refused  # the restart kept it
    for data in [*shuffled[4:], *shuffled]:
        reopened.ingest_many([data])
    expected = before.status().refused
    assert set(expected) == {"signature", "out-of-scope", "revoked"}
    assert expected["revoked"]["count"] == 2  # seq 3 and 4, past the cut at 2
    assert after.status().refused == expected
    assert reopened.status().refused == expected
    reopened.close()


def test_the_record_is_bounded_and_keeps_the_lowest_ids() -> None:
    log = RefusalLog()
    ids = [random.Random(i).randbytes(32) for i in range(300)]
    for envelope_id in ids:
        log.add("signature", RefusedEnvelope(envelope_id))
    assert log.count("signature") == KEPT_PER_REASON
    assert log.more("signature")
    assert [r.envelope_id for r in log.kept("signature")] == sorted(ids)[:KEPT_PER_REASON]


@settings(deadline=None)
@given(st.lists(st.binary(min_size=32, max_size=32), max_size=200), st.randoms())
def test_the_record_is_a_function_of_the_set(ids: list[bytes], rng: random.Random) -> None:
    one, other = RefusalLog(), RefusalLog()
    for envelope_id in ids:
        one.add("malformed", RefusedEnvelope(envelope_id))
    again = ids * 2
    rng.shuffle(again)
    for envelope_id in again:
        other.add("malformed", RefusedEnvelope(envelope_id))
    assert one.to_json() == other.to_json()
    # And through its stored form.
    restored = RefusalLog()
    if ids:
        restored.load_reason("malformed", one.encode_reason("malformed"))
        assert restored.to_json() == one.to_json()


def test_souverix_crdt_status_shows_the_refusals(tmp_path: Path) -> None:
    topology = Path(__file__).resolve().parents[1] / "examples" / "tcp-peers" / "topology.yaml"
    runner = CliRunner()
    init = runner.invoke(cli, ["keys", "init", str(topology), "--out", str(tmp_path / "keys")])
    assert init.exit_code == 0, init.output
    (tmp_path / "region-a.yaml").write_text(
        "plane: region-a\nkeys: keys\nstore: region-a.sqlite3\nlisten: 127.0.0.1:17399\n"
        "downstream: [edge-a1]\n"
    )
    keys = load_keys(tmp_path / "keys")
    edge = Replica(keys.identity("edge-a1"), keys.anchors, MemoryStore())
    edge.scope(ZONE).policies.set("k", 1)
    [row] = edge.store.envelopes_after(ZONE, edge.chain, 0, 1)
    region = open_replica(load_peer_config(tmp_path / "region-a.yaml"))
    try:
        region.add_delegations(d.encode() for d in keys.planes["edge-a1"].chain)
        [result] = region.ingest_many([tampered(row.data)])
        assert result.reason == "signature"
    finally:
        region.close()
    shown = runner.invoke(cli, ["status", "--config", str(tmp_path / "region-a.yaml")])
    assert shown.exit_code == 0, shown.output
    assert "refused envelopes" in shown.output
    assert "signature" in shown.output
    assert row.id.hex()[:16] not in shown.output  # the tampered bytes have their own id
    as_json = runner.invoke(
        cli, ["status", "--config", str(tmp_path / "region-a.yaml"), "--format", "json"]
    )
    assert '"signature"' in as_json.output
