"""Hybrid logical clock: timestamp laws, the clock's rules, a scripted table, restarts."""

from __future__ import annotations

import itertools
from typing import NamedTuple

import pytest
from hypothesis import given
from hypothesis import strategies as st

from souverix_crdt.errors import (
    ClockError,
    ClockSkewError,
    DecodeError,
    TooLargeError,
)
from souverix_crdt.hlc import MAX_LOGICAL, MAX_WALL, Clock, Timestamp
from souverix_crdt.limits import DEFAULT_LIMITS

from .strategies import REALISTIC_WALL, timestamps


class FakeWallClock:
    """A wall clock the test sets by hand; it goes wherever it is told, backwards included."""

    def __init__(self, now: int) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


# --------------------------------------------------------------------------- timestamp laws


@given(timestamps(), timestamps())
def test_order_is_total_and_lexicographic(a: Timestamp, b: Timestamp) -> None:
    assert [a < b, a == b, a > b].count(True) == 1
    assert (a < b) == ((a.wall, a.logical) < (b.wall, b.logical))
    assert (a <= b) == (not a > b)


@given(timestamps(), timestamps(), timestamps())
def test_order_is_transitive(a: Timestamp, b: Timestamp, c: Timestamp) -> None:
    low, mid, high = sorted([a, b, c])
    assert low <= mid <= high
    assert low <= high


@given(timestamps(), timestamps())
def test_encoded_byte_order_equals_timestamp_order(a: Timestamp, b: Timestamp) -> None:
    assert (a < b) == (a.encode() < b.encode())
    assert (a == b) == (a.encode() == b.encode())


@given(timestamps())
def test_encode_decode_round_trip(stamp: Timestamp) -> None:
    data = stamp.encode()
    assert len(data) == 12
    assert Timestamp.decode(data) == stamp
    assert Timestamp.from_list(stamp.to_list()) == stamp


def test_timestamp_str_and_zero() -> None:
    assert str(Timestamp(1_700_000_000_000, 3)) == "1700000000000.3"
    assert Timestamp.ZERO.to_list() == [0, 0]
    assert Timestamp.ZERO.encode() == bytes(12)


# --------------------------------------------------------------------------- timestamp validation


@pytest.mark.parametrize(
    ("wall", "logical", "reason"),
    [
        (True, 0, "hlc-wall"),
        (False, 0, "hlc-wall"),
        (0, True, "hlc-logical"),
        (-1, 0, "hlc-wall"),
        (0, -1, "hlc-logical"),
        (MAX_WALL + 1, 0, "hlc-wall"),
        (0, MAX_LOGICAL + 1, "hlc-logical"),
        (1.0, 0, "hlc-wall"),
        (0, 1.0, "hlc-logical"),
        (float("nan"), 0, "hlc-wall"),
        ("1", 0, "hlc-wall"),
        (None, 0, "hlc-wall"),
        (0, None, "hlc-logical"),
    ],
)
def test_timestamp_rejects_out_of_range_or_non_int(
    wall: object, logical: object, reason: str
) -> None:
    with pytest.raises(DecodeError) as info:
        Timestamp(wall, logical)  # type: ignore[arg-type]
    assert info.value.reason == reason


def test_timestamp_bounds_are_inclusive() -> None:
    assert Timestamp(MAX_WALL, MAX_LOGICAL).encode() == b"\xff" * 12


@pytest.mark.parametrize("data", [b"", b"\x00" * 11, b"\x00" * 13, b"\x00" * 24])
def test_timestamp_decode_rejects_wrong_length(data: bytes) -> None:
    with pytest.raises(DecodeError) as info:
        Timestamp.decode(data)
    assert info.value.reason == "hlc-length"


@pytest.mark.parametrize(
    "value",
    [
        None,
        5,
        "12",
        b"\x00\x01",
        {"wall": 1, "logical": 2},
        [],
        [1],
        [1, 2, 3],
        [1, "2"],
        ["1", 2],
        [1.5, 0],
        [True, 0],
        [0, False],
        [-1, 0],
        [MAX_WALL + 1, 0],
        [0, MAX_LOGICAL + 1],
        [None, None],
        [[1], 2],
    ],
)
def test_timestamp_from_list_rejects_garbage(value: object) -> None:
    with pytest.raises(DecodeError):
        Timestamp.from_list(value)


def test_timestamp_from_list_accepts_tuple() -> None:
    assert Timestamp.from_list((5, 6)) == Timestamp(5, 6)


# --------------------------------------------------------------------------- clock laws

MAX_OFFSET = 500
#: The highest logical counter a clock accepts from a peer (and counts to itself).
MAX_REMOTE = DEFAULT_LIMITS.max_remote_logical
START = 1_700_000_000_000


