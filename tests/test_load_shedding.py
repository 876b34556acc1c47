"""Load shedding of a real ``souverix-crdt peer run`` process on 127.0.0.1, attacked over TCP.

Three region-a processes run side by side, each with its own store and a ``limits:`` mapping
that makes one bound short and the others long, so that each test depends on its own bound
alone: removing it makes the test fail, however the others are set.

* ``idle``: 1,000 silent connections from 20 loopback addresses are all closed once
  ``idle_timeout`` passes (and not before), while an honest edge syncs among them.
* ``caps``: connections over ``max_connections_per_address`` and over ``max_connections`` are
  reset at once, before the process says anything to them; an honest edge opens a session
  while one address is at its cap, and an established session keeps syncing at the total cap.
* ``handshake``: clients that connect and never authenticate — silent ones, and chatty ones
  that repeat a public hello for ever — are closed after ``handshake_timeout`` with a close
  message saying why, while an honest edge syncs.

Attackers bind distinct addresses of 127.0.0.0/8 (all loopback on Linux), the way distinct
hosts would reach a hub. The honest edge is a :class:`~souverix_crdt.sync.session.SyncSession`
over :func:`~souverix_crdt.sync.driver.run_session` holding edge-a1's real key from the key
directory. Every wait is bounded by a deadline, and every process is stopped by its PID.
"""

from __future__ import annotations

import asyncio
import contextlib
import resource
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from souverix_crdt.cli import cli
from souverix_crdt.errors import TransportError
from souverix_crdt.plane.keyring import FederationKeys, load_keys
from souverix_crdt.plane.peer import load_peer_config, open_replica
from souverix_crdt.replica import Replica
from souverix_crdt.store.memory import MemoryStore
from souverix_crdt.sync.driver import SessionStats, run_session
from souverix_crdt.sync.messages import NONCE_SIZE, Close, Hello, decode_message, encode_message
from souverix_crdt.sync.session import SyncSession
from souverix_crdt.transports.tcp import HEADER_SIZE, connect

SCRIPT = Path(sys.executable).parent / "souverix-crdt"
TOPOLOGY = Path(__file__).resolve().parents[1] / "src" / "souverix_crdt" / "data"
#: Longest wait for a process to start or a scenario to end, in seconds: a hang guard.
DEADLINE = 20.0
#: Slack allowed past a timeout for the process to act on it (a loaded 2-core machine).
SLACK = 4.0
HOST = "127.0.0.1"
REGIONAL = ("global/region-a", "policies", "regional")

IDLE_TIMEOUT = 2.0
IDLE_FLOOD = 1_000
IDLE_ADDRESSES = 20  # 50 connections each, under the default per-address cap of 64

HANDSHAKE_TIMEOUT = 1.0

PER_ADDRESS = 40
TOTAL = 100

PROCESSES: dict[str, dict[str, Any]] = {
    "idle": {
        "max_connections": IDLE_FLOOD + 64,
        "handshake_timeout": "60s",
        "idle_timeout": f"{IDLE_TIMEOUT:g}s",
    },
    "caps": {
        "max_connections": TOTAL,
        "max_connections_per_address": PER_ADDRESS,
        "handshake_timeout": "30s",
        "idle_timeout": "30s",
    },
    "handshake": {
        "handshake_timeout": f"{HANDSHAKE_TIMEOUT:g}s",
        "idle_timeout": "60s",
    },
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def loopback(index: int) -> str:
    """A loopback address other than 127.0.0.1 (the honest edge's), one per attacking host."""
    return f"127.0.0.{index + 2}"


class Plane:
    """One region-a process with its config, store and log; stopped by its PID."""

    def __init__(self, directory: Path, name: str, keys: FederationKeys) -> None:
        self.directory = directory
        self.name = name
        self.keys = keys
        self.port = free_port()
        self.config = directory / f"{name}.yaml"
        self.log = directory / f"{name}.log"
        document = {
            "plane": "region-a",
            "keys": "keys",
            "store": f"{name}.sqlite3",
            "listen": f"{HOST}:{self.port}",
            "downstream": ["edge-a1", "edge-a2"],
            "sync": {"tick": "300ms", "watch": "50ms"},
            "limits": PROCESSES[name],
        }
        self.config.write_text(yaml.safe_dump(document))
        region = open_replica(load_peer_config(self.config), keys=keys)
        try:
            region.scope(REGIONAL[0]).policies.set(REGIONAL[2], "r1")
        finally:
            region.close()
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = self.log.open("ab")
        self.process = subprocess.Popen(
            [SCRIPT, "peer", "run", "--config", self.config.name, "--ready-file", self.ready],
            cwd=self.directory,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        log.close()

    @property
    def ready(self) -> str:
        return f"{self.name}.ready"

    def wait_ready(self) -> None:
        deadline = time.monotonic() + DEADLINE
        while not (self.directory / self.ready).exists():
            assert self.process is not None
            if self.process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"{self.name} did not start\n{self.log.read_text()}")
            time.sleep(0.02)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)

    def edge(self) -> Replica:
        edge = self.keys.planes["edge-a1"]
        return Replica(edge.identity, self.keys.anchors, MemoryStore())


