"""The demo: it runs quickly, and every figure it prints matches the replicated state.

The expected figures are recomputed here straight from the replicas (node records, desired
versions and policies in force, heartbeats against the clock, link state and outbox debt), with
their own small implementation of the rules in ``views.py``, and compared with the printed text.
"""

from __future__ import annotations

import io
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from souverix_crdt.federation.demo import APP, EDGE_C_OUTAGE_MS, NODES, DemoResult, run_demo
from souverix_crdt.federation.manager import FederationManager, LinkState, LinkStatus
from souverix_crdt.plane.topology import format_duration

ROW = re.compile(
    r"^[\s│├└─]*(?P<name>[a-z0-9-]+)\s+(?P<level>global|regional|local|autonomous)\s+"
    r"(?P<badges>(?:\[[^\]]+\]\s*)*)(?P<nodes>\d+) nodes\s+(?P<status>.+?)\s+"
    r"drift (?P<drift>\d+)\s+debt (?P<debt>.+?)(?: \((?P<envelopes>\d+) envelopes?\))?\s*$"
)


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[DemoResult, float]:
    out = io.StringIO()
    started = time.perf_counter()
    result = run_demo(out=out, workdir=tmp_path_factory.mktemp("demo"), seed=7)
    elapsed = time.perf_counter() - started
    assert out.getvalue() == result.output
    return result, elapsed


def section(output: str, title: str) -> list[str]:
    lines = output.splitlines()
    start = lines.index(f"== {title}") + 1
    end = next((i for i in range(start, len(lines)) if lines[i].startswith("== ")), len(lines))
    return lines[start:end]


def printed_rows(output: str, title: str) -> dict[str, dict[str, str]]:
    rows = {}
    for line in section(output, title):
        match = ROW.match(line)
        if match:
            rows[match["name"]] = match.groupdict()
    return rows


# --------------------------------------------------------------------------- recomputation


def subtree(manager: FederationManager, name: str) -> list[str]:
    names = [name]
    for child in manager.topology.children(name):
        names += subtree(manager, child)
    return names


def cut_off(links: dict[str, LinkStatus], name: str, root: str, now: int) -> bool:
    threshold = 15 * 60_000
    while name != root:
        status = links[name]
        if status.air_gapped:
            if status.last_sync_ms is None or now - status.last_sync_ms > threshold:
                return True
        elif status.state is LinkState.DOWN:
            return True
        name = status.upper
    return False


def expected_rows(result: DemoResult, viewer: str) -> dict[str, dict[str, object]]:
    manager = result.manager
    links = dict(result.links)
    replica = manager.replica(viewer)
    now = replica.clock.physical()
    threshold = 15 * 60_000
    per_plane = {}
    for name in subtree(manager, viewer):
        scope = manager.topology.plane(name).scope
        isolated = cut_off(links, name, viewer, now)
        desired_versions = replica.fleet.effective_items(scope, "versions")
        desired_policies = replica.fleet.effective_items(scope, "policies")
        counts = {"total": 0, "live": 0, "delayed": 0, "autonomous": 0, "drifted": 0}
        for _node, record in replica.scope(scope).nodes.items():
            counts["total"] += 1
            if isolated:
                counts["autonomous"] += 1
            elif now - record["heartbeat_ms"] <= threshold:
                counts["live"] += 1
            else:
                counts["delayed"] += 1
            versions_off = any(record["versions"].get(a) != v for a, v in desired_versions.items())
            policies_off = any(
                k in desired_policies and desired_policies[k] != v
                for k, v in record.get("policies", {}).items()
            )
            counts["drifted"] += versions_off or policies_off
        per_plane[name] = counts
    expected = {}
    for name, own in per_plane.items():
        totals = {key: sum(per_plane[n][key] for n in subtree(manager, name)) for key in own}
        total = totals["total"]
        if total == 0:
            status = "No nodes"
        elif totals["live"] == total:
            status = "Healthy"
        elif totals["autonomous"] == total:
            status = "Autonomous"
        else:
            status = ", ".join(
                f"{label} ({totals[key]}/{total})"
                for label, key in (
                    ("Live", "live"),
                    ("Delayed", "delayed"),
                    ("Autonomous", "autonomous"),
                )
                if totals[key]
            )
        if name == viewer:
            debt, envelopes = "—", None
        else:
            link = links[name]
            owed_to_lower = link.to_lower
            owed_to_upper = link.to_upper
            envelopes = owed_to_lower.envelopes + owed_to_upper.envelopes
            debt = format_duration(max(owed_to_lower.oldest_age_ms, owed_to_upper.oldest_age_ms))
        expected[name] = {
            "nodes": str(total),
            "status": status,
            "drift": str(totals["drifted"]),
            "debt": debt,
            "envelopes": str(envelopes) if envelopes else None,
            "level": manager.topology.plane(name).level.value,
        }
    return expected


# --------------------------------------------------------------------------- tests


def test_demo_finishes_quickly(demo: tuple[DemoResult, float]) -> None:
    result, elapsed = demo
    assert elapsed < 30
    assert result.elapsed_s <= elapsed


