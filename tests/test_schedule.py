"""``peer run`` follows the topology: link policies, air gaps, true link state, bundle records.

The schedules themselves run on a fake clock in ``test_coordinator.py``; here the config is
resolved, and two real ``peer run`` processes on 127.0.0.1 show a push link keeping to its
schedule and a killed peer turning stale within its timeout.
"""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from souverix_crdt.cli import cli
from souverix_crdt.errors import ConfigError, UnknownPlaneError
from souverix_crdt.plane.backoff import Backoff
from souverix_crdt.plane.peer import (
    PeerConfig,
    PeerLink,
    PeerProcess,
    link_record,
    load_peer_config,
    open_replica,
    parse_peer_config,
)
from souverix_crdt.plane.schedule import LinkState, link_state
from souverix_crdt.plane.topology import Direction, SyncMode
from tests.test_example_peers import SCRIPT, Peers, free_ports

TOPOLOGY = Path(__file__).resolve().parents[1] / "examples" / "tcp-peers" / "topology.yaml"
REGION = "global/region-a"
#: Longest wait for anything here, in seconds: a hang guard, never a sync wait.
DEADLINE = 20.0


def keys_init(directory: Path, topology: Path | None = TOPOLOGY) -> Path:
    keys = directory / "keys"
    args = ["keys", "init", *([str(topology)] if topology else []), "--out", str(keys)]
    result = CliRunner().invoke(cli, [*args, "--seed", "s"])
    assert result.exit_code == 0, result.output
    return keys


def config_text(document: dict[str, Any]) -> str:
    return yaml.safe_dump(document, sort_keys=False)


def parse(directory: Path, document: dict[str, Any]) -> Any:
    base = {"keys": "keys", "store": f"data/{document['plane']}.sqlite3"}
    return parse_peer_config(config_text({**base, **document}), file="p.yaml", base=directory)


def refused(directory: Path, document: dict[str, Any]) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        parse(directory, document)
    return caught.value


# --------------------------------------------------------------------------- policies


def test_a_link_takes_its_policy_from_the_topology_and_the_config_overrides_it(
    tmp_path: Path,
) -> None:
    keys_init(tmp_path, None)  # the brief's topology: region-a pushes to its zones every 5m
    region = parse(
        tmp_path,
        {
            "plane": "region-a",
            "listen": 7302,
            "upstream": {"name": "global", "address": 7301},
            "downstream": [{"name": "edge-a1", "address": 7401}, "edge-a2"],
        },
    )
    assert region.upstream.policy.mode is SyncMode.CONTINUOUS
    assert region.upstream.policy.origin == "topology"
    push = region.downstream[0].policy
    assert (push.mode, push.frequency_s, push.direction) == (
        SyncMode.PUSH,
        300.0,
        Direction.DOWNSTREAM,
    )
    # A live link reconnects on sync.retry; the declared retry paces scheduled rounds.
    assert region.upstream.policy.retry.initial == 0.2
    assert push.retry.initial == 1.0
    zone = parse(
        tmp_path,
        {
            "plane": "edge-a1",
            "upstream": {
                "name": "region-a",
                "address": 7302,
                "mode": "scheduled",
                "frequency": "30s",
                "batch_size": 7,
                "retry": {"initial": "2s", "maximum": "1m", "max_attempts": 3},
            },
        },
    )
    policy = zone.upstream.policy
    assert (policy.mode, policy.frequency_s, policy.batch_size, policy.origin) == (
        SyncMode.SCHEDULED,
        30.0,
        7,
        "config",
    )
    assert (policy.retry.initial, policy.retry.maximum, policy.max_attempts) == (2.0, 60.0, 3)


@pytest.mark.parametrize(
    ("link", "field", "words"),
    [
        ({"mode": "sometimes"}, "upstream.mode", "expected one of"),
        ({"frequency": "soon"}, "upstream.frequency", "soon"),
        ({"batch_size": 0}, "upstream.batch_size", "1..10000"),
        ({"retry": {"initial": "1m", "maximum": "1s"}}, "upstream.retry.maximum", "at least"),
        ({"retry": {"jitter": 2}}, "upstream.retry.jitter", "0..1"),
        ({"retry": {"tries": 2}}, "upstream.retry.tries", "unknown field"),
        ({"cadence": "1m"}, "upstream.cadence", "unknown field"),
    ],
)
def test_a_bad_link_field_is_one_error_naming_it(
    tmp_path: Path, link: dict[str, Any], field: str, words: str
) -> None:
    keys_init(tmp_path)
    error = refused(
        tmp_path,
        {"plane": "edge-a1", "upstream": {"name": "region-a", "address": 7302, **link}},
    )
    assert error.field == field
    assert words in error.detail


