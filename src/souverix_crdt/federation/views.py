"""The brief's Global Fleet View and Regional View, computed from replicated state.

A view is computed at one replica (``global`` for the fleet view, a region's own replica for its
regional view) from what that replica holds: node records
(:mod:`souverix_crdt.federation.inventory`), the desired versions and policies in force at each
scope, and its clock; plus the status of the links on the way to each plane (state and sync debt,
:class:`~souverix_crdt.federation.status.LinkStatus`). Nothing is configured or estimated:
every figure is recomputed from those on each call.

Per plane of the tree under the view's root, a :class:`ScopeRow` holds:

* **nodes** — the node records of its scope and, for the row, its whole subtree;
* **status** — each node is *Live* (heartbeat within ``delayed_after_ms`` of the viewer's clock),
  *Delayed* (older, or none), or *Autonomous* when its plane operates cut off from the viewer (a
  link on the way is down, or an air-gapped link has not carried a bundle within
  ``delayed_after_ms``) — its last reports cannot be fresh, and that is expected, not a fault.
  A row reads ``Healthy`` when every node is live, else the counts:
  ``Live (48/50), Delayed (2/50)``;
* **drift** — nodes whose reported state differs from the desired state their master of record
  put in force at their scope: every desired version must be the one reported, and every policy
  a node reports must be the one in force;
* **sync debt** — of the plane's uplink, both directions: envelopes, bytes and the age of the
  oldest unacknowledged one, shown as a human duration (``3h 45m``);
* **authority** — level, autonomy mode, air gap.

Views are frozen data with ``to_json()``; :mod:`souverix_crdt.federation.render` draws them.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator, Mapping
from typing import Any, Final

import attrs

from souverix_crdt.plane.topology import ControlPlaneSpec, Topology, format_duration
from souverix_crdt.replica import Replica, SyncDebt
from souverix_crdt.scope import Autonomy, Scope, Tier

from .inventory import NodeReport, node_reports
from .status import LinkState, LinkStatus

__all__ = [
    "DEFAULT_DELAYED_AFTER_MS",
    "Drift",
    "FleetView",
    "NodeCounts",
    "NodeStatus",
    "ScopeRow",
    "fleet_view",
    "node_status",
]

#: A node whose last heartbeat is older than this (15 minutes) is delayed.
DEFAULT_DELAYED_AFTER_MS: Final = 15 * 60_000


class NodeStatus(enum.Enum):
    """How a node looks from the viewer."""

    LIVE = "Live"
    DELAYED = "Delayed"
    AUTONOMOUS = "Autonomous"


@attrs.frozen
class Drift:
    """One desired value a node does not report.

    Attributes:
        scope: The node's scope.
        node_id: The node.
        collection: ``versions`` or ``policies``.
        key: The application or policy key.
        desired: The value in force at the node's scope.
        reported: What the node reports (``None`` when it reports nothing for it).
    """

    scope: str
    node_id: str
    collection: str
    key: str
    desired: Any
    reported: Any

    def to_json(self) -> dict[str, Any]:
        """A JSON-serialisable form."""
        return attrs.asdict(self)


@attrs.frozen
class NodeCounts:
    """Node counts by status, and how many drift.

    Attributes:
        total: Nodes.
        live: Live nodes.
        delayed: Delayed nodes.
        autonomous: Nodes of planes operating cut off from the viewer.
        drifted: Nodes with at least one :class:`Drift`.
    """

    total: int = 0
    live: int = 0
    delayed: int = 0
    autonomous: int = 0
    drifted: int = 0

    def __add__(self, other: NodeCounts) -> NodeCounts:
        return NodeCounts(
            self.total + other.total,
            self.live + other.live,
            self.delayed + other.delayed,
            self.autonomous + other.autonomous,
            self.drifted + other.drifted,
        )

    @property
    def label(self) -> str:
        """``Healthy``, ``Autonomous``, ``No nodes``, or ``Live (48/50), Delayed (2/50)``."""
        if self.total == 0:
            return "No nodes"
        if self.live == self.total:
            return "Healthy"
        if self.autonomous == self.total:
            return "Autonomous"
        parts = [
            (NodeStatus.LIVE, self.live),
            (NodeStatus.DELAYED, self.delayed),
            (NodeStatus.AUTONOMOUS, self.autonomous),
        ]
        return ", ".join(f"{s.value} ({n}/{self.total})" for s, n in parts if n)

    def to_json(self) -> dict[str, Any]:
        """A JSON-serialisable form."""
        return {**attrs.asdict(self), "label": self.label}


@attrs.frozen
class ScopeRow:
    """One plane in a view, with its subtree below it.

    Attributes:
        name: The plane's name.
        scope: Its scope path.
        level: Its authority level.
        autonomy: Its autonomy mode.
        air_gapped: Reachable only by bundle files.
        isolated: Operating cut off from the viewer right now.
        own: Counts for the nodes of its own scope.
        nodes: Counts for its whole subtree (what the row shows).
        drift: The drift of its own scope's nodes.
        delayed: Ids of its own scope's delayed nodes.
        link: Its uplink's state (``None`` for the view's root).
        debt: Its uplink's sync debt, both directions (``None`` for the view's root).
        last_sync_ms: When its uplink was last caught up.
        children: The planes below it.
    """

    name: str
    scope: str
    level: Tier
    autonomy: Autonomy
    air_gapped: bool
    isolated: bool
    own: NodeCounts
    nodes: NodeCounts
    drift: tuple[Drift, ...]
    delayed: tuple[str, ...]
    link: LinkState | None
    debt: SyncDebt | None
    last_sync_ms: int | None
    children: tuple[ScopeRow, ...]

    @property
    def status(self) -> str:
        """The row's status label."""
        return self.nodes.label

    @property
    def debt_text(self) -> str:
        """The sync debt as a human duration (``"3h 45m"``), ``"—"`` for the root."""
        if self.debt is None:
            return "—"
        return format_duration(self.debt.oldest_age_ms)

    def walk(self, depth: int = 0) -> Iterator[tuple[int, ScopeRow]]:
        """This row and every row below it, depth first, with their depth."""
        yield depth, self
        for child in self.children:
            yield from child.walk(depth + 1)

    def to_json(self) -> dict[str, Any]:
        """A JSON-serialisable form."""
        return {
            "name": self.name,
            "scope": self.scope,
            "level": self.level.value,
            "autonomy": self.autonomy.value,
            "air_gapped": self.air_gapped,
            "isolated": self.isolated,
            "status": self.status,
            "nodes": self.nodes.to_json(),
            "own_nodes": self.own.to_json(),
            "drift": [item.to_json() for item in self.drift],
            "delayed": list(self.delayed),
            "link": None if self.link is None else self.link.value,
            "sync_debt": None if self.debt is None else self.debt.to_json(),
            "sync_debt_text": self.debt_text,
            "last_sync_ms": self.last_sync_ms,
            "children": [child.to_json() for child in self.children],
        }


