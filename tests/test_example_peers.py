"""The peer examples as real processes: three control planes over TCP, and over NATS leaf nodes.

Each test copies an example's checked-in configs into a temporary folder with free 127.0.0.1
ports (or the test servers' URLs), bootstraps keys with ``keys init``, starts the three planes
as separate ``souverix-crdt peer run`` processes, writes through one plane's store and polls the
three stores until they agree. Waiting is bounded polling; every process is stopped by its PID
in a finalizer, whatever the test did.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import pytest
import yaml
from click.testing import CliRunner

from souverix_crdt.cli import cli
from souverix_crdt.errors import ConfigError, SouverixError
from souverix_crdt.plane.peer import PeerConfig, load_peer_config, open_replica
from souverix_crdt.sync.driver import SessionStats, run_session
from souverix_crdt.sync.session import SyncSession
from souverix_crdt.testing.nats_server import NatsServer, nats_server_binary
from souverix_crdt.transports import tcp

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
SCRIPT = Path(sys.executable).parent / "souverix-crdt"
PLANES = ("global", "region-a", "edge-a1")
EDGE = "global/region-a/edge-a1"
REGION = "global/region-a"
#: What the example's .gitignore keeps out of the repository; not copied either.
IGNORED = ("keys", "data", "*.log", "*.ready")
#: Longest wait for anything here (a start, a convergence), in seconds: a hang guard.
DEADLINE = 30.0
_MISSING = object()


def cli_ok(*args: str | Path) -> str:
    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def free_ports(count: int) -> list[int]:
    """Ports the kernel hands out now on 127.0.0.1 (held together, so they are distinct)."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]


def eventually(condition: Callable[[], bool], what: str, peers: Peers) -> None:
    """Poll ``condition`` until it holds; fail with the peers' logs after :data:`DEADLINE`."""
    deadline = time.monotonic() + DEADLINE
    while not condition():
        peers.check_alive()
        if time.monotonic() > deadline:
            pytest.fail(f"gave up waiting for {what}\n{peers.logs()}")
        time.sleep(0.05)


class Peers:
    """The example's peer processes, started and stopped by PID."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.files: dict[str, IO[bytes]] = {}

    def start(self, plane: str) -> None:
        ready = self.directory / f"{plane}.ready"
        ready.unlink(missing_ok=True)
        log = self.files.get(plane) or (self.directory / f"{plane}.log").open("ab")
        self.files[plane] = log
        self.processes[plane] = subprocess.Popen(
            [SCRIPT, "peer", "run", "--config", f"{plane}.yaml", "--ready-file", ready.name],
            cwd=self.directory,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )

    def wait_ready(self, plane: str) -> dict[str, Any]:
        ready = self.directory / f"{plane}.ready"
        eventually(ready.exists, f"{plane} to be ready", self)
        document: dict[str, Any] = json.loads(ready.read_text())
        assert document["pid"] == self.processes[plane].pid
        return document

    def check_alive(self) -> None:
        for plane, process in self.processes.items():
            if process.poll() is not None:
                pytest.fail(f"{plane} exited with {process.returncode}\n{self.logs()}")

    def stop(self, plane: str) -> int:
        """SIGTERM by PID, a bounded wait, then SIGKILL; the exit status."""
        process = self.processes.pop(plane)
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        return process.returncode

    def stop_all(self) -> None:
        for plane in list(self.processes):
            self.stop(plane)
        for log in self.files.values():
            log.close()

    def log(self, plane: str) -> str:
        return (self.directory / f"{plane}.log").read_text(errors="replace")

    def logs(self) -> str:
        return "\n".join(
            f"--- {p}.log ---\n{self.log(p)}"
            for p in PLANES
            if (self.directory / f"{p}.log").exists()
        )


@pytest.fixture
def peers(tmp_path: Path) -> Iterator[Peers]:
    running = Peers(tmp_path)
    try:
        yield running
    finally:
        running.stop_all()


def prepare(
    example: Path,
    directory: Path,
    rewrite: Callable[[str, dict[str, Any]], None],
    *init_args: str | Path,
) -> None:
    """Copy the example's configs with ``rewrite`` applied, and bootstrap its keys there."""
    for plane in PLANES:
        document = yaml.safe_load((example / f"{plane}.yaml").read_text())
        rewrite(plane, document)
        (directory / f"{plane}.yaml").write_text(yaml.safe_dump(document, sort_keys=False))
    cli_ok(
        "keys",
        "init",
        EXAMPLES / "tcp-peers" / "topology.yaml",
        "--out",
        directory / "keys",
        "--seed",
        "example-peers",
        *init_args,
    )


