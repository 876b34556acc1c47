"""What the dashboard shows, computed from live replicas as JSON-serialisable data.

Everything here is a pure read of replicated state, recomputed on every call like the views of
:mod:`souverix_crdt.federation.views` (which it reuses for node counts, statuses, drift and sync
debt, so the page shows exactly the figures the terminal views print). Two sources are supported:

* a :class:`~souverix_crdt.federation.manager.FederationManager` — its topology, every replica it
  runs, the live state and sync debt of its links, and :meth:`~FederationManager.describe`;
* a single :class:`~souverix_crdt.replica.Replica` — the planes it knows of are read from the
  delegations it holds (or from a topology, when one is given), and its sync debt per peer.

No key material leaves this module: planes are named by key id (a hash of the public key) and
delegations by digest; nothing reads a :class:`~souverix_crdt.authority.SigningKey`'s bytes.
"""

from __future__ import annotations

import datetime
import math
from collections.abc import Iterable, Mapping
from typing import Any, Final

import attrs

from souverix_crdt.authority import COLLECTION_CAPABILITY, Capability, Delegation
from souverix_crdt.conflicts import ConflictRecord, RegisterId
from souverix_crdt.envelope import chain_writer
from souverix_crdt.federation.inventory import node_reports
from souverix_crdt.federation.manager import FederationManager
from souverix_crdt.federation.status import LinkState, LinkStatus, combine_debt
from souverix_crdt.federation.views import (
    DEFAULT_DELAYED_AFTER_MS,
    FleetView,
    ScopeRow,
    fleet_view,
    node_status,
)
from souverix_crdt.plane.topology import (
    AutonomyFlags,
    ConflictResolution,
    ControlPlaneSpec,
    Topology,
    format_duration,
)
from souverix_crdt.replica import Replica, SyncDebt
from souverix_crdt.scope import Autonomy, Scope, Tier

__all__ = [
    "DESIRED_COLLECTIONS",
    "LEVELS",
    "ScopeNotFoundError",
    "Source",
    "jsonable",
    "topology_from_replica",
]

#: Authority levels, highest first: the order of the legend and of the per-level table.
LEVELS: Final = tuple(tier.value for tier in Tier)
#: The collections whose values inherit down the tree (what the policy overlay shows).
DESIRED_COLLECTIONS: Final = ("policies", "versions")
#: Node records listed per scope in a scope's detail (the counts always cover every node).
MAX_LISTED_NODES: Final = 200
_MISSING: Final = object()


class ScopeNotFoundError(KeyError):
    """The scope is well formed but neither a plane's nor holding data at the viewer.

    Attributes:
        scope: The canonical path asked for.
    """

    def __init__(self, scope: str) -> None:
        super().__init__(scope)
        self.scope = scope


def jsonable(value: Any) -> Any:
    """A replicated value as JSON: bytes become ``{"bytes": hex}``, other keys strings.

    Values are whatever msgpack carried (a plane may write bytes or integer-keyed maps), and the
    page must show them rather than fail on one odd record.
    """
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)  # JSON has no NaN or infinity; strict parsers reject them
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, bytes | bytearray | memoryview):
        return {"bytes": bytes(value).hex()}
    if isinstance(value, Mapping):
        return {str(key): jsonable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(item) for item in value]
    return repr(value)


