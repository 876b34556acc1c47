"""The demo: the product brief's federation in one process, on a simulated clock.

``python -m souverix_crdt.federation.demo`` (or :func:`run_demo`) builds the brief's topology from
the packaged YAML, bootstraps keys deterministically from a seed, and plays a morning of fleet life
in well under a second of real time:

1. every plane reports its nodes — region-a's zones 25 each, region-b 32 plus 8 in the
   air-gapped edge-b1, the autonomous edge-c 15 — running the desired ``souverix-agent``;
2. global publishes a fleet policy and region-a rolls out a new agent version to its zones;
3. region-a and the conditional edge-a1 edit one policy concurrently; authority precedence
   settles it for region-a on every replica and the audit log records it;
4. edge-c is cut off for 3 h 45 min and keeps operating on its own; two of edge-a2's nodes stop
   heart-beating and three never take the rollout;
5. edge-b1 exchanges bundle files with region-b, its only way in or out;
6. the Global Fleet View and the Region A View are printed: every figure (node counts, statuses,
   drift, sync debt) is computed by the library from replicated state;
7. edge-c reconnects and catches up.

Nothing here is printed from a constant: change the scenario and the views change with it.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Final, TextIO

import attrs

from souverix_crdt.conflicts import ConflictRecord
from souverix_crdt.envelope import chain_writer
from souverix_crdt.hlc import Timestamp
from souverix_crdt.plane.keyring import bootstrap_keys
from souverix_crdt.plane.planedir import save_ceremony
from souverix_crdt.plane.topology import Topology, default_topology, format_duration

from .inventory import NodeReport, node_reports
from .manager import FederationManager, LinkStatus, ManualClock, PropagationStatus
from .render import dot, mermaid, render_text
from .views import FleetView, fleet_view

__all__ = ["APP", "EDGE_C_OUTAGE_MS", "NODES", "START_MS", "DemoResult", "main", "run_demo"]

#: 2025-06-01 08:00 UTC: where the simulated clock starts.
START_MS: Final = 1_748_764_800_000
#: How long edge-c stays cut off: 3 h 45 min.
EDGE_C_OUTAGE_MS: Final = 3 * 3_600_000 + 45 * 60_000
#: Heartbeat period of the simulated nodes.
TICK_MS: Final = 15 * 60_000
#: Nodes per plane (each plane reports the nodes of its own scope).
NODES: Final = {"edge-a1": 25, "edge-a2": 25, "region-b": 32, "edge-b1": 8, "edge-c": 15}
#: The application whose desired version is rolled out.
APP: Final = "souverix-agent"
_BASELINE: Final = "2.4.1"
_ROLLOUT: Final = "2.5.0"
#: edge-a2 nodes that never take the rollout, and those of them whose heartbeats stop.
_LAGGING: Final = ("edge-a2-n22", "edge-a2-n23", "edge-a2-n24")
_SILENT: Final = ("edge-a2-n23", "edge-a2-n24")
#: Heartbeat rounds, at the end of edge-c's outage, in which the silent nodes do not report.
_SILENT_ROUNDS: Final = 3


@attrs.frozen
class DemoResult:
    """What the demo built and printed, for tests and for callers who want to look further.

    Attributes:
        manager: The federation (its replicas hold every figure the views show).
        global_view: The Global Fleet View, computed at global.
        region_view: The Region A View, computed at region-a.
        conflict: The audit record of the concurrent policy edit.
        policy: Propagation of the global policy when the views were printed.
        rollout: Propagation of region-a's version rollout when the views were printed.
        links: Every link's status when the views were printed (edge-c reconnects after).
        output: Everything printed.
        elapsed_s: Wall-clock seconds the demo took.
    """

    manager: FederationManager
    global_view: FleetView
    region_view: FleetView
    conflict: ConflictRecord
    policy: PropagationStatus
    rollout: PropagationStatus
    links: Mapping[str, LinkStatus]
    output: str
    elapsed_s: float


class _Printer:
    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.parts: list[str] = []

    def __call__(self, text: str = "") -> None:
        line = text if text.endswith("\n") else text + "\n"
        self.parts.append(line)
        self.out.write(line)

    def section(self, title: str) -> None:
        self(f"\n== {title}")


class _Fleet:
    """The simulated nodes: what each reports, driven by the scenario."""

    def __init__(self, manager: FederationManager, clock: ManualClock) -> None:
        self.manager = manager
        self.clock = clock
        self.policies: dict[str, dict[str, Any]] = {}
        self.running = {
            f"{plane}-n{index:02d}": _BASELINE
            for plane, count in NODES.items()
            for index in range(count)
        }

    def heartbeat(self, plane: str, *, skip: tuple[str, ...] = ()) -> None:
        """Every node of ``plane`` but ``skip`` reports: one envelope per plane."""
        now = self.clock()
        reports = [
            NodeReport(node, now, {APP: self.running[node]}, dict(self.policies.get(plane, {})))
            for node in self.nodes(plane)
            if node not in skip
        ]
        self.manager.report_nodes(plane, reports)

    @staticmethod
    def nodes(plane: str) -> list[str]:
        """The node ids of ``plane``."""
        return [f"{plane}-n{index:02d}" for index in range(NODES[plane])]

    def apply(self, plane: str) -> None:
        """The plane's nodes take what is in force at its scope (laggards keep their version)."""
        scope = self.manager.topology.plane(plane).scope
        replica = self.manager.replica(plane)
        self.policies[plane] = replica.fleet.effective_items(scope, "policies")
        desired = replica.effective(scope, "versions", APP)
        for node in self.nodes(plane):
            if desired is not None and node not in _LAGGING:
                self.running[node] = desired


