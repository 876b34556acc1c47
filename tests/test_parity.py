"""Transport parity: one seeded scenario over every transport ends in the same digests.

The scenario (:func:`souverix_crdt.testing.parity.run_parity_scenario`) writes at the global,
regional and edge levels, cuts the edge off for three hours while both sides write (the same keys
included), heals and converges. It runs over:

* ``memory``: sync sessions over the in-memory network;
* ``tcp``: sync sessions over TCP on 127.0.0.1;
* ``tcp+tls`` and ``tcp+mtls``: the same inside TLS 1.3 with the fleet CA's certificates, the
  client checking the server's plane name, and (mutual) the server requiring the client's;
* ``spool``: sync sessions over the spool-directory transport (frames as files);
* ``bundle``: signed bundle files and receipts, both ways, no session at all;
* ``nats``: sync sessions over core NATS, each plane logged in as itself under the fleet's
  nats-server authorization, when nats-py and the pinned nats-server are installed (skipped
  otherwise, saying why).

Every run must end with every replica in the same state, and with the same digests as every
other transport. A new transport joins by adding a fabric factory to ``FABRICS``.
(The frame-level conformance suite runs over the file-bundle transport in
``test_transport_bundle.py``, next to memory, TCP and NATS in their own test files.)
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import ssl
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest

from souverix_crdt.replica import Replica
from souverix_crdt.testing.parity import (
    PARITY_LINKS,
    PARITY_MEMBERS,
    Fabric,
    ParityOutcome,
    SessionFabric,
    run_parity_scenario,
)
from souverix_crdt.transports import tcp
from souverix_crdt.transports.base import Transport
from souverix_crdt.transports.bundle import (
    FileBundleTransport,
    export_bundle,
    export_receipt,
    import_bundle,
    import_receipt,
)
from souverix_crdt.transports.memory import MemoryNetwork
from souverix_crdt.transports.tls import (
    TlsFiles,
    client_context,
    key_directory_files,
    server_context,
    update_key_directory,
)

GUARD = 60.0
FabricFactory = Callable[[Path], contextlib.AbstractAsyncContextManager[Fabric]]
NATS_FLEET = "parity"
SEED = 7


def run(scenario: Coroutine[Any, Any, ParityOutcome]) -> ParityOutcome:
    async def guarded() -> ParityOutcome:
        async with asyncio.timeout(GUARD):
            return await scenario

    return asyncio.run(guarded())


# --------------------------------------------------------------------------- fabrics


class MemoryFabric(SessionFabric):
    """Sessions over the in-memory network, its frames moved by a background task."""

    def __init__(self) -> None:
        super().__init__()
        self.network = MemoryNetwork(seed=SEED)

    async def open(self, lower: Replica, upper: Replica) -> Transport:
        ours, theirs = self.network.connect(lower.name, upper.name)
        self.serve(upper, theirs)
        return ours

    async def keep_moving(self) -> None:
        while True:
            self.network.deliver()
            await asyncio.sleep(0)


class TcpFabric(SessionFabric):
    """Sessions over TCP on 127.0.0.1: one listening server per upper replica.

    With ``tls`` (each plane's TLS files) every connection runs inside TLS; ``mutual`` makes
    the servers require the clients' certificates.
    """

    def __init__(
        self, tls: Callable[[str], TlsFiles] | None = None, *, mutual: bool = False
    ) -> None:
        super().__init__()
        self.servers: dict[str, tcp.TcpServer] = {}
        self.tls = tls
        self.mutual = mutual

    def contexts(
        self, lower: str, upper: str
    ) -> tuple[ssl.SSLContext | None, ssl.SSLContext | None]:
        if self.tls is None:
            return None, None
        served, dialling = self.tls(upper), self.tls(lower)
        server = server_context(
            cert=served.cert, key=served.key, ca=served.ca if self.mutual else None
        )
        if not self.mutual:
            return server, client_context(ca=dialling.ca)
        return server, client_context(ca=dialling.ca, cert=dialling.cert, key=dialling.key)

    async def open(self, lower: Replica, upper: Replica) -> Transport:
        server = self.servers.get(upper.name)
        if server is None:

            async def handler(transport: tcp.TcpTransport) -> None:
                from souverix_crdt.sync.driver import run_session  # noqa: PLC0415
                from souverix_crdt.sync.session import SyncSession  # noqa: PLC0415

                await run_session(SyncSession(upper), transport)

            server = self.servers[upper.name] = await tcp.TcpServer.start(
                "127.0.0.1", 0, handler=handler, ssl=self.contexts(lower.name, upper.name)[0]
            )
        client = self.contexts(lower.name, upper.name)[1]
        transport = await tcp.connect(
            "127.0.0.1",
            server.port,
            peer=upper.name,
            ssl=client,
            server_hostname=upper.name if client is not None else None,
        )
        assert transport.tls is (client is not None)
        return transport

    async def close(self) -> None:
        for server in self.servers.values():
            await server.close()


class SpoolFabric(SessionFabric):
    """Sessions whose frames are files in a spool directory, a fresh one per connection."""

    def __init__(self, directory: Path) -> None:
        super().__init__()
        self.directory = directory
        self.count = itertools.count()

    async def open(self, lower: Replica, upper: Replica) -> Transport:
        spool = self.directory / f"connection-{next(self.count)}"
        ours, theirs = FileBundleTransport.pair(spool, lower.name, upper.name)
        self.serve(upper, theirs)
        return ours


class BundleFabric:
    """Bundle files and receipts both ways: what an air-gapped zone does by hand."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.count = itertools.count()

    async def sync(self, lower: Replica, upper: Replica) -> None:
        for source, target in ((lower, upper), (upper, lower)):
            index = next(self.count)
            bundle = self.directory / f"{index}-{source.name}-to-{target.name}.bundle"
            receipt = self.directory / f"{index}-{target.name}-to-{source.name}.receipt"
            export_bundle(source, bundle, peer=target.name, peer_scope=target.identity.scope)
            import_bundle(target, bundle)
            export_receipt(target, receipt, for_peer=source.name)
            import_receipt(source, receipt)
            # Settled: the exporter owes its peer nothing more.
            assert source.sync_debt(target.name).envelopes == 0


class NatsFabric(SessionFabric):
    """Sessions over core NATS through one local nats-server, each plane logged in as itself.

    The server runs the fleet's authorization (one user per plane, allowed only its own
    session subjects), so the scenario shows that the permissions leave honest sync whole.
    """

    def __init__(self, url: str, credentials: Any) -> None:
        super().__init__()
        from souverix_crdt.transports.nats import Subjects  # noqa: PLC0415

        self.url = url
        self.credentials = credentials
        self.subjects = Subjects(NATS_FLEET)
        self.connections: dict[str, Any] = {}

    async def _connection(self, name: str) -> Any:
        import nats  # noqa: PLC0415 - optional dependency

        from souverix_crdt.transports.nats_auth import inbox_prefix  # noqa: PLC0415

        if name not in self.connections:
            self.connections[name] = await nats.connect(
                self.url,
                user=name,
                password=self.credentials.password(name),
                inbox_prefix=inbox_prefix(name),
            )
        return self.connections[name]

    async def open(self, lower: Replica, upper: Replica) -> Transport:
        from souverix_crdt.transports.nats import NatsTransport  # noqa: PLC0415

        # One fleet's subjects for every session (the permissions name them): the previous
        # session's close was flushed before it ended, and a new subscription sees nothing
        # published before it.
        theirs = await NatsTransport.open(
            await self._connection(upper.name), self.subjects, local=upper.name, peer=lower.name
        )
        ours = await NatsTransport.open(
            await self._connection(lower.name), self.subjects, local=lower.name, peer=upper.name
        )
        # Core NATS drops what no subscription is there to receive: both ends subscribe
        # before either side's session says hello.
        self.serve(upper, theirs)
        return ours

    async def close(self) -> None:
        for connection in self.connections.values():
            await connection.close()


@contextlib.asynccontextmanager
async def memory_fabric(_: Path) -> AsyncIterator[Fabric]:
    fabric = MemoryFabric()
    mover = asyncio.ensure_future(fabric.keep_moving())
    try:
        yield fabric
    finally:
        mover.cancel()
        await asyncio.wait([mover])
        await fabric.aclose()


@contextlib.asynccontextmanager
async def tcp_fabric(_: Path) -> AsyncIterator[Fabric]:
    fabric = TcpFabric()
    try:
        yield fabric
    finally:
        await fabric.close()


def tls_fabric(*, mutual: bool) -> FabricFactory:
    @contextlib.asynccontextmanager
    async def factory(directory: Path) -> AsyncIterator[Fabric]:
        update_key_directory(directory / "keys", "souverix-test", PARITY_MEMBERS)
        fabric = TcpFabric(
            lambda plane: key_directory_files(directory / "keys", plane), mutual=mutual
        )
        try:
            yield fabric
        finally:
            await fabric.close()

    return factory


@contextlib.asynccontextmanager
async def spool_fabric(directory: Path) -> AsyncIterator[Fabric]:
    fabric = SpoolFabric(directory)
    try:
        yield fabric
    finally:
        await fabric.aclose()


@contextlib.asynccontextmanager
async def bundle_fabric(directory: Path) -> AsyncIterator[Fabric]:
    yield BundleFabric(directory)


def nats_server_or_skip(directory: Path) -> tuple[Any, Any]:
    """A nats-server with the parity fleet's authorization, and the credentials; or a skip."""
    try:
        import bcrypt  # noqa: F401, PLC0415
        import nats  # noqa: F401, PLC0415

        from souverix_crdt.testing.nats_server import (  # noqa: PLC0415
            NatsServer,
            nats_server_binary,
        )
        from souverix_crdt.transports import nats_auth  # noqa: PLC0415
        from souverix_crdt.transports.nats import Subjects  # noqa: PLC0415
    except ImportError as exc:
        pytest.skip(f"the NATS transport is not available: {exc}")
    try:
        binary = nats_server_binary()
    except FileNotFoundError as exc:
        pytest.skip(f"nats-server is not installed: {exc}")
    scopes = {"global": "global", "region-a": "global/region-a"}
    scopes["edge-a1"] = "global/region-a/edge-a1"
    credentials = nats_auth.write_fleet_credentials(
        directory / "auth",
        Subjects(NATS_FLEET),
        nats_auth.grants_for({name: scopes[name] for name in PARITY_MEMBERS}, PARITY_LINKS),
        rounds=4,  # the cheapest cost: a login checks the hash
    )
    server = NatsServer(
        directory, name="parity", domain="parity", include=[credentials.authorization],
        binary=binary,
    )  # fmt: skip
    return server, credentials


@contextlib.asynccontextmanager
async def nats_fabric(directory: Path) -> AsyncIterator[Fabric]:
    server, credentials = nats_server_or_skip(directory)
    with server:
        fabric = NatsFabric(server.url, credentials)
        try:
            yield fabric
        finally:
            await fabric.aclose()
            await fabric.close()


FABRICS: dict[str, FabricFactory] = {
    "memory": memory_fabric,
    "tcp": tcp_fabric,
    "tcp+tls": tls_fabric(mutual=False),
    "tcp+mtls": tls_fabric(mutual=True),
    "spool": spool_fabric,
    "bundle": bundle_fabric,
    "nats": nats_fabric,
}


def scenario_over(name: str, directory: Path) -> ParityOutcome:
    async def scenario() -> ParityOutcome:
        async with FABRICS[name](directory) as fabric:
            return await run_parity_scenario(fabric, seed=SEED)

    return run(scenario())


# --------------------------------------------------------------------------- tests


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> ParityOutcome:
    """The scenario over the in-memory network: what every transport must reproduce."""
    return scenario_over("memory", tmp_path_factory.mktemp("memory"))


@pytest.mark.parametrize("transport", list(FABRICS))
def test_every_transport_ends_in_the_same_digests(
    transport: str, reference: ParityOutcome, tmp_path: Path
) -> None:
    outcome = scenario_over(transport, tmp_path)
    assert set(outcome.digests) == set(PARITY_MEMBERS)
    assert outcome.values == reference.values
    assert outcome.conflicts == reference.conflicts
    assert outcome.digests == reference.digests


def test_the_scenario_exercises_conflicts_and_overrides(reference: ParityOutcome) -> None:
    # The region's override of the edge's policy beats the edge's concurrent write (the edge
    # is conditional: a higher authority wins after reconnecting), and was audited.
    assert reference.values["window"] == "03:00"
    assert all(count >= 1 for count in reference.conflicts.values())
    assert reference.values["agent"].startswith("1.")


def test_another_seed_ends_elsewhere_but_the_same_over_two_transports(tmp_path: Path) -> None:
    async def over(name: str, directory: Path) -> ParityOutcome:
        async with FABRICS[name](directory) as fabric:
            return await run_parity_scenario(fabric, seed=SEED + 1)

    memory = run(over("memory", tmp_path / "m"))
    (tmp_path / "b").mkdir()
    bundle = run(over("bundle", tmp_path / "b"))
    assert memory.digests == bundle.digests
    seven = scenario_over("bundle", tmp_path)
    assert seven.digests != memory.digests
