"""A read-only follower of a plane's store, for a dashboard of the running plane.

``souverix-crdt dashboard --config FILE`` runs in a process of its own beside ``peer run``: it
never writes the plane's store and takes no lock on its chain. It keeps an in-memory replica
with the plane's identity and takes in, through the ordinary verified ingest path, what the
running plane commits to its store (SQLite's ``data_version`` says when), so every write the
plane makes or receives (through ``peer write`` and its control socket, or from its peers)
shows on the page moments later without a reload.
"""

from __future__ import annotations

import sqlite3

from souverix_crdt.errors import ConfigError
from souverix_crdt.replica import Replica
from souverix_crdt.store.memory import MemoryStore
from souverix_crdt.store.sqlite import SqliteStore

from .intake import StoreIntake
from .peer import PeerConfig, learn_key_directory, load_plane_keys

__all__ = ["StoreFollower"]


class StoreFollower:
    """An in-memory replica that follows what a plane's store holds.

    Args:
        config: The plane's peer config (its key directory and store).

    Raises:
        ConfigError: the store does not exist yet (start ``peer run`` first).
        KeyFileError, StoreError: the keys or the store cannot be read.
    """

    def __init__(self, config: PeerConfig) -> None:
        if not config.store.is_file():
            raise ConfigError(
                file=config.source,
                field="store",
                detail=f"{config.store} does not exist (has the peer run yet?)",
                reason="missing",
            )
        keys = load_plane_keys(config)  # the plane's own directory, and nothing else
        self.config = config
        self.replica = Replica(
            keys.identity,
            keys.anchors,
            MemoryStore(),
            name=config.plane,
            limits=config.limits,
        )
        learn_key_directory(self.replica, keys, config.keys)
        self.store = SqliteStore.open(config.store)
        self._watch = sqlite3.connect(config.store.resolve().as_uri() + "?mode=ro", uri=True)
        self._seen: int | None = None
        self._intake = StoreIntake()

    def changed(self) -> bool:
        """Someone committed to the store since the last look (cheap: one pragma)."""
        version = int(self._watch.execute("PRAGMA data_version").fetchone()[0])
        if version == self._seen:
            return False
        self._seen = version
        return True

    def catch_up(self) -> int:
        """Take in what the store holds that the replica does not; return envelopes applied."""
        return self._intake.take_in(self.replica, self.store)

    def close(self) -> None:
        """Close the store connections and the replica."""
        self._watch.close()
        self.store.close()
        self.replica.close()
