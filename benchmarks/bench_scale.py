"""Scale: memory per node record, cold open from SQLite, and a 100-zone federation in one process.

* ``memory_ratio`` — resident memory per node record of a scope's merged state (writer document
  plus index) built through the receive path, ÷ raw pycrdt holding the same values.
* ``cold_open_ratio`` / ``cold_open_ratio_log`` — reopening a 100k-key replica from SQLite, with
  and without a writer checkpoint, ÷ raw pycrdt applying a full state of the same values.
* ``scale_*`` and ``dup_transmission_ratio`` — one global, regions and zones linked as a tree over
  the in-memory network (:class:`~souverix_crdt.testing.cluster.Cluster`): a round of status
  updates from every zone, a region cut off while its zones keep writing, then heal and settle.
  Convergence is checked before any figure is reported.

:func:`run_scale` is also what ``benchmarks/plot_scaling.py`` runs at several fleet sizes.
"""

from __future__ import annotations

import gc
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import msgpack
import pycrdt

from souverix_crdt.codec import encode_canonical
from souverix_crdt.document import FleetState, ScopeState, WriteOp
from souverix_crdt.hlc import Timestamp
from souverix_crdt.replica import Identity, Replica
from souverix_crdt.scope import Autonomy, Scope, Tier
from souverix_crdt.store.base import StoredEnvelope
from souverix_crdt.store.sqlite import SqliteStore
from souverix_crdt.testing.cluster import Cluster
from souverix_crdt.testing.fleet import ALL_CAPABILITIES, EDGE_CAPABILITIES, NOW, Fleet, make_fleet

from .bench_lww import keys_and_values, node_value
from .runner import Context, Figure, benchmark, cost_figure, time_once, timed_pair

ROOT = Path(__file__).resolve().parent.parent
#: Node records per transaction when a scope is filled for the memory and cold-open figures.
FILL_BATCH = 1000
#: Node records per transaction in a zone's round of status updates.
ROUND_BATCH = 100
#: Node records per transaction while a region is cut off (status updates trickle in).
PARTITION_BATCH = 10


# =============================================================================== memory


def _rss() -> int:
    """Resident set size of this process, in bytes (Linux /proc; peak RSS elsewhere)."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:  # pragma: no cover - not Linux
        import resource  # noqa: PLC0415

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _release_free_memory() -> None:
    """Collect garbage and hand freed heap back to the OS, so RSS deltas count live memory."""
    gc.collect()
    try:
        import ctypes  # noqa: PLC0415

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # pragma: no cover - not glibc
        pass


def memory_probe(n: int, ours_first: bool) -> dict[str, float]:
    """Run in a fresh child process: RSS growth of ours and of raw pycrdt holding n records.

    Both structures are built through the receive path from pre-made updates and both stay
    alive until the end, so the second never reuses memory the first gave back.
    """
    scope = Scope.parse("global/region-a/zone-00")
    items = keys_and_values(n)
    writer = ScopeState(scope)
    ours_updates = []
    for number, start in enumerate(range(0, n, FILL_BATCH), start=1):
        ops = [WriteOp("nodes", k, v) for k, v in items[start : start + FILL_BATCH]]
        ours_updates.append(writer.write("writer", Timestamp(NOW + number), ops).update)
    del writer
    source: pycrdt.Doc[Any] = pycrdt.Doc(client_id=1)
    source_nodes = source.get("nodes", type=pycrdt.Map)
    raw_updates = []
    for start in range(0, n, FILL_BATCH):
        state = source.get_state()
        with source.transaction():
            for key, value in items[start : start + FILL_BATCH]:
                source_nodes[key] = msgpack.packb(value)
        raw_updates.append(source.get_update(state))
    del source, source_nodes, items
    kept: list[object] = []

    def build_ours() -> None:
        fleet = FleetState()
        for seq, update in enumerate(ours_updates, start=1):
            fleet.receive(scope, "writer", seq, update)
        assert len(fleet.scope(scope).keys("nodes")) == n
        kept.append(fleet)

    def build_raw() -> None:
        doc: pycrdt.Doc[Any] = pycrdt.Doc()
        nodes = doc.get("nodes", type=pycrdt.Map)
        for update in raw_updates:
            doc.apply_update(update)
        assert len(nodes) == n
        kept.append((doc, nodes))

    grown = {}
    order = [("ours", build_ours), ("raw", build_raw)]
    for side, build in order if ours_first else reversed(order):
        _release_free_memory()
        before = _rss()
        build()
        _release_free_memory()
        grown[side] = float(_rss() - before)
    return grown


def _probe_in_child(n: int, ours_first: bool) -> dict[str, float]:
    code = (
        "import json, sys; from benchmarks.bench_scale import memory_probe; "
        f"print(json.dumps(memory_probe({n}, {ours_first})))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    grown: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return grown


@benchmark("memory")
def memory(ctx: Context) -> None:
    """Resident bytes per node record: a scope's document + index vs raw pycrdt, same values."""
    n = 10_000 if ctx.quick else 100_000
    ours, base = [], []
    for run in range(ctx.repeats):
        grown = _probe_in_child(n, ours_first=run % 2 == 0)
        ours.append(grown["ours"] / n)
        base.append(grown["raw"] / n)
    ctx.add(
        cost_figure(
            "memory_ratio",
            ours,
            base,
            unit="bytes/node",
            bar=1.5,
            note=f"RSS growth per node record at {n} records (one scope, one writer, "
            f"{FILL_BATCH} per transaction), built through the receive path (FleetState."
            "receive: the writer document plus the LWW index a Replica holds); the store and "
            "its envelope log are not counted. Baseline: raw pycrdt Doc applying updates that "
            "set the same msgpack values in one Map. RSS, not tracemalloc, because pycrdt's "
            "Rust heap is invisible to tracemalloc; each run is a fresh child process that "
            "builds both sides (order alternating) and keeps both alive, after malloc_trim",
        )
    )


