"""Register order, encoding and the merge laws of the LWW state."""

from __future__ import annotations

import contextlib

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from souverix_crdt.errors import DecodeError, InvalidValueError
from souverix_crdt.hlc import Timestamp
from souverix_crdt.lww import (
    LwwMap,
    Register,
    Strategy,
    concurrent,
    has_seen,
    order_key,
    supersedes,
    winner,
)

from .strategies import WRITERS, lww_maps, plain_values, registers, tombstones_or_values

RANKS = {w: i % 3 for i, w in enumerate(WRITERS)}


def rank_of(writer: str) -> int:
    return RANKS[writer]


strategies = st.sampled_from(list(Strategy))


# --------------------------------------------------------------------------- merge laws


@given(lww_maps(), lww_maps())
def test_merge_is_commutative(a: LwwMap, b: LwwMap) -> None:
    assert a.merge(b) == b.merge(a)


@given(lww_maps(), lww_maps(), lww_maps())
def test_merge_is_associative(a: LwwMap, b: LwwMap, c: LwwMap) -> None:
    assert a.merge(b).merge(c) == a.merge(b.merge(c))


@given(lww_maps())
def test_merge_is_idempotent(a: LwwMap) -> None:
    assert a.merge(a) == a


@given(lww_maps(), lww_maps(), strategies)
def test_visible_value_depends_only_on_the_merged_state(
    a: LwwMap, b: LwwMap, strategy: Strategy
) -> None:
    assert a.merge(b).value(strategy, rank_of) == b.merge(a).value(strategy, rank_of)


@given(lww_maps(), lww_maps())
def test_merge_never_loses_a_winner(a: LwwMap, b: LwwMap) -> None:
    # Under last-writer-wins the winner only ever moves up the order.
    strategy = Strategy.LAST_WRITER_WINS
    merged = a.merge(b)
    for ref in merged:
        best = merged.winner(ref, strategy, rank_of)
        assert best is not None
        for side in (a, b):
            theirs = side.winner(ref, strategy, rank_of)
            if theirs is not None:
                assert order_key(best, strategy, rank_of) >= order_key(theirs, strategy, rank_of)


@given(lww_maps(), lww_maps())
def test_merged_winner_is_the_greatest_causally_newest_head(a: LwwMap, b: LwwMap) -> None:
    # Under authority precedence a side's winner may lose to a register that superseded it,
    # but never to one that is superseded or ranked lower among the causally newest.
    strategy = Strategy.AUTHORITY_PRECEDENCE
    merged = a.merge(b)
    for ref in merged:
        heads = list(merged.entries[ref].values())
        best = merged.winner(ref, strategy, rank_of)
        assert best in heads
        assert not any(supersedes(other, best) for other in heads)
        newest = [h for h in heads if not any(supersedes(o, h) for o in heads)]
        assert all(
            order_key(best, strategy, rank_of) >= order_key(h, strategy, rank_of) for h in newest
        )


@given(lww_maps(), lww_maps(), lww_maps(), strategies)
def test_visible_value_is_a_function_of_the_joined_set(
    a: LwwMap, b: LwwMap, c: LwwMap, strategy: Strategy
) -> None:
    # Any grouping and order of the joins, and joining a part again, shows the same values.
    left = a.merge(b).merge(c).value(strategy, rank_of)
    assert left == a.merge(b.merge(c)).value(strategy, rank_of)
    assert left == c.merge(a).merge(b).value(strategy, rank_of)
    assert left == a.merge(b).merge(c).merge(b).value(strategy, rank_of)


# --------------------------------------------------------------------------- order


@given(registers(), registers(), strategies)
def test_register_order_is_total(a: Register, b: Register, strategy: Strategy) -> None:
    ka, kb = order_key(a, strategy, rank_of), order_key(b, strategy, rank_of)
    assert (ka < kb) + (ka > kb) + (ka == kb) == 1
    if ka == kb:
        # Equal keys only for the same writer at the same timestamp (one transaction).
        assert (a.writer, a.hlc) == (b.writer, b.hlc)


