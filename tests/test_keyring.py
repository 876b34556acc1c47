"""Key and delegation bootstrap for a whole topology; the key directory."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from souverix_crdt.authority import Capability, verify_chain
from souverix_crdt.errors import KeyFileError
from souverix_crdt.hlc import Timestamp
from souverix_crdt.plane.keyring import bootstrap_keys, capabilities_for, load_keys, save_keys
from souverix_crdt.plane.topology import default_topology
from souverix_crdt.scope import Autonomy, Tier

START = Timestamp(1_750_000_000_000)
END = Timestamp(1_850_000_000_000)
AT = Timestamp(1_800_000_000_000)


@pytest.fixture(scope="module")
def keys():
    return bootstrap_keys(default_topology(), seed=7, not_before=START, not_after=END)


def test_every_chain_verifies_and_follows_the_tree(keys) -> None:
    topology = default_topology()
    grants = keys.verify(at=AT)
    assert set(grants) == set(topology.planes)
    for name, plane in topology.planes.items():
        creds = keys[name]
        grant = grants[name]
        assert grant.scope == plane.scope
        assert grant.tier is plane.level
        assert grant.autonomy is plane.autonomy.mode
        assert grant.subject_key_id == creds.key_id
        issuer = topology.issuer_of(name)
        if issuer is None:
            assert len(creds.chain) == 1
            assert creds.chain[0].is_root_issued
        else:
            assert creds.chain[:-1] == keys[issuer].chain
            assert creds.delegation.issuers == (keys[issuer].key_id,)
    assert len(keys["edge-a1"].chain) == 3  # root -> global -> region-a -> edge-a1
    assert len(keys["edge-c"].chain) == 2  # root -> global -> edge-c


def test_capabilities_follow_the_autonomy_flags(keys) -> None:
    everything = frozenset(Capability)
    assert keys["global"].delegation.capabilities == everything
    assert keys["region-a"].delegation.capabilities == everything
    assert keys["edge-a1"].delegation.capabilities == {
        Capability.MODIFY_POLICIES,
        Capability.REPORT_STATUS,
        Capability.OPERATE_ISOLATED,
    }
    assert keys["edge-c"].delegation.capabilities == everything - {Capability.DELEGATE}
    assert keys["edge-a1"].delegation.autonomy is Autonomy.CONDITIONAL
    assert keys["edge-b1"].delegation.autonomy is Autonomy.FULL
    assert keys["edge-c"].delegation.tier is Tier.AUTONOMOUS


def test_a_zone_that_issues_gets_delegate() -> None:
    plane = default_topology().plane("edge-a1")
    assert Capability.DELEGATE not in capabilities_for(plane, issues=False)
    assert Capability.DELEGATE in capabilities_for(plane, issues=True)


def test_seeded_keys_are_deterministic_and_random_ones_are_not() -> None:
    topology = default_topology()
    a = bootstrap_keys(topology, seed=7, not_before=START, not_after=END)
    b = bootstrap_keys(topology, seed=7, not_before=START, not_after=END)
    c = bootstrap_keys(topology, seed=8, not_before=START, not_after=END)
    assert [p.chain for p in a.planes.values()] == [p.chain for p in b.planes.values()]
    assert a["global"].key_id != c["global"].key_id
    random_one = bootstrap_keys(topology, wall_clock=lambda: AT.wall)
    random_two = bootstrap_keys(topology, wall_clock=lambda: AT.wall)
    assert random_one["global"].key_id != random_two["global"].key_id
    random_one.verify(at=AT)


def test_default_window_starts_before_now() -> None:
    keys = bootstrap_keys(default_topology(), wall_clock=lambda: AT.wall)
    leaf = keys["edge-c"].delegation
    assert leaf.not_before.wall < AT.wall < leaf.not_after.wall


def test_quorum_of_roots() -> None:
    keys = bootstrap_keys(
        default_topology(), seed=1, not_before=START, not_after=END, roots=3, quorum=2
    )
    assert keys.anchors.quorum == 2
    assert len(keys.root_keys) == 3
    assert len(keys["global"].chain[0].signatures) == 2
    keys.verify(at=AT)


def test_save_and_load_round_trip(keys, tmp_path: Path) -> None:
    directory = save_keys(keys, tmp_path / "keys")
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    for path in directory.rglob("*.key"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    loaded = load_keys(directory)
    assert loaded.anchors == keys.anchors
    assert list(loaded.planes) == list(keys.planes)
    for name in keys.planes:
        assert loaded[name].chain == keys[name].chain
        assert loaded[name].key_id == keys[name].key_id
    assert [k.key_id for k in loaded.root_keys] == [k.key_id for k in keys.root_keys]
    identity = loaded.identity("edge-a2")
    assert verify_chain(loaded.anchors, identity.chain, at=AT).subject_key_id == identity.key_id


def test_save_tightens_existing_permissions(keys, tmp_path: Path) -> None:
    directory = save_keys(keys, tmp_path / "keys")
    key_file = directory / "planes" / "global.key"
    key_file.chmod(0o644)
    save_keys(keys, directory)
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600


def test_roots_can_stay_offline(keys, tmp_path: Path) -> None:
    directory = save_keys(keys, tmp_path / "keys", include_roots=False)
    assert not list((directory / "roots").iterdir())
    assert load_keys(directory).root_keys == ()


def test_load_refuses_readable_private_keys(keys, tmp_path: Path) -> None:
    directory = save_keys(keys, tmp_path / "keys")
    (directory / "planes" / "edge-c.key").chmod(0o640)
    with pytest.raises(KeyFileError) as caught:
        load_keys(directory)
    assert caught.value.reason == "permissions"
    assert "edge-c.key" in caught.value.path


def test_load_refuses_missing_and_malformed_files(keys, tmp_path: Path) -> None:
    directory = save_keys(keys, tmp_path / "keys")
    (directory / "planes" / "edge-c.key").unlink()
    with pytest.raises(KeyFileError) as caught:
        load_keys(directory)
    assert caught.value.reason == "missing"

    directory = save_keys(keys, tmp_path / "again")
    (directory / "planes" / "edge-c.key").write_text("not hex")
    with pytest.raises(KeyFileError) as caught:
        load_keys(directory)
    assert caught.value.reason == "format"

    with pytest.raises(KeyFileError) as caught:
        load_keys(tmp_path / "nowhere")
    assert caught.value.reason == "missing"


def test_load_refuses_a_chain_of_another_key(keys, tmp_path: Path) -> None:
    directory = save_keys(keys, tmp_path / "keys")
    edge_c = directory / "planes" / "edge-c.json"
    document = json.loads(edge_c.read_text())
    document["chain"] = json.loads((directory / "planes" / "edge-a1.json").read_text())["chain"]
    edge_c.write_text(json.dumps(document))
    with pytest.raises(KeyFileError) as caught:
        load_keys(directory)
    assert caught.value.reason == "chain"


def test_load_refuses_foreign_anchors(keys, tmp_path: Path) -> None:
    directory = save_keys(keys, tmp_path / "keys")
    other = bootstrap_keys(default_topology(), seed=99, not_before=START, not_after=END)
    fleet = json.loads((directory / "fleet.json").read_text())
    fleet["roots"] = sorted(public.raw.hex() for public in other.anchors.roots)
    (directory / "fleet.json").write_text(json.dumps(fleet))
    with pytest.raises(KeyFileError) as caught:
        load_keys(directory)
    assert caught.value.reason == "chain"
