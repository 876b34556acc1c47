"""Scope paths: one spelling per scope, containment segment by segment, tiers."""

from __future__ import annotations

import itertools
import re
import unicodedata
from typing import Literal

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from souverix_crdt import scope as scope_module
from souverix_crdt.errors import InvalidScopeError
from souverix_crdt.scope import (
    MAX_DEPTH,
    MAX_SEGMENT_LENGTH,
    ROOT_SEGMENT,
    Autonomy,
    Scope,
    Tier,
)

from .strategies import canonical_segments, scopes

# An oracle written independently of the implementation: the grammar of DESIGN §1 as one regex.
_CANONICAL = re.compile(r"global(?:/[a-z0-9](?:[a-z0-9-]{0,30}[a-z0-9])?){0,7}", re.ASCII)


def _is_canonical(path: str) -> bool:
    return _CANONICAL.fullmatch(path) is not None and "--" not in path


def _path(*tail: str) -> Scope:
    return Scope((ROOT_SEGMENT, *tail))


_canonical_paths = st.lists(canonical_segments(), max_size=MAX_DEPTH - 1).map(
    lambda tail: "/".join((ROOT_SEGMENT, *tail))
)

# --------------------------------------------------------------------------- parse / str


@given(_canonical_paths)
def test_canonical_paths_parse_and_round_trip(path: str) -> None:
    scope = Scope.parse(path)
    assert str(scope) == path
    assert scope.segments == tuple(path.split("/"))
    assert Scope.parse(str(scope)) == scope


@given(scopes())
def test_scope_str_parse_round_trip(scope: Scope) -> None:
    assert Scope.parse(str(scope)) == scope
    assert Scope.parse(scope) is scope


def test_limits_are_inclusive() -> None:
    longest = "a" * MAX_SEGMENT_LENGTH
    deepest = "/".join([ROOT_SEGMENT, *[longest] * (MAX_DEPTH - 1)])
    scope = Scope.parse(deepest)
    assert scope.depth == MAX_DEPTH
    assert str(scope) == deepest
    assert Scope.parse("global/0/9/a-9").segments == ("global", "0", "9", "a-9")


# Look-alikes and escapes that a normalising parser might fold into a valid path.
_NASTY = [
    "/", "//", ".", "..", "-", "--", "%", "%2F", "%41", "%2D", " ", "\t", "\n", "\r", "\x00",
    "A", "G", "\u0430", "\u043e", "\uff41", "\uff11", "\u0131", "\u0130", "\ufb01", "\u212a",
    "\u200b", "\u0301", "\u00a0", "\\", "_", "~", "xn--",
]  # fmt: skip


_FORMS: tuple[Literal["NFC", "NFD", "NFKC", "NFKD"], ...] = ("NFC", "NFD", "NFKC", "NFKD")


@st.composite
def _mutated_paths(draw: st.DrawFn) -> str:
    path = draw(_canonical_paths)
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.integers(0, len(path)))
        piece = draw(st.sampled_from(_NASTY) | st.characters())
        match draw(st.sampled_from(["insert", "delete", "replace", "case", "normalise"])):
            case "insert":
                path = path[:at] + piece + path[at:]
            case "delete":
                path = path[:at] + path[at + 1 :]
            case "replace":
                path = path[:at] + piece + path[at + 1 :]
            case "case":
                path = path[:at] + path[at:].upper()
            case _:
                path = unicodedata.normalize(draw(st.sampled_from(_FORMS)), path + piece)
    return path


@given(st.text() | _mutated_paths())
@example("global/eu")
@example("global/\ufb01")
@example("glob\u0430l")
def test_parsing_never_normalises(path: str) -> None:
    """Whatever the input, it is either refused or accepted exactly as written."""
    if _is_canonical(path):
        assert str(Scope.parse(path)) == path
    else:
        with pytest.raises(InvalidScopeError) as info:
            Scope.parse(path)
        assert info.value.path is path
        assert info.value.reason


# --------------------------------------------------------------------------- rejections

