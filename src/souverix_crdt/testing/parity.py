"""One seeded federation scenario, run over any transport; every run must end in the same state.

The scenario: ``global``, ``region-a`` and ``edge-a1`` write at their levels (and above their
own: the region overrides the edge's policy, global overrides both), sync to convergence, are cut
apart for three hours while both sides keep writing (concurrent writes to the same keys
included), then heal and sync to convergence again. Everything is seeded and the wall clock is
fake, so the replicas' states — and their digests — depend only on the seed, never on the
transport that carried the data. Comparing digests across transports is the parity check of
DESIGN.md §5 ("the same scenario runs over every transport and must end in the same digest").

A transport takes part through a :class:`Fabric`: ``sync(lower, upper)`` runs the two replicas
until both hold what the other can send them. :class:`SessionFabric` does it for any
:class:`~souverix_crdt.transports.base.Transport` with a sync session (the lower replica dials,
through :meth:`~souverix_crdt.plane.coordinator.SyncCoordinator.sync_once`); bundles implement it
with files. Adding a transport to the parity test is writing its ``connect``::

    class MyFabric(SessionFabric):
        async def open(self, lower: Replica, upper: Replica) -> Transport:
            ...  # start ``self.serve(upper, server_end)`` for the upper side, return the client end

    outcome = await run_parity_scenario(MyFabric())
    assert outcome.digests == reference.digests
"""

from __future__ import annotations

import abc
import asyncio
import random
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final, Protocol

import attrs

from souverix_crdt.plane.coordinator import LinkConfig, SyncCoordinator, SyncMode, SyncOutcome
from souverix_crdt.replica import Identity, Replica
from souverix_crdt.store.memory import MemoryStore
from souverix_crdt.sync.driver import run_session
from souverix_crdt.sync.session import SyncSession
from souverix_crdt.transports.base import Transport

from .fleet import NOW, Fleet, make_fleet

__all__ = [
    "PARITY_LINKS",
    "PARITY_MEMBERS",
    "Fabric",
    "ParityOutcome",
    "SessionFabric",
    "converge",
    "make_parity_replicas",
    "run_parity_scenario",
]

#: The replicas of the scenario, parents first.
PARITY_MEMBERS: Final = ("global", "region-a", "edge-a1")
#: Its links, ``(lower, upper)``: the lower replica dials the upper one.
PARITY_LINKS: Final = (("region-a", "global"), ("edge-a1", "region-a"))

_SCOPES: Final = {
    "global": "global",
    "region-a": "global/region-a",
    "edge-a1": "global/region-a/edge-a1",
}
# Seconds a session may take to settle before the scenario calls the transport broken.
_SESSION_TIMEOUT: Final = 30.0


class Fabric(Protocol):
    """Carries data between two replicas of the scenario."""

    async def sync(self, lower: Replica, upper: Replica) -> None:
        """Run until each holds everything of its interest that the other holds."""
        ...


@attrs.frozen(kw_only=True)
class ParityOutcome:
    """How the scenario ended on one transport.

    Attributes:
        digests: Each replica's state digest.
        conflicts: Each replica's count of settled conflicts.
        values: A few values every transport must agree on, for readable failures.
    """

    digests: Mapping[str, str]
    conflicts: Mapping[str, int]
    values: Mapping[str, Any]


class SessionFabric(abc.ABC):
    """Syncs a pair through live sessions over some transport.

    The lower replica dials with a coordinator's :meth:`~SyncCoordinator.sync_once` (which
    closes the session once it has settled both ways); the upper side runs a plain session.
    Subclasses implement :meth:`open`.
    """

    def __init__(self) -> None:
        self._served: list[asyncio.Task[None]] = []

    @abc.abstractmethod
    async def open(self, lower: Replica, upper: Replica) -> Transport:
        """Connect ``lower`` to ``upper``; start the upper side with :meth:`serve`.

        Returns:
            The lower side's end.
        """

    def serve(self, upper: Replica, transport: Transport) -> None:
        """Run ``upper``'s side of a session on ``transport`` in the background."""

        async def run() -> None:
            try:
                await run_session(SyncSession(upper), transport)
            finally:
                await transport.close()

        self._served.append(asyncio.ensure_future(run()))

    async def sync(self, lower: Replica, upper: Replica) -> None:
        """One settled session, dialled by ``lower``.

        Raises:
            RuntimeError: the session did not settle.
        """

        async def connect() -> Transport:
            return await self.open(lower, upper)

        link = LinkConfig.upstream(
            peer=upper.name,
            connect=connect,
            mode=SyncMode.SCHEDULED,
            session_timeout=_SESSION_TIMEOUT,
        )
        # Seeded: no retry happens in sync_once, but nothing here should draw from the system.
        coordinator = SyncCoordinator(lower, [link], rng=random.Random(0))  # noqa: S311
        try:
            result = await coordinator.sync_once(upper.name)
        finally:
            await coordinator.stop()
        if result.outcome is not SyncOutcome.SETTLED:
            raise RuntimeError(f"{lower.name} -> {upper.name}: {result.outcome.value}") from (
                result.error
            )
        # The upper side ends when it reads the close; let it, so nothing runs between syncs.
        served, self._served = self._served, []
        async with asyncio.timeout(_SESSION_TIMEOUT):
            await asyncio.gather(*served)

    async def aclose(self) -> None:
        """Stop any upper side still running."""
        for task in self._served:
            task.cancel()
        if self._served:
            await asyncio.wait(self._served)


