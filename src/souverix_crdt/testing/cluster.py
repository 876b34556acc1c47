"""A whole federation in one process, driven step by step: replicas, sessions, a faulty network.

:class:`Cluster` builds a replica per fleet member, links pairs of them with sans-IO
:class:`~souverix_crdt.sync.session.SyncSession` objects over a seeded
:class:`~souverix_crdt.transports.memory.MemoryNetwork`, and moves frames only when told to
(:meth:`Cluster.pump`, :meth:`Cluster.settle`). Nothing reads the wall clock: every replica reads
the cluster's fake clock, which tests advance with :meth:`Cluster.advance`.

Used by the convergence tests, the parity scenario, the scale benchmark and the demo.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from pathlib import Path

import attrs

from souverix_crdt.replica import Identity, Replica
from souverix_crdt.store.base import Store
from souverix_crdt.store.memory import MemoryStore
from souverix_crdt.sync.local import deliver, pump
from souverix_crdt.sync.session import SessionState, SyncSession
from souverix_crdt.transports.memory import MemoryNetwork, MemoryTransport

from .fleet import NOW, Fleet

__all__ = ["Cluster", "Link"]


@attrs.define
class Link:
    """A sync relationship between two replicas, and its current session pair."""

    a: str
    b: str
    a_session: SyncSession
    b_session: SyncSession
    a_end: MemoryTransport
    b_end: MemoryTransport
    protocol_errors: int = 0

    def sessions(self) -> tuple[tuple[SyncSession, MemoryTransport], ...]:
        """Each side's session with its transport end."""
        return ((self.a_session, self.a_end), (self.b_session, self.b_end))

    def endpoints(self) -> tuple[tuple[SyncSession, MemoryTransport], ...]:
        """The same, for :func:`souverix_crdt.sync.local.pump`."""
        return self.sessions()


StoreFactory = Callable[[str], Store]


class Cluster:
    """Replicas of a test fleet linked by sessions over a seeded in-memory network.

    Args:
        fleet: The signed test fleet (keys and delegations).
        names: Which members get a replica.
        seed: Seeds the network's fault injection and the replicas' epochs.
        store_factory: Makes each replica's store (default: in-memory).
        batch_size: Envelopes per sync batch.
        start: The fake wall clock's start, in milliseconds.
    """

    def __init__(
        self,
        fleet: Fleet,
        names: Iterable[str],
        *,
        seed: int = 0,
        store_factory: StoreFactory | None = None,
        batch_size: int = 100,
        start: int = NOW,
    ) -> None:
        self.fleet = fleet
        self.seed = seed
        self.network = MemoryNetwork(seed)
        # Handshake nonces from the seed too, so a run is the same bytes every time.
        self._nonces = random.Random(seed)  # noqa: S311 - test determinism, not secrets
        self.batch_size = batch_size
        self.now = start
        self._store_factory = store_factory or (lambda _name: MemoryStore())
        self._epochs = 0
        self.stores: dict[str, Store] = {}
        self.replicas: dict[str, Replica] = {}
        self.links: dict[tuple[str, str], Link] = {}
        for name in names:
            self.stores[name] = self._store_factory(name)
            self.replicas[name] = self._open(name)

    # ------------------------------------------------------------------ replicas

    def wall_clock(self) -> int:
        """The cluster's fake physical time (every replica reads this)."""
        return self.now

    def advance(self, milliseconds: int) -> None:
        """Move the fake clock forward."""
        self.now += milliseconds

    def _open(self, name: str) -> Replica:
        member = self.fleet[name]
        self._epochs += 1
        return Replica(
            Identity(member.key, member.chain),
            self.fleet.anchors,
            self.stores[name],
            name=name,
            wall_clock=self.wall_clock,
            epoch=self.seed * 1_000_003 + self._epochs,
        )

    def __getitem__(self, name: str) -> Replica:
        return self.replicas[name]

    def restart(self, name: str, *, store: Store | None = None) -> Replica:
        """Drop a replica's memory and reopen it from its store (or from ``store``).

        Its links get fresh sessions, as after a process restart.
        """
        if store is not None:
            self.stores[name] = store
        self.replicas[name] = self._open(name)
        for key in list(self.links):
            if name in key:
                self.relink(*key)
        return self.replicas[name]

    # ------------------------------------------------------------------ links

    def link(self, a: str, b: str) -> Link:
        """Connect ``a`` and ``b`` with a new session pair (both sides start)."""
        a_end, b_end = self.network.connect(a, b)
        a_session = SyncSession(
            self.replicas[a], batch_size=self.batch_size, random_bytes=self._nonces.randbytes
        )
        b_session = SyncSession(
            self.replicas[b], batch_size=self.batch_size, random_bytes=self._nonces.randbytes
        )
        a_session.start()
        b_session.start()
        link = Link(a, b, a_session, b_session, a_end, b_end)
        self.links[(a, b)] = link
        return link

    def relink(self, a: str, b: str) -> Link:
        """Replace a link's sessions (after a restart or a broken connection)."""
        old = self.links.pop((a, b), None)
        if old is not None:
            for session, end in old.sessions():
                session.close("relink")
                end.close_nowait()
        return self.link(a, b)

    def partition(self, a: str, b: str) -> None:
        """Cut the network between two replicas (frames are lost)."""
        self.network.partition(a, b)

    def heal(self, a: str, b: str) -> None:
        """Restore the network between two replicas."""
        self.network.heal(a, b)

    # ------------------------------------------------------------------ moving frames

    def deliver(self) -> int:
        """Feed every frame waiting at an endpoint to its session; return how many."""
        return deliver(self.links.values())

    def pump(self, max_rounds: int = 10_000) -> int:
        """Move frames until nothing is in flight or queued; returns frames delivered."""
        return pump(self.network, self.links.values, max_rounds=max_rounds)

    def tick(self) -> None:
        """Let every session repair loss (what a coordinator does after a timeout)."""
        for link in self.links.values():
            for session, _ in link.sessions():
                if session.state is SessionState.CLOSED:
                    continue
                session.tick()

    def settle(self, max_ticks: int = 200) -> int:
        """Pump, then tick and pump again, until every open session is caught up.

        Returns:
            How many ticks it took (0 when the first pump sufficed).

        Raises:
            RuntimeError: if the cluster does not settle within ``max_ticks``.
        """
        for ticks in range(max_ticks):
            self.pump()
            if self.caught_up():
                return ticks
            self.tick()
        raise RuntimeError(f"cluster did not settle within {max_ticks} ticks")

    def caught_up(self) -> bool:
        """True when every session on an unpartitioned link is caught up."""
        for link in self.links.values():
            if self.network.partitioned(link.a, link.b):
                continue
            for session, _ in link.sessions():
                if session.state is SessionState.CLOSED or not session.caught_up:
                    return False
        return True

    def digests(self) -> dict[str, str]:
        """Every replica's state digest."""
        return {name: replica.digest() for name, replica in self.replicas.items()}


def sqlite_store_factory(directory: Path) -> StoreFactory:
    """A store factory that keeps each replica in ``directory/<name>.sqlite3``."""
    from souverix_crdt.store.sqlite import SqliteStore  # noqa: PLC0415  (optional adapter)

    def make(name: str) -> Store:
        return SqliteStore.open(directory / f"{name}.sqlite3")

    return make