# =============================================================================== cold open


def _replica(fleet: Fleet, name: str, store: Any, epoch: int) -> Replica:
    member = fleet[name]
    return Replica(
        Identity(member.key, member.chain),
        fleet.anchors,
        store,
        name=name,
        wall_clock=lambda: NOW + 10_000_000,
        epoch=epoch,
    )


@benchmark("cold_open")
def cold_open(ctx: Context) -> None:
    """Reopen a replica of n keys from SQLite (checkpoint / log) vs pycrdt applying a full state."""
    n = 10_000 if ctx.quick else 100_000
    fleet = make_fleet()
    scope = "global/region-a"
    items = keys_and_values(n)
    directory = Path(tempfile.mkdtemp(prefix="souverix-bench-open-"))
    paths = {"log": directory / "log.sqlite3", "checkpoint": directory / "checkpoint.sqlite3"}
    for kind, path in paths.items():
        writer = _replica(fleet, "region-a", SqliteStore.open(path), epoch=1)
        for start in range(0, n, FILL_BATCH):
            ops = [WriteOp("nodes", k, v) for k, v in items[start : start + FILL_BATCH]]
            writer.write(scope, ops)
        if kind == "checkpoint":
            assert writer.checkpoint(scope) is not None
        expected = writer.digest()
        writer.close()
    raw: pycrdt.Doc[Any] = pycrdt.Doc()
    raw_nodes = raw.get("nodes", type=pycrdt.Map)
    with raw.transaction():
        for key, value in items:
            raw_nodes[key] = msgpack.packb(value)
    full_state = raw.get_update()
    opened: list[Replica] = []
    loaded: list[pycrdt.Doc[Any]] = []
    epochs = iter(range(2, 1_000_000))

    def ours(kind: str) -> Callable[[], Callable[[], None]]:
        def setup() -> Callable[[], None]:
            while opened:
                opened.pop().close()

            def run() -> None:
                store = SqliteStore.open(paths[kind])
                opened.append(_replica(fleet, "region-a", store, epoch=next(epochs)))

            return run

        return setup

    def base() -> Callable[[], None]:
        loaded.clear()

        def run() -> None:
            doc: pycrdt.Doc[Any] = pycrdt.Doc()
            doc.get("nodes", type=pycrdt.Map)
            doc.apply_update(full_state)
            loaded.append(doc)  # freed outside the timing, as the replicas are

        return run

    cases = (("checkpoint", "cold_open_ratio", 5.0), ("log", "cold_open_ratio_log", None))
    for kind, name, bar in cases:
        our_times, base_times = timed_pair(ours(kind), base, ctx.repeats)
        replica = opened[-1]
        if replica.digest() != expected or len(replica.scope(scope).nodes.keys()) != n:
            raise AssertionError(f"cold open ({kind}) did not restore the writer's state")
        how = (
            "its signed checkpoint (the log before it compacted)"
            if kind == "checkpoint"
            else f"its log of {n // FILL_BATCH} envelopes, no checkpoint"
        )
        ctx.add(
            cost_figure(
                name,
                our_times,
                base_times,
                unit="s",
                bar=bar,
                note=f"SqliteStore.open + Replica(...) of a writer holding {n} node records, "
                f"rebuilt from {how}: verification, replay, index; baseline: a fresh pycrdt Doc "
                "applying the full state of a Map with the same msgpack values",
            )
        )
    while opened:
        opened.pop().close()


