"""The federation manager: the control planes of one process, linked as the topology says.

A :class:`FederationManager` opens a :class:`~souverix_crdt.replica.Replica` per control plane
of a :class:`~souverix_crdt.plane.topology.Topology` (each writing as its bootstrapped identity, see
:mod:`souverix_crdt.plane.keyring`) and links every pair the topology relates with a sans-IO
:class:`~souverix_crdt.sync.session.SyncSession` over the in-memory transport. Frames move only
when the caller drives them (:meth:`~FederationManager.sync`, :meth:`~FederationManager.settle`),
and every replica reads the injected wall clock, so a whole federation runs deterministically on a
:class:`ManualClock` in tests and demos.

Connectivity
    :meth:`~FederationManager.set_link_state` is what a Connectivity Manager calls when a link
    goes down or comes back. Down tears the link's sessions down (as a dropped connection does);
    the planes on either side keep writing (autonomous operation) while their outboxes record
    what the other side has not acknowledged, which is the link's sync debt. Up opens fresh
    sessions whose hellos exchange frontiers, so exactly what is missing crosses.

Air-gapped links
    No session ever runs over a link with an air-gapped end:
    :meth:`~FederationManager.exchange_bundles` carries what each side lacks through files, both
    ways, and the return file acknowledges the first one. The carrier is a seam
    (:class:`BundleCarrier`): signed bundles and receipts of the bundle transport (see
    :mod:`souverix_crdt.federation._carriers`).

Integration hooks
    :meth:`~FederationManager.describe` is the JSON-serialisable description the Digital Twin
    Service reads; :meth:`~FederationManager.publish_policy`,
    :meth:`~FederationManager.publish_version` and :meth:`~FederationManager.propagation` serve
    the Lifecycle Manager.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Final, Protocol

import attrs

from souverix_crdt.authority import COLLECTION_CAPABILITY, Capability
from souverix_crdt.hlc import system_wall_clock
from souverix_crdt.plane.keyring import FederationKeys
from souverix_crdt.plane.topology import LinkSpec, Topology
from souverix_crdt.replica import Receipt, Replica
from souverix_crdt.scope import Scope
from souverix_crdt.store.base import Store
from souverix_crdt.store.memory import MemoryStore
from souverix_crdt.sync.local import pump
from souverix_crdt.sync.session import SessionState, SyncSession
from souverix_crdt.transports.memory import MemoryNetwork, MemoryTransport

from ._carriers import default_carrier
from .inventory import NodeReport, node_reports, report_nodes
from .status import LinkState, LinkStatus, PropagationStatus, Publication, ScopeApplication

__all__ = [
    "BundleCarrier",
    "FederationManager",
    "LinkState",
    "LinkStatus",
    "ManualClock",
    "PropagationStatus",
    "Publication",
    "ScopeApplication",
    "StoreFactory",
    "sqlite_stores",
]

_MISSING: Final = object()


class ManualClock:
    """A wall clock that moves only when told to (milliseconds); call it to read it.

    Args:
        start: The initial time in milliseconds since the epoch.
    """

    def __init__(self, start: int) -> None:
        self.now = start

    def __call__(self) -> int:
        """The current time in milliseconds."""
        return self.now

    def advance(self, milliseconds: int) -> int:
        """Move forward by ``milliseconds`` (never backwards); return the new time."""
        if milliseconds < 0:
            raise ValueError("a manual clock only moves forward")
        self.now += milliseconds
        return self.now


class BundleCarrier(Protocol):
    """Moves what one replica's peer lacks through files, and applies such files."""

    def export_bundle(self, replica: Replica, path: Path, *, peer: str, peer_scope: Scope) -> Any:
        """Write what ``peer`` (granted ``peer_scope``) has not acknowledged to ``path``."""
        ...

    def import_bundle(self, replica: Replica, path: Path) -> Any:
        """Verify and apply ``path``; settle the sync debt its frontiers acknowledge."""
        ...

    def export_receipt(self, replica: Replica, path: Path, *, peer: str) -> Any:
        """Write this replica's frontiers for ``peer``: a receipt for what it sent."""
        ...

    def import_receipt(self, replica: Replica, path: Path) -> Any:
        """Apply a receipt: settle the sync debt towards its source."""
        ...


@attrs.define
class _Link:
    spec: LinkSpec
    state: LinkState
    sessions: list[tuple[SyncSession, MemoryTransport]] = attrs.field(factory=list)
    last_sync_ms: int | None = None
    protocol_errors: int = 0

    def endpoints(self) -> list[tuple[SyncSession, MemoryTransport]]:
        return self.sessions


