"""Chains that last: one writer chain per plane store, kept across clean restarts.

A replica signs under a chain ``"<key id>~<epoch>"``. Making a new chain at every process start
costs every replica of the fleet memory and a frontier entry in every hello, so a plane keeps
its chain for as long as its store is the one it last closed. A new chain is made only where
the store may be an older copy of itself (a restored backup, a crash, a copied file): reusing
the chain there would sign a second, different envelope at a sequence number the fleet already
holds, which every replica treats as equivocation and cuts.

How a restored copy is told apart (all of these must hold to keep the chain):

1. **A clean-close marker.** At open the store's ``own-chain`` record is rewritten with a fresh
   random *token* and no clean mark; only a clean close marks it clean again, with the chain's
   frontier (its sequence number per scope). A crash, or a backup copied from a running plane,
   therefore holds no clean mark.
2. **A token outside the store.** The clean close writes the same token to
   ``<store>.chain`` next to the store. A backup of the store file taken at an earlier clean
   close carries an older token than the file beside it.
3. **The frontier.** The chain's sequence numbers the store holds must equal those recorded
   at the clean close, and no peer may have acknowledged more of the chain than the store
   holds (``peer_frontiers``).

Two writers on one chain would fork it as surely as a restored backup, so the lease also holds
an exclusive ``flock`` on ``<store>.lock`` for as long as it is open: a second writer on the
same store fails at once with :class:`~souverix_crdt.errors.ChainLockedError`.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
from pathlib import Path
from typing import Any, Final

import attrs

from souverix_crdt.errors import ChainLockedError, StoreError
from souverix_crdt.store.base import Batch, Store
from souverix_crdt.store.sqlite import SqliteStore

__all__ = ["OWN_CHAIN_META", "ChainLease", "chain_files"]

#: The store's named value recording its own chain (JSON).
OWN_CHAIN_META: Final = "own-chain"


def chain_files(store_path: Path) -> tuple[Path, Path]:
    """The lock file and the clean-close token file beside a store."""
    return (
        store_path.with_name(store_path.name + ".lock"),
        store_path.with_name(store_path.name + ".chain"),
    )


def _read_record(store: Store) -> dict[str, Any]:
    raw = store.meta(OWN_CHAIN_META)
    if raw is None:
        return {}
    try:
        value = json.loads(raw)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _own_frontier(store: Store, key_id: str, epoch: int) -> dict[str, int]:
    chain = f"{key_id}~{epoch:x}"
    frontiers = store.frontiers().items()
    return {scope: seq for (scope, writer), (seq, _) in frontiers if writer == chain}


def _acknowledged_beyond(store: Store, chain: str, frontier: dict[str, int]) -> bool:
    for peer in store.peers():
        for (scope, writer), seq in store.peer_frontiers(peer).items():
            if writer == chain and seq > frontier.get(scope, 0):
                return True
    return False


@attrs.define
class ChainLease:
    """The right to write under a store's chain, held until :meth:`close`.

    Attributes:
        store_path: The store.
        key_id: The writer key the chain belongs to.
        epoch: The chain's epoch (pass it to ``Replica(epoch=...)``).
        resumed: The chain of the last clean close was kept.
        reason: Why a new chain was made (``""`` when resumed; ``"new-store"``,
            ``"unclean-close"``, ``"token-mismatch"``, ``"frontier-mismatch"``,
            ``"acknowledged-beyond"``, ``"other-key"``).
        token: This incarnation's token.
    """

    store_path: Path
    key_id: str
    epoch: int
    resumed: bool
    reason: str
    token: str
    _lock: int | None = attrs.field(default=None, repr=False)

    @classmethod
    def acquire(cls, store_path: str | Path, key_id: str) -> ChainLease:
        """Lock the store's chain and decide whether it is kept (see the module documentation).

        The store is created when missing (with its folder).

        Raises:
            ChainLockedError: another process holds the lease.
            StoreError: the store cannot be opened or written.
        """
        path = Path(store_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        lock_path, token_path = chain_files(path)
        descriptor = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            with contextlib.suppress(OSError):
                holder = os.pread(descriptor, 200, 0).decode("utf-8", "replace").strip()
            os.close(descriptor)
            raise ChainLockedError(str(lock_path), holder) from exc
        try:
            os.ftruncate(descriptor, 0)
            os.pwrite(descriptor, f"pid {os.getpid()}\n".encode(), 0)
            store = SqliteStore.open(path)
            try:
                lease = cls._decide(store, path, token_path, key_id)
                lease._lock = descriptor
            finally:
                store.close()
        except BaseException:
            os.close(descriptor)
            raise
        return lease

    @classmethod
    def _decide(cls, store: Store, path: Path, token_path: Path, key_id: str) -> ChainLease:
        record = _read_record(store)
        epoch = record.get("epoch")
        reason = ""
        if not isinstance(epoch, int) or record.get("key_id") != key_id:
            reason = "new-store" if not record else "other-key"
        elif not record.get("clean"):
            reason = "unclean-close"
        else:
            try:
                outside = token_path.read_text("utf-8").strip()
            except OSError:
                outside = ""
            frontier = _own_frontier(store, key_id, epoch)
            if outside != record.get("token"):
                reason = "token-mismatch"
            elif frontier != record.get("frontier"):
                reason = "frontier-mismatch"
            elif _acknowledged_beyond(store, f"{key_id}~{epoch:x}", frontier):
                reason = "acknowledged-beyond"
        if reason:
            epoch = secrets.randbits(62)
        assert isinstance(epoch, int)
        token = secrets.token_hex(16)
        # Open means not clean: a crash from here on, or a copy of the file taken while the
        # plane runs, makes a new chain at the next open.
        opened = {"key_id": key_id, "epoch": epoch, "token": token, "clean": False}
        store.commit(Batch(meta={OWN_CHAIN_META: json.dumps(opened).encode()}))
        return cls(
            store_path=path,
            key_id=key_id,
            epoch=epoch,
            resumed=not reason,
            reason=reason,
            token=token,
        )

    @property
    def held(self) -> bool:
        """The lease is still held."""
        return self._lock is not None

    def close(self, store: Store | None) -> None:
        """Release the lease; with the plane's ``store`` (still open), mark a clean close.

        Call it after the last write was committed. Without a store (or when marking fails)
        the lease is released unclean and the next open makes a new chain. Idempotent.
        """
        if self._lock is None:
            return
        try:
            if store is not None:
                with contextlib.suppress(StoreError, OSError):
                    self._mark_clean(store)
        finally:
            descriptor, self._lock = self._lock, None
            os.close(descriptor)

    def _mark_clean(self, store: Store) -> None:
        _, token_path = chain_files(self.store_path)
        # The token file first: were the process to stop between the two writes, the store
        # still says unclean, and a new chain is made (never the other way around).
        temporary = token_path.with_name(f".{token_path.name}.tmp")
        temporary.write_text(self.token + "\n", "utf-8")
        temporary.replace(token_path)
        frontier = _own_frontier(store, self.key_id, self.epoch)
        closed = {
            "key_id": self.key_id,
            "epoch": self.epoch,
            "token": self.token,
            "clean": True,
            "frontier": frontier,
        }
        store.commit(Batch(meta={OWN_CHAIN_META: json.dumps(closed).encode()}))
