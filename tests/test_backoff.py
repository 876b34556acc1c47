"""The backoff policy: exponential schedule, cap and jitter bounds, checked without a clock."""

from __future__ import annotations

import random

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from souverix_crdt.plane.backoff import Backoff


class FixedRandom:
    """A jitter source that replays fixed draws."""

    def __init__(self, *draws: float) -> None:
        self.draws = list(draws)

    def random(self) -> float:
        return self.draws.pop(0)


def test_schedule_is_exponential_then_capped() -> None:
    policy = Backoff(initial=1.0, multiplier=2.0, maximum=10.0, jitter=0.0)
    assert [policy.base(n) for n in range(7)] == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0, 10.0]
    rng = FixedRandom(*[0.7] * 7)
    assert [policy.delay(n, rng) for n in range(7)] == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0, 10.0]


def test_jitter_only_shortens_by_at_most_its_fraction() -> None:
    policy = Backoff(initial=1.0, multiplier=2.0, maximum=10.0, jitter=0.5)
    rng = FixedRandom(0.0, 0.5, 0.999, 0.25, 0.0)
    delays = [policy.delay(n, rng) for n in range(5)]
    assert delays == pytest.approx([1.0, 2.0 * 0.75, 4.0 * (1 - 0.4995), 8.0 * 0.875, 10.0])


@given(
    initial=st.floats(0.001, 10.0),
    multiplier=st.floats(1.0, 5.0),
    spread=st.floats(1.0, 100.0),
    jitter=st.floats(0.0, 1.0),
    attempt=st.integers(0, 2000),
    seed=st.integers(0, 2**32),
)
def test_every_delay_is_within_its_bounds(
    initial: float, multiplier: float, spread: float, jitter: float, attempt: int, seed: int
) -> None:
    policy = Backoff(
        initial=initial, multiplier=multiplier, maximum=initial * spread, jitter=jitter
    )
    base = policy.base(attempt)
    delay = policy.delay(attempt, random.Random(seed))
    assert initial <= base <= policy.maximum
    assert base * (1 - jitter) <= delay <= base
    assert policy.base(attempt + 1) >= base  # never shrinks from one retry to the next


def test_huge_attempts_stay_at_the_cap() -> None:
    policy = Backoff(initial=0.5, multiplier=2.0, maximum=30.0, jitter=0.0)
    assert policy.base(10**6) == 30.0
    assert Backoff(initial=0.0, maximum=0.0).base(10**6) == 0.0


def test_one_draw_per_delay_even_without_jitter() -> None:
    rng = FixedRandom(0.1, 0.2)
    Backoff(jitter=0.0).delay(0, rng)
    assert rng.draws == [0.2]


def test_defaults_and_value_semantics() -> None:
    policy = Backoff()
    assert (policy.initial, policy.multiplier, policy.maximum, policy.jitter) == (
        0.5,
        2.0,
        30.0,
        0.2,
    )
    assert policy == Backoff()
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        policy.initial = 1.0  # type: ignore[misc]


@pytest.mark.parametrize(
    "options",
    [
        {"initial": -1.0},
        {"initial": float("nan")},
        {"maximum": float("inf")},
        {"initial": True},
        {"multiplier": 0.5},
        {"initial": 2.0, "maximum": 1.0},
        {"jitter": 1.5},
        {"jitter": -0.1},
    ],
)
def test_invalid_policies_are_refused(options: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        Backoff(**options)


def test_invalid_calls_are_refused() -> None:
    with pytest.raises(ValueError, match="attempt"):
        Backoff().delay(-1, random.Random(0))
    with pytest.raises(ValueError, match="random source"):
        Backoff().delay(0, FixedRandom(1.0))