# =============================================================================== scale


def region_name(index: int) -> str:
    """``region-a`` … ``region-z``, then ``region-aa`` …: DNS labels in a stable order."""
    letters = ""
    index += 1
    while index:
        index, rest = divmod(index - 1, 26)
        letters = chr(ord("a") + rest) + letters
    return f"region-{letters}"


@dataclass
class Topology:
    """A signed fleet of one global, regions and zones, and how they link up."""

    fleet: Fleet
    regions: list[str]
    zones: dict[str, list[str]]  # region -> its zones
    scopes: dict[str, Scope]  # member -> its scope

    @property
    def names(self) -> list[str]:
        return ["global", *self.regions, *(z for r in self.regions for z in self.zones[r])]


def build_topology(regions: int, zones_per_region: int) -> Topology:
    """make_fleet's global and regions, more regions from the roots, zones from their region."""
    fleet = make_fleet()
    root = Scope.root()
    names = [region_name(i) for i in range(regions)]
    zones: dict[str, list[str]] = {}
    scopes = {"global": root}
    for region in names:
        scopes[region] = root.child(region)
        if region not in fleet.members:
            fleet.delegate(
                region,
                parent=None,
                scope=scopes[region],
                capabilities=ALL_CAPABILITIES,
                tier=Tier.REGIONAL,
                autonomy=Autonomy.FULL,
            )
        zones[region] = []
        for j in range(zones_per_region):
            zone = f"{region}-zone-{j:02d}"
            scopes[zone] = scopes[region].child(f"zone-{j:02d}")
            fleet.delegate(
                zone,
                parent=region,
                scope=scopes[zone],
                capabilities=EDGE_CAPABILITIES,
                tier=Tier.LOCAL,
                autonomy=Autonomy.FULL,
            )
            zones[region].append(zone)
    return Topology(fleet, names, zones, scopes)


@dataclass
class ScaleResult:
    """What one scale scenario measured (seconds, bytes, counts)."""

    zones: int
    nodes: int
    replicas: int
    partition_writes: int  # records rewritten on the cut-off side
    link_s: float  # opening every session (hellos, authority exchange), before any write
    round_s: float  # every zone writes its records; settle
    partition_s: float  # writes on the cut-off side; settle what can
    converge_s: float  # heal and settle
    total_s: float  # round + partition + converge
    bytes: int  # bytes delivered on the network from the first write to convergence
    payload_bytes: int  # keys + msgpack values x replicas that needed each write
    transmissions: int  # envelopes sent in batches, over every link direction
    needed: int  # distinct envelopes each receiver accepted from that link
    worst_link: float  # the highest transmissions ÷ needed of one link direction
    raw_total_s: float  # raw pycrdt doing the same data flow (see raw_flow)
    raw_converge_s: float


def _writes(
    replica: Replica, scope: Scope, records: list[tuple[str, Any]], per_transaction: int
) -> None:
    for start in range(0, len(records), per_transaction):
        batch = records[start : start + per_transaction]
        replica.write(scope, [WriteOp("nodes", key, value) for key, value in batch])


def _zone_records(zone_index: int, nodes: int, generation: int) -> list[tuple[str, Any]]:
    # Each zone reports its own node ids, so no two zones write the same key.
    first = zone_index * nodes
    return [(f"node-{i:07d}", node_value(i, generation)) for i in range(first, first + nodes)]


