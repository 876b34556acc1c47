"""A running plane as an operator meets it: control socket, metrics, health, lasting chains.

global and region-a of the TCP example run as real ``souverix-crdt peer run`` processes;
``peer write`` / ``peer get`` / ``status`` go through region-a's control socket, and the
metrics endpoint is scraped and compared with the plane's ``status``.
"""

from __future__ import annotations

import json
import stat
import urllib.request
from pathlib import Path
from typing import Any

from click.testing import CliRunner
from prometheus_client.parser import text_string_to_metric_families

from souverix_crdt.cli import cli
from souverix_crdt.plane.peer import load_peer_config
from tests.test_example_peers import (
    EXAMPLES,
    Peers,
    cli_ok,
    eventually,
    free_ports,
    peers,
    prepare,
)

__all__ = ["peers"]  # the fixture, shared with the example tests

REGION = "global/region-a"


def _configure(tmp_path: Path) -> None:
    global_port, region_port = free_ports(2)

    def rewrite(plane: str, document: dict[str, Any]) -> None:
        if plane == "global":
            document["listen"] = f"127.0.0.1:{global_port}"
        if plane == "region-a":
            document["listen"] = f"127.0.0.1:{region_port}"
            document["upstream"]["address"] = f"127.0.0.1:{global_port}"
            document["metrics"] = "127.0.0.1:0"

    prepare(EXAMPLES / "tcp-peers", tmp_path, rewrite)


def _status(tmp_path: Path, plane: str) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(
        cli_ok("status", "--config", tmp_path / f"{plane}.yaml", "--format", "json")
    )
    return document


def _get(url: str) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.status, response.read().decode()


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def test_writes_go_through_the_running_plane(tmp_path: Path, peers: Peers) -> None:
    _configure(tmp_path)
    peers.start("global")
    peers.start("region-a")
    peers.wait_ready("global")
    ready = peers.wait_ready("region-a")
    config = load_peer_config(tmp_path / "region-a.yaml")
    socket_path = config.control_socket
    assert socket_path is not None
    # Owner-only: no other user of the machine may write as the plane.
    assert stat.S_IMODE(socket_path.stat().st_mode) == 0o600

    outputs = [
        cli_ok("peer", "write", "--config", tmp_path / "region-a.yaml", REGION, "policies", k, v)
        for k, v in (("window", "sun 02:00"), ("drain", "yes"), ("canary", "5%"))
    ]
    after_writes = _status(tmp_path, "region-a")
    region_key = after_writes["key_id"]
    own = [c for c in after_writes["writers"] if c.startswith(region_key + "~")]
    # Three writes, one chain of region-a's key, with sequence numbers 1..3.
    assert len(own) == 1
    assert after_writes["frontiers"][f"{REGION}|{own[0]}"] == 3
    assert own[0] == after_writes["chain"]  # the process's own chain
    assert all("through its running process" in output for output in outputs)
    assert after_writes["running"] is True

    # Synced at once: global holds the writes (read through global's own socket).
    def upstream_has_them() -> bool:
        status = _status(tmp_path, "global")
        return status["frontiers"].get(f"{REGION}|{after_writes['chain']}") == 3

    eventually(upstream_has_them, "global to hold region-a's writes", peers)
    value = cli_ok(
        "peer", "get", "--config", tmp_path / "global.yaml", REGION, "policies", "canary"
    )
    assert json.loads(value) == "5%"
    # ... and global's replica holds no chain of region-a but that one.
    global_status = _status(tmp_path, "global")
    assert [c for c in global_status["writers"] if c.startswith(region_key)] == [
        after_writes["chain"]
    ]

    # The metrics endpoint says what status says.
    metrics_port = ready["metrics_port"]
    assert isinstance(metrics_port, int)

    def settled() -> bool:
        debt = _status(tmp_path, "region-a")["sync_debt"].get("global", {})
        return debt.get("envelopes") == 0

    eventually(settled, "region-a's debt to global to clear", peers)
    code, text = _get(f"http://127.0.0.1:{metrics_port}/metrics")
    status = _status(tmp_path, "region-a")
    assert code == 200
    samples = _samples(text)
    plane = (("plane", "region-a"),)
    assert samples[("souverix_chains", plane)] == status["chains"]
    assert samples[("souverix_pending", plane)] == status["pending"]
    assert samples[("souverix_quarantined", plane)] == sum(status["quarantined"].values())
    assert samples[("souverix_conflicts", plane)] == status["conflicts"]
    for peer, debt in status["sync_debt"].items():
        labels = (("peer", peer),)
        assert samples[("souverix_sync_debt_envelopes", labels)] == debt["envelopes"]
        assert samples[("souverix_sync_debt_bytes", labels)] == debt["bytes"]
    assert samples[("souverix_link_connected", (("peer", "global"),))] == 1
    out = (("direction", "out"), ("peer", "global"))
    assert samples[("souverix_link_envelopes_total", out)] >= 3
    assert samples[("souverix_link_bytes_total", out)] > 0
    code, body = _get(f"http://127.0.0.1:{metrics_port}/health")
    assert code == 200
    assert json.loads(body) == {"chain": status["chain"], "plane": "region-a", "status": "ok"}

    # A clean restart keeps the chain; a write after it continues its sequence.
    assert peers.stop("region-a") == 0
    assert not socket_path.exists()
    # With no process, a CLI write goes to the store, under the same chain.
    cli_ok("peer", "write", "--config", tmp_path / "region-a.yaml", REGION, "policies", "x", "1")
    peers.start("region-a")
    peers.wait_ready("region-a")
    restarted = _status(tmp_path, "region-a")
    assert restarted["chain"] == after_writes["chain"]
    assert restarted["frontiers"][f"{REGION}|{restarted['chain']}"] == 4
    assert restarted["chains"] == after_writes["chains"]
    assert "writing under a new chain" not in peers.log("region-a").split("stopped")[-1]

    # The Connectivity Manager's hook, from outside the process: down, then up again.
    told = cli_ok("peer", "link", "--config", tmp_path / "region-a.yaml", "global", "down")
    assert "the link to global is down" in told
    eventually(
        lambda: "link to global is down (connectivity)" in peers.log("region-a"),
        "region-a to take the link down",
        peers,
    )
    cli_ok("peer", "write", "--config", tmp_path / "region-a.yaml", REGION, "policies", "y", "2")
    cli_ok("peer", "link", "--config", tmp_path / "region-a.yaml", "global", "up")

    def upstream_has_the_later_write() -> bool:
        status = _status(tmp_path, "global")
        return status["frontiers"].get(f"{REGION}|{after_writes['chain']}") == 5

    eventually(upstream_has_the_later_write, "the write made while down to arrive", peers)
    assert peers.stop("region-a") == 0
    refused = CliRunner().invoke(
        cli, ["peer", "link", "--config", str(tmp_path / "region-a.yaml"), "global", "up"]
    )
    assert refused.exit_code == 1
    assert "region-a is not running" in refused.output