def read(directory: Path, plane: str, scope: str, collection: str, key: str) -> object:
    """A value as ``plane``'s store holds it now (the store opened read-only by intent)."""
    config = load_peer_config(directory / f"{plane}.yaml")
    try:
        replica = open_replica(config, create=False)
    except ConfigError:
        return _MISSING  # the peer has not created its store yet
    try:
        return replica.get(scope, collection, key, _MISSING)
    finally:
        replica.close()


def write(directory: Path, plane: str, *args: str) -> str:
    return cli_ok("peer", "write", "--config", directory / f"{plane}.yaml", *args)


def converged(
    directory: Path, scope: str, collection: str, key: str, value: object
) -> Callable[[], bool]:
    def check() -> bool:
        try:
            return all(read(directory, p, scope, collection, key) == value for p in PLANES)
        except SouverixError:
            return False  # a store busy under a commit: look again

    return check


def exercise(directory: Path, peers: Peers) -> None:
    """Writes through edge-a1 and global reach all three planes; a refused write stays local."""
    record = {"heartbeat_ms": 1, "versions": {"agent": "2.5.0"}, "state": "running"}
    write(directory, "edge-a1", EDGE, "nodes", "edge-a1-n01", json.dumps(record), "--json")
    write(directory, "global", "global", "policies", "max-unavailable", "10%")
    eventually(converged(directory, EDGE, "nodes", "edge-a1-n01", record), "edge-a1's write", peers)
    eventually(
        converged(directory, "global", "policies", "max-unavailable", "10%"),
        "global's write",
        peers,
    )
    refused = CliRunner().invoke(
        cli,
        [
            "peer",
            "write",
            "--config",
            str(directory / "edge-a1.yaml"),
            "global",
            "policies",
            "max-unavailable",
            "90%",
        ],
    )
    assert refused.exit_code == 1
    assert "refused: edge-a1" in refused.stderr
    for plane in PLANES:
        assert "synced with" in peers.log(plane)


def test_tcp_peers_converge_as_separate_processes(tmp_path: Path, peers: Peers) -> None:
    global_port, region_port = free_ports(2)

    def rewrite(plane: str, document: dict[str, Any]) -> None:
        if plane == "global":
            document["listen"] = f"127.0.0.1:{global_port}"
        if plane == "region-a":
            document["listen"] = f"127.0.0.1:{region_port}"
            document["upstream"]["address"] = f"127.0.0.1:{global_port}"
        if plane == "edge-a1":
            document["upstream"]["address"] = f"127.0.0.1:{region_port}"

    prepare(EXAMPLES / "tcp-peers", tmp_path, rewrite)
    for plane in PLANES:
        peers.start(plane)
    ports = {plane: peers.wait_ready(plane)["port"] for plane in PLANES}
    assert ports == {"global": global_port, "region-a": region_port, "edge-a1": None}
    exercise(tmp_path, peers)
    # The example runs every link inside mutual TLS.
    assert f"global: listening on 127.0.0.1:{global_port} (mutual TLS)" in peers.log("global")
    assert "(mutual TLS)" in peers.log("region-a")

    # region-a goes away: edge-a1 keeps writing; when region-a is back, the write flows up.
    assert peers.stop("region-a") == 0
    assert "region-a: stopped" in peers.log("region-a")
    write(tmp_path, "edge-a1", EDGE, "policies", "window", "sun 02:00")
    peers.start("region-a")
    peers.wait_ready("region-a")
    eventually(converged(tmp_path, EDGE, "policies", "window", "sun 02:00"), "a reconnect", peers)
    assert "reconnecting" in peers.log("edge-a1")
    for plane in PLANES:
        assert peers.stop(plane) == 0


