"""The Transport interface: a bidirectional pipe of frames to one peer, and nothing more.

Transports hold no protocol logic (that is the sans-IO session in :mod:`souverix_crdt.sync`):
they move opaque frames, each delivered whole or not at all. A transport may lose, duplicate or
reorder frames (the protocol tolerates it); it must never alter one.

Errors follow trio's split: :class:`~souverix_crdt.errors.TransportClosedError` when this side
closed it, :class:`~souverix_crdt.errors.TransportBrokenError` when the peer or the network
broke it.
"""

from __future__ import annotations

import abc

__all__ = ["DEFAULT_MAX_FRAME", "Transport"]

#: Frames larger than this are refused before allocation unless a transport is configured
#: otherwise.
DEFAULT_MAX_FRAME = 16 * 1024 * 1024


class Transport(abc.ABC):
    """A connected frame pipe to one peer."""

    #: A name for the peer at the other end (for logs, status and sync debt).
    peer: str = ""

    @abc.abstractmethod
    async def send(self, frame: bytes) -> None:
        """Send one frame.

        Raises:
            TransportClosedError: if this side closed the transport.
            TransportBrokenError: if the peer or the network broke it.
            FrameTooLargeError: if the frame exceeds the transport's limit.
        """

    @abc.abstractmethod
    async def receive(self) -> bytes:
        """Wait for the next frame.

        Raises:
            TransportClosedError: if this side closed the transport.
            TransportBrokenError: if the peer closed it or the network broke it.
        """

    @abc.abstractmethod
    async def close(self) -> None:
        """Close this side; idempotent. Pending receives raise ``TransportClosedError``."""

    @property
    @abc.abstractmethod
    def closed(self) -> bool:
        """True once :meth:`close` was called or the transport broke."""