@given(st.lists(registers(), min_size=1, max_size=8), strategies, st.randoms())
def test_winner_ignores_order_of_arrival(
    regs: list[Register], strategy: Strategy, rnd: object
) -> None:
    shuffled = list(regs)
    rnd.shuffle(shuffled)  # type: ignore[attr-defined]
    first, second = winner(regs, strategy, rank_of), winner(shuffled, strategy, rank_of)
    assert first is not None
    assert second is not None
    assert order_key(first, strategy, rank_of) == order_key(second, strategy, rank_of)


def test_authority_precedence_puts_rank_before_time() -> None:
    low = Register(value="edge", hlc=Timestamp(2000), writer="edge", version=1)
    high = Register(value="region", hlc=Timestamp(1000), writer="region", version=1)
    ranks = {"edge": 1, "region": 2}
    assert winner([low, high], Strategy.LAST_WRITER_WINS) is low
    assert winner([low, high], Strategy.AUTHORITY_PRECEDENCE, ranks.__getitem__) is high


RANKS_REGION_ZONE = {"region": 2, "zone": 1, "edge": 0}


def test_a_write_that_had_seen_a_higher_authority_supersedes_it() -> None:
    region = Register(value="region", hlc=Timestamp(1000), writer="region", version=1)
    zone = Register(
        value="zone", hlc=Timestamp(2000), writer="zone", version=2, context={"region": region.hlc}
    )
    ap = Strategy.AUTHORITY_PRECEDENCE
    assert supersedes(zone, region)
    assert winner([region, zone], ap, RANKS_REGION_ZONE.__getitem__) is zone
    assert winner([zone, region], ap, RANKS_REGION_ZONE.__getitem__) is zone


def test_a_concurrent_write_loses_to_a_higher_authority() -> None:
    region = Register(value="region", hlc=Timestamp(1000), writer="region", version=1)
    # The zone had seen an older region register only: concurrent with this one.
    zone = Register(
        value="zone",
        hlc=Timestamp(2000),
        writer="zone",
        version=1,
        context={"region": Timestamp(5)},
    )
    assert not supersedes(zone, region)
    assert winner([region, zone], Strategy.AUTHORITY_PRECEDENCE, RANKS_REGION_ZONE.__getitem__) is (
        region
    )


def test_a_context_dated_before_the_register_does_not_supersede() -> None:
    # A context naming a register the author dates after its own write is not causal: forged
    # contexts cannot make two registers supersede each other.
    a = Register(
        value=1, hlc=Timestamp(10), writer="zone", version=1, context={"edge": Timestamp(20)}
    )
    b = Register(
        value=2, hlc=Timestamp(20), writer="edge", version=1, context={"zone": Timestamp(10)}
    )
    assert supersedes(b, a)
    assert not supersedes(a, b)
    ranks = RANKS_REGION_ZONE.__getitem__
    assert winner([a, b], Strategy.AUTHORITY_PRECEDENCE, ranks) is b
    assert winner([b, a], Strategy.AUTHORITY_PRECEDENCE, ranks) is b


def test_a_mix_of_causal_and_concurrent_heads_has_one_winner() -> None:
    # zone superseded region; edge is concurrent with both and ranks lowest; region ranks
    # highest but is superseded, so among {zone, edge} the zone's rank wins.
    ranks = RANKS_REGION_ZONE.__getitem__
    region = Register(value="r", hlc=Timestamp(10), writer="region", version=1)
    zone = Register(
        value="z", hlc=Timestamp(20), writer="zone", version=2, context={"region": region.hlc}
    )
    edge = Register(value="e", hlc=Timestamp(30), writer="edge", version=1)
    regs = [region, zone, edge]
    for order in (regs, regs[::-1], [zone, region, edge], [edge, region, zone]):
        assert winner(order, Strategy.AUTHORITY_PRECEDENCE, ranks) is zone