def _when(milliseconds: int) -> str:
    moment = datetime.datetime.fromtimestamp(milliseconds / 1000, tz=datetime.UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def topology_from_replica(replica: Replica) -> Topology:
    """The planes a lone replica knows of, read from the delegations it holds.

    One plane per delegated scope (the latest delegation for it wins), named after the scope's
    last segment, or its whole path when two scopes share a last segment. Sync relationships are
    not part of a delegation, so the topology has none.
    """
    latest: dict[Scope, Delegation] = {}
    for delegation in replica.authority.delegations():
        held = latest.get(delegation.scope)
        if held is None or (delegation.not_before, delegation.serial) > (
            held.not_before,
            held.serial,
        ):
            latest[delegation.scope] = delegation
    names = [scope.name for scope in latest]
    planes: dict[str, ControlPlaneSpec] = {}
    if Scope.root() not in latest:
        # Roots may delegate below the root scope directly; the tree still needs its root.
        planes[Scope.root().name] = _plane_spec(Scope.root().name, Scope.root(), Tier.GLOBAL, None)
    for scope in sorted(latest, key=lambda s: (s.depth, str(s))):
        delegation = latest[scope]
        name = scope.name if names.count(scope.name) == 1 else str(scope)
        planes[name] = _plane_spec(name, scope, delegation.tier, delegation)
    return Topology(
        fleet_id=replica.fleet_id,
        planes=planes,
        conflict_resolution=ConflictResolution(),
        source=f"delegations held by replica {replica.name}",
    )


def _plane_spec(
    name: str, scope: Scope, tier: Tier, delegation: Delegation | None
) -> ControlPlaneSpec:
    capabilities: frozenset[Capability] = (
        frozenset() if delegation is None else delegation.capabilities
    )
    return ControlPlaneSpec(
        name=name,
        scope=scope,
        level=tier,
        autonomy=AutonomyFlags(
            mode=Autonomy.FULL if delegation is None else delegation.autonomy,
            can_operate_isolated=Capability.OPERATE_ISOLATED in capabilities,
            can_modify_policies=Capability.MODIFY_POLICIES in capabilities,
            can_deploy_versions=Capability.DEPLOY_VERSIONS in capabilities,
        ),
        upstream=None,
        downstream=(),
        air_gapped=False,
    )


@attrs.frozen
class _Plane:
    """A plane as the dashboard sees it: its spec, its replica (if local), its leaf grant."""

    spec: ControlPlaneSpec
    replica: Replica | None
    leaf: Delegation | None


class Source:
    """A federation or a single replica, read as dashboard data.

    Args:
        target: A federation manager, or one replica.
        topology: For a single replica: its federation's topology (default: read from the
            delegations it holds). Ignored for a manager, which has its own.
        delayed_after_ms: Heartbeat age past which a node is delayed (as in the views).
    """

    def __init__(
        self,
        target: FederationManager | Replica,
        *,
        topology: Topology | None = None,
        delayed_after_ms: int = DEFAULT_DELAYED_AFTER_MS,
    ) -> None:
        self.manager = target if isinstance(target, FederationManager) else None
        self.delayed_after_ms = delayed_after_ms
        if isinstance(target, FederationManager):
            self.topology = target.topology
            self.replicas: Mapping[str, Replica] = target.replicas
        else:
            self.topology = topology or topology_from_replica(target)
            self.replicas = {self._plane_named(target): target}

    def _plane_named(self, replica: Replica) -> str:
        for plane in self.topology.planes.values():
            if plane.scope == replica.identity.scope:
                return plane.name
        return replica.name

    # ------------------------------------------------------------------ basics

    @property
    def kind(self) -> str:
        """``federation`` or ``replica``."""
        return "replica" if self.manager is None else "federation"

    @property
    def viewer(self) -> str:
        """The plane whose replica judges the fleet view: the highest one held here."""
        local = [p for p in self.topology.parents_first() if p.name in self.replicas]
        return local[0].name if local else next(iter(self.replicas))

    def now_ms(self) -> int:
        """The viewer's wall clock."""
        return self.replicas[self.viewer].clock.physical()

    def links(self) -> dict[str, LinkStatus]:
        """Uplink status by lower plane (a lone replica has no link state to report)."""
        return {} if self.manager is None else self.manager.link_statuses()

    def replicas_watched(self) -> Iterable[Replica]:
        """The replicas whose changes the dashboard follows."""
        return self.replicas.values()

    def link_fingerprint(self) -> tuple[Any, ...]:
        """What changes when a link goes up or down or settles debt (cheap; for polling).

        Ages are left out because they grow by themselves; the minute of the viewer's clock is
        in, so statuses that change only with time (a heartbeat going stale) are picked up.
        """
        now = self.now_ms()
        if self.manager is None:
            debts = self.replicas[self.viewer].status().sync_debt
            links: tuple[Any, ...] = tuple(
                (peer, debt.envelopes, debt.bytes) for peer, debt in sorted(debts.items())
            )
        else:
            links = tuple(
                (
                    name,
                    status.state.value,
                    status.debt.envelopes,
                    status.debt.bytes,
                    status.last_sync_ms,
                )
                for name, status in sorted(self.links().items())
            )
        return (now // 60_000, links)

    def _planes(self) -> dict[str, _Plane]:
        planes = {}
        for name, spec in self.topology.planes.items():
            replica = self.replicas.get(name)
            leaf = replica.identity.leaf if replica is not None else self._known_leaf(spec.scope)
            planes[name] = _Plane(spec, replica, leaf)
        return planes

    def _known_leaf(self, scope: Scope) -> Delegation | None:
        # A plane outside this process: its grant as the viewer's replica learned it.
        found = [d for d in self.replicas[self.viewer].authority.delegations() if d.scope == scope]
        return max(found, key=lambda d: (d.not_before, d.serial)) if found else None

    def _judge(self, scope: Scope) -> tuple[str, Replica]:
        """The replica that judges a scope: its master of record's if local, else the viewer's."""
        try:
            master = self.topology.master_of(scope).name
        except KeyError:
            master = self.viewer
        if master in self.replicas:
            return master, self.replicas[master]
        return self.viewer, self.replicas[self.viewer]

    def _writer_names(self) -> dict[str, str]:
        """Plane names by key id, to name the writer of a register (a chain id)."""
        return {
            plane.leaf.subject.key_id: name
            for name, plane in self._planes().items()
            if plane.leaf is not None
        }

    # ------------------------------------------------------------------ the whole page

    def views(self) -> tuple[FleetView, dict[str, FleetView]]:
        """The fleet view at the viewer, and a view at every local regional plane."""
        links = self.links()
        fleet = fleet_view(
            self.replicas[self.viewer],
            self.topology,
            links,
            # A lone replica is shown in its whole known tree (ancestors give it context);
            # a federation from the highest plane it runs.
            root=None if self.manager is None else self.viewer,
            delayed_after_ms=self.delayed_after_ms,
        )
        regions = {
            name: fleet_view(
                replica,
                self.topology,
                links,
                root=name,
                delayed_after_ms=self.delayed_after_ms,
            )
            for name, replica in self.replicas.items()
            if name != self.viewer and self.topology.plane(name).level is Tier.REGIONAL
        }
        return fleet, regions

    def snapshot(self) -> dict[str, Any]:
        """Everything the page shows, JSON-serialisable."""
        fleet, regions = self.views()
        now = fleet.now_ms
        description = self.describe()
        return {
            "kind": self.kind,
            "fleet_id": self.topology.fleet_id,
            "viewer": self.viewer,
            "now_ms": now,
            "now_text": _when(now),
            "levels": list(LEVELS),
            "describe": description,
            "views": {
                "fleet": fleet.to_json(),
                "regions": {name: view.to_json() for name, view in regions.items()},
            },
            "planes": self.planes_json(),
            "level_status": self.level_status(fleet),
            "graph": self.graph(fleet),
            "trust": self.trust(),
            "policies": self.overlay("policies"),
            "versions": self.overlay("versions"),
            "audit": self.audit(),
        }

    def describe(self) -> dict[str, Any]:
        """The manager's ``describe()``, or the same shape for a lone replica."""
        if self.manager is not None:
            return self.manager.describe()
        replica = self.replicas[self.viewer]
        authority = {}
        for name, plane in self._planes().items():
            if plane.leaf is None:
                continue
            authority[name] = {
                "scope": str(plane.spec.scope),
                "level": plane.spec.level.value,
                "autonomy": plane.spec.autonomy.to_json(),
                "air_gapped": plane.spec.air_gapped,
                "key_id": plane.leaf.subject.key_id,
                "issuer": self.topology.issuer_of(name),
                "delegation": plane.leaf.digest.hex(),
                "capabilities": sorted(c.value for c in plane.leaf.capabilities),
                "not_after_ms": plane.leaf.not_after.wall,
            }
        return {
            "fleet_id": replica.fleet_id,
            "now_ms": replica.clock.physical(),
            "conflict_resolution": self.topology.conflict_resolution.to_json(),
            "authority": authority,
            "sync_status": [
                {"peer": peer, "debt": debt.to_json()}
                for peer, debt in sorted(replica.status().sync_debt.items())
            ],
            "relationships": [link.to_json() for link in self.topology.links()],
        }

    def planes_json(self) -> dict[str, dict[str, Any]]:
        """Per plane: authority, whether it runs here, and its replica's health counters."""
        result = {}
        for name, plane in self._planes().items():
            entry: dict[str, Any] = {
                "name": name,
                "scope": str(plane.spec.scope),
                "level": plane.spec.level.value,
                "autonomy": plane.spec.autonomy.mode.value,
                "air_gapped": plane.spec.air_gapped,
                "issuer": self.topology.issuer_of(name),
                "in_process": plane.replica is not None,
                "key_id": None if plane.leaf is None else plane.leaf.subject.key_id,
                "capabilities": []
                if plane.leaf is None
                else sorted(c.value for c in plane.leaf.capabilities),
            }
            if plane.replica is not None:
                status = plane.replica.status()
                entry["replica"] = {
                    "pending": status.pending,
                    "quarantined": sum(status.quarantined.values()),
                    "equivocators": len(status.equivocators),
                    "conflicts": len(plane.replica.conflicts()),
                    "hlc": str(status.hlc),
                    "digest": plane.replica.digest()[:16],
                }
            result[name] = entry
        return result

    def level_status(self, fleet: FleetView) -> dict[str, dict[str, Any]]:
        """Per authority level: planes, isolated planes, uplinks up/down and their sync debt."""
        links = self.links()
        rows = {row.name: row for _, row in fleet.rows()}
        result = {}
        for level in Tier:
            planes = [p for p in self.topology.planes.values() if p.level is level]
            uplinks = [links[p.name] for p in planes if p.name in links]
            debt = SyncDebt(0, 0, 0)
            for status in uplinks:
                debt = combine_debt(debt, status.debt)
            shown = [rows[p.name] for p in planes if p.name in rows]
            result[level.value] = {
                "planes": len(planes),
                "isolated": sum(1 for row in shown if row.isolated),
                "nodes": sum(row.own.total for row in shown),
                "links": len(uplinks),
                "up": sum(1 for s in uplinks if s.state is LinkState.UP and not s.air_gapped),
                "down": sum(1 for s in uplinks if s.state is LinkState.DOWN and not s.air_gapped),
                "air_gapped": sum(1 for s in uplinks if s.air_gapped),
                "debt": debt.to_json(),
                "debt_text": format_duration(debt.oldest_age_ms) if uplinks else "—",
            }
        return result

    def graph(self, fleet: FleetView) -> dict[str, Any]:
        """Nodes and sync edges for the relationship graph (edges point downstream)."""
        rows = {row.name: row for _, row in fleet.rows()}
        links = self.links()
        nodes = []
        for name, spec in self.topology.planes.items():
            row: ScopeRow | None = rows.get(name)
            nodes.append(
                {
                    "name": name,
                    "scope": str(spec.scope),
                    "level": spec.level.value,
                    "autonomy": spec.autonomy.mode.value,
                    "air_gapped": spec.air_gapped,
                    "isolated": bool(row and row.isolated),
                    "parent": self.topology.issuer_of(name),
                }
            )
        edges = []
        for link in self.topology.links():
            status = links.get(link.lower)
            state = None if status is None else status.state.value
            debt = None if status is None else status.debt
            edges.append(
                {
                    "upstream": link.upper,
                    "downstream": link.lower,
                    "air_gapped": link.air_gapped,
                    "state": state,
                    "up": None
                    if link.up is None
                    else {"mode": link.up.mode.value, "frequency": link.up.frequency},
                    "down": None
                    if link.down is None
                    else {"mode": link.down.mode.value, "frequency": link.down.frequency},
                    "debt": None if debt is None else debt.to_json(),
                    "debt_text": None if debt is None else format_duration(debt.oldest_age_ms),
                    "last_sync_ms": None if status is None else status.last_sync_ms,
                }
            )
        return {"nodes": nodes, "edges": edges}

    # ------------------------------------------------------------------ trust and policy

    def _scopes(self) -> list[Scope]:
        """Every scope the page lists: the planes' and any other the viewer holds data for."""
        ordered: list[Scope] = []

        def walk(name: str) -> None:
            ordered.append(self.topology.plane(name).scope)
            for child in self.topology.children(name):
                walk(child)

        walk(self.topology.root.name)
        # Tree order for planes (as the views list them); then scopes without a plane.
        extra = set(self.replicas[self.viewer].fleet.scopes) - set(ordered)
        return ordered + sorted(extra)

    def trust(self) -> list[dict[str, Any]]:
        """Per plane key: its grant, and which listed scopes it may write what into."""
        scopes = self._scopes()
        result = []
        for name, plane in self._planes().items():
            leaf = plane.leaf
            if leaf is None:
                continue
            collections = sorted(
                c for c, needed in COLLECTION_CAPABILITY.items() if needed in leaf.capabilities
            )
            result.append(
                {
                    "plane": name,
                    "key_id": leaf.subject.key_id,
                    "scope": str(leaf.scope),
                    "level": leaf.tier.value,
                    "autonomy": leaf.autonomy.value,
                    "capabilities": sorted(c.value for c in leaf.capabilities),
                    "collections": collections,
                    "issuer": self.topology.issuer_of(name),
                    "delegation": leaf.digest.hex(),
                    "not_before_ms": leaf.not_before.wall,
                    "not_after_ms": leaf.not_after.wall,
                    "scopes": [str(s) for s in scopes if leaf.scope.contains(s)],
                }
            )
        return result

    def _origin(self, replica: Replica, scope: Scope, collection: str, key: str) -> Scope | None:
        for level in scope.lineage():
            if replica.get(level, collection, key, _MISSING) is not _MISSING:
                return level
        return None

    def effective(self, scope: Scope, collection: str) -> tuple[str, dict[str, dict[str, Any]]]:
        """Values in force at ``scope``, each with the scope it is set at (as its judge sees)."""
        judge, replica = self._judge(scope)
        values = {}
        for key, value in replica.fleet.effective_items(scope, collection).items():
            origin = self._origin(replica, scope, collection, key)
            values[key] = {
                "value": jsonable(value),
                "set_at": None if origin is None else str(origin),
                "inherited": origin != scope,
            }
        return judge, values

    def overlay(self, collection: str) -> dict[str, Any]:
        """The effective ``collection`` at every listed scope: set there, or inherited."""
        rows = []
        keys: set[str] = set()
        for scope in self._scopes():
            judge, values = self.effective(scope, collection)
            keys.update(values)
            rows.append({"scope": str(scope), "seen_at": judge, "values": values})
        return {"collection": collection, "keys": sorted(keys), "scopes": rows}

    # ------------------------------------------------------------------ audit

    def _value_of(self, record: ConflictRecord, register: RegisterId, replica: Replica) -> Any:
        handle = replica.scope(record.scope).collection(record.collection)
        for candidate in handle.history(record.key):
            if candidate.hlc == register.hlc and candidate.writer == register.writer:
                return {"value": jsonable(candidate.value), "deleted": candidate.deleted}
        return None  # beyond the bounded history: the record still names the register

    def audit(self, scope: Scope | None = None) -> list[dict[str, Any]]:
        """The viewer's audit log (or one scope's), with plane names, values and agreement."""
        viewer = self.replicas[self.viewer]
        names = self._writer_names()
        held = {name: set(replica.conflicts()) for name, replica in self.replicas.items()}
        result = []
        for record in viewer.conflicts():
            if scope is not None and record.scope != str(scope):
                continue
            # Only replicas whose interest covers the scope ever receive it (a zone never sees
            # a sibling's data), so agreement is counted among those.
            where = Scope.parse(record.scope)
            holders = [
                name
                for name, replica in self.replicas.items()
                if replica.identity.scope.is_related_to(where)
            ]
            entry = record.to_json()
            for role, register in (("winner", record.winner), ("loser", record.loser)):
                entry[role]["plane"] = names.get(chain_writer(register.writer))
                entry[role]["key_id"] = chain_writer(register.writer)
                entry[role]["register"] = self._value_of(record, register, viewer)
            entry["seen_at"] = self.viewer
            entry["agreeing"] = sum(1 for name in holders if record in held[name])
            entry["replicas"] = len(holders)
            result.append(entry)
        return result

    # ------------------------------------------------------------------ one scope

    def scope_detail(self, path: str) -> dict[str, Any]:
        """One scope: master, own and effective values, nodes, writers, conflicts, history.

        Raises:
            InvalidScopeError: ``path`` is not a canonical scope path.
            ScopeNotFoundError: no plane has it and the viewer holds no data for it.
        """
        scope = Scope.parse(path)
        if scope not in self._scopes():
            raise ScopeNotFoundError(str(scope))
        judge, replica = self._judge(scope)
        try:
            master: ControlPlaneSpec | None = self.topology.master_of(scope)
        except KeyError:
            master = None
        now = replica.clock.physical()
        reports = node_reports(replica, scope)
        nodes = [
            {
                "node_id": report.node_id,
                "status": node_status(report, now, self.delayed_after_ms).value,
                "heartbeat_ms": report.heartbeat_ms,
                "age": None
                if report.age_ms(now) is None
                else format_duration(report.age_ms(now) or 0),
                "state": report.state,
                "versions": jsonable(dict(report.versions)),
            }
            for report in reports[:MAX_LISTED_NODES]
        ]
        own = {
            name: {
                key: jsonable(value) for key, value in replica.scope(scope).collection(name).items()
            }
            for name in ("policies", "versions", "meta")
        }
        names = self._writer_names()
        history: dict[str, dict[str, list[dict[str, Any]]]] = {}
        for collection in DESIRED_COLLECTIONS:
            handle = replica.scope(scope).collection(collection)
            history[collection] = {
                key: [
                    {
                        "value": jsonable(register.value),
                        "deleted": register.deleted,
                        "hlc": str(register.hlc),
                        "version": register.version,
                        "writer": names.get(chain_writer(register.writer))
                        or chain_writer(register.writer),
                    }
                    for register in handle.history(key)
                ]
                for key, _ in handle.items()
            }
        writers = [
            {key: entry[key] for key in ("plane", "key_id", "scope", "level", "collections")}
            for entry in self.trust()
            if Scope.parse(entry["scope"]).contains(scope)
        ]
        return {
            "scope": str(scope),
            "master": None if master is None else master.name,
            "is_plane": master is not None and master.scope == scope,
            "level": None if master is None else master.level.value,
            "seen_at": judge,
            "now_ms": now,
            "own": own,
            "effective": {c: self.effective(scope, c)[1] for c in DESIRED_COLLECTIONS},
            "history": history,
            "nodes_total": len(reports),
            "nodes": nodes,
            "writers": writers,
            "conflicts": self.audit(scope),
        }
