"""How a writer key is named for people: by the plane its verified delegation names.

Key ids and chain ids (``"<key id>~<epoch>"``) are what the protocol compares; an operator
reading an error, an audit line or a status report needs the plane behind them. That name comes
only from a delegation whose chain verified, never from anything a peer declares about itself,
and this module is the one place that says which field of the delegation carries it.
"""

from __future__ import annotations

from typing import Protocol

from .scope import Scope

__all__ = ["describe_writer", "plane_name"]


class _Delegated(Protocol):
    """A verified delegation, or the grant computed from one (both name the leaf's plane)."""

    @property
    def scope(self) -> Scope: ...

    @property
    def name(self) -> str: ...


def plane_name(delegated: _Delegated) -> str:
    """The plane name a verified delegation (or the grant made from one) gives its subject.

    The name its issuer signed into it (``Delegation.name``); a delegation issued without one is
    named by the scope it grants: the plane of ``global/region-a`` is ``region-a`` (the scope's
    last segment), as the topology names it.
    """
    return delegated.name or delegated.scope.name


def describe_writer(plane: str, writer: str) -> str:
    """``"region-a (<writer>)"``: a plane name beside a key or chain id (the id alone if none)."""
    return f"{plane} ({writer})" if plane else writer