@pytest.fixture(scope="module")
def planes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Plane]]:
    # This process holds a thousand connections at once, plus its own descriptors.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 4 * IDLE_FLOOD
    if hard != resource.RLIM_INFINITY and hard < 2 * IDLE_FLOOD:
        pytest.skip(f"the hard open-file limit ({hard}) cannot hold {IDLE_FLOOD} connections")
    if soft != resource.RLIM_INFINITY and soft < wanted:
        limit = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))
    directory = tmp_path_factory.mktemp("load-shedding")
    result = CliRunner().invoke(
        cli,
        [
            "keys",
            "init",
            str(TOPOLOGY / "default-topology.yaml"),
            "--out",
            str(directory / "keys"),
            "--seed",
            "load-shedding",
        ],
    )
    assert result.exit_code == 0, result.output
    keys = load_keys(directory / "keys")
    running = {name: Plane(directory, name, keys) for name in PROCESSES}
    try:
        for plane in running.values():
            plane.start()
        for plane in running.values():
            plane.wait_ready()
        yield running
    finally:
        for plane in running.values():
            plane.stop()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def run(coroutine: Awaitable[Any]) -> Any:
    async def guarded() -> Any:
        return await asyncio.wait_for(coroutine, DEADLINE)

    return asyncio.run(guarded())


async def until(condition: Callable[[], bool], what: str, deadline: float = DEADLINE) -> None:
    """Poll ``condition`` on the event loop until it holds; fail after ``deadline`` seconds."""
    give_up = time.monotonic() + deadline
    while not condition():
        if time.monotonic() > give_up:
            raise AssertionError(f"gave up waiting for {what}")
        await asyncio.sleep(0.01)


class HonestEdge:
    """edge-a1 with its real key, syncing with a process over one TCP connection."""

    def __init__(self, plane: Plane) -> None:
        self.plane = plane
        self.replica = plane.edge()
        self.session = SyncSession(self.replica)
        self.task: asyncio.Future[SessionStats] | None = None

    async def open(self) -> None:
        transport = await connect(HOST, self.plane.port, peer="region-a")
        self.transport = transport
        self.task = asyncio.ensure_future(run_session(self.session, transport, tick_interval=0.3))

    def synced(self) -> bool:
        return self.replica.get(*REGIONAL) == "r1" and self.session.caught_up

    async def sync(self) -> None:
        """Open the session and wait until region-a's data arrived and our side is acked."""
        await self.open()
        await until(self.synced, "the honest edge to sync")

    async def write_and_sync(self, value: str) -> None:
        """A new write pushed live on the open session, applied and acknowledged by region-a."""
        self.replica.scope("global/region-a/edge-a1").policies.set("during-flood", value)
        await until(lambda: self.session.caught_up, "region-a to acknowledge the new write")

    async def close(self) -> None:
        self.session.close()
        if self.task is not None:
            await self.task
        await self.transport.close()