@contextmanager
def _workdir(workdir: Path | None) -> Iterator[Path]:
    if workdir is not None:
        workdir.mkdir(parents=True, exist_ok=True)
        yield workdir
        return
    with tempfile.TemporaryDirectory(prefix="souverix-demo-") as folder:
        yield Path(folder)


def _plane_of(manager: FederationManager, chain: str) -> str:
    key_id = chain_writer(chain)
    for name, creds in manager.keys.planes.items():
        if creds.key_id == key_id:
            return name
    return key_id


def _describe_conflict(manager: FederationManager, record: ConflictRecord) -> list[str]:
    handle = manager.replica("global").scope(record.scope).collection(record.collection)
    values = {(r.hlc, r.writer): r.value for r in handle.history(record.key)}
    lines = []
    for role, register in (("winner", record.winner), ("loser ", record.loser)):
        value = values.get((register.hlc, register.writer), "?")
        lines.append(
            f"  {role}  {_plane_of(manager, register.writer):<9} {value!r:<20} "
            f"hlc {register.hlc}  version {register.version}"
        )
    return [
        f"  {record.scope}  {record.collection}.{record.key}",
        *lines,
        f"  strategy {record.strategy}, reason {record.reason}; "
        f"recorded identically on {_agreeing(manager, record)} replicas",
    ]


def _agreeing(manager: FederationManager, record: ConflictRecord) -> int:
    return sum(1 for replica in manager.replicas.values() if record in replica.conflicts())


def _propagation_lines(status: PropagationStatus) -> list[str]:
    publication = status.publication
    lines = [
        f"  {publication.collection}.{publication.key} = {publication.value!r} at "
        f"{publication.scope} (by {publication.publisher}; nodes as seen at {status.seen_at})",
        f"    received by {len(status.received)} planes: {', '.join(status.received)}",
    ]
    if status.missing:
        lines.append(f"    not yet at: {', '.join(status.missing)}")
    lines.extend(
        f"    applied in {a.scope}: {a.applied}/{a.total} nodes"
        + (" (overridden below)" if a.overridden else "")
        for a in status.applied
    )
    return lines