@pytest.mark.parametrize(
    ("title", "viewer"), [("Global Fleet View", "global"), ("Region A View", "region-a")]
)
def test_printed_views_match_the_replicated_state(
    demo: tuple[DemoResult, float], title: str, viewer: str
) -> None:
    result, _ = demo
    printed = printed_rows(result.output, title)
    expected = expected_rows(result, viewer)
    assert set(printed) == set(expected)
    for name, row in expected.items():
        got = printed[name]
        for field, value in row.items():
            assert got[field] == value, (title, name, field, got[field], value)


def test_the_scenario_is_visible_in_the_views(demo: tuple[DemoResult, float]) -> None:
    result, _ = demo
    rows = printed_rows(result.output, "Global Fleet View")
    # What the brief describes, checked against the replicas rather than literals.
    replica = result.manager.replica("global")
    assert int(rows["edge-a1"]["nodes"]) == len(
        replica.scope("global/region-a/edge-a1").nodes.items()
    )
    assert rows["edge-c"]["status"] == "Autonomous"
    assert "[AUTONOMOUS]" in rows["edge-c"]["badges"]
    assert "[air-gapped]" in rows["edge-b1"]["badges"]
    isolated_since = replica.get("global/edge-c", "meta", "isolated-since")  # replicated since
    assert rows["edge-c"]["debt"] == format_duration(result.global_view.now_ms - isolated_since)
    assert rows["edge-c"]["debt"] == format_duration(EDGE_C_OUTAGE_MS)
    assert "Delayed" in rows["edge-a2"]["status"]
    assert int(rows["edge-a2"]["drift"]) > 0
    assert sum(int(rows[name]["nodes"]) for name in ("region-a", "region-b", "edge-c")) == int(
        rows["global"]["nodes"]
    )
    assert int(rows["global"]["nodes"]) == sum(NODES.values())


def test_region_view_lists_the_delayed_and_drifted_nodes(demo: tuple[DemoResult, float]) -> None:
    result, _ = demo
    lines = section(result.output, "Region A View")
    replica = result.manager.replica("region-a")
    now = replica.clock.physical()
    scope = "global/region-a/edge-a2"
    desired = replica.effective(scope, "versions", APP)
    delayed = sorted(
        node
        for node, record in replica.scope(scope).nodes.items()
        if now - record["heartbeat_ms"] > 15 * 60_000
    )
    drifted = sorted(
        node
        for node, record in replica.scope(scope).nodes.items()
        if record["versions"][APP] != desired
    )
    assert f"delayed in edge-a2: {', '.join(delayed)}" in lines
    for node in drifted:
        reported = replica.scope(scope).nodes.get(node)["versions"][APP]
        assert (
            f"drift in edge-a2: {node} versions.{APP} reports {reported!r}, desired {desired!r}"
            in lines
        )


def test_conflict_is_settled_by_authority_and_audited(demo: tuple[DemoResult, float]) -> None:
    result, _ = demo
    record = result.conflict
    manager = result.manager
    assert record.strategy == "authority-precedence"
    assert record.reason == "authority-rank"
    assert record.winner.writer.startswith(manager.keys["region-a"].key_id)
    assert record.loser.writer.startswith(manager.keys["edge-a1"].key_id)
    assert record.loser.hlc > record.winner.hlc  # the later write lost: authority decided
    for name in ("global", "region-a", "edge-a1"):
        assert record in manager.replica(name).conflicts()
    winner = manager.replica("edge-a1").effective(record.scope, "policies", record.key)
    lines = section(
        result.output,
        "08:10  region-a and edge-a1 edit one policy concurrently (link briefly down)",
    )
    assert f"  in force at edge-a1 after sync: {winner!r}" in lines
    assert any(
        line.strip().startswith("winner  region-a") and repr(winner) in line for line in lines
    )


def test_propagation_lines_match(demo: tuple[DemoResult, float]) -> None:
    result, _ = demo
    lines = section(result.output, "Propagation (Lifecycle Manager)")
    for status in (result.policy, result.rollout):
        assert (
            f"    received by {len(status.received)} planes: {', '.join(status.received)}" in lines
        )
        for applied in status.applied:
            assert any(
                line.strip().startswith(
                    f"applied in {applied.scope}: {applied.applied}/{applied.total}"
                )
                for line in lines
            )
    rollout = {a.scope: a for a in result.rollout.applied}
    replica = result.manager.replica("region-a")
    for scope, applied in rollout.items():
        records = replica.scope(scope).nodes.items()
        assert applied.total == len(records)
        assert applied.applied == sum(1 for _, r in records if r["versions"][APP] == "2.5.0")


def test_edge_c_catches_up_after_reconnecting(demo: tuple[DemoResult, float]) -> None:
    result, _ = demo
    manager = result.manager
    status = manager.link_status("global", "edge-c")
    assert status.state is LinkState.UP
    assert status.debt.envelopes == 0
    global_replica, edge = manager.replica("global"), manager.replica("edge-c")
    for scope in ("global", "global/edge-c"):
        assert global_replica.snapshot()[scope] == edge.snapshot()[scope]


def test_same_seed_same_output(tmp_path: Path) -> None:
    def run() -> str:
        out = io.StringIO()
        run_demo(out=out, workdir=tmp_path / "same", seed=11)
        return re.sub(r"Done in [0-9.]+ s", "Done in _ s", out.getvalue())

    assert run() == run()


def test_module_entry_point_runs() -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "souverix_crdt.federation.demo"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert "Global Fleet View" in completed.stdout
    assert "Region A View" in completed.stdout