@given(st.lists(registers(), min_size=1, max_size=8), strategies, st.randoms())
def test_winner_depends_only_on_the_set(
    regs: list[Register], strategy: Strategy, rnd: object
) -> None:
    # Shuffled, with duplicates: the same register wins (the heads of one key, one per writer).
    heads = list({r.writer: r for r in regs}.values())
    again = heads + heads[: len(heads) // 2]
    rnd.shuffle(again)  # type: ignore[attr-defined]
    assert winner(again, strategy, rank_of) is winner(heads, strategy, rank_of)


def test_equal_timestamps_tie_break_on_writer_id() -> None:
    a = Register(value=1, hlc=Timestamp(5, 1), writer="a", version=1)
    b = Register(value=2, hlc=Timestamp(5, 1), writer="b", version=1)
    assert winner([a, b], Strategy.LAST_WRITER_WINS) is b
    assert winner([b, a], Strategy.LAST_WRITER_WINS) is b


def test_concurrency_is_decided_by_context() -> None:
    a = Register(value=1, hlc=Timestamp(5), writer="a", version=1)
    b_blind = Register(value=2, hlc=Timestamp(6), writer="b", version=1)
    b_saw = Register(value=2, hlc=Timestamp(6), writer="b", version=2, context={"a": a.hlc})
    assert concurrent(a, b_blind)
    assert not concurrent(a, b_saw)
    assert has_seen(b_saw, a)
    assert not has_seen(a, b_saw)
    later_a = Register(value=3, hlc=Timestamp(7), writer="a", version=2)
    assert has_seen(later_a, a)  # a writer sees its own earlier registers
    assert not concurrent(a, later_a)


# --------------------------------------------------------------------------- encoding


@given(tombstones_or_values())
def test_register_encoding_round_trips(register: Register) -> None:
    decoded = Register.decode(register.encode(), register.writer)
    assert decoded == register
    assert decoded.context == register.context


@given(st.binary(max_size=200))
def test_register_decode_raises_only_decode_error(data: bytes) -> None:
    with contextlib.suppress(DecodeError):
        Register.decode(data, "w")


@pytest.mark.parametrize(
    "fields",
    [
        [2, False, 1, 1, 0, 1, None, {}],  # unknown format
        [1, "no", 1, 1, 0, 1, None, {}],  # deleted not a bool
        [1, False, 1, 1, 0, 0, None, {}],  # version 0
        [1, False, 1, 1.5, 0, 1, None, {}],  # float wall time
        [1, False, 1, 1, True, 1, None, {}],  # bool logical
        [1, False, 1, 1, 0, 1, ["x"], {}],  # bad supersedes
        [1, False, 1, 1, 0, 1, None, []],  # context not a map
        [1, False, 1, 1, 0, 1, None, {"x": [1]}],  # bad context timestamp
        [1, True, "value", 1, 0, 1, None, {}],  # tombstone with a value
        [1, False, 1, 1, 0, 1, None],  # too short
        [1, False, 1, 1, 0, "w", 1, None, {}],  # the old layout, with a writer field
    ],
)
def test_malformed_registers_are_rejected(fields: list[object]) -> None:
    with pytest.raises(DecodeError):
        Register.decode(msgpack.packb(fields), "w")


@given(plain_values())
def test_values_round_trip_through_registers(value: object) -> None:
    register = Register(value=value, hlc=Timestamp(1), writer="w", version=1)
    assert Register.decode(register.encode(), register.writer).value == value


def test_unencodable_value_is_a_typed_error() -> None:
    with pytest.raises(InvalidValueError):
        Register(value=object(), hlc=Timestamp(1), writer="w", version=1).encode()
    with pytest.raises(InvalidValueError):
        Register(value=2**64, hlc=Timestamp(1), writer="w", version=1).encode()
