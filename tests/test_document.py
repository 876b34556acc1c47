"""Writer documents and the merged scope view: ordering, bad input, inheritance, notifications."""

from __future__ import annotations

from typing import Any

import msgpack
import pycrdt
import pytest
from hypothesis import given
from hypothesis import strategies as st

from souverix_crdt.document import (
    COLLECTIONS,
    Change,
    FleetState,
    ScopeState,
    WriteOp,
    WriterDocument,
    client_id_for,
    decode_state_vector,
)
from souverix_crdt.errors import DecodeError, InvalidUpdateError, InvalidValueError
from souverix_crdt.hlc import Timestamp
from souverix_crdt.lww import Register, Strategy
from souverix_crdt.scope import Scope

SCOPE = Scope.parse("global/region-a")
T = Timestamp


def write(state: ScopeState, writer: str, wall: int, *ops: WriteOp) -> tuple[int, bytes]:
    result = state.write(writer, T(wall), list(ops))
    return result.seq, result.update


def fingerprint(state: ScopeState) -> tuple[Any, ...]:
    docs = {w: d.state_vector() for w, d in state.documents.items()}
    return (state.snapshot(), docs, {w: d.seq for w, d in state.documents.items()})


# --------------------------------------------------------------------------- ordering


def test_out_of_causal_order_delivery_loses_nothing() -> None:
    """pycrdt alone loses `a` here (set a, set a, set b delivered 2nd, 3rd, 1st)."""
    source = ScopeState(SCOPE)
    updates = [
        write(source, "w", 1, WriteOp("policies", "a", 1)),
        write(source, "w", 2, WriteOp("policies", "a", 2)),
        write(source, "w", 3, WriteOp("policies", "b", 3)),
    ]
    target = ScopeState(SCOPE)
    for seq, update in (updates[1], updates[2], updates[0]):
        target.receive("w", seq, update)
    assert target.snapshot() == source.snapshot()
    assert target.get("policies", "a") == 2
    assert target.documents["w"].state_vector() == source.documents["w"].state_vector()


def test_raw_pycrdt_does_lose_it() -> None:
    """Documents why the sequencing exists: the same delivery into a bare pycrdt.Doc."""
    doc: pycrdt.Doc[Any] = pycrdt.Doc()
    m = doc.get("policies", type=pycrdt.Map)
    updates: list[bytes] = []
    doc.observe(lambda event: updates.append(event.update))
    m["a"] = b"1"
    m["a"] = b"2"
    m["b"] = b"3"
    other: pycrdt.Doc[Any] = pycrdt.Doc()
    other_map = other.get("policies", type=pycrdt.Map)
    for update in (updates[1], updates[2], updates[0]):
        other.apply_update(update)
    assert "a" not in other_map  # the bug the library works around


def test_duplicates_and_old_updates_are_ignored() -> None:
    source, target = ScopeState(SCOPE), ScopeState(SCOPE)
    first = write(source, "w", 1, WriteOp("nodes", "n1", "up"))
    second = write(source, "w", 2, WriteOp("nodes", "n1", "down"))
    for seq, update in (first, second, first, second, second):
        target.receive("w", seq, update)
    assert target.get("nodes", "n1") == "down"
    assert target.next_seq("w") == 3


def test_early_arrivals_wait_and_are_counted() -> None:
    source, target = ScopeState(SCOPE), ScopeState(SCOPE)
    updates = [write(source, "w", i, WriteOp("nodes", f"n{i}", i)) for i in range(1, 5)]
    for seq, update in updates[1:]:
        assert target.receive("w", seq, update) == []
    assert target.pending_count() == 3
    assert target.missing("w") == 1
    changed = target.receive("w", *updates[0])
    assert len(changed) == 4
    assert target.pending_count() == 0
    assert target.missing("w") is None


def test_pending_area_is_bounded() -> None:
    source = ScopeState(SCOPE)
    updates = [write(source, "w", i, WriteOp("nodes", "n", i)) for i in range(1, 6)]
    target = ScopeState(SCOPE, max_pending=2)
    target.receive("w", *updates[2])
    target.receive("w", *updates[3])
    with pytest.raises(InvalidUpdateError) as info:
        target.receive("w", *updates[4])
    assert info.value.reason == "pending-full"
    assert info.value.writer == "w"


def test_many_writes_in_one_transaction_make_one_update() -> None:
    source, target = ScopeState(SCOPE), ScopeState(SCOPE)
    ops = [WriteOp("nodes", f"n{i}", {"i": i}) for i in range(50)]
    seq, update = write(source, "w", 1, *ops)
    assert seq == 1
    target.receive("w", seq, update)
    assert target.snapshot() == source.snapshot()
    assert len(dict(target.items("nodes"))) == 50