class Op(NamedTuple):
    """One step of a random run: move the wall clock, issue, or receive."""

    kind: str  # "step" | "send" | "recv" | "recv-near-last"
    amount: int  # wall-clock step, or remote wall offset
    logical: int = 0  # remote logical counter


_ops = st.lists(
    st.one_of(
        st.builds(Op, st.just("step"), st.integers(-3, 3)),
        st.builds(Op, st.just("step"), st.integers(-100_000, 100_000)),
        st.builds(Op, st.just("send"), st.just(0)),
        # Relative to physical time: mostly old or within bound, sometimes beyond it.
        st.builds(Op, st.just("recv"), st.integers(-(10**9), MAX_OFFSET), st.integers(0, 1_000)),
        st.builds(Op, st.just("recv"), st.integers(-3, 3), st.integers(0, 1_000)),
        st.builds(Op, st.just("recv"), st.integers(MAX_OFFSET + 1, 10**9), st.integers(0, 1_000)),
        # Relative to the clock's last timestamp: exercises the equal-wall branches.
        st.builds(Op, st.just("recv-near-last"), st.integers(-2, 2), st.integers(0, 1_000)),
    ),
    max_size=60,
)


def _drive(clock: Clock, wall: FakeWallClock, ops: list[Op]) -> list[Timestamp]:
    """Run ``ops`` against ``clock``, checking each step; return the timestamps issued."""
    issued: list[Timestamp] = []
    for op in ops:
        if op.kind == "step":
            wall.now = max(0, wall.now + op.amount)
            continue
        before = clock.last
        physical = wall.now
        if op.kind == "send":
            stamp = clock.now()
        else:
            base = physical if op.kind == "recv" else before.wall
            remote = Timestamp(max(0, base + op.amount), op.logical)
            if remote.wall - physical > clock.max_offset:
                with pytest.raises(ClockSkewError):
                    clock.update(remote)
                assert clock.last == before
                continue
            stamp = clock.update(remote)
            assert stamp > remote
            # Kulkarni's bound: wall time is the max of what was seen, never more.
            assert stamp.wall == max(before.wall, remote.wall, physical)
        assert stamp > before
        assert stamp.wall >= physical
        assert clock.last == stamp
        issued.append(stamp)
    return issued


@given(_ops)
def test_timestamps_strictly_increase_whatever_the_wall_clock_does(ops: list[Op]) -> None:
    wall = FakeWallClock(START)
    reported: list[Timestamp] = []
    clock = Clock(wall, max_offset=MAX_OFFSET, on_advance=reported.append)
    issued = _drive(clock, wall, ops)
    assert all(a < b for a, b in itertools.pairwise(issued))
    # Every advance, and only an advance, reaches the persistence hook.
    assert reported == issued


@given(
    physical=st.integers(*REALISTIC_WALL),
    last=timestamps(),
    lead=st.integers(-(10**9), MAX_OFFSET),
    logical=st.integers(0, MAX_REMOTE),
)
def test_update_exceeds_remote_and_previous(
    physical: int, last: Timestamp, lead: int, logical: int
) -> None:
    clock = Clock(FakeWallClock(physical), max_offset=MAX_OFFSET, floor=last)
    remote = Timestamp(max(0, physical + lead), logical)
    stamp = clock.update(remote)
    assert stamp > remote
    assert stamp > last
    assert clock.last == stamp


@given(
    physical=st.integers(*REALISTIC_WALL),
    max_offset=st.integers(0, 60_000),
    excess=st.integers(1, 10**12),
    logical=st.integers(0, MAX_REMOTE),
)
def test_remote_beyond_max_offset_is_rejected_and_clock_does_not_move(
    physical: int, max_offset: int, excess: int, logical: int
) -> None:
    reported: list[Timestamp] = []
    clock = Clock(FakeWallClock(physical), max_offset=max_offset, on_advance=reported.append)
    before = clock.now()
    remote = Timestamp(physical + max_offset + excess, logical)
    with pytest.raises(ClockSkewError) as info:
        clock.update(remote)
    assert info.value.remote_wall == remote.wall
    assert info.value.local_wall == physical
    assert info.value.max_offset == max_offset
    assert info.value.reason == "clock-skew"
    assert clock.last == before
    assert reported == [before]
    with pytest.raises(ClockSkewError):
        clock.observe(remote)
    assert clock.last == before
    # The rejected remote left no trace: the next local event follows the last one.
    assert clock.now() == Timestamp(before.wall, before.logical + 1)


@given(physical=st.integers(*REALISTIC_WALL), max_offset=st.integers(0, 60_000))
def test_remote_exactly_at_max_offset_is_accepted(physical: int, max_offset: int) -> None:
    clock = Clock(FakeWallClock(physical), max_offset=max_offset)
    remote = Timestamp(physical + max_offset, 7)
    assert clock.update(remote) == Timestamp(remote.wall, 8)


