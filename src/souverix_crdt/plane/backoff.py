"""Exponential backoff with jitter: a pure policy, reused by reconnects and the sync coordinator.

A :class:`Backoff` only computes delays; it never sleeps and never draws its own randomness. The
caller owns both, so tests inject a fake sleep and a fixed random source and nothing waits on the
wall clock::

    policy = Backoff(initial=0.5, multiplier=2.0, maximum=30.0, jitter=0.2)
    rng = random.Random(7)
    for attempt in itertools.count():
        try:
            return await connect()
        except TransportBrokenError:
            await sleep(policy.delay(attempt, rng))

The delay before retry ``attempt`` (0 for the first retry) is::

    base  = min(maximum, initial * multiplier ** attempt)
    delay = base * (1 - jitter * r)        r = rng.random() in [0, 1)

Jitter only ever shortens a delay, so ``base * (1 - jitter) < delay <= base <= maximum``: the cap
holds without clamping, and replicas that lost the same peer at the same moment still spread
their retries once they reach the cap (clamping symmetric jitter would line them up again at
exactly ``maximum``).
"""

from __future__ import annotations

import math
from typing import Protocol

import attrs

__all__ = ["Backoff", "RandomSource"]


class RandomSource(Protocol):
    """Where jitter comes from: :class:`random.Random` fits, and so does a test's fake."""

    def random(self) -> float:
        """A float in ``[0, 1)``."""
        ...


def _non_negative(instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not (isinstance(value, int | float) and not isinstance(value, bool)) or not (
        math.isfinite(value) and value >= 0
    ):
        raise ValueError(f"{attribute.name} must be a finite number >= 0, got {value!r}")


@attrs.frozen(kw_only=True)
class Backoff:
    """An exponential backoff schedule with bounded, downward jitter.

    Attributes:
        initial: The delay before the first retry, in seconds, before jitter.
        multiplier: How much each further retry multiplies the delay (at least 1).
        maximum: The cap on any delay, in seconds (at least ``initial``).
        jitter: The fraction of a delay that jitter may remove, in ``[0, 1]``; 0 makes the
            schedule deterministic.
    """

    initial: float = attrs.field(default=0.5, validator=_non_negative)
    multiplier: float = attrs.field(default=2.0, validator=_non_negative)
    maximum: float = attrs.field(default=30.0, validator=_non_negative)
    jitter: float = attrs.field(default=0.2, validator=_non_negative)

    def __attrs_post_init__(self) -> None:
        if self.multiplier < 1:
            raise ValueError(f"multiplier must be >= 1, got {self.multiplier!r}")
        if self.maximum < self.initial:
            raise ValueError(f"maximum {self.maximum!r} is below initial {self.initial!r}")
        if self.jitter > 1:
            raise ValueError(f"jitter must be a fraction in [0, 1], got {self.jitter!r}")

    def base(self, attempt: int) -> float:
        """The delay before retry ``attempt`` without jitter: exponential, capped at ``maximum``.

        Raises:
            ValueError: if ``attempt`` is negative.
        """
        if attempt < 0:
            raise ValueError(f"attempt must be >= 0, got {attempt!r}")
        if self.initial == 0:
            return 0.0
        try:
            grown = self.initial * self.multiplier**attempt
        except OverflowError:  # a retry loop that ran for ever: long past the cap
            return self.maximum
        return min(self.maximum, grown)

    def delay(self, attempt: int, rng: RandomSource) -> float:
        """The delay before retry ``attempt`` (0 for the first retry), in seconds.

        Args:
            attempt: How many retries came before this one.
            rng: The jitter source; one ``random()`` is drawn per call, even when ``jitter`` is
                0, so a seeded source stays in step whatever the policy.

        Raises:
            ValueError: if ``attempt`` is negative or ``rng`` returns a value outside ``[0, 1)``.
        """
        base = self.base(attempt)
        draw = rng.random()
        if not 0.0 <= draw < 1.0:
            raise ValueError(f"the random source returned {draw!r}, outside [0, 1)")
        return base * (1.0 - self.jitter * draw)