def test_links_that_cannot_keep_their_mode_are_refused(tmp_path: Path) -> None:
    keys_init(tmp_path)
    # A push link is opened by the upper plane: the lower one must listen for it.
    error = refused(
        tmp_path,
        {"plane": "edge-a1", "upstream": {"name": "region-a", "mode": "push", "frequency": "2s"}},
    )
    assert (error.field, error.reason) == ("listen", "missing")
    # Anything else is dialled by the lower plane.
    error = refused(tmp_path, {"plane": "edge-a1", "upstream": {"name": "region-a"}})
    assert error.field == "upstream.address"
    # Over NATS the two sides' sessions meet: only live links.
    error = refused(
        tmp_path,
        {
            "plane": "edge-a1",
            "transport": "nats",
            "nats": "nats://127.0.0.1:4222",
            "upstream": {"name": "region-a", "mode": "scheduled", "frequency": "1m"},
        },
    )
    assert error.field == "upstream.mode"


def test_a_named_topology_file_that_does_not_load_names_the_field(tmp_path: Path) -> None:
    keys_init(tmp_path)
    error = refused(tmp_path, {"plane": "edge-a1", "topology": "missing.yaml"})
    assert error.field == "topology"


# --------------------------------------------------------------------------- air gaps


def test_an_air_gapped_plane_refuses_every_network_link(tmp_path: Path) -> None:
    keys_init(tmp_path, None)  # edge-b1 is air-gapped in the brief's topology
    attempts = [
        ({"plane": "edge-b1", "upstream": {"name": "region-b", "address": 7303}}, "upstream"),
        ({"plane": "edge-b1", "listen": 7500}, "listen"),
        (
            {"plane": "region-b", "listen": 7303, "downstream": ["edge-b1"]},
            "downstream[0]",
        ),
    ]
    for document, field in attempts:
        error = refused(tmp_path, document)
        assert (error.field, error.reason) == (field, "air-gapped"), error
        assert "bundle" in error.detail


def test_an_air_gapped_plane_given_an_upstream_never_dials_it(tmp_path: Path) -> None:
    keys_init(tmp_path, None)
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.settimeout(0.2)
        port = listener.getsockname()[1]
        (tmp_path / "edge-b1.yaml").write_text(
            config_text(
                {
                    "plane": "edge-b1",
                    "keys": "keys",
                    "store": "data/edge-b1.sqlite3",
                    "upstream": {"name": "region-b", "address": f"127.0.0.1:{port}"},
                }
            )
        )
        # A real process, bounded: without the refusal it would run (and dial) until killed.
        result = subprocess.run(
            [SCRIPT, "peer", "run", "--config", "edge-b1.yaml"],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=DEADLINE,
            check=False,
        )
        assert result.returncode != 0
        assert "upstream: edge-b1 is air-gapped" in result.stderr + result.stdout
        with pytest.raises(TimeoutError):
            listener.accept()
    assert not (tmp_path / "data" / "edge-b1.sqlite3").exists()


# --------------------------------------------------------------------------- bundles


def test_bundle_exchanges_update_the_links_last_sync(tmp_path: Path) -> None:
    keys_init(tmp_path)
    for plane in ("region-a", "edge-a1"):
        (tmp_path / f"{plane}.yaml").write_text(
            config_text({"plane": plane, "keys": "keys", "store": f"data/{plane}.sqlite3"})
        )

    def ok(*args: str | Path) -> str:
        result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return result.output

    def record(plane: str, peer: str) -> dict[str, Any]:
        replica = open_replica(load_peer_config(tmp_path / f"{plane}.yaml"))
        try:
            found = link_record(replica, peer)
        finally:
            replica.close()
        assert found is not None
        return found

    region, edge = ("--config", tmp_path / "region-a.yaml"), ("--config", tmp_path / "edge-a1.yaml")
    down, back = tmp_path / "down.bundle", tmp_path / "back.receipt"
    ok("peer", "write", *region, REGION, "policies", "window", '"sat"')
    ok("bundle", "export", *region, "--peer", "edge-a1", "--out", down)
    exported = record("region-a", "edge-a1")
    # Written, not yet confirmed: no sync yet.
    assert exported["transport"] == "bundle"
    assert "bundle_export_ms" in exported
    assert exported.get("last_sync_ms") is None
    ok("bundle", "import", *edge, down, "--receipt-out", back)
    imported = record("edge-a1", "region-a")
    assert imported["last_sync_ms"] == imported["bundle_import_ms"]
    ok("bundle", "import", *region, back)
    settled = record("region-a", "edge-a1")
    assert settled["last_sync_ms"] == settled["bundle_receipt_ms"]
    assert settled["connected"] is False
    status = json.loads(ok("status", *region, "--format", "json"))
    assert status["links"]["edge-a1"]["state"] == LinkState.NO
    assert status["sync_debt"]["edge-a1"]["envelopes"] == 0
    table = ok("status", *region)
    assert "no (bundle)" in table