_LONG_SEGMENT = "a" * (MAX_SEGMENT_LENGTH + 1)
_TOO_DEEP = "/".join([ROOT_SEGMENT, *["a"] * MAX_DEPTH])
_TOO_LONG = "/".join([ROOT_SEGMENT, *["a" * MAX_SEGMENT_LENGTH] * MAX_DEPTH])


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        # relative and empty segments
        ("global/..", "relative"),
        ("global/.", "relative"),
        ("global/../global", "relative"),
        ("global/a/../b", "relative"),
        ("global//a", "empty"),
        ("global/a/", "empty"),
        ("/global", "empty"),
        ("/", "empty"),
        ("", "empty"),
        # percent escapes
        ("global/%41", "grammar"),
        ("global/region%2Da", "grammar"),
        ("global%2Fregion-a", "grammar"),
        # case
        ("Global", "grammar"),
        ("GLOBAL/eu", "grammar"),
        ("global/Region-a", "grammar"),
        # Unicode look-alikes
        ("global/region-\u0430", "grammar"),  # Cyrillic small a
        ("glob\u0430l", "grammar"),
        ("global/\uff52egion-a", "grammar"),  # fullwidth r
        ("global/edge-a\uff11", "grammar"),  # fullwidth 1
        ("global/edge-\u0131", "grammar"),  # Latin small dotless i
        ("global/\u0130stanbul", "grammar"),  # Latin capital I with dot above
        ("global/\ufb01le", "grammar"),  # fi ligature, NFKC "fi"
        ("global/\u212aelvin", "grammar"),  # Kelvin sign, lower-cases to k
        ("global/e\u0301", "grammar"),  # combining acute
        ("global/a\u200b", "grammar"),  # zero-width space
        ("global/\u00b9", "grammar"),  # superscript one
        # whitespace and control characters
        ("global/ a", "grammar"),
        ("global/a ", "grammar"),
        (" global", "grammar"),
        ("global/a\tb", "grammar"),
        ("global/a\n", "grammar"),
        ("global\n", "grammar"),
        ("global/a\r", "grammar"),
        ("global/a\u00a0", "grammar"),
        ("global/a\x00", "grammar"),
        ("global\x00/a", "grammar"),
        # hyphens
        ("global/a--b", "grammar"),
        ("global/xn--80ak6aa92e", "grammar"),
        ("global/-a", "grammar"),
        ("global/a-", "grammar"),
        ("global/-", "grammar"),
        # other separators and punctuation
        ("global\\a", "grammar"),
        ("global/a_b", "grammar"),
        ("global/a.b", "grammar"),
        ("global/a:b", "grammar"),
        # sizes
        (f"global/{_LONG_SEGMENT}", "length"),
        (_TOO_DEEP, "depth"),
        (_TOO_LONG, "length"),
        # root
        ("root", "root"),
        ("region-a", "root"),
        ("global2/a", "root"),
        ("a/global", "root"),
    ],
)
def test_non_canonical_paths_are_rejected(path: str, reason: str) -> None:
    with pytest.raises(InvalidScopeError) as info:
        Scope.parse(path)
    assert info.value.path is path
    assert info.value.reason == reason


@pytest.mark.parametrize("path", [b"global", bytearray(b"global"), 1, 1.5, None, ["global"]])
def test_non_str_input_is_rejected(path: object) -> None:
    with pytest.raises(InvalidScopeError) as info:
        Scope.parse(path)
    assert info.value.path is path
    assert info.value.reason == "type"


def test_invalid_scope_error_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        Scope.parse("global/..")


@pytest.mark.parametrize(
    ("segments", "reason"),
    [
        ((), "empty"),
        (["global"], "type"),
        ("global", "type"),
        (("global", 1), "type"),
        (("global", b"a"), "type"),
        (("global", ".."), "relative"),
        (("global", ""), "empty"),
        (("global", "a/b"), "grammar"),
        (("region-a",), "root"),
        ((ROOT_SEGMENT, *["a"] * MAX_DEPTH), "depth"),
    ],
)
def test_constructor_validates_segments(segments: object, reason: str) -> None:
    with pytest.raises(InvalidScopeError) as info:
        Scope(segments)  # type: ignore[arg-type]
    assert info.value.path is segments
    assert info.value.reason == reason


def test_child_validates_its_name() -> None:
    root = Scope.root()
    for name in ["", "..", "A", "a/b", "a--b", "\u0430"]:
        with pytest.raises(InvalidScopeError):
            root.child(name)
    deepest = _path(*["a"] * (MAX_DEPTH - 1))
    with pytest.raises(InvalidScopeError) as info:
        deepest.child("a")
    assert info.value.reason == "depth"


# --------------------------------------------------------------------------- tree relations


@pytest.mark.parametrize(
    ("outer", "inner"),
    [
        ("global/eu", "global/eu-west"),
        ("global/eu-west", "global/eu"),
        ("global/a", "global/a1"),
        ("global/region-a", "global/region-a1/edge-a1"),
        ("global/region-a/edge-a1", "global/region-a/edge-a"),
        ("global/a/b", "global/b"),
    ],
)
def test_containment_is_segment_by_segment(outer: str, inner: str) -> None:
    a, b = Scope.parse(outer), Scope.parse(inner)
    assert not a.contains(b)
    assert not a.is_ancestor_of(b)
    assert not b.is_descendant_of(a)
    assert not a.is_related_to(b)