@attrs.frozen
class FleetView:
    """A view of the federation tree under one plane, as that plane's replica sees it.

    Attributes:
        title: ``Global Fleet View``, ``Region A View``...
        viewer: The plane whose replica it was computed at.
        now_ms: The viewer's clock when it was computed.
        delayed_after_ms: The heartbeat age past which a node is delayed.
        root: The row of the view's root plane.
    """

    title: str
    viewer: str
    now_ms: int
    delayed_after_ms: int
    root: ScopeRow

    def rows(self) -> Iterator[tuple[int, ScopeRow]]:
        """Every row, depth first, with its depth."""
        return self.root.walk()

    def row(self, name: str) -> ScopeRow:
        """The row of plane ``name``.

        Raises:
            KeyError: the plane is not in this view.
        """
        for _, row in self.rows():
            if row.name == name:
                return row
        raise KeyError(name)

    def to_json(self) -> dict[str, Any]:
        """A JSON-serialisable form."""
        return {
            "title": self.title,
            "viewer": self.viewer,
            "now_ms": self.now_ms,
            "delayed_after_ms": self.delayed_after_ms,
            "root": self.root.to_json(),
        }


def node_status(report: NodeReport, now_ms: int, delayed_after_ms: int) -> NodeStatus:
    """Live if the node's heartbeat is at most ``delayed_after_ms`` old at ``now_ms``."""
    age = report.age_ms(now_ms)
    if age is None or age > delayed_after_ms:
        return NodeStatus.DELAYED
    return NodeStatus.LIVE