# --------------------------------------------------------------------------- link state


def test_a_record_is_connected_only_while_confirmed() -> None:
    record = {"connected": True, "confirmed_ms": 10_000, "timeout_ms": 1_500}
    assert link_state(record, 11_500) == LinkState.YES
    assert link_state(record, 11_501) == LinkState.STALE
    assert link_state({**record, "connected": False}, 10_000) == LinkState.NO
    # A record of an older process, with no confirmation: never claimed connected.
    assert link_state({"connected": True, "updated_ms": 10_000}, 10_000) == LinkState.STALE
    assert link_state(None, 0) == "-"


def write_configs(directory: Path, documents: dict[str, dict[str, Any]]) -> None:
    for plane, document in documents.items():
        base = {"plane": plane, "keys": "keys", "store": f"data/{plane}.sqlite3"}
        (directory / f"{plane}.yaml").write_text(config_text({**base, **document}))


def wait_until(peers: Peers, condition: Any, what: str) -> float:
    """Poll (bounded by :data:`DEADLINE`); the monotonic time it first held."""
    deadline = time.monotonic() + DEADLINE
    while not condition():
        peers.check_alive()
        if time.monotonic() > deadline:
            pytest.fail(f"gave up waiting for {what}\n{peers.logs()}")
        time.sleep(0.02)
    return time.monotonic()


@pytest.fixture
def peers(tmp_path: Path) -> Any:
    running = Peers(tmp_path)
    try:
        yield running
    finally:
        running.stop_all()


def test_a_push_link_between_two_processes_syncs_on_its_schedule_not_at_once(
    tmp_path: Path, peers: Peers
) -> None:
    keys_init(tmp_path)
    (port,) = free_ports(1)
    frequency = 3.0
    sync = {"tick": "500ms", "watch": "50ms"}
    write_configs(
        tmp_path,
        {
            # The upper plane opens the push link; the zone listens for it.
            "region-a": {
                "downstream": [
                    {
                        "name": "edge-a1",
                        "address": f"127.0.0.1:{port}",
                        "mode": "push",
                        "frequency": f"{frequency:g}s",
                    }
                ],
                "sync": sync,
            },
            "edge-a1": {
                "listen": f"127.0.0.1:{port}",
                "upstream": {"name": "region-a", "mode": "push", "frequency": "3s"},
                "sync": sync,
            },
        },
    )
    peers.start("edge-a1")
    peers.wait_ready("edge-a1")
    peers.start("region-a")
    peers.wait_ready("region-a")
    # The first push runs at once (its schedule starts at the start), settles and closes.
    first = wait_until(
        peers, lambda: "region-a: synced with edge-a1" in peers.log("region-a"), "the first push"
    )
    wait_until(peers, lambda: "session from" in peers.log("edge-a1"), "the push to close")
    assert "push every 3s (config)" in peers.log("region-a")
    writer = open_replica(load_peer_config(tmp_path / "region-a.yaml"))
    try:
        writer.scope(REGION).policies.set("window", "sat")
    finally:
        writer.close()
    taken = wait_until(
        peers,
        lambda: "took in 1 envelopes written to the store by others" in peers.log("region-a"),
        "region-a to take the write in",
    )
    arrived = wait_until(
        peers,
        lambda: "edge-a1: synced with region-a: 1 envelopes in" in peers.log("edge-a1"),
        "the write to reach edge-a1",
    )
    # A live link delivers in milliseconds; this one waited for its next turn.
    assert arrived - taken > 0.5, peers.logs()
    assert arrived - first < 2 * frequency + 1.0, peers.logs()


