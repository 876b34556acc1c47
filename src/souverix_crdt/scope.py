"""Canonical scope paths, authority tiers and autonomy.

A scope is a node of the federation tree, named by its path from the root:
``global``, ``global/region-a``, ``global/region-a/edge-a1``. Authority is checked against these
names, so they must have exactly one spelling: a path is accepted only if it is already canonical,
and anything else (``..``, ``//``, a trailing ``/``, upper case, percent escapes, non-ASCII
look-alikes, whitespace) is rejected with :class:`~souverix_crdt.errors.InvalidScopeError`, never
normalised. Containment is decided segment by segment, so ``global/eu`` does not contain
``global/eu-west``.

Segment grammar (a DNS label, lower case, without the ``--`` that punycode look-alikes need)::

    segment = [a-z0-9] ( [a-z0-9-]{0,30} [a-z0-9] )?   with no "--"
    path    = "global" ( "/" segment ){0,7}
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterator
from typing import Final

import attrs

from .errors import InvalidScopeError

__all__ = [
    "MAX_DEPTH",
    "MAX_SEGMENT_LENGTH",
    "ROOT_SEGMENT",
    "Autonomy",
    "Scope",
    "Tier",
]

#: The root of every fleet's tree.
ROOT_SEGMENT: Final = "global"
#: Maximum number of segments in a path, the root included.
MAX_DEPTH: Final = 8
#: Maximum length of one segment.
MAX_SEGMENT_LENGTH: Final = 32

# ASCII-only character classes: ``re.ASCII`` keeps \d and friends out, and explicit ranges keep
# Unicode look-alikes (Cyrillic a, fullwidth digits, dotless i) out.
_SEGMENT: Final = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,30}[a-z0-9])?", re.ASCII)


class Tier(enum.Enum):
    """The authority level of a control plane; its rank orders authority precedence."""

    GLOBAL = "global"
    REGIONAL = "regional"
    LOCAL = "local"
    AUTONOMOUS = "autonomous"

    @property
    def rank(self) -> int:
        """Higher ranks win concurrent writes under authority precedence."""
        return _RANKS[self]


_RANKS: Final = {Tier.GLOBAL: 3, Tier.REGIONAL: 2, Tier.LOCAL: 1, Tier.AUTONOMOUS: 1}


class Autonomy(enum.Enum):
    """How a scope behaves while cut off, and how its writes rank after reconnecting.

    ``FULL``: its writes are peers of everyone's under last-writer-wins.
    ``CONDITIONAL``: it keeps writing while cut off, but a concurrent write by a higher
    authority wins over it on reconnect (authority precedence).
    """

    FULL = "full"
    CONDITIONAL = "conditional"


def _check_segment(segment: str, path: object) -> None:
    if not segment:
        raise InvalidScopeError(f"empty segment in scope path {path!r}", path=path, reason="empty")
    if len(segment) > MAX_SEGMENT_LENGTH:
        raise InvalidScopeError(
            f"segment {segment!r} longer than {MAX_SEGMENT_LENGTH}", path=path, reason="length"
        )
    if segment in {".", ".."}:
        raise InvalidScopeError(f"relative segment in {path!r}", path=path, reason="relative")
    if _SEGMENT.fullmatch(segment) is None or "--" in segment:
        raise InvalidScopeError(
            f"segment {segment!r} of {path!r} is not canonical "
            "(lower-case ASCII letters, digits and single inner hyphens only)",
            path=path,
            reason="grammar",
        )


def _check_segments(segments: object, path: object) -> None:
    if not isinstance(segments, tuple):
        raise InvalidScopeError("scope segments are a tuple of str", path=path, reason="type")
    if not segments:
        raise InvalidScopeError("a scope has at least one segment", path=path, reason="empty")
    if len(segments) > MAX_DEPTH:
        raise InvalidScopeError(
            f"scope deeper than {MAX_DEPTH} segments", path=path, reason="depth"
        )
    for segment in segments:
        if not isinstance(segment, str):
            raise InvalidScopeError("segments are strings", path=path, reason="type")
        _check_segment(segment, path)
    if segments[0] != ROOT_SEGMENT:
        raise InvalidScopeError(f"scope paths start at {ROOT_SEGMENT!r}", path=path, reason="root")


@attrs.frozen(order=True, cache_hash=True)
class Scope:
    """A canonical scope path. Build with :meth:`parse`, :meth:`root` or :meth:`child`.

    Attributes:
        segments: The path's segments, the root first.
    """

    segments: tuple[str, ...]

    def __attrs_post_init__(self) -> None:
        _check_segments(self.segments, self.segments)

    @classmethod
    def parse(cls, path: object) -> Scope:
        """Parse a canonical path such as ``"global/region-a/edge-a1"``.

        Raises:
            InvalidScopeError: if ``path`` is not a ``str`` or not canonical.
        """
        if isinstance(path, Scope):
            return path
        known = _PARSED.get(path) if type(path) is str else None
        if known is not None:
            return known
        if not isinstance(path, str):
            raise InvalidScopeError(
                f"scope path must be str, got {type(path).__name__}", path=path, reason="type"
            )
        if len(path) > MAX_DEPTH * (MAX_SEGMENT_LENGTH + 1):
            raise InvalidScopeError("scope path too long", path=path, reason="length")
        # Validate here, against the string as given, so the error's ``path`` is the caller's
        # input (not the split tuple) whichever rule fails; the constructor re-checks cheaply.
        segments = tuple(path.split("/"))
        _check_segments(segments, path)
        scope = cls(segments)
        if type(path) is str:
            # Scopes are immutable and a fleet has few of them, parsed again on every message:
            # remember the valid ones (a bounded table, so hostile input cannot grow it).
            if len(_PARSED) >= _PARSED_LIMIT:
                _PARSED.clear()
            _PARSED[path] = scope
        return scope

    @classmethod
    def root(cls) -> Scope:
        """The fleet's root scope, ``global``."""
        return cls((ROOT_SEGMENT,))

    def child(self, name: str) -> Scope:
        """The child scope called ``name``.

        Raises:
            InvalidScopeError: if ``name`` is not a canonical segment or the tree gets too deep.
        """
        return Scope((*self.segments, name))

    @property
    def name(self) -> str:
        """The last segment."""
        return self.segments[-1]

    @property
    def depth(self) -> int:
        """Number of segments; the root has depth 1."""
        return len(self.segments)

    @property
    def parent(self) -> Scope | None:
        """The parent scope, or ``None`` for the root."""
        return Scope(self.segments[:-1]) if len(self.segments) > 1 else None

    def ancestors(self) -> Iterator[Scope]:
        """Yield the strict ancestors, nearest first, ending at the root."""
        for end in range(len(self.segments) - 1, 0, -1):
            yield Scope(self.segments[:end])

    def lineage(self) -> Iterator[Scope]:
        """Yield this scope then its ancestors, nearest first (the inheritance order)."""
        yield self
        yield from self.ancestors()

    def contains(self, other: Scope) -> bool:
        """True if ``other`` is this scope or lies in its subtree (segment by segment)."""
        n = len(self.segments)
        return len(other.segments) >= n and other.segments[:n] == self.segments

    def is_ancestor_of(self, other: Scope) -> bool:
        """True if ``other`` lies strictly below this scope."""
        return len(other.segments) > len(self.segments) and self.contains(other)

    def is_descendant_of(self, other: Scope) -> bool:
        """True if this scope lies strictly below ``other``."""
        return other.is_ancestor_of(self)

    def is_related_to(self, other: Scope) -> bool:
        """True if one of the two contains the other (on one root-to-leaf line)."""
        return self.contains(other) or other.contains(self)

    def __str__(self) -> str:
        return "/".join(self.segments)


#: Canonical paths already parsed, and the bound on how many are remembered.
_PARSED: dict[str, Scope] = {}
_PARSED_LIMIT: Final = 16_384
