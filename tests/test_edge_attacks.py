"""Attacks on a real ``souverix-crdt peer run`` process over TCP on 127.0.0.1.

region-a runs as a separate process serving edge-a1 and edge-a2, and already holds region-a's
own data and edge-a2's (a sibling of edge-a1). Every attacker below speaks the wire protocol
by hand and decodes every frame the process sends it, so "gets nothing" means exactly that:
no frontier, no authority item, no envelope — only region-a's hello, its proof and a close.

Waiting is bounded: every read has a timeout, and every process is stopped by its PID in a
finalizer, whatever the test did.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from souverix_crdt.cli import cli
from souverix_crdt.errors import TransportError
from souverix_crdt.plane.keyring import FederationKeys, load_keys
from souverix_crdt.plane.peer import load_peer_config, open_replica
from souverix_crdt.replica import Replica
from souverix_crdt.store.memory import MemoryStore
from souverix_crdt.sync.handshake import sign_proof
from souverix_crdt.sync.messages import (
    NONCE_SIZE,
    AuthorityItems,
    Close,
    Envelopes,
    Frontiers,
    Hello,
    Message,
    Proof,
    decode_message,
    encode_message,
)
from souverix_crdt.sync.session import SyncSession
from souverix_crdt.transports.tcp import TcpTransport, connect

SCRIPT = Path(sys.executable).parent / "souverix-crdt"
TOPOLOGY = Path(__file__).resolve().parents[1] / "src" / "souverix_crdt" / "data"
SIBLING = "global/region-a/edge-a2"
SECRET = b"sibling-secret-policy"
#: Longest wait for anything (a start, a frame, a close), in seconds: a hang guard.
DEADLINE = 20.0
HANDSHAKE_ONLY = (Hello, Proof, Close)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Plane:
    """region-a as a real process, with a key directory, a config and a store."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.keys_dir = directory / "keys"
        result = CliRunner().invoke(
            cli,
            [
                "keys",
                "init",
                str(TOPOLOGY / "default-topology.yaml"),
                "--out",
                str(self.keys_dir),
                "--seed",
                "edge-attacks",
            ],
        )
        assert result.exit_code == 0, result.output
        self.keys: FederationKeys = load_keys(self.keys_dir)
        self.port = free_port()
        self.config = directory / "region-a.yaml"
        self.store = directory / "region-a.sqlite3"
        document = {
            "plane": "region-a",
            "keys": "keys",
            "store": self.store.name,
            "transport": "tcp",
            "listen": f"127.0.0.1:{self.port}",
            "downstream": ["edge-a1", "edge-a2"],
            "sync": {"tick": "1s", "watch": "50ms"},
        }
        self.config.write_text(yaml.safe_dump(document))
        self.process: subprocess.Popen[bytes] | None = None
        self.log = directory / "region-a.log"

    def seed_data(self) -> None:
        """region-a's own policy, and edge-a2's secret synced into region-a's store."""
        region = open_replica(load_peer_config(self.config), keys=self.keys)
        sibling = self.replica("edge-a2")
        try:
            region.scope("global/region-a").policies.set("regional", "r1")
            sibling.scope(SIBLING).policies.set("secret", SECRET.decode())
            upper, lower = SyncSession(region), SyncSession(sibling)
            upper.start()
            lower.start()
            for _ in range(50):
                for frame in upper.data_to_send():
                    lower.receive(frame)
                for frame in lower.data_to_send():
                    upper.receive(frame)
            assert region.get(SIBLING, "policies", "secret") == SECRET.decode()
        finally:
            region.close()

    def replica(self, name: str) -> Replica:
        return Replica(self.keys.planes[name].identity, self.keys.anchors, MemoryStore())

    def start(self) -> None:
        ready = self.directory / "region-a.ready"
        log = self.log.open("ab")
        self.process = subprocess.Popen(
            [SCRIPT, "peer", "run", "--config", self.config.name, "--ready-file", ready.name],
            cwd=self.directory,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        log.close()
        deadline = time.monotonic() + DEADLINE
        while not ready.exists():
            if self.process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"region-a did not start\n{self.log.read_text()}")
            time.sleep(0.02)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


