"""A fleet's pinned root keys and the quorum its root-level acts need."""

from __future__ import annotations

from collections.abc import Sequence

import attrs

from souverix_crdt.errors import (
    QuorumError,
    UntrustedKeyError,
)

from ._wire import (
    check_fleet_id,
)
from .keys import (
    PublicKey,
)

# --------------------------------------------------------------------------- anchors


@attrs.frozen
class TrustAnchors:
    """The pinned roots of one fleet.

    Root-level acts (a delegation issued by the roots, a root revocation) need signatures from
    ``quorum`` distinct root keys.

    Attributes:
        fleet_id: The fleet's id; every signed object names it.
        roots: The root public keys.
        quorum: How many distinct roots must sign a root-level act.
    """

    fleet_id: str
    roots: frozenset[PublicKey]
    quorum: int = 1

    def __attrs_post_init__(self) -> None:
        check_fleet_id(self.fleet_id)
        if type(self.roots) is not frozenset or not self.roots:
            raise ValueError("at least one root key, as a frozenset")
        if not all(isinstance(root, PublicKey) for root in self.roots):
            raise TypeError("roots must be PublicKey values")
        if type(self.quorum) is not int or not 1 <= self.quorum <= len(self.roots):
            raise ValueError(f"quorum must be in [1, {len(self.roots)}], got {self.quorum!r}")

    @property
    def root_ids(self) -> frozenset[str]:
        """The key ids of the roots."""
        return frozenset(root.key_id for root in self.roots)

    def is_root(self, key_id: str) -> bool:
        """True if ``key_id`` names a root key."""
        return key_id in self.root_ids

    def root(self, key_id: str) -> PublicKey | None:
        """The root key with ``key_id``, if there is one."""
        for root in self.roots:
            if root.key_id == key_id:
                return root
        return None


def _check_root_act(
    anchors: TrustAnchors,
    signatures: Sequence[tuple[PublicKey, bytes]],
    *,
    what: str,
    scope: str = "",
) -> None:
    """Signers must all be roots, and distinct roots must reach the quorum."""
    root_raws = {root.raw for root in anchors.roots}
    signers = [public for public, _ in signatures]
    for public in signers:
        if public.raw not in root_raws:
            raise UntrustedKeyError(
                f"{what} is signed by {public.key_id}, which is not a pinned root",
                reason="not-a-root",
                scope=scope,
                writer=public.key_id,
            )
    distinct = len({public.raw for public in signers})
    if distinct < anchors.quorum:
        raise QuorumError(
            f"{what} has {distinct} distinct root signature(s); {anchors.quorum} needed",
            reason="quorum",
            scope=scope,
        )