class Attacker:
    """A raw connection from one loopback address that never authenticates.

    It reads whatever the process sends (so the close is seen as soon as it happens) and records
    when it connected, when it was closed and the frames it got.
    """

    def __init__(self, source: str) -> None:
        self.source = source
        self.opened = 0.0
        self.closed: float | None = None
        self.data = bytearray()
        self.writer: asyncio.StreamWriter | None = None
        self.reading: asyncio.Task[None] | None = None

    async def connect(self, port: int) -> None:
        # Stamped before connecting: never later than the process accepted it, so a lifetime
        # measured here is never shorter than the one the process gave the connection.
        self.opened = time.monotonic()
        reader, self.writer = await asyncio.open_connection(HOST, port, local_addr=(self.source, 0))
        self.reading = asyncio.ensure_future(self._read(reader))

    async def _read(self, reader: asyncio.StreamReader) -> None:
        with contextlib.suppress(ConnectionError):
            while chunk := await reader.read(65536):
                self.data += chunk
        self.closed = time.monotonic()

    @property
    def lifetime(self) -> float:
        assert self.closed is not None
        return self.closed - self.opened

    def frames(self) -> list[bytes]:
        data, frames = bytes(self.data), []
        while len(data) >= HEADER_SIZE:
            size = int.from_bytes(data[:HEADER_SIZE], "big")
            if len(data) < HEADER_SIZE + size:
                break
            frames.append(data[HEADER_SIZE : HEADER_SIZE + size])
            data = data[HEADER_SIZE + size :]
        return frames

    def send(self, frame: bytes) -> None:
        assert self.writer is not None
        if not self.writer.is_closing():
            self.writer.write(len(frame).to_bytes(HEADER_SIZE, "big") + frame)

    def abort(self) -> None:
        if self.writer is not None:
            self.writer.transport.abort()
        if self.reading is not None:
            self.reading.cancel()


async def flood(port: int, sources: list[str]) -> list[Attacker]:
    attackers = [Attacker(source) for source in sources]
    await asyncio.gather(*(attacker.connect(port) for attacker in attackers))
    return attackers


async def all_closed(attackers: list[Attacker], deadline: float) -> None:
    await until(
        lambda: all(a.closed is not None for a in attackers),
        f"{sum(a.closed is None for a in attackers)} of {len(attackers)} connections to close",
        deadline,
    )


# --------------------------------------------------------------------------- idle


def test_a_thousand_idle_connections_are_closed_after_the_idle_timeout(
    planes: dict[str, Plane],
) -> None:
    plane = planes["idle"]

    async def scenario() -> tuple[list[Attacker], int, float]:
        sources = [loopback(i % IDLE_ADDRESSES) for i in range(IDLE_FLOOD)]
        attackers = await flood(plane.port, sources)
        try:
            honest = HonestEdge(plane)
            await honest.sync()
            still_open = sum(a.closed is None for a in attackers)
            await honest.close()
            started = min(a.opened for a in attackers)
            await all_closed(attackers, IDLE_TIMEOUT + SLACK)
            return attackers, still_open, time.monotonic() - started
        finally:
            for attacker in attackers:
                attacker.abort()

    attackers, still_open, elapsed = run(scenario())
    lifetimes = sorted(a.lifetime for a in attackers)
    print(  # the measurement, shown with pytest -s
        f"{len(attackers)} idle connections closed; open for "
        f"{lifetimes[0]:.2f}..{lifetimes[-1]:.2f} s (median {lifetimes[len(lifetimes) // 2]:.2f})"
        f", all gone {elapsed:.2f} s after the first connected; {still_open} still open when "
        "the honest edge had synced"
    )
    # The honest edge synced during the flood, not after it.
    assert still_open == IDLE_FLOOD
    # Closed by the idle timeout: not refused at once, not left open.
    assert lifetimes[0] >= IDLE_TIMEOUT * 0.95
    assert lifetimes[-1] <= IDLE_TIMEOUT + SLACK


# --------------------------------------------------------------------------- caps


def admitted(attackers: list[Attacker]) -> int:
    """Connections the process spoke to: an admitted one gets region-a's hello at once."""
    return sum(bool(a.frames()) for a in attackers)