@pytest.fixture(scope="module")
def plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Plane]:
    running = Plane(tmp_path_factory.mktemp("edge-attacks"))
    running.seed_data()
    running.start()
    try:
        yield running
    finally:
        running.stop()


def run(coroutine: object) -> object:
    return asyncio.run(asyncio.wait_for(coroutine, DEADLINE))  # type: ignore[arg-type]


def hello_of(keys: FederationKeys, name: str, nonce: bytes) -> bytes:
    chain = tuple(d.encode() for d in keys.planes[name].chain)
    return encode_message(Hello(keys.fleet_id, chain, nonce))


async def collect(transport: TcpTransport, quiet: float = 0.5) -> list[Message]:
    """Every frame the process sends until it closes or stays quiet for ``quiet`` seconds."""
    messages: list[Message] = []
    while True:
        try:
            frame = await asyncio.wait_for(transport.receive(), quiet)
        except (TimeoutError, TransportError):
            return messages
        message = decode_message(frame)
        messages.append(message)
        if isinstance(message, Close):
            return messages


def data_of(messages: list[Message]) -> list[Message]:
    return [m for m in messages if not isinstance(m, HANDSHAKE_ONLY)]


def assert_no_sibling(messages: list[Message], keys: FederationKeys) -> None:
    sibling = keys.planes["edge-a2"]
    for message in messages:
        if isinstance(message, Frontiers):
            assert all(row.scope != SIBLING for row in message.rows)
            assert all(sibling.key_id not in row.writer for row in message.rows)
        if isinstance(message, AuthorityItems):
            assert sibling.delegation.encode() not in message.delegations
        if isinstance(message, Envelopes):
            assert all(SECRET not in item for item in message.items)


# --------------------------------------------------------------------------- attackers


def test_a_keyless_client_with_a_public_chain_gets_nothing(plane: Plane) -> None:
    async def attack() -> list[Message]:
        transport = await connect("127.0.0.1", plane.port)
        try:
            await transport.send(hello_of(plane.keys, "edge-a1", b"\x01" * NONCE_SIZE))
            # Everything an outsider might push before (or instead of) a proof.
            await transport.send(encode_message(Frontiers((), b"")))
            await transport.send(encode_message(Proof(b"\x00" * 64)))
            return await collect(transport)
        finally:
            await transport.close()

    messages = run(attack())
    assert isinstance(messages, list)
    assert data_of(messages) == []
    assert isinstance(messages[-1], Close)
    assert "proof" in messages[-1].reason


def test_a_captured_handshake_replayed_gets_nothing(plane: Plane) -> None:
    edge = plane.keys.planes["edge-a1"]

    async def honest() -> list[bytes]:
        transport = await connect("127.0.0.1", plane.port)
        try:
            mine = hello_of(plane.keys, "edge-a1", b"\x02" * NONCE_SIZE)
            await transport.send(mine)
            theirs = await transport.receive()
            assert isinstance(decode_message(theirs), Hello)
            proof = encode_message(Proof(sign_proof(edge.key, plane.keys.fleet_id, mine, theirs)))
            await transport.send(proof)
            received = await collect(transport)
            assert any(isinstance(m, Frontiers) for m in received)  # the honest one gets in
            return [mine, proof]
        finally:
            await transport.close()

    async def replay(frames: list[bytes]) -> list[Message]:
        transport = await connect("127.0.0.1", plane.port)
        try:
            for frame in frames:
                await transport.send(frame)
            return await collect(transport)
        finally:
            await transport.close()

    captured = run(honest())
    assert isinstance(captured, list)
    messages = run(replay(captured))
    assert isinstance(messages, list)
    assert data_of(messages) == []
    assert isinstance(messages[-1], Close)


