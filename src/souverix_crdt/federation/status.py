"""Status values the federation manager reports: links, sync debt, publications, propagation.

Frozen values with ``to_json()``, shared by :mod:`souverix_crdt.federation.manager` (which produces
them) and :mod:`souverix_crdt.federation.views` (which reads them).
"""

from __future__ import annotations

import enum
from typing import Any

import attrs

from souverix_crdt.replica import Receipt, SyncDebt

__all__ = [
    "LinkState",
    "LinkStatus",
    "PropagationStatus",
    "Publication",
    "ScopeApplication",
    "combine_debt",
]


class LinkState(enum.Enum):
    """Whether a link can carry a session now."""

    UP = "up"
    DOWN = "down"


def combine_debt(a: SyncDebt, b: SyncDebt) -> SyncDebt:
    """Two debts as one: envelopes and bytes added, the older age."""
    return SyncDebt(
        a.envelopes + b.envelopes, a.bytes + b.bytes, max(a.oldest_age_ms, b.oldest_age_ms)
    )


@attrs.frozen
class LinkStatus:
    """One link's state and sync debt, as the Digital Twin Service and the views see it.

    Attributes:
        upper: The plane nearer the root.
        lower: The plane below it.
        state: Up or down (an air-gapped link is always down between bundle exchanges).
        transport: ``memory`` for sessions, ``bundle`` for an air-gapped link.
        to_lower: What the lower plane has not acknowledged from the upper one.
        to_upper: What the upper plane has not acknowledged from the lower one.
        last_sync_ms: When the link was last caught up both ways (``None``: never).
        air_gapped: True when only bundle files cross it.
    """

    upper: str
    lower: str
    state: LinkState
    transport: str
    to_lower: SyncDebt
    to_upper: SyncDebt
    last_sync_ms: int | None
    air_gapped: bool

    @property
    def debt(self) -> SyncDebt:
        """Both directions together: envelopes and bytes added, the oldest age."""
        return combine_debt(self.to_lower, self.to_upper)

    def to_json(self) -> dict[str, Any]:
        """A JSON-serialisable form."""
        return {
            "upstream": self.upper,
            "downstream": self.lower,
            "state": self.state.value,
            "transport": self.transport,
            "air_gapped": self.air_gapped,
            "debt": self.debt.to_json(),
            "debt_to_downstream": self.to_lower.to_json(),
            "debt_to_upstream": self.to_upper.to_json(),
            "last_sync_ms": self.last_sync_ms,
        }


@attrs.frozen
class Publication:
    """A desired value published by the Lifecycle Manager.

    Attributes:
        scope: Where it was written.
        collection: ``policies`` or ``versions``.
        key: The policy key or application name.
        value: The desired value.
        publisher: The plane that wrote it.
        receipt: Proof it is durable at the publisher.
    """

    scope: str
    collection: str
    key: str
    value: Any
    publisher: str
    receipt: Receipt

    def to_json(self) -> dict[str, Any]:
        """A JSON-serialisable form."""
        return {
            "scope": self.scope,
            "collection": self.collection,
            "key": self.key,
            "value": self.value,
            "publisher": self.publisher,
            "hlc": str(self.receipt.hlc),
        }


@attrs.frozen
class ScopeApplication:
    """How far the nodes of one scope have applied a publication.

    Attributes:
        scope: The scope.
        applied: Nodes whose record reports the published value.
        total: Nodes in the scope.
        overridden: True when a lower scope's own value is in force there instead.
        pending: Ids of the nodes that have not applied it.
    """

    scope: str
    applied: int
    total: int
    overridden: bool
    pending: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        """A JSON-serialisable form."""
        return {
            "scope": self.scope,
            "applied": self.applied,
            "total": self.total,
            "overridden": self.overridden,
            "pending": list(self.pending),
        }


@attrs.frozen
class PropagationStatus:
    """Which planes have received a publication and which nodes report it applied.

    Attributes:
        publication: What was published.
        received: Planes whose replica shows the published value at its scope.
        missing: Planes that will receive it (their interest covers the scope) but do not yet.
        seen_at: The plane whose replica judged the nodes.
        applied: Per scope at and below the publication's, as seen at ``seen_at``.
    """

    publication: Publication
    received: tuple[str, ...]
    missing: tuple[str, ...]
    seen_at: str
    applied: tuple[ScopeApplication, ...]

    @property
    def complete(self) -> bool:
        """Every plane has it and every node in force has applied it."""
        return not self.missing and all(
            a.applied == a.total for a in self.applied if not a.overridden
        )

    def to_json(self) -> dict[str, Any]:
        """A JSON-serialisable form."""
        return {
            "publication": self.publication.to_json(),
            "received": list(self.received),
            "missing": list(self.missing),
            "seen_at": self.seen_at,
            "applied": [a.to_json() for a in self.applied],
            "complete": self.complete,
        }
