"""The transport conformance suite: what every :class:`~souverix_crdt.transports.Transport` does.

Every transport (memory, TCP, NATS, file bundles) runs the same checks, the way automerge-repo's
adapters run its shipped adapter tests. A transport describes itself with a small async factory
and a few capability flags; the suite does the rest::

    network = MemoryNetwork(seed=0)

    async def make_pair() -> tuple[Transport, Transport]:
        return network.connect("a", "b")

    suite = TransportConformance(make_pair=make_pair, pump=network.pump)
    await suite.run_all()

or, one pytest test per check::

    @pytest.mark.parametrize("name", TransportConformance.check_names())
    def test_conformance(name: str) -> None:
        asyncio.run(make_suite().run(name))

The contract the checks hold a transport to:

* A frame arrives whole and byte-identical, as ``bytes``, or not at all; a transport never
  splits, merges or alters frames.
* **Empty frames are valid** and arrive as ``b""``: the end of a transport is always an
  exception, never an empty read. (Stream transports must length-prefix even empty frames.)
* ``reliable=True``: every frame sent before a close arrives exactly once. ``reliable=False``
  (lossy, duplicating transports such as a faulty memory network): only frames that were sent
  arrive, perhaps not all, perhaps twice.
* ``ordered=True``: per direction, frames arrive in the order they were sent.
* A frame of exactly ``max_frame`` bytes passes; a longer one is refused by ``send`` with
  :class:`~souverix_crdt.errors.FrameTooLargeError` (carrying ``size`` and ``limit``) and the
  transport stays usable. With an ``inject_oversized`` hook, the receiving side refuses an
  over-limit frame too (before allocating it, for stream transports).
* ``close`` is idempotent and makes ``closed`` true; afterwards our ``send`` and ``receive`` raise
  :class:`~souverix_crdt.errors.TransportClosedError`, and a ``receive`` pending at the time
  wakes up with it.
* The peer receives what we sent before closing, then
  :class:`~souverix_crdt.errors.TransportBrokenError` (a pending ``receive`` wakes up with it),
  and ``closed`` is then true on its side as well. Its ``send`` either raises
  ``TransportBrokenError`` or is silently lost; never ``TransportClosedError``.
* Cancelling a waiting ``receive`` loses no frame.

Hooks:

* ``pump``: for transports that move frames only when told (the memory network). After it
  returns, every frame sent so far has either been lost or can be received without waiting.
  Required when ``reliable=False`` (the suite then collects "whatever is ready" after pumping).
* ``inject_oversized``: given an endpoint, put one frame of ``max_frame + 1`` bytes on the wire
  from it, bypassing its own send check (a hostile peer).

The suite never waits on the wall clock to synchronise. :meth:`TransportConformance.run` guards
each check with a ``timeout`` only so that a transport that hangs fails instead of stalling the
test run.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any, Final, TypeVar

import attrs

from souverix_crdt.errors import (
    FrameTooLargeError,
    TransportBrokenError,
    TransportClosedError,
    TransportError,
)
from souverix_crdt.transports.base import DEFAULT_MAX_FRAME, Transport

__all__ = [
    "ConformanceError",
    "PairFactory",
    "Pump",
    "TransportConformance",
]

#: Makes a fresh connected pair of transports, one per check.
PairFactory = Callable[[], Awaitable[tuple[Transport, Transport]]]
#: Moves the frames of transports that move only when told; see the module documentation.
Pump = Callable[[], Awaitable[object]]

_Check = Callable[["TransportConformance"], Coroutine[Any, Any, None]]
_CheckT = TypeVar("_CheckT", bound=_Check)

#: Requirements of each check, by method name, in definition order (the order checks run in).
_REQUIREMENTS: dict[str, frozenset[str]] = {}
#: Event-loop turns a task is given to reach its ``await`` (never wall-clock time).
_SETTLE_TURNS: Final = 10


class ConformanceError(AssertionError):
    """A transport broke the contract; the message names the check and what went wrong."""


def _check(*requires: str) -> Callable[[_CheckT], _CheckT]:
    """Register a check method; ``requires`` names capability flags it needs."""

    def register(method: _CheckT) -> _CheckT:
        _REQUIREMENTS[method.__name__] = frozenset(requires)
        return method

    return register


def _expect(condition: bool, message: str) -> None:
    if not condition:
        raise ConformanceError(message)


async def _settle() -> None:
    """Give other tasks a few turns of the event loop (a receive reaches its wait)."""
    for _ in range(_SETTLE_TURNS):
        await asyncio.sleep(0)


async def _expect_raises(
    error: type[BaseException], awaitable: Awaitable[object], what: str
) -> BaseException:
    try:
        result = await awaitable
    except error as exc:
        return exc
    except BaseException as exc:
        raise ConformanceError(
            f"{what}: expected {error.__name__}, got {type(exc).__name__}: {exc}"
        ) from exc
    raise ConformanceError(f"{what}: expected {error.__name__}, got {result!r}")


def _pattern(size: int, salt: int) -> bytes:
    """``size`` bytes that differ from frame to frame and are not all zero."""
    block = hashlib.sha256(salt.to_bytes(8, "big")).digest()
    return (block * (size // len(block) + 1))[:size]


@attrs.frozen(kw_only=True)
class TransportConformance:
    """The conformance checks, bound to one transport.

    Attributes:
        make_pair: Makes a fresh connected pair; every check uses its own and closes both ends.
        pump: Moves frames for transports that move only when told (see the module docs).
        ordered: Whether the transport keeps each direction's frames in order.
        reliable: Whether every frame sent arrives exactly once.
        max_frame: The transport's frame limit, in bytes.
        inject_oversized: Puts an over-limit frame on the wire from the given endpoint;
            enables :meth:`check_oversized_frame_refused_at_receive`.
        frames: How many frames the "many frames" checks send each way.
        seed: Seeds the frame sizes, so every run sends the same frames.
        timeout: Wall-clock guard per check in :meth:`run`, in seconds (a hang fails, nothing
            else depends on it).
    """

    make_pair: PairFactory
    pump: Pump | None = None
    ordered: bool = True
    reliable: bool = True
    max_frame: int = DEFAULT_MAX_FRAME
    inject_oversized: Callable[[Transport], Awaitable[object]] | None = None
    frames: int = 200
    seed: int = 0
    timeout: float = 60.0

    def __attrs_post_init__(self) -> None:
        if not self.reliable and self.pump is None:
            raise ValueError("a transport that is not reliable needs a pump hook")
        # The checks' own frames need a little room (a 5-byte header on the many-frames check).
        if self.max_frame < 64 or self.frames < 1:
            raise ValueError("max_frame must be at least 64 bytes and frames at least 1")

    # ------------------------------------------------------------------ running

    @classmethod
    def check_names(
        cls, *, ordered: bool = True, reliable: bool = True, receive_limit: bool = False
    ) -> tuple[str, ...]:
        """The names of the checks that apply to a transport with these capabilities.

        Args:
            ordered: The transport keeps frames in order.
            reliable: The transport delivers every frame exactly once.
            receive_limit: An ``inject_oversized`` hook is available.
        """
        have = {
            name
            for name, flag in (
                ("ordered", ordered),
                ("reliable", reliable),
                ("receive_limit", receive_limit),
            )
            if flag
        }
        return tuple(name for name, needs in _REQUIREMENTS.items() if needs <= have)

    def applicable_checks(self) -> tuple[str, ...]:
        """The names of the checks that apply to this transport."""
        return self.check_names(
            ordered=self.ordered,
            reliable=self.reliable,
            receive_limit=self.inject_oversized is not None,
        )

    async def run(self, name: str) -> None:
        """Run one check by name, under the ``timeout`` guard.

        Raises:
            ConformanceError: if the transport fails the check or hangs.
            ValueError: if there is no such check or it does not apply to this transport.
        """
        if name not in self.applicable_checks():
            known = "does not apply to this transport" if name in _REQUIREMENTS else "is unknown"
            raise ValueError(f"check {name!r} {known}")
        check: Callable[[], Awaitable[None]] = getattr(self, name)
        try:
            async with asyncio.timeout(self.timeout):
                await check()
        except TimeoutError as exc:
            raise ConformanceError(
                f"{name}: did not finish within {self.timeout} s (a receive or send hangs)"
            ) from exc

    async def run_all(self) -> tuple[str, ...]:
        """Run every applicable check; return their names.

        Raises:
            ConformanceError: at the first check the transport fails.
        """
        names = self.applicable_checks()
        for name in names:
            await self.run(name)
        return names

    # ------------------------------------------------------------------ helpers

    async def _pair(self) -> tuple[Transport, Transport]:
        a, b = await self.make_pair()
        _expect(not a.closed and not b.closed, "make_pair: a new pair must be open")
        return a, b

    async def _pump(self) -> None:
        if self.pump is not None:
            await self.pump()

    @staticmethod
    async def _close_all(*transports: Transport) -> None:
        for transport in transports:
            await transport.close()

    async def _receive_ready(self, transport: Transport) -> list[bytes]:
        """Every frame ``transport`` can receive without waiting (after a pump)."""
        frames: list[bytes] = []
        while True:
            task = asyncio.ensure_future(transport.receive())
            await _settle()
            if not task.done():
                task.cancel()
            # asyncio.wait never raises the task's error, and lets our own cancellation through.
            await asyncio.wait([task])
            if task.cancelled():
                return frames
            error = task.exception()
            if isinstance(error, TransportBrokenError):
                return frames
            frames.append(task.result())

    async def _transfer(
        self, flows: Sequence[tuple[Transport, Transport, Sequence[bytes]]]
    ) -> list[list[bytes]]:
        """Send each flow's frames from its sender; return what each receiver got.

        Reliable transports: receivers run while senders send (a stream transport may block a
        sender until its peer reads) and stop after as many frames as were sent. Otherwise:
        send, pump, and take whatever is ready.
        """
        if not self.reliable:
            for sender, _, frames in flows:
                for frame in frames:
                    await sender.send(frame)
            await self._pump()
            return [await self._receive_ready(receiver) for _, receiver, _ in flows]

        async def receive_n(receiver: Transport, count: int) -> list[bytes]:
            return [await receiver.receive() for _ in range(count)]

        async def send_all(sender: Transport, frames: Sequence[bytes]) -> None:
            for frame in frames:
                await sender.send(frame)

        receivers = [
            asyncio.ensure_future(receive_n(receiver, len(frames))) for _, receiver, frames in flows
        ]
        try:
            await asyncio.gather(*(send_all(sender, frames) for sender, _, frames in flows))
            await self._pump()
            return list(await asyncio.gather(*receivers))
        finally:
            for task in receivers:
                task.cancel()
            await asyncio.wait(receivers)

    def _expect_delivery(self, what: str, sent: Sequence[bytes], received: Sequence[bytes]) -> None:
        """Hold ``received`` to the contract for ``sent``, given the capability flags."""
        for frame in received:
            _expect(
                type(frame) is bytes,
                f"{what}: receive returned {type(frame).__name__}, not bytes",
            )
        known = set(sent)
        stray = [frame for frame in received if frame not in known]
        _expect(
            not stray,
            f"{what}: {len(stray)} received frame(s) were never sent (altered, split or "
            f"merged), first of {len(stray[0]) if stray else 0} bytes",
        )
        if self.reliable and self.ordered:
            _expect(
                list(received) == list(sent),
                f"{what}: sent {len(sent)} frames, received {len(received)}, not the same in order",
            )
        elif self.reliable:
            _expect(
                sorted(received) == sorted(sent),
                f"{what}: sent {len(sent)} frames, received {len(received)}: not each exactly once",
            )
        elif self.ordered:
            # Lossy but ordered: ``received`` must be a subsequence of ``sent``, where a frame
            # may repeat (a duplicate travels right behind its original). Greedy earliest
            # matching decides that exactly, even when ``sent`` holds equal frames.
            cursor = 0
            for frame in received:
                while cursor < len(sent) and sent[cursor] != frame:
                    cursor += 1
                _expect(cursor < len(sent), f"{what}: frames arrived out of order")

    # ------------------------------------------------------------------ checks

    @_check()
    async def check_frames_arrive_intact(self) -> None:
        """Frames of assorted shapes arrive whole, byte-identical, as ``bytes``."""
        sent = [
            b"x",
            bytes(range(256)),
            b"\x00" * 64,
            b"\xff" * 65,
            (4).to_bytes(4, "big") + b"look-alike length prefix",
            b"\r\n\r\n",
            _pattern(4096, 1),
            _pattern(65_537, 2),
        ]
        sent = [frame for frame in sent if len(frame) <= self.max_frame]
        a, b = await self._pair()
        try:
            (received,) = await self._transfer([(a, b, sent)])
            self._expect_delivery("frames_arrive_intact", sent, received)
        finally:
            await self._close_all(a, b)

    @_check()
    async def check_empty_frame(self) -> None:
        """An empty frame is a frame: it arrives as ``b""`` and does not end the transport."""
        sent = [b"", b"after-empty", b""]
        a, b = await self._pair()
        try:
            (received,) = await self._transfer([(a, b, sent)])
            if self.reliable and self.ordered:
                _expect(received == sent, f"empty_frame: received {received!r}, sent {sent!r}")
            else:
                self._expect_delivery("empty_frame", sent, received)
            _expect(not b.closed, "empty_frame: an empty frame closed the receiver")
        finally:
            await self._close_all(a, b)

    @_check()
    async def check_many_frames_both_directions(self) -> None:
        """Many frames of varied sizes, both ways at once: each side gets exactly the other's."""
        rng = random.Random(self.seed)  # noqa: S311 - reproducible frame sizes, not crypto
        limit = min(self.max_frame, 8192)

        def frames(side: int) -> list[bytes]:
            return [
                side.to_bytes(1, "big")
                + index.to_bytes(4, "big")
                + _pattern(rng.randrange(limit - 4), side * 1_000_000 + index)
                for index in range(self.frames)
            ]

        to_b, to_a = frames(1), frames(2)
        a, b = await self._pair()
        try:
            at_b, at_a = await self._transfer([(a, b, to_b), (b, a, to_a)])
            self._expect_delivery("many_frames a->b", to_b, at_b)
            self._expect_delivery("many_frames b->a", to_a, at_a)
            if self.pump is not None and self.reliable:
                extra = await self._receive_ready(b) + await self._receive_ready(a)
                _expect(not extra, f"many_frames: {len(extra)} frame(s) arrived more than once")
        finally:
            await self._close_all(a, b)

    @_check("ordered")
    async def check_order_preserved(self) -> None:
        """One direction's frames arrive in the order they were sent, even when tiny."""
        sent = [index.to_bytes(4, "big") for index in range(self.frames * 5)]
        a, b = await self._pair()
        try:
            (received,) = await self._transfer([(a, b, sent)])
            self._expect_delivery("order_preserved", sent, received)
        finally:
            await self._close_all(a, b)

    @_check()
    async def check_largest_frame_passes(self) -> None:
        """A frame of exactly ``max_frame`` bytes is accepted and arrives whole."""
        frame = _pattern(self.max_frame, 3)
        a, b = await self._pair()
        try:
            (received,) = await self._transfer([(a, b, [frame])])
            self._expect_delivery("largest_frame_passes", [frame], received)
        finally:
            await self._close_all(a, b)

    @_check()
    async def check_oversized_frame_refused_at_send(self) -> None:
        """A frame over the limit is refused by ``send``; the transport stays usable."""
        a, b = await self._pair()
        try:
            error = await _expect_raises(
                FrameTooLargeError,
                a.send(bytes(self.max_frame + 1)),
                "oversized_frame_refused_at_send",
            )
            assert isinstance(error, FrameTooLargeError)
            _expect(
                (error.size, error.limit) == (self.max_frame + 1, self.max_frame),
                f"oversized_frame_refused_at_send: size/limit {error.size}/{error.limit}, "
                f"expected {self.max_frame + 1}/{self.max_frame}",
            )
            _expect(not a.closed, "oversized_frame_refused_at_send: the refusal closed the sender")
            (received,) = await self._transfer([(a, b, [b"still-usable"])])
            self._expect_delivery("oversized_frame_refused_at_send", [b"still-usable"], received)
        finally:
            await self._close_all(a, b)

    @_check("receive_limit")
    async def check_oversized_frame_refused_at_receive(self) -> None:
        """An over-limit frame from a hostile peer is refused by ``receive``."""
        assert self.inject_oversized is not None
        a, b = await self._pair()
        try:
            await self.inject_oversized(a)
            await self._pump()
            error = await _expect_raises(
                FrameTooLargeError, b.receive(), "oversized_frame_refused_at_receive"
            )
            assert isinstance(error, FrameTooLargeError)
            _expect(
                error.limit == self.max_frame and error.size > self.max_frame,
                f"oversized_frame_refused_at_receive: size/limit {error.size}/{error.limit}",
            )
        finally:
            await self._close_all(a, b)

    @_check()
    async def check_close_is_idempotent(self) -> None:
        """``close`` may be called again, on either side, in any order; ``closed`` turns true."""
        a, b = await self._pair()
        await a.close()
        await a.close()
        _expect(a.closed, "close_is_idempotent: closed is false after close()")
        await b.close()
        await b.close()
        await a.close()
        _expect(b.closed, "close_is_idempotent: closed is false after close()")

    @_check()
    async def check_use_after_close(self) -> None:
        """After our ``close``, our ``send`` and ``receive`` raise ``TransportClosedError``."""
        a, b = await self._pair()
        try:
            await b.send(b"unread")
            await self._pump()
            await a.close()
            await _expect_raises(TransportClosedError, a.send(b"x"), "use_after_close: send")
            await _expect_raises(TransportClosedError, a.receive(), "use_after_close: receive")
        finally:
            await self._close_all(a, b)

    @_check()
    async def check_own_close_wakes_pending_receive(self) -> None:
        """A ``receive`` waiting when we close wakes up with ``TransportClosedError``."""
        a, b = await self._pair()
        try:
            pending = asyncio.ensure_future(b.receive())
            await _settle()
            _expect(not pending.done(), "own_close_wakes_pending_receive: receive did not wait")
            await b.close()
            await _expect_raises(TransportClosedError, pending, "own_close_wakes_pending_receive")
        finally:
            await self._close_all(a, b)

    @_check()
    async def check_peer_close_wakes_pending_receive(self) -> None:
        """A ``receive`` waiting when the peer closes wakes up with ``TransportBrokenError``."""
        a, b = await self._pair()
        try:
            pending = asyncio.ensure_future(b.receive())
            await _settle()
            _expect(not pending.done(), "peer_close_wakes_pending_receive: receive did not wait")
            await a.close()
            await self._pump()
            await _expect_raises(TransportBrokenError, pending, "peer_close_wakes_pending_receive")
            _expect(b.closed, "peer_close_wakes_pending_receive: closed is false once broken")
        finally:
            await self._close_all(a, b)

    @_check()
    async def check_frames_before_close_then_broken(self) -> None:
        """The peer receives what we sent before closing, then ``TransportBrokenError``."""
        sent = [b"one", b"two", _pattern(10_000, 4)]
        sent = [frame for frame in sent if len(frame) <= self.max_frame]
        a, b = await self._pair()
        try:
            for frame in sent:
                await a.send(frame)
            await a.close()
            await self._pump()
            received: list[bytes] = []
            # A duplicating transport may deliver up to twice as many frames as were sent.
            for _ in range(2 * len(sent) + 1):
                try:
                    received.append(await b.receive())
                except TransportBrokenError:
                    break
                except TransportError as exc:
                    raise ConformanceError(
                        "frames_before_close_then_broken: expected TransportBrokenError after "
                        f"the frames, got {type(exc).__name__}: {exc}"
                    ) from exc
            else:
                raise ConformanceError(
                    "frames_before_close_then_broken: receive kept returning frames after close"
                )
            self._expect_delivery("frames_before_close_then_broken", sent, received)
            _expect(b.closed, "frames_before_close_then_broken: closed is false once broken")
            await _expect_raises(
                TransportBrokenError, b.receive(), "frames_before_close_then_broken: again"
            )
        finally:
            await self._close_all(a, b)

    @_check()
    async def check_send_after_peer_close(self) -> None:
        """Sending to a closed peer raises ``TransportBrokenError`` or is lost; never Closed."""
        a, b = await self._pair()
        try:
            await b.close()
            await self._pump()
            for attempt in range(3):
                try:
                    await a.send(b"to-a-closed-peer")
                except TransportBrokenError:
                    break
                except TransportError as exc:
                    raise ConformanceError(
                        f"send_after_peer_close: attempt {attempt} raised {type(exc).__name__}"
                        ", expected TransportBrokenError or nothing"
                    ) from exc
                await self._pump()
        finally:
            await self._close_all(a, b)

    @_check("reliable")
    async def check_cancelled_receive_loses_nothing(self) -> None:
        """A waiting ``receive`` that is cancelled takes no frame with it."""
        a, b = await self._pair()
        try:
            pending = asyncio.ensure_future(b.receive())
            await _settle()
            _expect(not pending.done(), "cancelled_receive_loses_nothing: receive did not wait")
            pending.cancel()
            await asyncio.wait([pending])
            _expect(pending.cancelled(), "cancelled_receive_loses_nothing: not cancelled")
            (received,) = await self._transfer([(a, b, [b"after-cancel", b"next"])])
            self._expect_delivery(
                "cancelled_receive_loses_nothing", [b"after-cancel", b"next"], received
            )
        finally:
            await self._close_all(a, b)