def test_repeated_key_in_one_transaction_keeps_the_last() -> None:
    state = ScopeState(SCOPE)
    write(state, "w", 1, WriteOp("nodes", "n", 1), WriteOp("nodes", "n", 2))
    assert state.get("nodes", "n") == 2
    write(state, "w", 2, WriteOp("nodes", "n", 3), WriteOp("nodes", "n", 4))
    assert [r.value for r in state.history("nodes", "n")] == [4, 2]


# --------------------------------------------------------------------------- bad input


@given(st.binary(max_size=300))
def test_random_bytes_never_escape_as_anything_but_invalid_update(data: bytes) -> None:
    state = ScopeState(SCOPE)
    write(state, "w", 1, WriteOp("nodes", "n", 1))
    before = fingerprint(state)
    try:
        state.receive("w", 2, data)
    except BaseException as exc:  # a pycrdt PanicException is a BaseException
        assert isinstance(exc, InvalidUpdateError), repr(exc)
        assert fingerprint(state) == before
    else:
        # Some byte strings are valid empty updates; they may only advance the sequence.
        assert state.snapshot() == before[0]


def test_truncated_update_is_rejected_at_every_offset() -> None:
    source = ScopeState(SCOPE)
    _, update = write(source, "w", 1, *(WriteOp("nodes", f"n{i}", i) for i in range(5)))
    for cut in range(1, len(update)):
        target = ScopeState(SCOPE)
        before = fingerprint(target)
        try:
            target.receive("w", 1, update[:cut])
        except InvalidUpdateError:
            assert fingerprint(target) == before
            continue
        raise AssertionError(f"truncation at {cut} was accepted")


def test_update_from_another_writers_document_is_rejected() -> None:
    source = ScopeState(SCOPE)
    _, update = write(source, "intruder", 1, WriteOp("policies", "p", "evil"))
    target = ScopeState(SCOPE)
    with pytest.raises(InvalidUpdateError) as info:
        target.receive("victim", 1, update)
    assert info.value.reason == "foreign-client"
    assert target.get("policies", "p") is None
    assert target.next_seq("victim") == 1


def test_update_with_a_gap_is_rejected() -> None:
    source = ScopeState(SCOPE)
    write(source, "w", 1, WriteOp("nodes", "a", 1))
    _, second = write(source, "w", 2, WriteOp("nodes", "b", 2))
    target = ScopeState(SCOPE)
    with pytest.raises(InvalidUpdateError) as info:
        target.receive("w", 1, second)  # claims to be first, but continues a state we lack
    assert info.value.reason == "gap"


def test_entry_that_is_not_a_register_does_not_count() -> None:
    """A writer's document holding garbage: ignored on every replica alike."""
    target = ScopeState(SCOPE)
    register = Register(value="mine", hlc=T(9), writer="anyone", version=1).encode()
    doc = WriterDocument(SCOPE, "w")
    updates: list[bytes] = []
    doc.doc.observe(lambda event: updates.append(event.update))
    doc.maps["policies"]["p"] = register
    doc.maps["policies"]["q"] = b"\xc1 not msgpack"
    doc.maps["policies"]["r"] = 42  # a Yjs number, not register bytes
    doc.maps["policies"]["s"] = b"\x93\x01\x02\x03"  # msgpack, but not a register
    for seq, update in enumerate(updates, start=1):
        target.receive("w", seq, update)
    # A register belongs to the document holding it: whatever it was built with, it is w's.
    assert target.snapshot()["policies"] == {"p": "mine"}
    assert target.register("policies", "p").writer == "w"  # type: ignore[union-attr]
    assert target.invalid_entries == 3


@pytest.mark.parametrize(
    "op",
    [
        WriteOp("unknown", "k", 1),
        WriteOp("policies", "", 1),
        WriteOp("policies", 42, 1),  # type: ignore[arg-type]
        WriteOp("policies", "k" * 10_000, 1),
        WriteOp("policies", "k", object()),
        WriteOp("policies", "k", 2**64),
        WriteOp("policies", "k", "value", deleted=True),
    ],
)
def test_bad_writes_raise_and_change_nothing(op: WriteOp) -> None:
    state = ScopeState(SCOPE)
    write(state, "w", 1, WriteOp("policies", "k", "kept"))
    before = fingerprint(state)
    with pytest.raises(InvalidValueError):
        state.write("w", T(2), [WriteOp("policies", "other", 1), op])
    assert fingerprint(state) == before