StoreFactory = Callable[[str], Store]


def sqlite_stores(directory: str | Path) -> StoreFactory:
    """A store factory keeping each plane in ``directory/<plane>.sqlite3`` (created if needed)."""
    from souverix_crdt.store.sqlite import SqliteStore  # noqa: PLC0415  (only services that ask load sqlite3)

    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)

    def make(name: str) -> Store:
        return SqliteStore.open(folder / f"{name}.sqlite3")

    return make


class FederationManager:
    """Runs the control planes of one process and the links between them.

    Args:
        topology: The validated topology.
        keys: Credentials for every plane (from :func:`~souverix_crdt.plane.keyring.bootstrap_keys`
            or :func:`~souverix_crdt.plane.keyring.load_keys`).
        planes: Which planes run in this process (default: all); links to others are left to
            the sync coordinator of a real deployment.
        wall_clock: The time source every replica reads, in milliseconds.
        store_factory: Makes each plane's store from its name (default: in-memory).
        seed: Seeds the in-memory network and the replicas' epochs, for reproducible runs;
            ``None`` gives random epochs.
        carrier: How bundles cross air-gapped links (default: signed bundles).
    """

    def __init__(
        self,
        topology: Topology,
        keys: FederationKeys,
        *,
        planes: Iterable[str] | None = None,
        wall_clock: Callable[[], int] = system_wall_clock,
        store_factory: StoreFactory | None = None,
        seed: int | None = None,
        carrier: BundleCarrier | None = None,
    ) -> None:
        if keys.fleet_id != topology.fleet_id:
            raise ValueError(f"keys of fleet {keys.fleet_id!r}, topology of {topology.fleet_id!r}")
        self.topology = topology
        self.keys = keys
        self.wall_clock = wall_clock
        self.network = MemoryNetwork(seed or 0)
        self.carrier: BundleCarrier = carrier or default_carrier()
        make_store = store_factory or (lambda _name: MemoryStore())
        names = list(topology.planes) if planes is None else list(planes)
        self.replicas: dict[str, Replica] = {}
        for index, name in enumerate(names):
            plane = topology.plane(name)
            self.replicas[name] = Replica(
                keys.identity(name),
                keys.anchors,
                make_store(name),
                name=name,
                wall_clock=wall_clock,
                history_limit=topology.conflict_resolution.history_limit,
                epoch=None if seed is None else seed * 1_000_003 + index + 1,
            )
            assert self.replicas[name].identity.scope == plane.scope
        self.links: dict[tuple[str, str], _Link] = {}
        for spec in topology.links():
            if spec.upper not in self.replicas or spec.lower not in self.replicas:
                continue
            link = _Link(spec, LinkState.DOWN)
            self.links[spec.key] = link
            # Sync debt is tracked from the start, before any hello, so writes made while a link
            # has never been up still count as owed.
            upper, lower = self.replicas[spec.upper], self.replicas[spec.lower]
            upper.register_peer(lower.name, [lower.identity.scope])
            lower.register_peer(upper.name, [upper.identity.scope])
            if not spec.air_gapped:
                self._connect(link)

    # ------------------------------------------------------------------ planes

    def replica(self, name: str) -> Replica:
        """The replica of plane ``name``."""
        return self.replicas[name]

    def __getitem__(self, name: str) -> Replica:
        return self.replicas[name]

    def report_nodes(self, plane: str, reports: Iterable[NodeReport]) -> Receipt:
        """Write node records into ``plane``'s own scope, as that plane (one envelope)."""
        return report_nodes(self.replicas[plane], self.topology.plane(plane).scope, reports)

    # ------------------------------------------------------------------ links

    def _link(self, a: str, b: str) -> _Link:
        link = self.links.get((a, b)) or self.links.get((b, a))
        if link is None:
            raise KeyError(f"no link between {a} and {b} in this process")
        return link

    def _connect(self, link: _Link) -> None:
        upper, lower = link.spec.upper, link.spec.lower
        ends = self.network.connect(upper, lower)
        link.sessions = []
        for name, end in zip((upper, lower), ends, strict=True):
            session = SyncSession(self.replicas[name], batch_size=link.spec.batch_size)
            session.start()
            link.sessions.append((session, end))
        link.state = LinkState.UP

    def _disconnect(self, link: _Link) -> None:
        for session, end in link.sessions:
            session.close("link down")
            end.close_nowait()
        link.sessions = []
        link.state = LinkState.DOWN

    def set_link_state(self, a: str, b: str, *, up: bool) -> None:
        """Bring the link between planes ``a`` and ``b`` up or down (order does not matter).

        Raises:
            KeyError: the two planes are not linked in this process.
            ValueError: the link is air-gapped; only :meth:`exchange_bundles` crosses it.
        """
        link = self._link(a, b)
        if link.spec.air_gapped:
            raise ValueError(f"{a}-{b} is air-gapped: only bundle files cross it")
        if up and link.state is LinkState.DOWN:
            self._connect(link)
        elif not up and link.state is LinkState.UP:
            self._disconnect(link)

    def link_state(self, a: str, b: str) -> LinkState:
        """Whether the link between ``a`` and ``b`` is up."""
        return self._link(a, b).state

    def isolate(self, plane: str) -> None:
        """Take every non-air-gapped link of ``plane`` down (it operates autonomously)."""
        for link in self.links.values():
            if plane in link.spec.key and not link.spec.air_gapped:
                self._disconnect(link)

    def reconnect(self, plane: str) -> None:
        """Bring every non-air-gapped link of ``plane`` back up."""
        for link in self.links.values():
            if plane in link.spec.key and not link.spec.air_gapped and link.state is LinkState.DOWN:
                self._connect(link)

    # ------------------------------------------------------------------ moving frames

    def _live(self) -> list[_Link]:
        return [link for link in self.links.values() if link.state is LinkState.UP]

    def sync(self, max_rounds: int = 10_000) -> int:
        """Move frames over every live link until none is in flight; return how many moved.

        Links found caught up afterwards record the current time as their last sync.
        """
        total = pump(self.network, self._live, max_rounds=max_rounds)
        now = self.wall_clock()
        for link in self._live():
            if self._caught_up(link):
                link.last_sync_ms = now
        return total

    @staticmethod
    def _caught_up(link: _Link) -> bool:
        return all(
            session.state is SessionState.OPEN and session.caught_up for session, _ in link.sessions
        )

    def caught_up(self) -> bool:
        """True when every live link is caught up both ways."""
        return all(self._caught_up(link) for link in self._live())

    def settle(self, max_ticks: int = 200) -> int:
        """Sync, repairing loss with session ticks, until every live link is caught up.

        Returns:
            The ticks it took (0 when one sync sufficed).

        Raises:
            RuntimeError: not settled within ``max_ticks``.
        """
        for ticks in range(max_ticks):
            self.sync()
            if self.caught_up():
                return ticks
            for link in self._live():
                for session, _ in link.sessions:
                    session.tick()
        raise RuntimeError(f"federation did not settle within {max_ticks} ticks")

    def exchange_bundles(self, a: str, b: str, directory: str | Path) -> list[Path]:
        """Carry what each side of an air-gapped link lacks through files, both ways.

        Three files cross, as a courier would carry them: the upper plane's bundle down, the
        lower plane's bundle up (which also acknowledges the first), and a receipt down that
        acknowledges the second. Both sides' sync debt is then settled.

        Returns:
            The files written, in the order they crossed.
        """
        link = self._link(a, b)
        upper, lower = self.replicas[link.spec.upper], self.replicas[link.spec.lower]
        folder = Path(directory)
        folder.mkdir(parents=True, exist_ok=True)
        stamp = self.wall_clock()
        written = []
        for source, target in ((upper, lower), (lower, upper)):
            path = folder / f"{source.name}-to-{target.name}-{stamp}.bundle"
            self.carrier.export_bundle(
                source, path, peer=target.name, peer_scope=target.identity.scope
            )
            self.carrier.import_bundle(target, path)
            written.append(path)
        receipt = folder / f"{upper.name}-to-{lower.name}-{stamp}.receipt"
        self.carrier.export_receipt(upper, receipt, peer=lower.name)
        self.carrier.import_receipt(lower, receipt)
        written.append(receipt)
        link.last_sync_ms = stamp
        return written

    # ------------------------------------------------------------------ status

    def link_status(self, a: str, b: str) -> LinkStatus:
        """State and sync debt of the link between ``a`` and ``b``."""
        link = self._link(a, b)
        upper, lower = link.spec.key
        return LinkStatus(
            upper=upper,
            lower=lower,
            state=link.state,
            transport="bundle" if link.spec.air_gapped else "memory",
            to_lower=self.replicas[upper].sync_debt(lower),
            to_upper=self.replicas[lower].sync_debt(upper),
            last_sync_ms=link.last_sync_ms,
            air_gapped=link.spec.air_gapped,
        )

    def link_statuses(self) -> dict[str, LinkStatus]:
        """Every link's status, keyed by its lower plane (each plane has one uplink)."""
        return {lower: self.link_status(upper, lower) for upper, lower in self.links}

    def describe(self) -> dict[str, Any]:
        """Authority metadata, sync status and federation relationships, JSON-serialisable.

        What the Digital Twin Service reads: per control plane its scope, level, autonomy, key
        id and capabilities; per link its state, sync debt and last sync; and the upstream and
        downstream edges with their mode and frequency.
        """
        authority = {}
        for name, replica in self.replicas.items():
            plane = self.topology.plane(name)
            leaf = replica.identity.leaf
            authority[name] = {
                "scope": str(plane.scope),
                "level": plane.level.value,
                "autonomy": plane.autonomy.to_json(),
                "air_gapped": plane.air_gapped,
                "key_id": replica.identity.key_id,
                "issuer": self.topology.issuer_of(name),
                "delegation": leaf.digest.hex(),
                "capabilities": sorted(c.value for c in leaf.capabilities),
                "not_after_ms": leaf.not_after.wall,
            }
        return {
            "fleet_id": self.topology.fleet_id,
            "now_ms": self.wall_clock(),
            "conflict_resolution": self.topology.conflict_resolution.to_json(),
            "authority": authority,
            "sync_status": [status.to_json() for status in self.link_statuses().values()],
            "relationships": [link.spec.to_json() for link in self.links.values()],
        }

    # ------------------------------------------------------------------ publishing

    def _publisher(self, scope: Scope, capability: Capability) -> str:
        # The master of record publishes; if it may not (a zone cannot deploy versions), the
        # nearest ancestor plane that may does, writing into the zone's scope.
        for candidate in scope.lineage():
            for name, replica in self.replicas.items():
                leaf = replica.identity.leaf
                if leaf.scope == candidate and capability in leaf.capabilities:
                    return name
        raise ValueError(f"no plane in this process may write {capability.value} at {scope}")

    def _publish(
        self, scope: Scope | str, collection: str, key: str, value: Any, by: str | None
    ) -> Publication:
        target = Scope.parse(scope)
        publisher = by or self._publisher(target, COLLECTION_CAPABILITY[collection])
        handle = self.replicas[publisher].scope(target).collection(collection)
        receipt = handle.set(key, value)
        return Publication(str(target), collection, key, value, publisher, receipt)

    def publish_policy(
        self, scope: Scope | str, key: str, value: Any, *, by: str | None = None
    ) -> Publication:
        """Publish a policy at ``scope`` (by its master of record unless ``by`` names a plane)."""
        return self._publish(scope, "policies", key, value, by)

    def publish_version(
        self, scope: Scope | str, app: str, version: str, *, by: str | None = None
    ) -> Publication:
        """Publish the desired ``version`` of ``app`` at ``scope``."""
        return self._publish(scope, "versions", app, version, by)

    def propagation(self, publication: Publication, *, at: str | None = None) -> PropagationStatus:
        """Which planes show ``publication`` and which nodes report it applied.

        Args:
            publication: What :meth:`publish_policy` or :meth:`publish_version` returned.
            at: The plane whose replicated state judges the nodes (default: the publisher).
        """
        scope = Scope.parse(publication.scope)
        received: list[str] = []
        missing: list[str] = []
        for name, replica in self.replicas.items():
            if not replica.identity.scope.is_related_to(scope):
                continue  # outside its interest: it never receives this scope
            shown = replica.get(scope, publication.collection, publication.key, _MISSING)
            (received if shown == publication.value else missing).append(name)
        judge = self.replicas[at or publication.publisher]
        applied = []
        for candidate in sorted(judge.fleet.scopes, key=str):
            if not scope.contains(candidate):
                continue
            reports = node_reports(judge, candidate)
            if not reports:
                continue
            in_force = judge.effective(candidate, publication.collection, publication.key)
            pending = tuple(
                r.node_id
                for r in reports
                if r.reported(publication.collection, publication.key) != publication.value
            )
            applied.append(
                ScopeApplication(
                    scope=str(candidate),
                    applied=len(reports) - len(pending),
                    total=len(reports),
                    overridden=in_force != publication.value,
                    pending=pending,
                )
            )
        return PropagationStatus(
            publication, tuple(received), tuple(missing), judge.name, tuple(applied)
        )

    # ------------------------------------------------------------------ lifecycle

    def close(self) -> None:
        """Close every session and store."""
        for link in self.links.values():
            self._disconnect(link)
        for replica in self.replicas.values():
            replica.close()
