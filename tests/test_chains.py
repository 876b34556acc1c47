"""Chains that last: a plane keeps its writer chain across clean restarts, never across a copy.

Each restored-copy path is an attack on the fleet's equivocation rule: reusing the chain on an
older copy of the store signs a second envelope at a sequence number the fleet already holds,
and every replica then cuts the chain from there. Each test below restores such a copy and
checks that the new incarnation writes under a new chain, and that the upstream replica that
holds both sees no equivocation.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from souverix_crdt.errors import ChainLockedError
from souverix_crdt.plane.chains import ChainLease
from souverix_crdt.plane.keyring import FederationKeys, bootstrap_keys
from souverix_crdt.plane.peer import PeerConfig, open_writing_replica
from souverix_crdt.plane.planedir import plane_directory, save_ceremony
from souverix_crdt.plane.topology import default_topology
from souverix_crdt.replica import Replica
from souverix_crdt.store.base import Batch
from souverix_crdt.store.memory import MemoryStore

SCOPE = "global/region-a"


@pytest.fixture(scope="module")
def federation() -> FederationKeys:
    return bootstrap_keys(default_topology(), seed="chains")


@pytest.fixture
def config(tmp_path: Path, federation: FederationKeys) -> PeerConfig:
    save_ceremony(federation, tmp_path / "keys")
    keys = plane_directory(tmp_path / "keys", "region-a")  # the plane's own directory
    return PeerConfig(plane="region-a", keys=keys, store=tmp_path / "data" / "region-a.sqlite3")


def write(config: PeerConfig, key: str, value: str) -> tuple[str, int]:
    replica, lease = open_writing_replica(config)
    try:
        receipt = replica.scope(SCOPE).collection("policies").set(key, value)
    finally:
        lease.close(replica.store)
        replica.close()
    return receipt.chain, receipt.seq


def upstream(federation: FederationKeys) -> Replica:
    """A global replica holding everything the region-a store ever published (all its copies)."""
    replica = Replica(federation.identity("global"), federation.anchors, MemoryStore())
    replica.add_delegations(link.encode() for link in federation.planes["region-a"].chain)
    return replica


def publish(to: Replica, config: PeerConfig) -> None:
    replica, lease = open_writing_replica(config)
    try:
        for stored in replica.store.iter_envelopes():
            to.ingest(stored.data, source="region-a")
    finally:
        lease.close(replica.store)
        replica.close()


def test_a_clean_restart_keeps_the_chain_and_its_sequence(config: PeerConfig) -> None:
    first = write(config, "a", "1")
    second = write(config, "b", "2")
    third = write(config, "c", "3")
    assert first[0] == second[0] == third[0]
    assert [first[1], second[1], third[1]] == [1, 2, 3]


def test_a_crash_makes_a_new_chain(config: PeerConfig) -> None:
    chain, _ = write(config, "a", "1")
    replica, lease = open_writing_replica(config)
    replica.scope(SCOPE).collection("policies").set("b", "2")
    lease.close(None)  # the process died: no clean mark
    replica.close()
    lease = ChainLease.acquire(config.store, replica.identity.key_id)
    try:
        assert not lease.resumed
        assert lease.reason == "unclean-close"
        assert f"~{lease.epoch:x}" not in chain
    finally:
        lease.close(None)


def test_a_restored_backup_makes_a_new_chain_and_no_equivocation(
    config: PeerConfig, federation: FederationKeys, tmp_path: Path
) -> None:
    """The attack: back the store up at a clean stop, write on, restore the backup, write."""
    global_replica = upstream(federation)
    chain, _ = write(config, "a", "1")
    backup = tmp_path / "backup.sqlite3"
    shutil.copy(config.store, backup)  # taken while stopped cleanly: it carries the clean mark
    later_chain, seq = write(config, "b", "2")
    assert (later_chain, seq) == (chain, 2)
    publish(global_replica, config)  # the fleet holds seq 2 of that chain
    shutil.copy(backup, config.store)  # restored: the store holds only seq 1
    restored_chain, restored_seq = write(config, "c", "3")
    assert restored_chain != chain
    assert restored_seq == 1
    publish(global_replica, config)
    assert global_replica.status().equivocators == {}
    assert global_replica.get(SCOPE, "policies", "c") == "3"
    assert global_replica.get(SCOPE, "policies", "b") == "2"


def test_a_whole_folder_restore_is_caught_by_what_peers_acknowledged(
    config: PeerConfig, federation: FederationKeys, tmp_path: Path
) -> None:
    """Store and token file restored together; the store's own record of a peer says more."""
    write(config, "a", "1")
    replica, lease = open_writing_replica(config)
    chain = replica.chain
    # As a session records it: global acknowledged seq 5 of this chain.
    replica.store.commit(Batch(peer_frontiers=[("global", SCOPE, chain, 5)]))
    lease.close(replica.store)
    replica.close()
    restored = ChainLease.acquire(config.store, replica.identity.key_id)
    try:
        assert restored.reason == "acknowledged-beyond"
        assert not restored.resumed
    finally:
        restored.close(None)


def test_a_second_writer_on_one_store_fails_clearly(config: PeerConfig) -> None:
    replica, lease = open_writing_replica(config)
    try:
        with pytest.raises(ChainLockedError) as caught:
            open_writing_replica(config)
        assert "pid" in caught.value.holder
        assert caught.value.path.endswith("region-a.sqlite3.lock")
    finally:
        lease.close(replica.store)
        replica.close()
    # Released: the next writer gets it, and the chain.
    replica, lease = open_writing_replica(config)
    lease.close(replica.store)
    replica.close()
    assert lease.resumed