def _drift(replica: Replica, scope: Scope, report: NodeReport) -> list[Drift]:
    found = []
    path = str(scope)
    for app, desired in sorted(replica.fleet.effective_items(scope, "versions").items()):
        reported = report.versions.get(app)
        if reported != desired:
            found.append(Drift(path, report.node_id, "versions", app, desired, reported))
    policies = replica.fleet.effective_items(scope, "policies")
    for key, reported in sorted(report.policies.items()):
        # Only what the node reports is judged: a policy it says nothing about is not drift.
        if key in policies and policies[key] != reported:
            found.append(Drift(path, report.node_id, "policies", key, policies[key], reported))
    return found


def _link_isolated(status: LinkStatus | None, now_ms: int, delayed_after_ms: int) -> bool:
    if status is None:
        return False
    if status.air_gapped:
        last = status.last_sync_ms
        return last is None or now_ms - last > delayed_after_ms
    return status.state is LinkState.DOWN


def fleet_view(
    replica: Replica,
    topology: Topology,
    links: Mapping[str, LinkStatus],
    *,
    root: str | None = None,
    title: str | None = None,
    delayed_after_ms: int = DEFAULT_DELAYED_AFTER_MS,
) -> FleetView:
    """Compute the view of the tree under plane ``root`` from ``replica``'s state.

    Args:
        replica: The replica whose state is judged (normally ``root``'s own).
        topology: The planes and their tree.
        links: Uplink status by lower plane name (see ``FederationManager.link_statuses``); a
            plane without an entry counts as connected with no debt known.
        root: The plane at the top of the view (default: the topology's root).
        title: The view's title (default: ``Global Fleet View`` or ``<Root> View``).
        delayed_after_ms: Heartbeat age past which a node is delayed.
    """
    top = topology.root if root is None else topology.plane(root)
    now = replica.clock.physical()
    if title is None:
        title = "Global Fleet View" if top.scope == Scope.root() else f"{_title(top.name)} View"

    def build(plane: ControlPlaneSpec, cut_off: bool) -> ScopeRow:
        uplink = None if plane is top else links.get(plane.name)
        isolated = cut_off or _link_isolated(uplink, now, delayed_after_ms)
        own, drift, delayed = _count(replica, plane.scope, now, delayed_after_ms, isolated)
        children = tuple(
            build(topology.plane(child), isolated) for child in topology.children(plane.name)
        )
        total = own
        for child in children:
            total = total + child.nodes
        return ScopeRow(
            name=plane.name,
            scope=str(plane.scope),
            level=plane.level,
            autonomy=plane.autonomy.mode,
            air_gapped=plane.air_gapped,
            isolated=isolated,
            own=own,
            nodes=total,
            drift=tuple(drift),
            delayed=tuple(delayed),
            link=None if plane is top else (uplink.state if uplink else LinkState.UP),
            debt=None if plane is top else (uplink.debt if uplink else SyncDebt(0, 0, 0)),
            last_sync_ms=None if uplink is None else uplink.last_sync_ms,
            children=children,
        )

    return FleetView(title, replica.name, now, delayed_after_ms, build(top, cut_off=False))


def _count(
    replica: Replica, scope: Scope, now: int, delayed_after_ms: int, isolated: bool
) -> tuple[NodeCounts, list[Drift], list[str]]:
    live = delayed = autonomous = drifted = 0
    drift: list[Drift] = []
    delayed_ids: list[str] = []
    reports = node_reports(replica, scope)
    for report in reports:
        found = _drift(replica, scope, report)
        if found:
            drifted += 1
            drift.extend(found)
        if isolated:
            autonomous += 1
        elif node_status(report, now, delayed_after_ms) is NodeStatus.LIVE:
            live += 1
        else:
            delayed += 1
            delayed_ids.append(report.node_id)
    return NodeCounts(len(reports), live, delayed, autonomous, drifted), drift, delayed_ids


def _title(name: str) -> str:
    return " ".join(
        part.capitalize() if len(part) > 1 else part.upper() for part in name.split("-")
    )
