"""The dashboard's server and JSON API, over real HTTP on loopback (no browser here).

Figures are compared with what :mod:`souverix_crdt.federation.views` computes from the same
replicas, the event stream is read as a browser's EventSource would, and every response is scanned
for the demo's private keys.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from souverix_crdt.dashboard import DashboardServer, run_demo_dashboard, serve
from souverix_crdt.dashboard.model import jsonable
from souverix_crdt.federation.demo import DemoResult, run_demo
from souverix_crdt.federation.manager import FederationManager
from souverix_crdt.federation.views import fleet_view

TIMEOUT = 10.0


def fetch(url: str, *, method: str = "GET", headers: dict[str, str] | None = None) -> Any:
    """Status, headers and body of one request (HTTP errors are returned, not raised)."""
    request = urllib.request.Request(url, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def get_json(url: str) -> Any:
    status, _, body = fetch(url)
    assert status == 200, body
    return json.loads(body)


@pytest.fixture(scope="module")
def demo() -> DemoResult:
    return run_demo(out=io.StringIO())


@pytest.fixture(scope="module")
def server(demo: DemoResult) -> Iterator[DashboardServer]:
    with serve(demo.manager) as handle:
        yield handle


@pytest.fixture
def live() -> Iterator[tuple[FederationManager, DashboardServer]]:
    """A demo federation of its own (the test mutates it) and a dashboard polling quickly."""
    manager = run_demo(out=io.StringIO()).manager
    with serve(manager, poll_interval=0.1) as handle:
        yield manager, handle
    manager.close()


def scopes_of(manager: FederationManager) -> list[str]:
    return [str(plane.scope) for plane in manager.topology.planes.values()]


# --------------------------------------------------------------------------- the API


def test_federation_api_is_describe_plus_the_views(
    demo: DemoResult, server: DashboardServer
) -> None:
    data = get_json(server.url + "api/federation")
    manager = demo.manager
    with server.lock:
        links = manager.link_statuses()
        expected_fleet = fleet_view(manager.replica("global"), manager.topology, links)
        expected_region = fleet_view(
            manager.replica("region-a"), manager.topology, links, root="region-a"
        )
        description = manager.describe()
    assert data["describe"] == json.loads(json.dumps(description))
    assert data["views"]["fleet"] == json.loads(json.dumps(expected_fleet.to_json()))
    assert data["views"]["regions"]["region-a"] == json.loads(json.dumps(expected_region.to_json()))
    assert set(data["views"]["regions"]) == {"region-a", "region-b"}
    assert data["kind"] == "federation"
    assert data["viewer"] == "global"
    assert data["fleet_id"] == manager.topology.fleet_id
    # Every plane of the topology, at its level, in the graph and the trust table.
    planes = {p.name: p.level.value for p in manager.topology.planes.values()}
    assert {n["name"]: n["level"] for n in data["graph"]["nodes"]} == planes
    assert {t["plane"]: t["level"] for t in data["trust"]} == planes
    assert {(e["upstream"], e["downstream"]) for e in data["graph"]["edges"]} == set(manager.links)


def test_sync_status_per_level_adds_up_the_uplinks(
    demo: DemoResult, server: DashboardServer
) -> None:
    data = get_json(server.url + "api/federation")
    with server.lock:
        links = demo.manager.link_statuses()
    for level, entry in data["level_status"].items():
        lower = [p.name for p in demo.manager.topology.planes.values() if p.level.value == level]
        uplinks = [links[name] for name in lower if name in links]
        assert entry["planes"] == len(lower)
        assert entry["links"] == len(uplinks)
        assert entry["air_gapped"] == sum(1 for s in uplinks if s.air_gapped)
        assert entry["debt"]["envelopes"] == sum(s.debt.envelopes for s in uplinks)
    assert data["level_status"]["local"]["air_gapped"] == 1  # edge-b1


def test_trust_domains_and_effective_policy(demo: DemoResult, server: DashboardServer) -> None:
    data = get_json(server.url + "api/federation")
    trust = {t["plane"]: t for t in data["trust"]}
    assert trust["global"]["scopes"] == scopes_of(demo.manager)
    assert trust["region-a"]["scopes"] == [
        "global/region-a",
        "global/region-a/edge-a1",
        "global/region-a/edge-a2",
    ]
    # A zone without deploy_versions may not write versions: its trust entry says so.
    assert "versions" not in trust["edge-a1"]["collections"]
    assert "policies" in trust["edge-a1"]["collections"]

    policies = {row["scope"]: row["values"] for row in data["policies"]["scopes"]}
    assert policies["global"]["max-unavailable"] == {
        "value": "10%",
        "set_at": "global",
        "inherited": False,
    }
    assert policies["global/region-a/edge-a2"]["max-unavailable"]["inherited"] is True
    window = policies["global/region-a/edge-a1"]["maintenance-window"]
    assert window["set_at"] == "global/region-a/edge-a1"
    assert window["value"] == demo.manager.replica("edge-a1").effective(
        "global/region-a/edge-a1", "policies", "maintenance-window"
    )
    versions = {row["scope"]: row["values"] for row in data["versions"]["scopes"]}
    assert versions["global/region-a/edge-a1"]["souverix-agent"]["set_at"] == "global/region-a"


def test_audit_names_winner_loser_strategy_and_reason(
    demo: DemoResult, server: DashboardServer
) -> None:
    body = get_json(server.url + "api/audit")
    (entry,) = body["audit"]
    record = demo.conflict
    assert entry["scope"] == record.scope
    assert entry["key"] == record.key
    assert entry["strategy"] == record.strategy == "authority-precedence"
    assert entry["reason"] == record.reason == "authority-rank"
    assert entry["winner"]["plane"] == "region-a"
    assert entry["loser"]["plane"] == "edge-a1"
    assert entry["winner"]["register"]["value"] == "sat 02:00-04:00"
    assert entry["loser"]["register"]["value"] == "sun 01:00-03:00"
    # Recorded identically on every replica that holds the scope (global, region-a, edge-a1).
    assert entry["agreeing"] == entry["replicas"] == 3
    assert get_json(server.url + "api/federation")["audit"] == body["audit"]


def test_scope_api_for_every_plane(demo: DemoResult, server: DashboardServer) -> None:
    for plane in demo.manager.topology.planes.values():
        detail = get_json(server.url + f"api/scope/{plane.scope}")
        assert detail["scope"] == str(plane.scope)
        assert detail["master"] == plane.name
        assert detail["level"] == plane.level.value
        assert detail["nodes_total"] == len(
            demo.manager.replica(plane.name).scope(plane.scope).nodes.items()
        )
    zone = get_json(server.url + "api/scope/global/region-a/edge-a1")
    assert [w["plane"] for w in zone["writers"]] == ["global", "region-a", "edge-a1"]
    assert len(zone["conflicts"]) == 1
    history = zone["history"]["policies"]["maintenance-window"]
    assert {h["writer"] for h in history} == {"region-a", "edge-a1"}


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("api/scope/global/region-z", 404),
        ("api/scope/global/Region-A", 400),
        ("api/scope/global//region-a", 400),
        ("api/scope/global/region-a/..", 400),
        ("api/scope/region-a", 400),
        ("api/nothing", 404),
    ],
)
def test_bad_scope_paths_are_refused(server: DashboardServer, path: str, status: int) -> None:
    code, headers, body = fetch(server.url + path)
    assert code == status
    if path.startswith("api/scope"):
        assert headers["content-type"] == "application/json"
        assert json.loads(body)["error"] in {"invalid-scope", "unknown-scope"}


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE"])
@pytest.mark.parametrize("path", ["", "api/federation", "api/audit", "api/scope/global"])
def test_nothing_writes(server: DashboardServer, method: str, path: str) -> None:
    code, _, _ = fetch(server.url + path, method=method)
    assert code == 405


def test_security_headers_and_host_check(server: DashboardServer) -> None:
    code, headers, body = fetch(server.url)
    assert code == 200
    assert b'<ul id="tree"' in body
    assert "script-src 'self'" in headers["content-security-policy"]
    assert headers["x-content-type-options"] == "nosniff"
    # A DNS-rebinding page reaches the loopback port under a foreign host name: refused.
    code, _, _ = fetch(server.url + "api/federation", headers={"Host": "evil.example"})
    assert code == 400
    code, _, _ = fetch(
        f"http://127.0.0.1:{server.port}/api/audit", headers={"Host": f"localhost:{server.port}"}
    )
    assert code == 200


def secrets_of(manager: FederationManager) -> list[bytes]:
    keys = [creds.key for creds in manager.keys.planes.values()] + list(manager.keys.root_keys)
    found = []
    for key in keys:
        raw = key.private_bytes()
        found += [raw, raw.hex().encode(), raw.hex().upper().encode()]
        for encode in (base64.b64encode, base64.urlsafe_b64encode):
            found.append(encode(raw).rstrip(b"="))
    assert len(found) == 5 * (len(manager.keys.planes) + len(manager.keys.root_keys))
    return found


def read_first_event(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=TIMEOUT) as response:
        lines = []
        while not any(line.startswith(b"data:") for line in lines):
            lines.append(response.readline())
        return b"".join(lines)


def test_no_key_material_in_any_response(demo: DemoResult, server: DashboardServer) -> None:
    secrets = secrets_of(demo.manager)
    bodies = {
        path: fetch(server.url + path)[2]
        for path in [
            "",
            "static/app.js",
            "static/style.css",
            "api/federation",
            "api/audit",
            *(f"api/scope/{scope}" for scope in scopes_of(demo.manager)),
        ]
    }
    bodies["api/events"] = read_first_event(server.url + "api/events")
    assert all(bodies.values())
    for path, body in bodies.items():
        for secret in secrets:
            assert secret not in body, f"private key material in {path or '/'}"
    # The public identities are there: the scan would have seen keys had they been printed.
    assert demo.manager.keys.planes["global"].key_id.encode() in bodies["api/federation"]


# --------------------------------------------------------------------------- live updates


class EventStream:
    """Reads ``/api/events`` on a thread, as a browser's EventSource would.

    A plain socket rather than urllib: shutting the socket down is what unblocks the reading
    thread at once (closing a urllib response waits for the blocked read to time out).
    """

    def __init__(self, handle: DashboardServer) -> None:
        self.revisions: list[int] = []
        self.condition = threading.Condition()
        self.sock = socket.create_connection(("127.0.0.1", handle.port), timeout=TIMEOUT)
        self.sock.sendall(
            b"GET /api/events HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n"
        )
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        # The body is chunked: chunk-size lines are skipped, each event arrives in one chunk.
        with self.sock.makefile("rb") as lines:
            try:
                for line in lines:
                    if line.startswith(b"data:"):
                        with self.condition:
                            self.revisions.append(json.loads(line[5:])["revision"])
                            self.condition.notify_all()
            except OSError:
                return  # shut down by the test

    def wait_beyond(self, revision: int) -> int:
        with self.condition:
            assert self.condition.wait_for(
                lambda: self.revisions and self.revisions[-1] > revision, TIMEOUT
            ), f"no event after revision {revision}: {self.revisions}"
            return self.revisions[-1]

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self.thread.join(TIMEOUT)


def test_events_follow_writes_conflicts_and_link_changes(
    live: tuple[FederationManager, DashboardServer],
) -> None:
    manager, handle = live
    stream = EventStream(handle)
    try:
        first = stream.wait_beyond(-1)

        with handle.lock:
            manager.publish_policy("global", "rollout-speed", b"\x00fast")
            manager.settle()
        second = stream.wait_beyond(first)
        data = get_json(handle.url + "api/federation")
        assert data["revision"] >= second
        edge = {row["scope"]: row["values"] for row in data["policies"]["scopes"]}
        assert edge["global/region-a/edge-a2"]["rollout-speed"] == {
            "value": {"bytes": "0066617374"},
            "set_at": "global",
            "inherited": True,
        }

        # A link going down fires no replica callback: the notifier's poll picks it up.
        with handle.lock:
            manager.set_link_state("edge-c", "global", up=False)
        third = stream.wait_beyond(second)
        data = get_json(handle.url + "api/federation")
        assert data["revision"] >= third
        (edge_c,) = [r for r in data["views"]["fleet"]["root"]["children"] if r["name"] == "edge-c"]
        assert edge_c["isolated"] is True
        assert edge_c["status"] == "Autonomous"
        (link,) = [e for e in data["graph"]["edges"] if e["downstream"] == "edge-c"]
        assert link["state"] == "down"
    finally:
        stream.close()


def test_snapshots_are_cached_per_revision(live: tuple[FederationManager, DashboardServer]) -> None:
    manager, handle = live
    dashboard = handle.dashboard
    assert dashboard.snapshot() is dashboard.snapshot()
    before = dashboard.revision
    with handle.lock:
        manager.publish_policy("global", "cache-check", "1")
    deadline = time.monotonic() + TIMEOUT
    while dashboard.revision == before:
        assert time.monotonic() < deadline, "no new revision"
        time.sleep(0.02)
    assert dashboard.snapshot()["revision"] == dashboard.revision
    assert "cache-check" in dashboard.snapshot()["policies"]["keys"]


# --------------------------------------------------------------------------- other sources


def test_a_single_replica_is_served_from_the_delegations_it_holds(demo: DemoResult) -> None:
    replica = demo.manager.replica("region-a")
    with serve(replica) as handle:
        data = get_json(handle.url + "api/federation")
        assert data["kind"] == "replica"
        assert data["viewer"] == "region-a"
        assert {n["name"] for n in data["graph"]["nodes"]} >= {"global", "region-a"}
        view = data["views"]["fleet"]
        assert view["viewer"] == "region-a"
        assert view["root"]["name"] == "global"  # its whole known tree, judged by region-a
        (region,) = [r for r in view["root"]["children"] if r["name"] == "region-a"]
        assert region["nodes"]["total"] == 50
        detail = get_json(handle.url + "api/scope/global/region-a/edge-a2")
        assert detail["seen_at"] == "region-a"
        assert detail["nodes_total"] == 25
    # With the topology, the tree is the federation's.
    with serve(replica, topology=demo.manager.topology) as handle:
        data = get_json(handle.url + "api/federation")
        assert {n["name"] for n in data["graph"]["nodes"]} == set(demo.manager.topology.planes)


def test_jsonable_keeps_odd_values_showable() -> None:
    assert jsonable({1: b"\x01", "t": (1, 2.5, None)}) == {
        "1": {"bytes": "01"},
        "t": [1, 2.5, None],
    }
    assert jsonable(object()).startswith("<object object")
    assert jsonable([float("nan"), float("inf")]) == ["nan", "inf"]


# --------------------------------------------------------------------------- lifecycle


def test_serve_binds_loopback_on_a_free_port_and_stops(demo: DemoResult) -> None:
    handle = serve(demo.manager)
    assert handle.host == "127.0.0.1"
    assert handle.port > 0
    assert handle.url == f"http://127.0.0.1:{handle.port}/"
    assert fetch(handle.url)[0] == 200
    started = time.monotonic()
    handle.stop()
    handle.stop()  # idempotent
    assert time.monotonic() - started < 5
    assert not handle.running
    with pytest.raises(OSError):
        urllib.request.urlopen(handle.url, timeout=2)


def test_stop_ends_open_event_streams(demo: DemoResult) -> None:
    handle = serve(demo.manager)
    stream = EventStream(handle)
    stream.wait_beyond(-1)
    started = time.monotonic()
    handle.stop()
    assert time.monotonic() - started < 3, "an open stream held the shutdown"
    stream.thread.join(TIMEOUT)
    assert not stream.thread.is_alive()
    stream.close()


def test_run_demo_dashboard_prints_the_address_and_serves_until_stopped() -> None:
    out = io.StringIO()
    stop = threading.Event()
    thread = threading.Thread(
        target=run_demo_dashboard, kwargs={"port": 0, "out": out, "stop": stop}, daemon=True
    )
    thread.start()
    deadline = time.monotonic() + 30
    while "Dashboard of the demo federation:" not in out.getvalue():
        assert thread.is_alive(), out.getvalue()[-2000:]
        assert time.monotonic() < deadline, out.getvalue()[-2000:]
        time.sleep(0.05)
    url = out.getvalue().split("Dashboard of the demo federation: ")[1].split()[0]
    assert url.startswith("http://127.0.0.1:")
    assert "souverix-demo" in fetch(url + "api/federation")[2].decode()
    stop.set()
    thread.join(TIMEOUT)
    assert not thread.is_alive()


def test_the_cli_demo_serves_the_dashboard_until_interrupted() -> None:
    script = Path(sys.executable).with_name("souverix-crdt")
    if not script.exists():
        pytest.skip("the souverix-crdt console script is not installed (pip install -e .)")
    process = subprocess.Popen(
        [script, "demo", "--dashboard", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert process.stdout is not None
        deadline = time.monotonic() + 60
        for raw in process.stdout:
            line = raw.decode()
            if line.startswith("Dashboard of the demo federation:"):
                break
            assert time.monotonic() < deadline
        else:
            pytest.fail(f"no dashboard address printed: {process.stderr.read()!r}")
        url = line.split(": ", 1)[1].split()[0]
        assert url.startswith("http://127.0.0.1:")
        assert fetch(url)[0] == 200
        process.send_signal(signal.SIGINT)
        assert process.wait(TIMEOUT) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(TIMEOUT)
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()