@given(
    physical=st.integers(*REALISTIC_WALL),
    age=st.integers(0, 10 * 365 * 24 * 3_600_000),
    logical=st.integers(0, MAX_REMOTE),
)
def test_old_timestamps_are_accepted(physical: int, age: int, logical: int) -> None:
    clock = Clock(FakeWallClock(physical), max_offset=MAX_OFFSET)
    before = clock.now()
    remote = Timestamp(max(0, physical - age), logical)
    if remote.wall == physical:
        # Same millisecond as our last event: the merge ticks past the larger counter (at
        # the bound, the wall component ticks instead).
        top = max(before.logical, logical)
        expected = Timestamp(physical + 1, 0) if top == MAX_REMOTE else Timestamp(physical, top + 1)
    else:
        expected = Timestamp(physical, before.logical + 1)
    assert clock.update(remote) == expected


@given(last=timestamps(), remote=timestamps())
def test_observe_raises_the_high_water_mark_without_a_tick(
    last: Timestamp, remote: Timestamp
) -> None:
    reported: list[Timestamp] = []
    clock = Clock(FakeWallClock(0), max_offset=MAX_WALL, floor=last, on_advance=reported.append)
    clock.observe(remote)
    assert clock.last == max(last, remote)
    assert reported == ([remote] if remote > last else [])


def test_negative_max_offset_is_refused() -> None:
    with pytest.raises(ValueError):
        Clock(FakeWallClock(0), max_offset=-1)


# --------------------------------------------------------------------------- scripted table


class Row(NamedTuple):
    """One step: set the wall clock, then send or receive; expect a timestamp or an error."""

    wall: int
    event: str  # "send" (Clock.now) | "recv" (Clock.update)
    remote: Timestamp | None
    expected: Timestamp | type[ClockError]


_BOUND = MAX_REMOTE

# In the style of CockroachDB's TestHLCClock (pkg/util/hlc/hlc_test.go), with max_offset=20.
_COCKROACH_STYLE = [
    # A few valid steps to warm up.
    Row(5, "send", None, Timestamp(5, 0)),
    Row(6, "send", None, Timestamp(6, 0)),
    Row(10, "recv", Timestamp(10, 5), Timestamp(10, 6)),
    # The wall clock steps backwards: the logical counter carries the order.
    Row(7, "send", None, Timestamp(10, 7)),
    # Wall times coincide; the local logical counter wins.
    Row(8, "recv", Timestamp(10, 4), Timestamp(10, 8)),
    # Wall times coincide; the remote logical counter wins.
    Row(10, "recv", Timestamp(10, 99), Timestamp(10, 100)),
    # Physical time equals the last wall time: tick.
    Row(10, "send", None, Timestamp(10, 101)),
    # The physical clock is ahead again.
    Row(11, "send", None, Timestamp(11, 0)),
    # The remote is max_offset ahead of physical time: accepted.
    Row(11, "recv", Timestamp(31, 4), Timestamp(31, 5)),
    # One millisecond more: rejected, and the clock does not move.
    Row(11, "recv", Timestamp(32, 5), ClockSkewError),
    Row(11, "send", None, Timestamp(31, 6)),
    # Old remote timestamps are fine; physical time wins.
    Row(32, "recv", Timestamp(25, 4), Timestamp(32, 0)),
    Row(32, "recv", Timestamp(1, 0), Timestamp(32, 1)),
    Row(40, "recv", Timestamp(30, 7), Timestamp(40, 0)),
    # The wall clock resets to zero: still strictly increasing.
    Row(0, "send", None, Timestamp(40, 1)),
    Row(0, "recv", Timestamp(20, 0), Timestamp(40, 2)),
    # Skew is judged against physical time, not the last timestamp: 21 is behind (40, 2)
    # but more than max_offset ahead of the physical clock, so it is refused.
    Row(0, "recv", Timestamp(21, 0), ClockSkewError),
    Row(0, "send", None, Timestamp(40, 3)),
]

# A restarted clock whose persisted floor sits with the counter at its bound: it never fails,
# it ticks its wall component instead; a remote counter above the bound is refused.
_COUNTER_AT_BOUND = [
    Row(100, "send", None, Timestamp(101, 0)),
    Row(90, "send", None, Timestamp(101, 1)),
    Row(100, "recv", Timestamp(100, 3), Timestamp(101, 2)),
    Row(100, "recv", Timestamp(101, _BOUND), Timestamp(102, 0)),
    # A remote at the bound, ahead of us within max_offset: the merge ticks the wall.
    Row(110, "recv", Timestamp(120, _BOUND), Timestamp(121, 0)),
    # Skew is still checked.
    Row(100, "recv", Timestamp(121, 0), ClockSkewError),
    # A counter above the bound is refused, even from the past.
    Row(100, "recv", Timestamp(100, _BOUND + 1), TooLargeError),
    Row(100, "recv", Timestamp(50, MAX_LOGICAL), TooLargeError),
    Row(100, "send", None, Timestamp(121, 1)),
    Row(130, "send", None, Timestamp(130, 0)),
]

