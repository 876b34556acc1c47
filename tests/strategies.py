"""Shared Hypothesis strategies for the test suite.

Keep strategies here, not in test files, so every suite draws the same shapes of data.
"""

from __future__ import annotations

from typing import Any

import attrs
from hypothesis import strategies as st

from souverix_crdt.hlc import MAX_LOGICAL, MAX_WALL, Timestamp
from souverix_crdt.lww import LwwMap, Register, VersionRef
from souverix_crdt.scope import MAX_DEPTH, ROOT_SEGMENT, Scope

# --------------------------------------------------------------------------- clock

#: 2020-01-01 .. 2100-01-01 in milliseconds: where real wall clocks live.
REALISTIC_WALL = (1_577_836_800_000, 4_102_444_800_000)

_walls = st.one_of(
    st.integers(*REALISTIC_WALL),
    st.integers(0, 1_000),
    st.integers(MAX_WALL - 1_000, MAX_WALL),
    st.integers(0, MAX_WALL),
)
_logicals = st.one_of(
    st.integers(0, 16),
    st.integers(MAX_LOGICAL - 16, MAX_LOGICAL),
    st.integers(0, MAX_LOGICAL),
)


def timestamps() -> st.SearchStrategy[Timestamp]:
    """Valid timestamps, weighted towards realistic wall times and the range boundaries."""
    return st.builds(Timestamp, _walls, _logicals)


# --------------------------------------------------------------------------- scopes

#: A small alphabet, so generated paths share prefixes and collide (``eu`` vs ``eu-west``).
SCOPE_SEGMENTS = ("eu", "eu-west", "a", "a1", "region-a", "edge-a1", "b")


def scope_segments() -> st.SearchStrategy[str]:
    """Canonical segments drawn from :data:`SCOPE_SEGMENTS`."""
    return st.sampled_from(SCOPE_SEGMENTS)


def canonical_segments() -> st.SearchStrategy[str]:
    """Any segment the grammar accepts (lower-case ASCII DNS label without ``--``)."""
    return st.from_regex(r"[a-z0-9](?:[a-z0-9-]{0,30}[a-z0-9])?", fullmatch=True).map(
        # Each "--" becomes "-a": still a label of the same length, now canonical.
        lambda segment: segment.replace("--", "-a")
    )


def scopes(max_depth: int = MAX_DEPTH) -> st.SearchStrategy[Scope]:
    """Valid scopes of depth 1 (the root) to ``max_depth``, over :data:`SCOPE_SEGMENTS`."""
    return st.lists(scope_segments(), max_size=max_depth - 1).map(
        lambda tail: Scope((ROOT_SEGMENT, *tail))
    )


# --------------------------------------------------------------------------- plain data

_plain_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=32),
    st.binary(max_size=32),
)


def plain_values(max_leaves: int = 20) -> st.SearchStrategy[Any]:
    """msgpack-encodable plain data: scalars, lists and ``str``-keyed dicts, bounded in size.

    Floats are finite (NaN != NaN would defeat equality checks); there are no tuples, since
    msgpack decodes every array to a ``list``.
    """
    return st.recursive(
        _plain_scalars,
        lambda children: st.one_of(
            st.lists(children, max_size=5),
            st.dictionaries(st.text(max_size=8), children, max_size=5),
        ),
        max_leaves=max_leaves,
    )


# --------------------------------------------------------------------------- registers

#: A few writer ids, so registers of one key often come from the same writers.
WRITERS = ("w-alpha", "w-bravo", "w-charlie", "w-delta", "w-echo")
#: A narrow time range, so equal wall times (ties) are common.
_close_timestamps = st.builds(Timestamp, st.integers(1_000, 1_004), st.integers(0, 3))


def registers(writers: tuple[str, ...] = WRITERS) -> st.SearchStrategy[Any]:
    """Registers with small, colliding timestamps and contexts over ``writers``."""
    return st.builds(
        Register,
        value=plain_values(max_leaves=4),
        hlc=_close_timestamps,
        writer=st.sampled_from(writers),
        version=st.integers(1, 5),
        supersedes=st.none() | st.builds(VersionRef, st.sampled_from(writers), st.integers(1, 5)),
        context=st.dictionaries(st.sampled_from(writers), _close_timestamps, max_size=3),
        deleted=st.just(False),
    )


def tombstones_or_values(writers: tuple[str, ...] = WRITERS) -> st.SearchStrategy[Any]:
    """Registers, a quarter of them tombstones (no value)."""
    return st.tuples(registers(writers), st.integers(0, 3)).map(
        lambda pair: attrs.evolve(pair[0], value=None, deleted=True) if pair[1] == 0 else pair[0]
    )


def lww_maps(writers: tuple[str, ...] = WRITERS) -> st.SearchStrategy[Any]:
    """LwwMap states over a few keys of two collections."""
    refs = st.tuples(st.sampled_from(["policies", "nodes"]), st.sampled_from(["k1", "k2", "k3"]))
    return st.lists(st.tuples(refs, tombstones_or_values(writers)), max_size=8).map(LwwMap.of)


# --------------------------------------------------------------------------- hostile bytes


@st.composite
def mutated_bytes(draw: st.DrawFn, valid: bytes, max_edits: int = 4) -> bytes:
    """``valid`` after 1 to ``max_edits`` random edits: flip, insert, delete or truncate."""
    mutated = bytearray(valid)
    for _ in range(draw(st.integers(1, max_edits))):
        action = draw(st.sampled_from(["flip", "insert", "delete", "truncate"]))
        offset = draw(st.integers(0, max(len(mutated) - 1, 0)))
        if action == "flip" and mutated:
            mutated[offset] ^= draw(st.integers(1, 255))
        elif action == "insert":
            mutated[offset:offset] = draw(st.binary(min_size=1, max_size=4))
        elif action == "delete" and mutated:
            del mutated[offset]
        else:
            del mutated[offset:]
    return bytes(mutated)