def test_two_peers_sync_over_mutual_tls_and_refuse_a_plain_tcp_client(
    tmp_path: Path, peers: Peers
) -> None:
    """global and region-a as processes with ``tls: true``; then region-a's own key, over
    plain TCP, tries to push a write to global: refused, whatever the key is worth."""
    (global_port,) = free_ports(1)

    def rewrite(plane: str, document: dict[str, Any]) -> None:
        assert document["tls"] is True
        if plane == "global":
            document["listen"] = f"127.0.0.1:{global_port}"
        if plane == "region-a":
            # No zone below in this test: region-a only dials.
            del document["listen"]
            document["downstream"] = []
            document["upstream"]["address"] = f"127.0.0.1:{global_port}"

    prepare(EXAMPLES / "tcp-peers", tmp_path, rewrite)
    for plane in ("global", "region-a"):
        peers.start(plane)
        peers.wait_ready(plane)
    write(tmp_path, "region-a", REGION, "policies", "window", "sat")

    def global_holds(key: str, value: object) -> Callable[[], bool]:
        def check() -> bool:
            try:
                return read(tmp_path, "global", REGION, "policies", key) == value
            except SouverixError:
                return False

        return check

    eventually(global_holds("window", "sat"), "region-a's write over mutual TLS", peers)
    assert "global: synced with region-a" in peers.log("global")

    async def plain_tcp_intruder() -> SessionStats | None:
        """The session's end, or ``None`` if global took the write first (or time ran out)."""
        # A second replica of region-a's key, with a write of its own, on its own store.
        config = PeerConfig(plane="region-a", keys=tmp_path / "keys", store=tmp_path / "x.db")
        replica = open_replica(config)
        try:
            replica.scope(REGION).policies.set("intruder", "yes")
            transport = await tcp.connect("127.0.0.1", global_port, peer="global")
            task = asyncio.ensure_future(run_session(SyncSession(replica), transport))
            deadline = time.monotonic() + DEADLINE
            while not task.done() and time.monotonic() < deadline:
                if global_holds("intruder", "yes")():
                    break
                await asyncio.sleep(0.05)
            if not task.done():
                task.cancel()
                await asyncio.wait([task])
                await transport.close()
                return None
            return task.result()
        finally:
            replica.close()

    stats = asyncio.run(plain_tcp_intruder())
    assert stats is not None, "the plain TCP session was served"
    assert stats.envelopes_sent == 0
    assert stats.error is not None
    assert read(tmp_path, "global", REGION, "policies", "intruder") is _MISSING
    peers.check_alive()
    for plane in ("global", "region-a"):
        assert peers.stop(plane) == 0


def test_the_tcp_example_script_runs(tmp_path: Path) -> None:
    """``examples/tcp-peers/run.sh`` from start to end, in a copy with free ports."""
    copy = tmp_path / "tcp-peers"
    shutil.copytree(EXAMPLES / "tcp-peers", copy, ignore=shutil.ignore_patterns(*IGNORED))
    global_port, region_port = free_ports(2)
    for path in copy.glob("*.yaml"):
        text = path.read_text().replace("7301", str(global_port))
        path.write_text(text.replace("7302", str(region_port)))
    done = subprocess.run(
        ["bash", "run.sh"],
        cwd=copy,
        env={**os.environ, "SOUVERIX_CRDT": str(SCRIPT)},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=120,
        check=False,
    )
    output = done.stdout.decode(errors="replace")
    assert done.returncode == 0, output + done.stderr.decode(errors="replace")
    assert "edge-a1-n01" in output
    assert "(mutual TLS)" in output
    for plane in PLANES:
        assert f"{plane}: synced with" in output