def test_connections_over_the_caps_are_refused_at_once_and_the_honest_still_sync(
    planes: dict[str, Plane],
) -> None:
    plane = planes["caps"]

    async def answered(attackers: list[Attacker]) -> None:
        # Every admitted connection gets a hello, every refused one a reset: wait for either.
        await until(
            lambda: all(a.frames() or a.closed is not None for a in attackers),
            "every connection to be answered or refused",
        )

    async def scenario() -> tuple[list[Attacker], list[Attacker], list[Attacker]]:
        established = HonestEdge(plane)
        await established.sync()
        crowd: list[Attacker] = []
        try:
            # One host at its per-address cap, and 10 over it.
            first = await flood(plane.port, [loopback(0)] * (PER_ADDRESS + 10))
            crowd += first
            await answered(first)
            # Another host still gets in and syncs (and stays: the count below is exact).
            newcomer = HonestEdge(plane)
            await newcomer.sync()
            # Two more hosts fill the server to its total cap; the rest are refused.
            second = await flood(plane.port, [loopback(1)] * PER_ADDRESS)
            crowd += second
            await answered(second)
            third = await flood(plane.port, [loopback(2)] * PER_ADDRESS)
            crowd += third
            await answered(third)
            # At the total cap, the established sessions are never evicted and still sync.
            for edge, value in ((established, "v1"), (newcomer, "v2")):
                await edge.write_and_sync(value)
                assert edge.session.authenticated
            await newcomer.close()
            await established.close()
            return first, second, third
        finally:
            for attacker in crowd:
                attacker.abort()

    first, second, third = run(scenario())
    refused = [a for a in first + second + third if not a.frames()]
    assert all(a.closed is not None and not a.data for a in refused)  # reset, never spoken to
    assert admitted(first) == PER_ADDRESS  # the per-address cap
    assert admitted(second) == PER_ADDRESS
    # The total cap: the two honest sessions hold two connections.
    assert admitted(third) == TOTAL - 2 - 2 * PER_ADDRESS
    assert len(refused) == 10 + PER_ADDRESS - admitted(third)
    text = plane.log.read_text()
    assert "over the connection cap" in text
    assert "max_connections_per_address=40 reached by 127.0.0.2" in text


# --------------------------------------------------------------------------- handshake


def test_clients_that_never_authenticate_are_dropped_after_the_handshake_timeout(
    planes: dict[str, Plane],
) -> None:
    plane = planes["handshake"]
    chain = tuple(d.encode() for d in plane.keys.planes["edge-a1"].chain)
    public_hello = encode_message(Hello(plane.keys.fleet_id, chain, b"\x07" * NONCE_SIZE))

    async def chatter(attackers: list[Attacker]) -> None:
        # Never idle: a public hello (anyone can copy a chain) every 200 ms, never a proof.
        while True:
            for attacker in attackers:
                attacker.send(public_hello)
            await asyncio.sleep(0.2)

    async def scenario() -> tuple[list[Attacker], list[Attacker]]:
        silent = await flood(plane.port, [loopback(0)] * 50)
        chatty = await flood(plane.port, [loopback(1)] * 50)
        talking = asyncio.ensure_future(chatter(chatty))
        try:
            honest = HonestEdge(plane)
            await honest.sync()
            assert any(a.closed is None for a in silent + chatty)  # synced during the flood
            await honest.close()
            await all_closed(silent + chatty, HANDSHAKE_TIMEOUT + SLACK)
            return silent, chatty
        finally:
            talking.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await talking
            for attacker in silent + chatty:
                attacker.abort()

    silent, chatty = run(scenario())
    lifetimes = sorted(a.lifetime for a in silent + chatty)
    print(
        f"{len(lifetimes)} unauthenticated connections dropped after "
        f"{lifetimes[0]:.2f}..{lifetimes[-1]:.2f} s"
    )
    assert lifetimes[0] >= HANDSHAKE_TIMEOUT * 0.95
    assert lifetimes[-1] <= HANDSHAKE_TIMEOUT + SLACK
    for attacker in silent + chatty:
        last = decode_message(attacker.frames()[-1])
        assert isinstance(last, Close)
        assert "handshake not completed within 1 s" in last.reason
    text = plane.log.read_text()
    assert "that did not authenticate" in text
    assert "handshake not completed" in text


def test_a_handshake_timeout_does_not_touch_an_authenticated_session(
    planes: dict[str, Plane],
) -> None:
    plane = planes["handshake"]

    async def scenario() -> bool:
        honest = HonestEdge(plane)
        await honest.sync()
        # Well past the deadline, the session is still open and still syncs.
        await asyncio.sleep(HANDSHAKE_TIMEOUT * 1.5)
        await honest.write_and_sync("still-open")
        alive = honest.session.authenticated
        with contextlib.suppress(TransportError):
            await honest.close()
        return alive

    assert run(scenario()) is True