def test_tree_navigation() -> None:
    root = Scope.root()
    region = root.child("region-a")
    edge = region.child("edge-a1")
    assert str(root) == "global"
    assert str(edge) == "global/region-a/edge-a1"
    assert edge == Scope.parse("global/region-a/edge-a1")
    assert (root.depth, region.depth, edge.depth) == (1, 2, 3)
    assert (root.name, edge.name) == ("global", "edge-a1")
    assert root.parent is None
    assert edge.parent == region
    assert region.parent == root
    assert list(edge.ancestors()) == [region, root]
    assert list(root.ancestors()) == []
    assert list(edge.lineage()) == [edge, region, root]
    assert list(root.lineage()) == [root]
    assert root.contains(edge)
    assert region.contains(region)
    assert not edge.contains(region)
    assert root.is_ancestor_of(edge)
    assert not region.is_ancestor_of(region)
    assert edge.is_descendant_of(root)
    assert edge.is_related_to(root)
    assert root.is_related_to(edge)
    assert not edge.is_related_to(root.child("region-b"))


@given(scopes(), scopes())
def test_containment_agrees_with_an_independent_oracle(a: Scope, b: Scope) -> None:
    # The safe string form of the check: equal, or a prefix followed by a separator.
    expected = str(b) == str(a) or str(b).startswith(str(a) + "/")
    assert a.contains(b) == expected
    assert a.contains(b) == (a in list(b.lineage()))
    assert a.is_ancestor_of(b) == (expected and a != b)
    assert a.is_ancestor_of(b) == (a in list(b.ancestors()))
    assert a.is_ancestor_of(b) == b.is_descendant_of(a)
    assert a.is_related_to(b) == (a.contains(b) or b.contains(a)) == b.is_related_to(a)


@given(scopes(), scopes(), scopes())
def test_ancestry_is_a_strict_partial_order(a: Scope, b: Scope, c: Scope) -> None:
    assert not a.is_ancestor_of(a)
    assert not (a.is_ancestor_of(b) and b.is_ancestor_of(a))
    if a.is_ancestor_of(b) and b.is_ancestor_of(c):
        assert a.is_ancestor_of(c)
    if a.contains(b) and b.contains(a):
        assert a == b


@given(scopes())
def test_lineage_walks_parents_to_the_root(scope: Scope) -> None:
    lineage = list(scope.lineage())
    assert lineage[0] == scope
    assert lineage[-1] == Scope.root()
    assert len(lineage) == scope.depth
    for child, parent in itertools.pairwise(lineage):
        assert child.parent == parent
        assert parent.child(child.name) == child
        assert parent.depth == child.depth - 1
    assert lineage[-1].parent is None


@given(scopes(max_depth=MAX_DEPTH - 1), canonical_segments())
def test_child_is_a_direct_descendant(scope: Scope, name: str) -> None:
    child = scope.child(name)
    assert child.parent == scope
    assert child.name == name
    assert scope.is_ancestor_of(child)
    assert str(child) == f"{scope}/{name}"


# --------------------------------------------------------------------------- tiers and autonomy


def test_tier_rank_orders_authority() -> None:
    assert Tier.GLOBAL.rank > Tier.REGIONAL.rank > Tier.LOCAL.rank
    assert Tier.REGIONAL.rank > Tier.AUTONOMOUS.rank
    assert all(isinstance(tier.rank, int) for tier in Tier)


@pytest.mark.parametrize("tier", list(Tier))
def test_tier_round_trips_by_value(tier: Tier) -> None:
    assert Tier(tier.value) is tier


def test_autonomy_values() -> None:
    assert Autonomy("full") is Autonomy.FULL
    assert Autonomy("conditional") is Autonomy.CONDITIONAL


def test_parsing_remembers_valid_paths_within_a_bound() -> None:
    first = Scope.parse("global/region-a/edge-a1")
    assert Scope.parse("global/region-a/edge-a1") is first
    with pytest.raises(InvalidScopeError):
        Scope.parse("global/region-a/")
    assert "global/region-a/" not in scope_module._PARSED

    class Sneaky(str):
        __slots__ = ()

    assert Scope.parse(Sneaky("global/region-b")) == Scope.parse("global/region-b")
    assert all(type(key) is str for key in scope_module._PARSED)
    for i in range(scope_module._PARSED_LIMIT + 10):
        Scope.parse(f"global/r{i}")
    assert len(scope_module._PARSED) <= scope_module._PARSED_LIMIT