def _restricted(snapshot: list[tuple[Scope, str, Any]], scope: Scope) -> dict[str, Any]:
    return {path: values for parsed, path, values in snapshot if parsed.is_related_to(scope)}


def check_convergence(cluster: Cluster, topology: Topology, expected_nodes: int) -> None:
    """Fail loudly unless every replica holds exactly the root's state within its interest.

    Replicas with the same interest must have identical digests; every replica's snapshot must
    equal the global replica's snapshot restricted to its subtree and ancestors; the global one
    must hold every node record written.
    """
    snapshot = cluster["global"].snapshot()
    held = sum(len(v.get("nodes", {})) for v in snapshot.values())
    root = [(Scope.parse(path), path, values) for path, values in snapshot.items()]
    if held != expected_nodes:
        raise AssertionError(f"global holds {held} node records, expected {expected_nodes}")
    by_interest: dict[Scope, set[str]] = defaultdict(set)
    for name, replica in cluster.replicas.items():
        scope = topology.scopes[name]
        digest = replica.digest()
        by_interest[scope].add(digest)
        want = hashlib.sha256(encode_canonical(_restricted(root, scope))).hexdigest()
        if digest != want:
            raise AssertionError(
                f"{name} did not converge: its state is not global's within {scope}"
            )
        if replica.awaiting_authority or replica.status().pending:
            raise AssertionError(f"{name} still has envelopes waiting")
    for scope, digests in by_interest.items():
        if len(digests) != 1:
            raise AssertionError(f"replicas interested in {scope} disagree: {len(digests)} digests")


def run_scale(
    regions: int,
    zones_per_region: int,
    nodes_per_zone: int,
    *,
    partition_writes: int | None = None,
    batch_size: int = 100,
) -> ScaleResult:
    """One global, ``regions`` x ``zones_per_region`` zones, ``nodes_per_zone`` records each.

    1. link the tree (global-region, region-zone) and settle the handshakes;
    2. every zone writes its node records (ROUND_BATCH per transaction), global a policy, every
       region a policy; settle;
    3. partition the first region from global; its zones rewrite ``partition_writes`` records
       in all (default: all of theirs once), PARTITION_BATCH per transaction, and global writes
       a policy on the other side; settle what can;
    4. heal and settle; check convergence.
    """
    topology = build_topology(regions, zones_per_region)
    cluster = Cluster(topology.fleet, topology.names, batch_size=batch_size)
    accepted: dict[tuple[str, str], set[bytes]] = defaultdict(set)
    for name, replica in cluster.replicas.items():

        def on_envelope(stored: StoredEnvelope, source: str | None, name: str = name) -> None:
            if source is not None:
                accepted[(source, name)].add(stored.id)

        replica.on_envelope(on_envelope)
    zone_index = {
        z: i for i, z in enumerate(z for r in topology.regions for z in topology.zones[r])
    }
    rounds = {z: _zone_records(zone_index[z], nodes_per_zone, 0) for z in zone_index}
    cut = topology.regions[0]
    cut_zones = topology.zones[cut]
    budget = len(cut_zones) * nodes_per_zone if partition_writes is None else partition_writes
    per_zone = budget // max(len(cut_zones), 1)
    updates = {z: _zone_records(zone_index[z], nodes_per_zone, 1)[:per_zone] for z in cut_zones}
    gc.collect()
    gc.disable()
    try:
        start = time.perf_counter()
        for region in topology.regions:
            cluster.link("global", region)
            for zone in topology.zones[region]:
                cluster.link(region, zone)
        cluster.settle()
        linked = time.perf_counter()
        bytes_before = cluster.network.totals.bytes_delivered

        cluster["global"].write("global", [WriteOp("policies", "rollout", {"wave": 1})])
        for region in topology.regions:
            cluster[region].write(
                topology.scopes[region], [WriteOp("policies", "window", {"hours": "02-04"})]
            )
        for zone, records in rounds.items():
            _writes(cluster[zone], topology.scopes[zone], records, ROUND_BATCH)
        cluster.settle()
        round_done = time.perf_counter()

        cluster.partition("global", cut)
        for zone, records in updates.items():
            _writes(cluster[zone], topology.scopes[zone], records, PARTITION_BATCH)
        cluster["global"].write("global", [WriteOp("policies", "rollout", {"wave": 2})])
        cluster.settle()
        partitioned = time.perf_counter()
        _check_cut_off(cluster, topology, updates)

        cluster.heal("global", cut)
        # What the link's coordinator does when it sees the link back: repair that session
        # pair (settle would tick every session of the fleet if it had to).
        for session, _ in cluster.links[("global", cut)].sessions():
            session.tick()
        cluster.settle()
        converged = time.perf_counter()
    finally:
        gc.enable()
    check_convergence(cluster, topology, len(zone_index) * nodes_per_zone)
    total_bytes = cluster.network.totals.bytes_delivered - bytes_before

    transmissions = needed = 0
    worst = 0.0
    for link in cluster.links.values():
        for sender, receiver, session in (
            (link.a, link.b, link.a_session),
            (link.b, link.a, link.b_session),
        ):
            got = len(accepted[(sender, receiver)])
            transmissions += session.envelopes_sent
            needed += got
            if got:
                worst = max(worst, session.envelopes_sent / got)
            elif session.envelopes_sent:
                worst = float("inf")

    payload = _payload_bytes(topology, rounds, updates)
    raw_total, raw_converge = raw_flow(topology, rounds, updates)
    return ScaleResult(
        zones=len(zone_index),
        nodes=len(zone_index) * nodes_per_zone,
        replicas=len(cluster.replicas),
        partition_writes=per_zone * len(cut_zones),
        link_s=linked - start,
        round_s=round_done - linked,
        partition_s=partitioned - round_done,
        converge_s=converged - partitioned,
        total_s=converged - linked,
        bytes=total_bytes,
        payload_bytes=payload,
        transmissions=transmissions,
        needed=needed,
        worst_link=worst,
        raw_total_s=raw_total,
        raw_converge_s=raw_converge,
    )


