"""Fleet and regional views: data, JSON, terminal rendering, and the sync graph."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from rich.tree import Tree

from souverix_crdt.federation.inventory import NodeReport
from souverix_crdt.federation.manager import FederationManager, ManualClock
from souverix_crdt.federation.render import dot, mermaid, render_text, render_tree
from souverix_crdt.federation.views import (
    DEFAULT_DELAYED_AFTER_MS,
    FleetView,
    NodeCounts,
    NodeStatus,
    fleet_view,
    node_status,
)
from souverix_crdt.hlc import Timestamp
from souverix_crdt.plane.keyring import bootstrap_keys
from souverix_crdt.plane.topology import default_topology
from souverix_crdt.scope import Autonomy, Tier

START = 1_748_764_800_000
MINUTE = 60_000
TOPOLOGY = default_topology()
KEYS = bootstrap_keys(
    TOPOLOGY,
    seed=5,
    not_before=Timestamp(START - 86_400_000),
    not_after=Timestamp(START + 365 * 86_400_000),
)
SIZES = {"edge-a1": 4, "edge-a2": 3, "region-b": 2, "edge-b1": 2, "edge-c": 5}


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(START)


@pytest.fixture
def manager(clock: ManualClock, tmp_path: Path):
    federation = FederationManager(TOPOLOGY, KEYS, wall_clock=clock, seed=2)
    federation.publish_version("global", "agent", "1.0")
    federation.publish_version("global/region-a", "agent", "2.0")
    federation.publish_policy("global", "max-unavailable", "10%")
    federation.settle()
    federation.exchange_bundles("region-b", "edge-b1", tmp_path)
    for plane, count in SIZES.items():
        federation.report_nodes(
            plane,
            [
                NodeReport(
                    f"{plane}-{i}",
                    clock(),
                    {"agent": "2.0" if plane.startswith("edge-a") else "1.0"},
                    {"max-unavailable": "10%"},
                )
                for i in range(count)
            ],
        )
    federation.settle()
    federation.exchange_bundles("region-b", "edge-b1", tmp_path)
    federation.settle()
    yield federation
    federation.close()


def view_at(manager: FederationManager, plane: str = "global") -> FleetView:
    root = None if plane == "global" else plane
    return fleet_view(manager.replica(plane), TOPOLOGY, manager.link_statuses(), root=root)


def test_a_healthy_fleet(manager: FederationManager) -> None:
    view = view_at(manager)
    assert view.title == "Global Fleet View"
    assert view.viewer == "global"
    assert [row.name for _, row in view.rows()] == [
        "global",
        "region-a",
        "edge-a1",
        "edge-a2",
        "region-b",
        "edge-b1",
        "edge-c",
    ]
    assert view.root.nodes == NodeCounts(total=sum(SIZES.values()), live=sum(SIZES.values()))
    assert view.row("region-a").nodes.total == SIZES["edge-a1"] + SIZES["edge-a2"]
    assert view.row("region-b").own.total == SIZES["region-b"]
    assert view.row("region-b").nodes.total == SIZES["region-b"] + SIZES["edge-b1"]
    for _, row in view.rows():
        assert row.status == "Healthy"
        assert row.nodes.drifted == 0
        assert not row.isolated
    assert view.root.debt is None
    assert view.root.debt_text == "—"
    assert view.row("edge-c").debt_text == "0s"
    assert view.row("edge-a1").level is Tier.LOCAL
    assert view.row("edge-a1").autonomy is Autonomy.CONDITIONAL
    assert view.row("edge-b1").air_gapped
    with pytest.raises(KeyError):
        view.row("nowhere")


def test_delayed_drifted_and_autonomous(manager: FederationManager, clock: ManualClock) -> None:
    manager.set_link_state("global", "edge-c", up=False)
    cut = clock()
    manager.report_nodes("edge-c", [NodeReport("edge-c-0", cut, {"agent": "1.0"})])
    clock.advance(40 * MINUTE)
    # edge-a2: one node falls behind on its version, one stops reporting.
    manager.report_nodes(
        "edge-a2",
        [
            NodeReport("edge-a2-0", clock(), {"agent": "1.0"}),
            NodeReport("edge-a2-1", clock(), {"agent": "2.0"}, {"max-unavailable": "50%"}),
        ],
    )
    for plane in ("edge-a1", "region-b"):
        manager.report_nodes(
            plane,
            [
                NodeReport(
                    f"{plane}-{i}", clock(), {"agent": "2.0" if plane == "edge-a1" else "1.0"}
                )
                for i in range(SIZES[plane])
            ],
        )
    manager.settle()
    view = view_at(manager)
    a2 = view.row("edge-a2")
    assert a2.own == NodeCounts(total=3, live=2, delayed=1, autonomous=0, drifted=2)
    assert a2.status == "Live (2/3), Delayed (1/3)"
    assert a2.delayed == ("edge-a2-2",)
    assert {(d.node_id, d.collection, d.key, d.desired, d.reported) for d in a2.drift} == {
        ("edge-a2-0", "versions", "agent", "2.0", "1.0"),
        ("edge-a2-1", "policies", "max-unavailable", "10%", "50%"),
    }
    assert view.row("region-a").status == "Live (6/7), Delayed (1/7)"
    edge_c = view.row("edge-c")
    assert edge_c.isolated
    assert edge_c.status == "Autonomous"
    assert edge_c.nodes.autonomous == SIZES["edge-c"]
    assert edge_c.debt is not None
    assert edge_c.debt.envelopes == 1
    assert edge_c.debt_text == "40m"
    # The air-gapped zone's last bundle is 40 minutes old: it counts as operating on its own.
    assert view.row("edge-b1").isolated
    assert view.row("edge-b1").status == "Autonomous"
    assert view.root.status == ("Live (8/16), Delayed (1/16), Autonomous (7/16)")
    assert view.root.nodes.drifted == 2


def test_isolation_covers_the_subtree_but_not_the_regions_own_view(
    manager: FederationManager, clock: ManualClock
) -> None:
    manager.set_link_state("global", "region-a", up=False)
    clock.advance(MINUTE)
    global_view = view_at(manager)
    assert global_view.row("region-a").isolated
    assert global_view.row("edge-a1").isolated  # behind region-a's cut uplink
    assert global_view.row("edge-a1").status == "Autonomous"
    regional = view_at(manager, "region-a")
    assert regional.title == "Region A View"
    assert regional.viewer == "region-a"
    assert [row.name for _, row in regional.rows()] == ["region-a", "edge-a1", "edge-a2"]
    assert not regional.row("edge-a1").isolated
    assert regional.root.link is None


def test_node_status_and_labels() -> None:
    report = NodeReport("n", START, {})
    assert node_status(report, START + DEFAULT_DELAYED_AFTER_MS, DEFAULT_DELAYED_AFTER_MS) is (
        NodeStatus.LIVE
    )
    assert node_status(report, START + DEFAULT_DELAYED_AFTER_MS + 1, DEFAULT_DELAYED_AFTER_MS) is (
        NodeStatus.DELAYED
    )
    assert node_status(NodeReport("n", None), START, 1) is NodeStatus.DELAYED
    assert NodeCounts().label == "No nodes"
    assert NodeCounts(total=3, autonomous=3).label == "Autonomous"
    assert NodeCounts(total=50, live=48, delayed=2).label == "Live (48/50), Delayed (2/50)"
    assert NodeCounts(total=2, live=2).label == "Healthy"
    assert NodeCounts(1, 1, 0, 0, 1) + NodeCounts(2, 0, 2, 0, 0) == NodeCounts(3, 1, 2, 0, 1)


def test_views_are_json(manager: FederationManager) -> None:
    for plane in ("global", "region-a", "region-b"):
        document = view_at(manager, plane).to_json()
        assert json.loads(json.dumps(document)) == document
    document = view_at(manager).to_json()
    assert document["root"]["name"] == "global"
    assert [child["name"] for child in document["root"]["children"]] == [
        "region-a",
        "region-b",
        "edge-c",
    ]
    assert document["root"]["children"][0]["nodes"]["label"] == "Healthy"


def test_rich_tree_renders_every_scope(manager: FederationManager, clock: ManualClock) -> None:
    manager.set_link_state("global", "edge-c", up=False)
    manager.report_nodes("edge-c", [NodeReport("edge-c-0", clock(), {"agent": "1.0"})])
    clock.advance(3 * 3_600_000 + 45 * MINUTE)
    view = view_at(manager)
    tree = render_tree(view)
    assert isinstance(tree, Tree)
    text = render_text(view)
    lines = text.splitlines()
    assert lines[0].startswith("Global Fleet View")
    for _, row in view.rows():
        (line,) = [ln for ln in lines if re.match(rf"[\s│├└─]*{re.escape(row.name)}\s", ln)]
        assert f"{row.nodes.total} nodes" in line
        assert row.status in line
        assert f"drift {row.nodes.drifted}" in line
        assert f"debt {row.debt_text}" in line
    edge_c_line = next(ln for ln in lines if " edge-c " in ln)
    assert "[AUTONOMOUS]" in edge_c_line
    assert "debt 3h 45m (1 envelope)" in edge_c_line
    assert "[air-gapped]" in next(ln for ln in lines if " edge-b1 " in ln)
    assert "[conditional]" in next(ln for ln in lines if " edge-a1 " in ln)
    assert "\x1b[" not in text
    coloured = render_text(view, color=True)
    assert "\x1b[" in coloured
    detailed = render_text(view_at(manager, "region-a"), details=True)
    assert "delayed in edge-a1" in detailed


def test_mermaid_and_dot_name_every_scope_and_edge(manager: FederationManager) -> None:
    manager.set_link_state("global", "edge-c", up=False)
    statuses = manager.link_statuses()
    graph = mermaid(TOPOLOGY, statuses)
    assert graph.startswith("flowchart TD\n")
    digraph = dot(TOPOLOGY, statuses)
    assert digraph.startswith('digraph "souverix-demo" {')
    assert digraph.rstrip().endswith("}")
    for name, plane in TOPOLOGY.planes.items():
        node_id = "cp_" + name.replace("-", "_")
        assert f'{node_id}["{name}<br/>{plane.level.value}' in graph
        assert f'"{name}" [label="{name}\\n{plane.scope}' in digraph
    for link in TOPOLOGY.links():
        upper = "cp_" + link.upper.replace("-", "_")
        lower = "cp_" + link.lower.replace("-", "_")
        assert re.search(rf"{upper} -\.?->\|\"[^\"]*\"\| {lower}", graph), link.key
        assert f'"{link.upper}" -> "{link.lower}"' in digraph
    assert re.search(r"cp_global -\.->\|\"[^\"]*DOWN[^\"]*\"\| cp_edge_c", graph)
    assert '"global" -> "edge-c" [label="up opportunistic, DOWN", style=dashed]' in digraph
    assert "cp_region_b -.->" in graph  # air-gapped: dashed, by bundle
    assert "bundle" in digraph
    assert "continuous 15m" in graph
    assert "down push 5m" in digraph
    # Without statuses the graph is the topology alone.
    assert "DOWN" not in mermaid(TOPOLOGY)
