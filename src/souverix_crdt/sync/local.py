"""Driving sans-IO sessions in one process, step by step, over the in-memory network.

The federation manager and the test harness both run many session pairs over one seeded
:class:`~souverix_crdt.transports.memory.MemoryNetwork` and move frames only when told to: queued
frames onto the wire, one network tick, delivered frames into their sessions, until nothing is
left in flight. This module is that loop, once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Protocol

from souverix_crdt.errors import ProtocolError, TransportError
from souverix_crdt.transports.memory import MemoryNetwork, MemoryTransport

from .session import SyncSession

__all__ = ["PumpedLink", "deliver", "flush", "pump"]

Endpoint = tuple[SyncSession, MemoryTransport]


class PumpedLink(Protocol):
    """A link whose sessions :func:`pump` drives; it counts the peer's protocol errors."""

    protocol_errors: int

    def endpoints(self) -> Sequence[Endpoint]:
        """Each side's session with its transport end."""
        ...


def flush(links: Iterable[PumpedLink]) -> int:
    """Put every queued frame of every session on the wire; return how many."""
    moved = 0
    for link in links:
        for session, end in link.endpoints():
            for frame in session.data_to_send():
                try:
                    end.send_nowait(frame)
                except TransportError:
                    continue  # a broken end drops what it is given, like a cut wire
                moved += 1
    return moved


def deliver(links: Iterable[PumpedLink]) -> int:
    """Feed every frame waiting at an endpoint to its session; return how many."""
    received = 0
    for link in links:
        for session, end in link.endpoints():
            while True:
                try:
                    frame = end.receive_nowait()
                except TransportError:
                    break
                if frame is None:
                    break
                received += 1
                try:
                    session.receive(frame)
                except ProtocolError:
                    # The session stays usable or closed itself; the link keeps the count.
                    link.protocol_errors += 1
    return received


def pump(
    network: MemoryNetwork,
    links: Callable[[], Iterable[PumpedLink]],
    *,
    max_rounds: int = 10_000,
) -> int:
    """Move frames over ``links()`` until none is queued or in flight; return frames delivered.

    ``links`` is called every round, so links that go down or come up between rounds are
    honoured.

    Raises:
        RuntimeError: if traffic has not stopped after ``max_rounds`` rounds.
    """
    total = 0
    for _ in range(max_rounds):
        sent = flush(links())
        network.step()
        received = deliver(links())
        total += received
        if not sent and not received and not network.totals.in_flight:
            return total
    raise RuntimeError(f"sessions still busy after {max_rounds} rounds")