def _check_cut_off(
    cluster: Cluster, topology: Topology, updates: dict[str, list[tuple[str, Any]]]
) -> None:
    """The partition was real: the cut region has its zones' new records, global does not."""
    zone, records = next(iter(updates.items()))
    key, value = records[-1]
    region = next(r for r in topology.regions if zone in topology.zones[r])
    scope = topology.scopes[zone]
    if cluster[region].get(scope, "nodes", key) != value:
        raise AssertionError(f"{region} lacks a record its zone wrote while cut off")
    if cluster["global"].get(scope, "nodes", key) == value:
        raise AssertionError("global received a record across the partition")


def _receivers(topology: Topology, scope: Scope) -> int:
    """Replicas other than the writer that receive data of ``scope`` (one link each, a tree)."""
    return sum(1 for s in topology.scopes.values() if s.is_related_to(scope)) - 1


def _payload_bytes(
    topology: Topology,
    rounds: dict[str, list[tuple[str, Any]]],
    updates: dict[str, list[tuple[str, Any]]],
) -> int:
    total = 0
    for records in (rounds, updates):
        for zone, items in records.items():
            size = sum(len(k.encode()) + len(msgpack.packb(v)) for k, v in items)
            total += size * _receivers(topology, topology.scopes[zone])
    return total