def test_sequence_numbers_start_at_one() -> None:
    with pytest.raises(InvalidUpdateError):
        ScopeState(SCOPE).receive("w", 0, b"")


def test_state_vector_decoder_rejects_garbage() -> None:
    assert decode_state_vector(b"\x00") == {}
    for bad in (b"", b"\x01", b"\x01\x80", b"\x00\x00", b"\xff" * 12):
        with pytest.raises(DecodeError):
            decode_state_vector(bad)


# --------------------------------------------------------------------------- merged view


def test_documents_are_identical_on_every_replica() -> None:
    assert client_id_for(SCOPE, "w") == client_id_for(Scope.parse("global/region-a"), "w")
    assert client_id_for(SCOPE, "w") != client_id_for(SCOPE, "v")
    doc = WriterDocument(SCOPE, "w")
    assert set(doc.maps) == set(COLLECTIONS)


def test_delete_is_a_register_that_wins_or_loses_by_time() -> None:
    a, b = ScopeState(SCOPE), ScopeState(SCOPE)
    set_update = write(a, "setter", 10, WriteOp("policies", "p", "on"))
    delete_update = write(b, "deleter", 5, WriteOp("policies", "p", deleted=True))
    a.receive("deleter", *delete_update)
    b.receive("setter", *set_update)
    assert a.get("policies", "p") == b.get("policies", "p") == "on"  # the later set wins
    later_delete = write(b, "deleter", 20, WriteOp("policies", "p", deleted=True))
    a.receive("deleter", *later_delete)
    assert a.get("policies", "p") is None
    winner = a.register("policies", "p")
    assert winner is not None
    assert winner.deleted


def test_capabilities_decide_which_collections_count() -> None:
    class StatusOnly:
        def rank(self, writer: str) -> int:
            return 0

        def allows(self, writer: str, collection: str) -> bool:
            return writer != "edge" or collection == "nodes"

    source = ScopeState(SCOPE)
    update = write(source, "edge", 1, WriteOp("policies", "p", "evil"), WriteOp("nodes", "n", 1))
    target = ScopeState(SCOPE, policy=StatusOnly())
    target.receive("edge", *update)
    assert target.get("policies", "p") is None
    assert target.get("nodes", "n") == 1


def test_authority_precedence_and_rebuild_after_a_rank_change() -> None:
    class Ranks:
        def __init__(self) -> None:
            self.ranks = {"region": 2, "edge": 1}

        def rank(self, writer: str) -> int:
            return self.ranks[writer]

        def allows(self, writer: str, collection: str) -> bool:
            return True

    ranks = Ranks()
    state = ScopeState(SCOPE, strategy=Strategy.AUTHORITY_PRECEDENCE, policy=ranks)
    region, edge = ScopeState(SCOPE), ScopeState(SCOPE)
    state.receive("region", *write(region, "region", 1, WriteOp("policies", "p", "region")))
    state.receive("edge", *write(edge, "edge", 2, WriteOp("policies", "p", "edge")))
    assert state.get("policies", "p") == "region"
    [record] = state.conflicts.records()
    assert record.reason == "authority-rank"
    ranks.ranks["edge"] = 3
    state.rebuild_index()
    assert state.get("policies", "p") == "edge"


def test_history_is_bounded_and_newest_first() -> None:
    state = ScopeState(SCOPE, history_limit=3)
    for wall in range(1, 8):
        write(state, "w", wall, WriteOp("policies", "p", wall))
    assert [r.value for r in state.history("policies", "p")] == [7, 6, 5]
    assert [r.version for r in state.history("policies", "p")] == [7, 6, 5]
    assert state.history("policies", "missing") == []


def test_versions_and_supersedes_follow_what_the_writer_saw() -> None:
    a, b = ScopeState(SCOPE), ScopeState(SCOPE)
    first = write(a, "a", 1, WriteOp("policies", "p", "one"))
    b.receive("a", *first)
    write(b, "b", 2, WriteOp("policies", "p", "two"))
    register = b.register("policies", "p")
    assert register is not None
    assert register.version == 2
    assert register.supersedes is not None
    assert (register.supersedes.writer, register.supersedes.version) == ("a", 1)
    assert register.context == {"a": T(1)}
    assert len(b.conflicts) == 0  # b had seen a's value: no conflict