_SCRIPTS = {
    "cockroach-style": (Timestamp.ZERO, _COCKROACH_STYLE),
    "counter-at-bound": (Timestamp(100, _BOUND), _COUNTER_AT_BOUND),
}


def _apply(clock: Clock, row: Row) -> Timestamp:
    if row.event == "send":
        assert row.remote is None
        return clock.now()
    assert row.event == "recv"
    assert row.remote is not None
    return clock.update(row.remote)


@pytest.mark.parametrize("name", list(_SCRIPTS))
def test_scripted_clock(name: str) -> None:
    floor, rows = _SCRIPTS[name]
    wall = FakeWallClock(0)
    reported: list[Timestamp] = []
    clock = Clock(wall, max_offset=20, floor=floor, on_advance=reported.append)
    for index, row in enumerate(rows):
        wall.now = row.wall
        before = clock.last
        calls = len(reported)
        if isinstance(row.expected, Timestamp):
            assert _apply(clock, row) == row.expected, f"row {index}: {row}"
            assert clock.last == row.expected
            assert reported[calls:] == [row.expected]
        else:
            with pytest.raises(row.expected):
                _apply(clock, row)
            assert clock.last == before, f"row {index}: the clock moved on {row}"
            assert len(reported) == calls


# --------------------------------------------------------------------------- restarts


@given(
    before=_ops,
    after=_ops,
    setback=st.integers(0, 10**9),
)
def test_restart_from_persisted_high_water_mark_never_reissues(
    before: list[Op], after: list[Op], setback: int
) -> None:
    wall = FakeWallClock(START)
    persisted: list[Timestamp] = []
    clock = Clock(wall, max_offset=MAX_OFFSET, on_advance=persisted.append)
    first_life = [clock.now(), *_drive(clock, wall, before)]
    high_water = persisted[-1]
    assert high_water == clock.last == max(first_life)

    # The process restarts with a wall clock earlier than anything it issued before.
    wall = FakeWallClock(max(0, START - setback))
    restarted = Clock(wall, max_offset=MAX_OFFSET, floor=high_water)
    second_life = [restarted.now(), *_drive(restarted, wall, after)]
    assert min(second_life) > high_water


def test_floor_is_never_reissued_even_with_the_wall_clock_behind_it() -> None:
    floor = Timestamp(START, 41)
    clock = Clock(FakeWallClock(START - 60_000), floor=floor)
    assert clock.last == floor
    assert clock.now() == Timestamp(START, 42)


# --------------------------------------------------------------------------- hostile peers

_hostile_ops = st.lists(
    st.one_of(
        st.tuples(st.just("send"), st.just(0), st.just(0)),
        st.tuples(st.just("step"), st.integers(-1_000, 1_000), st.just(0)),
        # Any counter, a wall anywhere from the past to a little beyond max_offset.
        st.tuples(
            st.sampled_from(["recv", "observe"]),
            st.integers(-(10**6), MAX_OFFSET + 2),
            st.integers(0, MAX_LOGICAL),
        ),
        # The freeze attempt: near the bound, just inside max_offset.
        st.tuples(
            st.sampled_from(["recv", "observe"]),
            st.integers(MAX_OFFSET - 100, MAX_OFFSET),
            st.sampled_from([MAX_REMOTE - 1, MAX_REMOTE, MAX_REMOTE + 1, MAX_LOGICAL]),
        ),
    ),
    max_size=80,
)


@given(_hostile_ops)
def test_no_remote_timestamp_makes_a_local_send_fail(ops: list[tuple[str, int, int]]) -> None:
    wall = FakeWallClock(START)
    clock = Clock(wall, max_offset=MAX_OFFSET)
    issued = [clock.now()]
    for kind, amount, logical in ops:
        if kind == "step":
            wall.now += amount
            continue
        if kind == "send":
            issued.append(clock.now())  # never raises, whatever came before
            assert issued[-1] > issued[-2]
            continue
        before = clock.last
        remote = Timestamp(wall.now + amount, logical)
        try:
            if kind == "recv":
                issued.append(clock.update(remote))
                assert issued[-1] > max(before, remote)
            else:
                clock.observe(remote)
                assert clock.last == max(before, remote)
        except (ClockSkewError, TooLargeError) as exc:
            assert clock.last == before  # refused: the clock did not move
            if isinstance(exc, TooLargeError):
                assert kind == "recv"
                assert exc.reason == "max_remote_logical"
                assert logical > MAX_REMOTE
    issued.append(clock.now())
    assert all(a < b for a, b in itertools.pairwise(issued))