def run_demo(
    *, out: TextIO | None = None, workdir: Path | None = None, seed: int = 7
) -> DemoResult:
    """Run the demo, printing to ``out`` (default: standard output).

    Args:
        out: Where to print; colours are used only on a terminal standard output.
        workdir: Where keys, bundle files and the graph files go (default: a temporary folder
            removed afterwards).
        seed: Derives the keys and the replicas' epochs: the same seed prints the same demo.
    """
    started = time.perf_counter()
    stream = sys.stdout if out is None else out
    color = out is None and sys.stdout.isatty()
    say = _Printer(stream)
    with _workdir(workdir) as folder:
        result = _play(say, folder, seed, color=color)
    elapsed = time.perf_counter() - started
    simulated = format_duration(result.manager.wall_clock() - START_MS)
    say(f"\nDone in {elapsed:.2f} s of real time; {simulated} simulated.")
    return attrs.evolve(result, output="".join(say.parts), elapsed_s=elapsed)


def _play(say: _Printer, folder: Path, seed: int, *, color: bool) -> DemoResult:  # noqa: PLR0915
    # One statement per scenario step, in order: splitting it would only scatter the story.
    topology: Topology = default_topology()
    clock = ManualClock(START_MS)
    keys = bootstrap_keys(
        topology,
        seed=seed,
        not_before=Timestamp(START_MS - 86_400_000),
        not_after=Timestamp(START_MS + 365 * 86_400_000),
    )
    # As keys init writes them: the roots offline, one directory per plane.
    save_ceremony(keys, folder / "keys")
    manager = FederationManager(topology, keys, wall_clock=clock, seed=seed)
    fleet = _Fleet(manager, clock)
    bundles = folder / "bundles"

    say(
        f"souverix-crdt demo: fleet {topology.fleet_id!r}, {len(topology.planes)} control planes "
        f"from {topology.source}"
    )
    say(f"keys and delegations bootstrapped from seed {seed} into {folder / 'keys'}")
    for name, creds in keys.planes.items():
        spec = topology.plane(name)
        caps = ", ".join(sorted(c.value for c in creds.delegation.capabilities))
        say(
            f"  {name:<9} {spec.level.value:<10} {spec.autonomy.mode.value:<11} "
            f"key {creds.key_id[:12]}  chain of {len(creds.chain)}  [{caps}]"
        )

    say.section("08:00  nodes report in; global publishes the baseline agent and a fleet policy")
    baseline = manager.publish_version("global", APP, _BASELINE)
    policy = manager.publish_policy("global", "max-unavailable", "10%")
    manager.settle()
    manager.exchange_bundles("region-b", "edge-b1", bundles)
    for plane in NODES:
        fleet.apply(plane)
        fleet.heartbeat(plane)
    manager.settle()
    manager.exchange_bundles("region-b", "edge-b1", bundles)
    manager.settle()
    say(
        f"  {sum(NODES.values())} nodes reported by {len(NODES)} planes; "
        f"baseline {APP} {baseline.value} published at {baseline.scope}"
    )

    clock.advance(5 * 60_000)
    say.section("08:05  region-a rolls out a new agent version to its zones")
    rollout_pub = manager.publish_version("global/region-a", APP, _ROLLOUT)
    manager.settle()
    say(f"  {APP} {_ROLLOUT} published at {rollout_pub.scope} by {rollout_pub.publisher}")

    clock.advance(5 * 60_000)
    say.section("08:10  region-a and edge-a1 edit one policy concurrently (link briefly down)")
    manager.set_link_state("region-a", "edge-a1", up=False)
    zone = "global/region-a/edge-a1"
    manager.replica("region-a").scope(zone).policies.set("maintenance-window", "sat 02:00-04:00")
    clock.advance(60_000)  # edge-a1 writes later: last-writer-wins alone would pick it
    manager.replica("edge-a1").scope(zone).policies.set("maintenance-window", "sun 01:00-03:00")
    manager.set_link_state("region-a", "edge-a1", up=True)
    manager.settle()
    conflict = next(
        r for r in manager.replica("global").conflicts() if r.key == "maintenance-window"
    )
    in_force = manager.replica("edge-a1").effective(zone, "policies", "maintenance-window")
    say(f"  in force at edge-a1 after sync: {in_force!r}")
    say("  audit record:")
    for line in _describe_conflict(manager, conflict):
        say(line)

    clock.advance(START_MS + 20 * 60_000 - clock())  # 08:20
    outage_start = clock()
    say.section("08:20  edge-c loses its uplink and operates autonomously")
    manager.set_link_state("edge-c", "global", up=False)
    manager.replica("edge-c").scope("global/edge-c").meta.set("isolated-since", outage_start)
    fleet.heartbeat("edge-c")
    ticks = EDGE_C_OUTAGE_MS // TICK_MS
    for tick in range(1, ticks + 1):
        clock.advance(TICK_MS)
        silent = _SILENT if tick > ticks - _SILENT_ROUNDS else ()
        for plane in NODES:
            fleet.apply(plane)
            fleet.heartbeat(plane, skip=silent)
        if tick == 4:
            # Cut off, edge-c still decides for itself: it holds modify_policies.
            manager.replica("edge-c").scope("global/edge-c").policies.set("scale-out", "local")
        manager.settle()
    say(
        f"  {ticks} heartbeat rounds of {format_duration(TICK_MS)}; edge-c kept writing "
        f"while cut off for {format_duration(clock() - outage_start)}"
    )

    say.section(
        f"{_clock_text(clock())}  edge-b1 (air-gapped) exchanges bundle files with region-b"
    )
    for path in manager.exchange_bundles("region-b", "edge-b1", bundles):
        say(f"  {path.name}  {path.stat().st_size} bytes")
    manager.settle()

    statuses = manager.link_statuses()
    global_view = fleet_view(manager.replica("global"), topology, statuses)
    region_view = fleet_view(manager.replica("region-a"), topology, statuses, root="region-a")
    say.section("Global Fleet View")
    say(render_text(global_view, color=color).rstrip("\n"))
    say.section("Region A View")
    say(render_text(region_view, color=color, details=True).rstrip("\n"))

    say.section("Propagation (Lifecycle Manager)")
    policy_status = manager.propagation(policy, at="global")
    rollout_status = manager.propagation(rollout_pub, at="region-a")
    for line in _propagation_lines(policy_status) + _propagation_lines(rollout_status):
        say(line)

    description = manager.describe()
    (folder / "federation.json").write_text(json.dumps(description, indent=2) + "\n")
    (folder / "federation.mmd").write_text(mermaid(topology, statuses))
    (folder / "federation.dot").write_text(dot(topology, statuses))
    say.section("Integration")
    say(
        f"  describe(): {len(description['authority'])} control planes, "
        f"{len(description['sync_status'])} links -> {folder / 'federation.json'}"
    )
    say(f"  sync graph: {folder / 'federation.mmd'} (Mermaid), {folder / 'federation.dot'} (DOT)")

    say.section(f"{_clock_text(clock())}  edge-c reconnects")
    owed = manager.link_status("global", "edge-c").debt
    manager.set_link_state("edge-c", "global", up=True)
    manager.settle()
    after = manager.link_status("global", "edge-c").debt
    seen = node_reports(manager.replica("global"), "global/edge-c")
    newest = max((r.heartbeat_ms or 0) for r in seen)
    local = manager.replica("global").get("global/edge-c", "policies", "scale-out")
    say(
        f"  {owed.envelopes} envelopes ({owed.bytes} bytes, oldest "
        f"{format_duration(owed.oldest_age_ms)}) synced; debt now {after.envelopes} envelopes"
    )
    say(
        f"  global now sees edge-c's latest heartbeat from {format_duration(clock() - newest)} "
        f"ago, and its local policy scale-out={local!r}"
    )
    return DemoResult(
        manager,
        global_view,
        region_view,
        conflict,
        policy_status,
        rollout_status,
        statuses,
        "",
        0.0,
    )


def _clock_text(milliseconds: int) -> str:
    minutes = (milliseconds // 60_000) % (24 * 60)
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


def main() -> None:
    """Entry point of ``python -m souverix_crdt.federation.demo``."""
    run_demo()


if __name__ == "__main__":
    main()
