"""Hybrid logical clock (Kulkarni et al., 2014).

A :class:`Timestamp` is ``(wall, logical)``: ``wall`` in integer milliseconds since the epoch and
``logical`` a bounded counter that orders events within one millisecond. Timestamps are totally
ordered, compare as tuples and encode to 12 bytes (no floats anywhere).

The :class:`Clock` is the only object in the library that reads the wall clock, and it reads it
through an injected function, so tests run on a fake one. Its rules:

* ``now()`` (send or local event) and ``update(remote)`` (receive) return strictly increasing
  timestamps, also when the wall clock steps backwards.
* A remote timestamp more than ``max_offset`` ahead of the local *physical* clock raises
  :class:`~souverix_crdt.errors.ClockSkewError` and leaves the clock untouched: a single
  far-future timestamp would otherwise win every register it touched, forever (CockroachDB's rule).
  Old timestamps are accepted: air-gapped bundles can be days old.
* No remote timestamp can make a local event fail. A remote logical counter above
  ``max_logical`` (:attr:`~souverix_crdt.limits.Limits.max_remote_logical`) is refused like a
  far-future wall time (:class:`~souverix_crdt.errors.TooLargeError`, ``reason=
  "max_remote_logical"``, the clock untouched), and when the local counter reaches
  ``max_logical`` the clock moves its wall component one tick (1 ms) ahead instead, logical 0:
  still strictly increasing, and never more than ``max_offset`` plus a tick ahead of the
  fastest honest clock, since no accepted remote timestamp leads physical time by more. The
  counter itself never wraps; only a wall time at :data:`MAX_WALL` could overflow.
* A persisted high-water mark keeps a restarted process monotonic: the clock starts at or after
  ``floor`` and reports every advance to ``on_advance`` so the owner can persist it.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Callable
from typing import ClassVar, Final, NamedTuple

from .errors import ClockOverflowError, ClockSkewError, DecodeError, TooLargeError
from .limits import DEFAULT_LIMITS

__all__ = [
    "DEFAULT_MAX_OFFSET_MS",
    "MAX_LOGICAL",
    "MAX_WALL",
    "Clock",
    "Timestamp",
    "system_wall_clock",
]

#: Default bound on how far a remote timestamp may lead the local physical clock.
DEFAULT_MAX_OFFSET_MS: Final = 500
#: The logical counter is a 32-bit unsigned integer that never wraps.
MAX_LOGICAL: Final = 0xFFFF_FFFF
#: Wall time is a 64-bit unsigned count of milliseconds.
MAX_WALL: Final = 0xFFFF_FFFF_FFFF_FFFF

_ENCODING: Final = struct.Struct(">QI")


class _TimestampFields(NamedTuple):
    wall: int
    logical: int


class Timestamp(_TimestampFields):
    """A hybrid logical timestamp; ordered by ``(wall, logical)``.

    A tuple underneath, so comparing and hashing timestamps (the inner loop of every merge)
    runs at C speed.

    Attributes:
        wall: Milliseconds since the Unix epoch (the larger of physical and seen time).
        logical: Counter distinguishing events within one ``wall`` value.
    """

    __slots__ = ()

    def __new__(cls, wall: int, logical: int = 0) -> Timestamp:
        """Build a timestamp; raises ``DecodeError`` if a field is out of range."""
        # bool is an int subclass; refuse it so that True never sneaks in as a time.
        if type(wall) is not int or not 0 <= wall <= MAX_WALL:
            raise DecodeError(f"wall time out of range: {wall!r}", reason="hlc-wall")
        if type(logical) is not int or not 0 <= logical <= MAX_LOGICAL:
            raise DecodeError(f"logical counter out of range: {logical!r}", reason="hlc-logical")
        return super().__new__(cls, wall, logical)

    ZERO: ClassVar[Timestamp]  # assigned below the class

    def encode(self) -> bytes:
        """Return the 12-byte big-endian encoding; byte order equals timestamp order."""
        return _ENCODING.pack(self.wall, self.logical)

    @classmethod
    def decode(cls, data: bytes) -> Timestamp:
        """Decode 12 bytes produced by :meth:`encode`.

        Raises:
            DecodeError: if ``data`` is not exactly 12 bytes.
        """
        if len(data) != _ENCODING.size:
            raise DecodeError(
                f"timestamp must be {_ENCODING.size} bytes, got {len(data)}", reason="hlc-length"
            )
        wall, logical = _ENCODING.unpack(data)
        return cls(wall, logical)

    def to_list(self) -> list[int]:
        """Return ``[wall, logical]`` for msgpack encoding."""
        return [self.wall, self.logical]

    @classmethod
    def from_list(cls, value: object) -> Timestamp:
        """Build a timestamp from the ``[wall, logical]`` form; strict about types.

        Raises:
            DecodeError: if ``value`` is not a two-item list of in-range integers.
        """
        if not isinstance(value, list | tuple) or len(value) != 2:
            raise DecodeError(f"timestamp must be [wall, logical], got {value!r}", reason="hlc")
        return cls(value[0], value[1])

    def __str__(self) -> str:
        return f"{self.wall}.{self.logical}"

    def __repr__(self) -> str:
        return f"Timestamp(wall={self.wall}, logical={self.logical})"


Timestamp.ZERO = Timestamp(0, 0)


def system_wall_clock() -> int:
    """Read the system clock in integer milliseconds (the production wall clock)."""
    return time.time_ns() // 1_000_000


class Clock:
    """A hybrid logical clock with an injected wall clock.

    Args:
        wall_clock: Returns physical time in integer milliseconds. Only the clock calls it.
        max_offset: Milliseconds a remote timestamp may lead the local physical clock.
        floor: A persisted high-water mark; every timestamp issued is greater than it.
        on_advance: Called with each new timestamp, so the owner can persist the high-water mark.
        max_logical: Highest logical counter accepted from a remote timestamp, and the one at
            which the local clock moves its wall component a tick ahead instead of counting on
            (the same bound, so what this clock issues every peer accepts).
    """

    __slots__ = ("_last", "_on_advance", "_wall_clock", "max_logical", "max_offset")

    def __init__(
        self,
        wall_clock: Callable[[], int] = system_wall_clock,
        *,
        max_offset: int = DEFAULT_MAX_OFFSET_MS,
        floor: Timestamp = Timestamp.ZERO,
        on_advance: Callable[[Timestamp], None] | None = None,
        max_logical: int = DEFAULT_LIMITS.max_remote_logical,
    ) -> None:
        if max_offset < 0:
            raise ValueError("max_offset must be >= 0")
        if type(max_logical) is not int or not 0 < max_logical <= MAX_LOGICAL:
            raise ValueError(f"max_logical must be in [1, {MAX_LOGICAL}], got {max_logical!r}")
        self._wall_clock = wall_clock
        self.max_offset = max_offset
        self.max_logical = max_logical
        self._last = floor
        self._on_advance = on_advance

    @property
    def last(self) -> Timestamp:
        """The most recent timestamp issued or merged (the high-water mark)."""
        return self._last

    def physical(self) -> int:
        """Read the injected wall clock once, in milliseconds."""
        return self._wall_clock()

    def now(self) -> Timestamp:
        """Issue a timestamp for a local or send event, strictly greater than every earlier one.

        Never fails because of anything a peer sent: at ``max_logical`` the wall component
        moves one tick ahead instead.

        Raises:
            ClockOverflowError: only if the wall component is at :data:`MAX_WALL`.
        """
        physical = self._wall_clock()
        last = self._last
        if physical > last.wall:
            stamp = Timestamp(physical, 0)
        else:
            stamp = self._next(last.wall, last.logical)
        self._advance(stamp)
        return stamp

    def check(self, remote: Timestamp, *, physical: int | None = None) -> None:
        """Raise if ``remote`` is further ahead of local physical time than ``max_offset``.

        Also refuses a logical counter above ``max_logical``: inside ``max_offset`` such a
        timestamp would otherwise leave this clock with no room to count.

        Raises:
            ClockSkewError: if ``remote.wall - physical > max_offset``. The clock is unchanged.
            TooLargeError: ``reason="max_remote_logical"`` if ``remote.logical`` is above
                ``max_logical``. The clock is unchanged.
        """
        if remote.logical > self.max_logical:
            raise remote_logical_error(remote, self.max_logical)
        self._check_skew(remote, physical)

    def _check_skew(self, remote: Timestamp, physical: int | None) -> None:
        local = self._wall_clock() if physical is None else physical
        if remote.wall - local > self.max_offset:
            raise ClockSkewError(
                remote_wall=remote.wall, local_wall=local, max_offset=self.max_offset
            )

    def update(self, remote: Timestamp) -> Timestamp:
        """Merge a received timestamp and return a new one greater than both it and the last.

        Raises:
            ClockSkewError: if ``remote`` is more than ``max_offset`` ahead of physical time.
                The clock does not move.
            TooLargeError: ``reason="max_remote_logical"``, as :meth:`check`. The clock does
                not move.
            ClockOverflowError: only if the wall component is at :data:`MAX_WALL`.
        """
        physical = self._wall_clock()
        self.check(remote, physical=physical)
        last = self._last
        wall = max(last.wall, remote.wall, physical)
        if wall == last.wall and wall == remote.wall:
            stamp = self._next(wall, max(last.logical, remote.logical))
        elif wall == last.wall:
            stamp = self._next(wall, last.logical)
        elif wall == remote.wall:
            stamp = self._next(wall, remote.logical)
        else:
            stamp = Timestamp(wall, 0)
        self._advance(stamp)
        return stamp

    def observe(self, remote: Timestamp) -> None:
        """Merge ``remote`` into the high-water mark without issuing a new event.

        Used when applying already-ordered data (a writer's own log on restart): it guarantees
        later timestamps exceed ``remote`` without spending a logical tick.

        Any logical counter is taken (the data was verified before, and a counter at or above
        ``max_logical`` only makes the next local event tick the wall).

        Raises:
            ClockSkewError: as :meth:`update`.
        """
        self._check_skew(remote, None)
        if remote > self._last:
            self._advance(remote)

    def rewind(self, stamp: Timestamp) -> None:
        """Undo timestamps issued after ``stamp`` that were never published.

        Only for a write whose durable commit failed: its timestamp never left the process,
        so issuing it again later cannot reorder anything anyone has seen.
        """
        self._last = stamp
        if self._on_advance is not None:
            self._on_advance(stamp)

    def _next(self, wall: int, logical: int) -> Timestamp:
        """The timestamp right after ``(wall, logical)``: a wall tick once counting is full."""
        if logical < self.max_logical:
            return Timestamp(wall, logical + 1)
        if wall >= MAX_WALL:
            raise ClockOverflowError("wall time at its bound", reason="wall-overflow")
        return Timestamp(wall + 1, 0)

    def _advance(self, stamp: Timestamp) -> None:
        self._last = stamp
        if self._on_advance is not None:
            self._on_advance(stamp)


def remote_logical_error(remote: Timestamp, max_logical: int, **context: str) -> TooLargeError:
    """The error for a remote timestamp whose logical counter is above ``max_logical``."""
    return TooLargeError(
        f"remote timestamp {remote} has a logical counter above {max_logical}",
        reason="max_remote_logical",
        **context,
    )