def test_nats_peers_converge_across_a_leaf_node(tmp_path: Path, peers: Peers) -> None:
    try:
        binary = nats_server_binary()
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    example = EXAMPLES / "nats-peers"
    # The fleet's NATS users, as run.sh writes them (the servers include auth/*.conf).
    auth = tmp_path / "auth"
    cli_ok(
        "nats", "credentials", EXAMPLES / "tcp-peers" / "topology.yaml", "--out", auth,
        "--leaf", "a1=127.0.0.1:7442", "--rounds", "4",
    )  # fmt: skip
    # The checked-in server configs are valid (tested in a copy: -t creates no store there).
    for name in ("hub.conf", "leaf.conf"):
        shutil.copy(example / name, tmp_path / name)
        checked = subprocess.run(
            [binary, "-t", "-c", name], cwd=tmp_path, capture_output=True, timeout=30, check=False
        )
        assert checked.returncode == 0, checked.stderr
    servers = tmp_path / "servers"
    hub = NatsServer(
        servers, name="hub", domain="hub", leafnode_listen=True, binary=binary,
        include=[auth / "authorization.conf"], leafnode_include=[auth / "leafnodes-auth.conf"],
    )  # fmt: skip
    leaf: NatsServer | None = None
    try:
        hub.start()
        password = (auth / "leaf-a1.password").read_text().strip()
        leaf = NatsServer(
            servers,
            name="leaf-a1",
            domain="leaf-a1",
            leaf_remotes=[f"nats-leaf://leaf-a1:{password}@127.0.0.1:{hub.leafnode_port}"],
            include=[auth / "authorization.conf"],
            binary=binary,
        ).start()
        hub.wait_for_leaf_connections(1)
        urls = {"global": hub.url, "region-a": hub.url, "edge-a1": leaf.url}

        def rewrite(plane: str, document: dict[str, Any]) -> None:
            assert document["transport"] == "nats"
            assert document["nats"]["user"] == plane
            # The password file travels in the plane's own directory (keys init copies it).
            password_file = f"keys/planes/{plane}/nats/{plane}.password"
            assert document["nats"]["password_file"] == password_file
            document["nats"]["url"] = urls[plane]

        prepare(example, tmp_path, rewrite, "--nats-credentials", auth)
        for plane in PLANES:
            peers.start(plane)
        for plane in PLANES:
            assert peers.wait_ready(plane)["port"] is None
        exercise(tmp_path, peers)
        assert f"connected to NATS at {leaf.url} as edge-a1" in peers.log("edge-a1")
        assert "violation" not in peers.log("edge-a1").lower()
        peers.stop_all()
    finally:
        peers.stop_all()
        for server in (leaf, hub):
            if server is not None:
                server.stop()


def test_the_examples_name_only_loopback_addresses() -> None:
    for path in sorted(EXAMPLES.glob("*-peers/*")):
        if path.suffix in {".yaml", ".conf"}:
            text = path.read_text()
            for token in ("0.0.0.0", "localhost:"):
                assert token not in text, f"{path} names {token}"
    assert os.access(SCRIPT, os.X_OK), "the console script is installed next to the interpreter"


def test_the_nats_example_script_runs(tmp_path: Path) -> None:
    """``examples/nats-peers/run.sh`` from start to end, in a copy with free ports."""
    try:
        binary = nats_server_binary()
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    copy = tmp_path / "nats-peers"
    shutil.copytree(EXAMPLES / "nats-peers", copy, ignore=shutil.ignore_patterns(*IGNORED))
    shutil.copytree(
        EXAMPLES / "tcp-peers", tmp_path / "tcp-peers", ignore=shutil.ignore_patterns(*IGNORED)
    )
    ports = dict(zip(("4242", "4243", "7442", "8242", "8243"), free_ports(5), strict=True))
    for path in [*copy.glob("*.yaml"), *copy.glob("*.conf"), copy / "run.sh"]:
        text = path.read_text()
        for old, new in ports.items():
            text = text.replace(old, str(new))
        path.write_text(text)
    done = subprocess.run(
        ["bash", "run.sh"],
        cwd=copy,
        env={**os.environ, "SOUVERIX_CRDT": str(SCRIPT), "NATS_SERVER": str(binary)},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=120,
        check=False,
    )
    output = done.stdout.decode(errors="replace")
    assert done.returncode == 0, output + done.stderr.decode(errors="replace")
    assert "edge-a1-n01" in output
    for plane in PLANES:
        assert f"{plane}: synced with" in output
