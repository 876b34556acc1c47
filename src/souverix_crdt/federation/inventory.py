"""Node records: what a control plane reports about the nodes of its scope.

A scope's ``nodes`` collection maps a node id to a record its master of record writes (it holds
``report_status``)::

    {"heartbeat_ms": 1748764800000,                 # last heartbeat, wall clock milliseconds
     "versions": {"souverix-agent": "2.5.0"},       # what the node runs
     "policies": {"max-unavailable": "10%"},        # policies it applied (optional)
     "state": "running"}

Records replicate like any other value, so every replica that receives the scope can judge the
node: delayed (its heartbeat is old), drifted (what it runs differs from the desired state in
force at its scope), or done applying a rollout. Records written by other tools may lack fields;
:meth:`NodeReport.from_value` reads what is there and never raises, because a view must not fail
on one odd record.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import attrs

from souverix_crdt.document import WriteOp
from souverix_crdt.replica import Receipt, Replica
from souverix_crdt.scope import Scope

__all__ = ["NodeReport", "node_reports", "report_nodes"]


def _str_map(value: object) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        return {}
    return {str(key): item for key, item in value.items() if isinstance(key, str)}


@attrs.frozen
class NodeReport:
    """One node's reported state.

    Attributes:
        node_id: The node's id (its key in the ``nodes`` collection).
        heartbeat_ms: Its last heartbeat in wall-clock milliseconds, or ``None`` if unknown.
        versions: Application name to the version it runs.
        policies: Policy key to the value it applied (only what it reports).
        state: A free-form state word (``running``, ``draining``...).
    """

    node_id: str
    heartbeat_ms: int | None
    versions: Mapping[str, Any] = attrs.field(factory=dict)
    policies: Mapping[str, Any] = attrs.field(factory=dict)
    state: str = "running"

    @classmethod
    def from_value(cls, node_id: str, value: object) -> NodeReport:
        """Read a record as stored; missing or odd fields become empty, never an error."""
        record = _str_map(value)
        heartbeat = record.get("heartbeat_ms")
        state = record.get("state")
        return cls(
            node_id=node_id,
            heartbeat_ms=heartbeat if type(heartbeat) is int else None,
            versions=_str_map(record.get("versions")),
            policies=_str_map(record.get("policies")),
            state=state if isinstance(state, str) else "unknown",
        )

    def to_value(self) -> dict[str, Any]:
        """The record as stored in the ``nodes`` collection."""
        value: dict[str, Any] = {
            "versions": dict(self.versions),
            "state": self.state,
        }
        if self.heartbeat_ms is not None:
            value["heartbeat_ms"] = self.heartbeat_ms
        if self.policies:
            value["policies"] = dict(self.policies)
        return value

    def reported(self, collection: str, key: str) -> Any:
        """What the node reports for a desired ``versions`` or ``policies`` key (None if not)."""
        if collection == "versions":
            return self.versions.get(key)
        if collection == "policies":
            return self.policies.get(key)
        return None

    def age_ms(self, now_ms: int) -> int | None:
        """How old its heartbeat is at ``now_ms`` (``None`` if it never reported one)."""
        return None if self.heartbeat_ms is None else max(0, now_ms - self.heartbeat_ms)


def node_reports(replica: Replica, scope: Scope | str) -> list[NodeReport]:
    """The node records of ``scope`` visible at ``replica``, in node id order."""
    return [
        NodeReport.from_value(node_id, value)
        for node_id, value in replica.scope(scope).nodes.items()
    ]


def report_nodes(replica: Replica, scope: Scope | str, reports: Iterable[NodeReport]) -> Receipt:
    """Write several node records in one transaction (one envelope); returns once durable.

    Raises:
        ValueError: if ``reports`` is empty.
        AuthorityError: the replica may not report status in ``scope``.
    """
    ops = [WriteOp("nodes", report.node_id, report.to_value()) for report in reports]
    return replica.write(scope, ops)