class _Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> int:
        return self.now


def make_parity_replicas(fleet: Fleet, clock: Callable[[], int]) -> dict[str, Replica]:
    """The scenario's replicas: in-memory stores, fixed epochs, one fake wall clock."""
    replicas = {}
    for index, name in enumerate(PARITY_MEMBERS, start=1):
        member = fleet[name]
        replicas[name] = Replica(
            Identity(member.key, member.chain),
            fleet.anchors,
            MemoryStore(),
            name=name,
            wall_clock=clock,
            epoch=index,
        )
    return replicas


async def converge(
    fabric: Fabric,
    replicas: Mapping[str, Replica],
    links: Sequence[tuple[str, str]] = PARITY_LINKS,
    *,
    max_passes: int = 6,
) -> int:
    """Sync every link, pass after pass, until a whole pass changes no replica.

    Returns:
        The passes it took.

    Raises:
        RuntimeError: if the replicas still change after ``max_passes``.
    """
    for passes in range(1, max_passes + 1):
        before = {name: replica.digest() for name, replica in replicas.items()}
        for lower, upper in links:
            await fabric.sync(replicas[lower], replicas[upper])
        if {name: replica.digest() for name, replica in replicas.items()} == before:
            return passes
    raise RuntimeError(f"no convergence after {max_passes} passes")


async def run_parity_scenario(
    fabric: Fabric, *, seed: int = 7, fleet: Fleet | None = None
) -> ParityOutcome:
    """Run the scenario over ``fabric``; see the module documentation.

    Raises:
        AssertionError: if the replicas do not converge to one state within the transport.
    """
    fleet = make_fleet() if fleet is None else fleet
    clock = _Clock()
    replicas = make_parity_replicas(fleet, clock)
    rng = random.Random(seed)  # noqa: S311 - a reproducible scenario, not cryptography

    def tick(seconds: int = 1) -> None:
        clock.now += seconds * 1000

    def write(name: str, scope: str, collection: str, key: str, value: Any) -> None:
        replicas[name].scope(scope).collection(collection).set(key, value)
        tick()

    # Connected: every level writes its own scope, and above it the scopes below.
    write("global", "global", "policies", "max-unavailable", "10%")
    write("global", "global", "versions", "agent", "1.0.0")
    write("region-a", _SCOPES["region-a"], "policies", "max-unavailable", "20%")
    write("region-a", _SCOPES["edge-a1"], "policies", "maintenance-window", "02:00")
    for index in range(rng.randint(3, 6)):
        write("edge-a1", _SCOPES["edge-a1"], "nodes", f"node-{index}", {"status": "up"})
    await converge(fabric, replicas)

    # Cut off for three hours; both sides keep writing, some of it to the same keys.
    tick(60)
    for _ in range(rng.randint(4, 8)):
        index = rng.randrange(8)
        status = rng.choice(["up", "degraded", "down"])
        write("edge-a1", _SCOPES["edge-a1"], "nodes", f"node-{index}", {"status": status})
    write("edge-a1", _SCOPES["edge-a1"], "policies", "maintenance-window", "04:00")
    write("region-a", _SCOPES["edge-a1"], "policies", "maintenance-window", "03:00")
    write("region-a", _SCOPES["region-a"], "versions", "agent", f"1.{rng.randint(1, 9)}.0")
    write("global", "global", "policies", "max-unavailable", f"{rng.randint(5, 30)}%")
    write("global", _SCOPES["edge-a1"], "policies", "log-level", "debug")
    tick(3 * 3600)

    # Healed: everything meets again.
    await converge(fabric, replicas)
    write("edge-a1", _SCOPES["edge-a1"], "nodes", "node-0", {"status": "up", "healed": True})
    await converge(fabric, replicas)

    digests = {name: replica.digest() for name, replica in replicas.items()}
    # Within one transport every replica holds the same: this scenario's interests overlap
    # on every scope written (edge-a1 receives its ancestors, global everything).
    assert len(set(digests.values())) == 1, digests
    edge = replicas["edge-a1"]
    return ParityOutcome(
        digests=digests,
        conflicts={name: len(replica.conflicts()) for name, replica in replicas.items()},
        values={
            "window": edge.get(_SCOPES["edge-a1"], "policies", "maintenance-window"),
            "max-unavailable": edge.effective(_SCOPES["edge-a1"], "policies", "max-unavailable"),
            "agent": edge.effective(_SCOPES["edge-a1"], "versions", "agent"),
        },
    )