def test_a_fleet_key_that_is_not_a_configured_peer_is_refused_before_any_data(
    plane: Plane,
) -> None:
    outsider = plane.keys.planes["region-b"]  # a genuine fleet key, not region-a's peer

    async def attack() -> list[Message]:
        transport = await connect("127.0.0.1", plane.port)
        try:
            mine = hello_of(plane.keys, "region-b", b"\x03" * NONCE_SIZE)
            await transport.send(mine)
            theirs = await transport.receive()
            signature = sign_proof(outsider.key, plane.keys.fleet_id, mine, theirs)
            await transport.send(encode_message(Proof(signature)))
            return [decode_message(theirs), *await collect(transport)]
        finally:
            await transport.close()

    messages = run(attack())
    assert isinstance(messages, list)
    assert data_of(messages) == []
    assert isinstance(messages[-1], Close)
    assert "not a peer" in messages[-1].reason
    assert "refusing a session with 'region-b'" in plane.log.read_text()


def test_a_zone_never_receives_its_sibling_s_data_chains_or_frontiers(plane: Plane) -> None:
    edge = plane.replica("edge-a1")
    tapped: list[Message] = []

    async def honest_zone() -> None:
        transport = await connect("127.0.0.1", plane.port)
        session = SyncSession(edge)
        session.start()
        try:
            for frame in session.data_to_send():
                await transport.send(frame)
            while (
                not session.caught_up
                or not tapped
                or edge.get("global/region-a", "policies", "regional") != "r1"
            ):
                frame = await asyncio.wait_for(transport.receive(), DEADLINE)
                tapped.append(decode_message(frame))
                session.receive(frame)
                for out in session.data_to_send():
                    await transport.send(out)
        finally:
            session.close()
            with contextlib.suppress(TransportError):
                for out in session.data_to_send():
                    await transport.send(out)
            await transport.close()

    run(honest_zone())
    assert edge.get("global/region-a", "policies", "regional") == "r1"
    assert any(isinstance(m, Envelopes) for m in tapped)
    assert_no_sibling(tapped, plane.keys)
    assert edge.get(SIBLING, "policies", "secret") is None


def test_a_revoked_key_is_refused_and_its_open_session_closes(plane: Plane) -> None:
    # Last in this module: it revokes edge-a1 for the process the other tests share.
    edge = plane.keys.planes["edge-a1"]

    async def open_session() -> tuple[TcpTransport, list[Message]]:
        transport = await connect("127.0.0.1", plane.port)
        mine = hello_of(plane.keys, "edge-a1", b"\x04" * NONCE_SIZE)
        await transport.send(mine)
        theirs = await transport.receive()
        proof = sign_proof(edge.key, plane.keys.fleet_id, mine, theirs)
        with contextlib.suppress(TransportError):  # a refusing server may have closed already
            await transport.send(encode_message(Proof(proof)))
        return transport, await collect(transport, quiet=0.3)

    async def scenario() -> tuple[list[Message], list[Message]]:
        transport, opening = await open_session()
        assert any(isinstance(m, Frontiers) for m in opening)  # open
        # The operator revokes edge-a1 into region-a's store while the process runs.
        revoked = subprocess.run(
            [
                SCRIPT,
                "keys",
                "revoke",
                "--keys",
                str(plane.keys_dir),
                "edge-a1",
                "--apply",
                str(plane.config),
            ],
            capture_output=True,
            check=False,
            timeout=DEADLINE,
        )
        assert revoked.returncode == 0, revoked.stderr
        try:
            closing = await collect(transport, quiet=DEADLINE / 2)
        finally:
            await transport.close()
        again, refused = await open_session()
        await again.close()
        return closing, refused

    result = run(scenario())
    assert isinstance(result, tuple)
    closing, refused = result
    assert isinstance(closing[-1], Close)
    assert "revoked" in closing[-1].reason
    assert data_of(refused) == []
    assert "revoked" in json.dumps([getattr(m, "reason", "") for m in refused])