def test_a_peer_that_stops_shows_disconnected_within_the_timeout(
    tmp_path: Path, peers: Peers
) -> None:
    keys_init(tmp_path)
    (port,) = free_ports(1)
    timeout = 1.0
    sync = {"tick": "300ms", "watch": "50ms", "link_timeout": f"{round(timeout * 1000)}ms"}
    write_configs(
        tmp_path,
        {
            "region-a": {"listen": f"127.0.0.1:{port}", "downstream": ["edge-a1"], "sync": sync},
            "edge-a1": {
                "upstream": {"name": "region-a", "address": f"127.0.0.1:{port}"},
                "sync": sync,
            },
        },
    )

    def state(plane: str, peer: str) -> str:
        result = CliRunner().invoke(
            cli, ["status", "--config", str(tmp_path / f"{plane}.yaml"), "--format", "json"]
        )
        assert result.exit_code == 0, result.output
        record = json.loads(result.output)["links"].get(peer)
        return "-" if record is None else str(record["state"])

    peers.start("region-a")
    peers.wait_ready("region-a")
    peers.start("edge-a1")
    peers.wait_ready("edge-a1")
    wait_until(peers, lambda: state("edge-a1", "region-a") == LinkState.YES, "edge-a1 linked")
    wait_until(peers, lambda: state("region-a", "edge-a1") == LinkState.YES, "region-a linked")
    # Still confirmed after several timeouts of a quiet, healthy link.
    time.sleep(1.5 * timeout)  # the condition under test is the passing of time itself
    assert state("edge-a1", "region-a") == LinkState.YES
    # Killed: no goodbye, its store keeps saying connected...
    process = peers.processes.pop("edge-a1")
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=DEADLINE)
    stopped = time.monotonic()
    record = json.loads(
        CliRunner()
        .invoke(cli, ["status", "--config", str(tmp_path / "edge-a1.yaml"), "--format", "json"])
        .output
    )["links"]["region-a"]
    assert record["connected"] is True
    # ...but it is not shown connected past the timeout, on either side.
    stale = wait_until(
        peers, lambda: state("edge-a1", "region-a") == LinkState.STALE, "edge-a1's record stale"
    )
    assert stale - stopped <= timeout + 1.0
    wait_until(peers, lambda: state("region-a", "edge-a1") == LinkState.NO, "region-a sees it")
    table = CliRunner().invoke(cli, ["status", "--config", str(tmp_path / "edge-a1.yaml")])
    assert "stale (confirmed" in table.output


# --------------------------------------------------------------------------- connectivity


def test_the_connectivity_hook_takes_a_running_link_down_and_up(tmp_path: Path) -> None:
    keys = keys_init(tmp_path)
    lines: list[str] = []
    upper = PeerConfig(
        plane="region-a",
        keys=keys,
        store=tmp_path / "r.sqlite3",
        listen_port=0,
        downstream=(PeerLink(name="edge-a1"),),
        tick_s=0.2,
        watch_s=0.02,
    )

    async def until(condition: Any, what: str) -> None:
        deadline = time.monotonic() + DEADLINE
        while not condition():
            assert time.monotonic() < deadline, f"gave up waiting for {what}: {lines}"
            await asyncio.sleep(0.02)

    async def scenario() -> None:
        region = PeerProcess(upper, log=lines.append)
        await region.start()
        assert region.port
        lower = PeerConfig(
            plane="edge-a1",
            keys=keys,
            store=tmp_path / "e.sqlite3",
            upstream=PeerLink(name="region-a", host="127.0.0.1", port=region.port),
            tick_s=0.2,
            watch_s=0.02,
            retry=Backoff(initial=0.05, maximum=0.2),
        )
        edge = PeerProcess(lower, log=lines.append)
        await edge.start()
        try:
            assert region.replica is not None
            assert edge.replica is not None
            edge_replica = edge.replica
            await until(lambda: "edge-a1: synced with region-a" in "\n".join(lines), "a sync")
            with pytest.raises(UnknownPlaneError):
                region.set_link_state("edge-a9", False)
            region.set_link_state("edge-a1", False)
            assert not region.link_up("edge-a1")
            await until(
                lambda: link_state(link_record(edge_replica, "region-a"), 0) == LinkState.NO,
                "the session to close",
            )
            region.replica.scope(REGION).policies.set("window", "sun")
            # Down: the edge keeps redialling, and every session is refused.
            await until(
                lambda: "refusing a session with 'edge-a1': the link is down" in "\n".join(lines),
                "a refused session",
            )
            assert edge_replica.get(REGION, "policies", "window") is None
            region.set_link_state("edge-a1", True)
            await until(lambda: edge_replica.get(REGION, "policies", "window") == "sun", "the sync")
        finally:
            await edge.stop()
            await region.stop()

    asyncio.run(scenario())