def raw_flow(
    topology: Topology,
    rounds: dict[str, list[tuple[str, Any]]],
    updates: dict[str, list[tuple[str, Any]]],
) -> tuple[float, float]:
    """Raw pycrdt doing the scenario's data flow: the CRDT work alone, no signing, no sync.

    Each zone's raw Doc sets the same msgpack values in the same transactions; each update is
    applied to its region's Doc and to global's Doc (the two replicas that need it). Returns
    ``(total seconds, seconds for global to apply what the cut region wrote)``.
    """
    zone_docs = {}
    for number, zone in enumerate(rounds, start=1):
        doc: pycrdt.Doc[Any] = pycrdt.Doc(client_id=number)
        zone_docs[zone] = (doc, doc.get("nodes", type=pycrdt.Map))
    region_of = {z: r for r in topology.regions for z in topology.zones[r]}
    region_docs: dict[str, pycrdt.Doc[Any]] = {r: pycrdt.Doc() for r in topology.regions}
    global_doc: pycrdt.Doc[Any] = pycrdt.Doc()
    for doc in (*region_docs.values(), global_doc):
        doc.get("nodes", type=pycrdt.Map)

    def write(zone: str, items: list[tuple[str, Any]], per: int) -> list[bytes]:
        doc, nodes = zone_docs[zone]
        made = []
        for start in range(0, len(items), per):
            before = doc.get_state()
            with doc.transaction():
                for key, value in items[start : start + per]:
                    nodes[f"{zone}/{key}"] = msgpack.packb(value)
            made.append(doc.get_update(before))
        return made

    def flow() -> None:
        for zone, items in rounds.items():
            for update in write(zone, items, ROUND_BATCH):
                region_docs[region_of[zone]].apply_update(update)
                global_doc.apply_update(update)
        for zone, items in updates.items():
            for update in write(zone, items, PARTITION_BATCH):
                region_docs[region_of[zone]].apply_update(update)
                late.append(update)

    late: list[bytes] = []
    total = time_once(flow)

    def catch_up() -> None:
        for update in late:
            global_doc.apply_update(update)

    converge = time_once(catch_up)
    return total + converge, converge


def scale_sizes(quick: bool) -> tuple[int, int, int]:
    """(regions, zones per region, nodes per zone) of the scale benchmark."""
    return (2, 5, 100) if quick else (10, 10, 1000)


@benchmark("scale")
def scale(ctx: Context) -> None:
    """A federation in one process: round of updates, a region partitioned, heal, converge."""
    regions, zones, nodes = scale_sizes(ctx.quick)
    runs = [
        run_scale(regions, zones, nodes) for _ in range(1 if ctx.quick else min(ctx.repeats, 3))
    ]
    last = runs[-1]
    shape = (
        f"1 global, {regions} regions, {last.zones} zones x {nodes} nodes = {last.nodes} node "
        f"records, {last.replicas} replicas linked as a tree over the in-memory network; "
        f"round: every zone writes its records {ROUND_BATCH} per transaction; partition: "
        f"{last.partition_writes} rewrites in the cut region, {PARTITION_BATCH} per "
        "transaction; GC paused while timed; convergence checked before reporting"
    )
    ctx.add(
        cost_figure(
            "scale_converge_s",
            [r.converge_s for r in runs],
            [r.raw_converge_s for r in runs],
            unit="s",
            note=f"heal → every session caught up. {shape}. Baseline: raw pycrdt global Doc "
            "applying the cut region's updates (no signing, no sync)",
        )
    )
    ctx.add(
        cost_figure(
            "scale_total_s",
            [r.total_s for r in runs],
            [r.raw_total_s for r in runs],
            unit="s",
            note=f"round + partition + heal + converge, after the sessions opened (opening "
            f"them took {statistics.median(r.link_s for r in runs):.2f} s). {shape}. "
            "Baseline: raw pycrdt zone Docs writing the same values, each update applied at "
            "its region's and global's Doc",
        )
    )
    ctx.add(
        cost_figure(
            "scale_bytes",
            [float(r.bytes) for r in runs],
            [float(r.payload_bytes) for r in runs],
            unit="bytes",
            note=f"bytes delivered on the network from the first write to convergence "
            f"(hellos, acks, retransmissions included). {shape}. Baseline: every node "
            "record written (key + msgpack value) x the replicas that needed it",
        )
    )
    ctx.add(
        Figure(
            name="dup_transmission_ratio",
            value=statistics.median(float(r.transmissions) for r in runs),
            unit="envelopes",
            baseline=statistics.median(float(r.needed) for r in runs),
            ratio=statistics.median(r.transmissions / r.needed for r in runs),
            better="lower",
            bar=1.05,
            samples={
                "value": [float(r.transmissions) for r in runs],
                "baseline": [float(r.needed) for r in runs],
            },
            note="envelopes sent in batches over every link direction (sessions' "
            "envelopes_sent, including those lost to the partition) ÷ distinct envelopes each "
            "receiver accepted from that link; worst single link direction: "
            f"{max(r.worst_link for r in runs):.3f}. {shape}",
        )
    )


def scale_to_json(result: ScaleResult) -> dict[str, Any]:
    """A JSON-serialisable form (for plot_scaling.py)."""
    return asdict(result)