def test_effective_values_inherit_down_the_tree() -> None:
    fleet = FleetState()
    fleet.write("global", "g", T(1), [WriteOp("policies", "max", "10%")])
    fleet.write("global", "g", T(1), [WriteOp("policies", "mode", "strict")])
    edge = "global/region-a/edge-a1"
    assert fleet.effective(edge, "policies", "max") == "10%"
    fleet.write("global/region-a", "r", T(2), [WriteOp("policies", "max", "20%")])
    assert fleet.effective(edge, "policies", "max") == "20%"
    fleet.write(edge, "e", T(3), [WriteOp("policies", "max", "30%")])
    assert fleet.effective(edge, "policies", "max") == "30%"
    assert fleet.effective("global/region-b", "policies", "max") == "10%"
    assert fleet.effective("global/region-a/edge-a2", "policies", "max") == "20%"
    # A delete removes the zone's override; the region's value shows through again.
    fleet.write(edge, "e", T(4), [WriteOp("policies", "max", deleted=True)])
    assert fleet.effective(edge, "policies", "max") == "20%"
    assert fleet.effective_items(edge, "policies") == {"max": "20%", "mode": "strict"}
    assert fleet.effective(edge, "policies", "absent", "default") == "default"
    # ``eu`` is not an ancestor of ``eu-west``: no inheritance across look-alike names.
    fleet.write("global/eu", "x", T(5), [WriteOp("policies", "max", "99%")])
    assert fleet.effective("global/eu-west", "policies", "max") == "10%"


def test_change_and_conflict_subscriptions() -> None:
    fleet = FleetState()
    seen: list[Change] = []
    conflicts: list[object] = []
    unsubscribe = fleet.subscribe(seen.extend)
    fleet.subscribe_conflicts(conflicts.append)
    fleet.write("global", "a", T(1), [WriteOp("policies", "p", 1), WriteOp("nodes", "n", 2)])
    assert {(c.collection, c.key, c.register.value) for c in seen} == {
        ("policies", "p", 1),
        ("nodes", "n", 2),
    }
    other = FleetState()
    result = other.write("global", "b", T(1), [WriteOp("policies", "p", 9)])
    fleet.receive("global", "b", result.seq, result.update)
    assert seen[-1].register.value == 9  # "b" > "a" at an equal timestamp
    assert len(conflicts) == 1
    unsubscribe()
    fleet.write("global", "a", T(5), [WriteOp("policies", "p", 3)])
    assert seen[-1].register.value == 9


def test_losing_write_does_not_notify() -> None:
    fleet = FleetState()
    fleet.write("global", "z", T(10), [WriteOp("policies", "p", "new")])
    seen: list[Change] = []
    fleet.subscribe(seen.extend)
    old = FleetState().write("global", "a", T(1), [WriteOp("policies", "p", "old")])
    assert fleet.receive("global", "a", old.seq, old.update) == []
    assert seen == []
    assert fleet.effective("global", "policies", "p") == "new"


# ------------------------------------------------------- what one writer sees, every replica sees

_deep: Any = "leaf"
for _ in range(30):
    _deep = [_deep]

HOSTILE_VALUES = [
    {1: "int key"},
    {b"k": "bytes key"},
    {"a": {2: "nested int key"}},
    _deep,
    msgpack.ExtType(1, b"x"),
    "x" * (1 << 20),
    list(range(70_000)),
    dict.fromkeys((f"k{i}" for i in range(70_000)), 0),
]
plain_keys = st.text(max_size=4)
any_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1), st.text(max_size=6)),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(st.one_of(plain_keys, st.integers(0, 3), st.binary(max_size=2)), inner),
    ),
    max_leaves=12,
)


def assert_seen_alike(value: Any) -> None:
    local, remote = ScopeState(SCOPE), ScopeState(SCOPE)
    before = fingerprint(local)
    try:
        seq, update = write(local, "w", 5, WriteOp("policies", "k", value))
    except InvalidValueError:
        assert fingerprint(local) == before
        return
    remote.receive("w", seq, update)
    assert remote.invalid_entries == 0
    assert remote.snapshot() == local.snapshot()
    assert local.get("policies", "k") is not None or value is None


@pytest.mark.parametrize("value", HOSTILE_VALUES, ids=lambda v: type(v).__name__)
def test_a_value_receivers_would_refuse_is_refused_at_the_writer(value: Any) -> None:
    state = ScopeState(SCOPE)
    write(state, "w", 1, WriteOp("policies", "k", "kept"))
    before = fingerprint(state)
    with pytest.raises(InvalidValueError):
        write(state, "w", 2, WriteOp("policies", "k", value))
    with pytest.raises(InvalidValueError):
        write(state, "w", 2, WriteOp("policies", "fresh", value))
    assert fingerprint(state) == before
    assert state.get("policies", "k") == "kept"
    assert_seen_alike(value)


@given(any_values)
def test_whatever_a_writer_can_write_every_receiver_counts(value: Any) -> None:
    assert_seen_alike(value)
    assert_seen_alike({"wrapped": value})
