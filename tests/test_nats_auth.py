"""nats-server's own authorization: each plane may use only its own subjects.

Real servers (hub, and a leaf behind a pausable proxy) with the ``authorization`` block written
by :func:`~souverix_crdt.transports.nats_auth.write_fleet_credentials`. The attacks are made by
a zone (``edge-a2``) against its sibling (``edge-a1``): reading the sibling's session frames,
sending frames as another plane, logging in with a wrong password, reading the sibling's share
of the envelope log. Every attack also runs against a fleet whose attacker was granted
everything (``>``), where it must succeed: that is what shows each test would catch the
permission's removal.
"""

from __future__ import annotations

import asyncio
import stat
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("nats", reason="nats-py is not installed (pip install -e '.[test]')")
pytest.importorskip("bcrypt", reason="bcrypt is not installed (pip install -e '.[test]')")

import nats
import nats.errors
from click.testing import CliRunner
from nats.aio.client import Client
from nats.aio.msg import Msg

from souverix_crdt.cli import cli
from souverix_crdt.errors import ConfigError, TransportError
from souverix_crdt.plane.backoff import Backoff
from souverix_crdt.plane.peer import PeerConfig, PeerLink, PeerProcess, parse_peer_config
from souverix_crdt.testing.nats_server import (
    NatsServer,
    TcpProxy,
    nats_server_binary,
    poll_until,
)
from souverix_crdt.transports.nats import (
    NatsEnvelopeLog,
    NatsInbox,
    NatsOutbox,
    NatsRelay,
    NatsTransport,
    Subjects,
)
from souverix_crdt.transports.nats_auth import (
    OPERATOR_USER,
    FleetCredentials,
    Permissions,
    grants_for,
    inbox_prefix,
    plane_permissions,
    provision_inbox,
    write_fleet_credentials,
)

TOPOLOGY = Path(__file__).resolve().parents[1] / "examples" / "tcp-peers" / "topology.yaml"
FLEET = "auth-fleet"
SUBJECTS = Subjects(FLEET)
PLANES = {
    "global": "global",
    "region-a": "global/region-a",
    "edge-a1": "global/region-a/edge-a1",
    "edge-a2": "global/region-a/edge-a2",
}
LINKS = [("region-a", "global"), ("edge-a1", "region-a"), ("edge-a2", "region-a")]
#: The cheapest bcrypt cost: every login checks a hash, and tests log in often.
ROUNDS = 4
GUARD = 20.0
#: Everything: what the attacker gets in the control runs.
EVERYTHING = Permissions(publish=(">",), subscribe=(">",))


def run(coroutine: Coroutine[Any, Any, None]) -> None:
    async def guarded() -> None:
        async with asyncio.timeout(GUARD):
            await coroutine

    asyncio.run(guarded())


class AuthTopology:
    """Hub and leaf with the fleet's authorization on; the leaf link logs in too."""

    def __init__(self, directory: Path, binary: Path, *, widen: str | None = None) -> None:
        grants = grants_for(PLANES, LINKS)
        self.credentials: FleetCredentials = write_fleet_credentials(
            directory / "auth",
            SUBJECTS,
            grants,
            leaves={"leaf": []},
            rounds=ROUNDS,
            permissions={widen: EVERYTHING} if widen else None,
        )
        creds = self.credentials
        self.hub = NatsServer(
            directory,
            name="hub",
            domain="hub",
            leafnode_listen=True,
            include=[creds.authorization],
            leafnode_include=[creds.leafnodes_authorization],
            binary=binary,
        )
        self.proxy: TcpProxy | None = None
        self.leaf: NatsServer | None = None
        try:
            self.hub.start()
            self.proxy = TcpProxy(self.hub.leafnode_port).start()
            self.leaf = NatsServer(
                directory,
                name="leaf",
                domain="leaf",
                leaf_remotes=[creds.leaf_url("leaf", f"127.0.0.1:{self.proxy.port}")],
                include=[creds.authorization],
                binary=binary,
            ).start()
            self.hub.wait_for_leaf_connections(1)
            self.leaf.wait_for_leaf_connections(1)
        except BaseException:
            self.stop()
            raise

    async def connect(
        self, server: NatsServer, user: str, *, errors: list[str] | None = None
    ) -> Client:
        """``user``'s connection, as a plane makes it (its password, its inbox prefix)."""

        async def on_error(error: Exception) -> None:
            if errors is not None:
                errors.append(str(error))

        return await nats.connect(
            server.url,
            user=user,
            password=self.credentials.password(user),
            inbox_prefix=inbox_prefix(user),
            error_cb=on_error,
            allow_reconnect=False,
        )

    def stop(self) -> None:
        for item in (self.leaf, self.proxy, self.hub):
            if item is not None:
                item.stop()


@pytest.fixture(scope="session")
def server_binary() -> Path:
    try:
        return nats_server_binary()
    except FileNotFoundError as exc:
        pytest.skip(f"nats-server is not installed: {exc}")


def topology(tmp_path: Path, binary: Path, widen: str | None = None) -> AuthTopology:
    return AuthTopology(tmp_path / (f"wide-{widen}" if widen else "tight"), binary, widen=widen)


@pytest.fixture
def fleet(tmp_path: Path, server_binary: Path) -> Iterator[AuthTopology]:
    topo = topology(tmp_path, server_binary)
    try:
        yield topo
    finally:
        topo.stop()


@pytest.fixture
def open_fleet(tmp_path: Path, server_binary: Path) -> Iterator[AuthTopology]:
    """The same fleet, except that the attacker edge-a2 may do everything."""
    topo = topology(tmp_path, server_binary, widen="edge-a2")
    try:
        yield topo
    finally:
        topo.stop()


async def settle(*connections: Client) -> None:
    """Every command written so far on each connection reached its server (PING/PONG)."""
    for connection in connections:
        for _ in range(2):
            await connection.flush(timeout=5)


# --------------------------------------------------------------------------- credentials


def test_passwords_are_random_hashed_in_the_config_and_owner_only(
    tmp_path: Path,
) -> None:
    grants = grants_for(PLANES, LINKS)
    creds = write_fleet_credentials(tmp_path, SUBJECTS, grants, leaves={"a1": []}, rounds=ROUNDS)
    config = creds.authorization.read_text()
    passwords = {user: creds.password(user) for user in creds.password_files}
    assert set(passwords) == {*PLANES, OPERATOR_USER, "leaf-a1"}
    assert len(set(passwords.values())) == len(passwords)
    for user, password in passwords.items():
        assert len(password) >= 43  # 256 bits, URL-safe base64
        assert password not in config
        assert password not in creds.leafnodes_authorization.read_text()
        assert stat.S_IMODE(creds.password_files[user].stat().st_mode) == 0o600
    assert config.count('password: "$2b$04$') == len(PLANES) + 1
    again = write_fleet_credentials(tmp_path, SUBJECTS, grants, rounds=ROUNDS)
    assert again.password("edge-a1") != passwords["edge-a1"]  # a new run rotates


def test_each_plane_is_granted_only_its_own_subjects() -> None:
    grants = {grant.plane: grant for grant in grants_for(PLANES, LINKS)}
    edge = plane_permissions(SUBJECTS, grants["edge-a1"])
    prefix = SUBJECTS.prefix
    assert f"{prefix}.sync.edge-a1.region-a" in edge.publish
    assert not any(".sync.edge-a2" in subject for subject in edge.publish)
    assert not any(subject.endswith(".>") and ".sync." in subject for subject in edge.publish)
    assert edge.subscribe == (f"{prefix}.sync.region-a.edge-a1", "_INBOX.edge-a1.>")
    assert f"{prefix}.env.global.region-a.edge-a1.>" in edge.publish
    assert not any("STREAM.CREATE.souverix-auth-fleet-envelopes" in s for s in edge.publish)
    assert not any("CONSUMER.CREATE.souverix-auth-fleet-envelopes" in s for s in edge.publish)
    region = plane_permissions(SUBJECTS, grants["region-a"])
    assert {f"{prefix}.sync.region-a.edge-a1", f"{prefix}.sync.region-a.edge-a2"} <= set(
        region.publish
    )
    with pytest.raises(ValueError, match="not in the fleet"):
        grants_for(PLANES, [("edge-a1", "region-b")])


# --------------------------------------------------------------------------- attacks


async def eavesdrop(topo: AuthTopology) -> tuple[list[bytes], list[str]]:
    """edge-a2 subscribes to edge-a1's session subjects; region-a then talks to edge-a1."""
    assert topo.leaf is not None
    errors: list[str] = []
    attacker = await topo.connect(topo.leaf, "edge-a2", errors=errors)
    region = await topo.connect(topo.hub, "region-a")
    victim = await topo.connect(topo.leaf, "edge-a1")
    stolen: list[bytes] = []

    async def steal(message: Msg) -> None:
        stolen.append(message.data)

    try:
        for pattern in (SUBJECTS.sync("*", "edge-a1"), SUBJECTS.sync("edge-a1", "*")):
            await attacker.subscribe(pattern.replace("%2A", "*"), cb=steal)
        await settle(attacker)
        edge_end = await NatsTransport.open(victim, SUBJECTS, local="edge-a1", peer="region-a")
        region_end = await NatsTransport.open(region, SUBJECTS, local="region-a", peer="edge-a1")

        async def crossed() -> bytes:
            # Interest crosses the leaf link a moment after the subscription: re-send until
            # the victim hears (core NATS drops what nobody is known to listen to yet).
            for _ in range(200):
                await region_end.send(b"secret frame")
                try:
                    async with asyncio.timeout(0.05):
                        return await edge_end.receive()
                except TimeoutError:
                    continue
            raise AssertionError("edge-a1 never heard region-a")

        assert await crossed() == b"secret frame"
        await edge_end.send(b"secret reply")
        await region_end.receive()
        await settle(attacker, region, victim)
        await edge_end.close()
        await region_end.close()
    finally:
        for connection in (attacker, region, victim):
            await connection.close()
    return stolen, errors


def test_a_zone_cannot_read_a_siblings_session_frames(fleet: AuthTopology) -> None:
    async def scenario() -> None:
        stolen, errors = await eavesdrop(fleet)
        assert stolen == []
        assert sum("permissions violation for subscription" in e for e in errors) == 2

    run(scenario())


def test_control_an_attacker_granted_everything_reads_them(open_fleet: AuthTopology) -> None:
    async def scenario() -> None:
        stolen, errors = await eavesdrop(open_fleet)
        assert b"secret frame" in stolen
        assert b"secret reply" in stolen
        assert errors == []

    run(scenario())


async def impersonate(topo: AuthTopology) -> tuple[list[bytes], list[str]]:
    """edge-a2 sends frames to edge-a1 as region-a, then region-a sends one for real."""
    assert topo.leaf is not None
    errors: list[str] = []
    attacker = await topo.connect(topo.leaf, "edge-a2", errors=errors)
    region = await topo.connect(topo.leaf, "region-a")  # on the leaf too: no link to wait for
    victim = await topo.connect(topo.leaf, "edge-a1")
    try:
        edge_end = await NatsTransport.open(victim, SUBJECTS, local="edge-a1", peer="region-a")
        await attacker.publish(SUBJECTS.sync("region-a", "edge-a1"), b"forged")
        await attacker.publish(SUBJECTS.sync("global", "region-a"), b"forged upward")
        await settle(attacker)
        region_end = await NatsTransport.open(region, SUBJECTS, local="region-a", peer="edge-a1")
        await region_end.send(b"genuine")
        received = [await edge_end.receive()]
        if received[0] != b"genuine":
            received.append(await edge_end.receive())
        await edge_end.close()
        await region_end.close()
    finally:
        for connection in (attacker, region, victim):
            await connection.close()
    return received, errors


def test_a_zone_cannot_send_as_another_plane(fleet: AuthTopology) -> None:
    async def scenario() -> None:
        received, errors = await impersonate(fleet)
        assert received == [b"genuine"]
        assert sum("permissions violation for publish" in e for e in errors) == 2

    run(scenario())


def test_control_an_attacker_granted_everything_forges_frames(open_fleet: AuthTopology) -> None:
    async def scenario() -> None:
        received, errors = await impersonate(open_fleet)
        assert received == [b"forged", b"genuine"]
        assert errors == []

    run(scenario())


async def refused_login(url: str, **login: str) -> str:
    """Log in; return the refusal (the client is closed either way)."""
    client = Client()
    try:
        await client.connect(url, allow_reconnect=False, **login)  # type: ignore[arg-type]
    except nats.errors.Error as exc:
        return str(exc)
    finally:
        await client.close()  # a refused connect leaves its socket open otherwise
    return ""


def test_a_wrong_password_and_no_password_are_refused(fleet: AuthTopology) -> None:
    async def scenario() -> None:
        assert fleet.leaf is not None
        for server in (fleet.hub, fleet.leaf):
            for login in ({"user": "edge-a1", "password": "guess"}, {}):
                assert (
                    "authorization violation" in (await refused_login(server.url, **login)).lower()
                )
        # Another plane's password is no better; the right one is let in.
        other = fleet.credentials.password("edge-a2")
        refusal = await refused_login(fleet.hub.url, user="edge-a1", password=other)
        assert "authorization violation" in refusal.lower()
        right = fleet.credentials.password("edge-a1")
        assert await refused_login(fleet.hub.url, user="edge-a1", password=right) == ""

    run(scenario())


def test_a_leaf_with_a_wrong_password_is_not_linked(
    tmp_path: Path, fleet: AuthTopology, server_binary: Path
) -> None:
    rogue = NatsServer(
        tmp_path / "rogue",
        name="rogue",
        domain="rogue",
        leaf_remotes=[f"nats-leaf://leaf-leaf:guess@127.0.0.1:{fleet.hub.leafnode_port}"],
        binary=server_binary,
    ).start()
    try:
        # The rogue is healthy but refused; the genuine leaf stays the only link.
        poll_until(
            lambda: (
                "Leafnode connection closed: Authentication Failure"
                in fleet.hub.log_path.read_text()
            ),
            what="the hub refusing the rogue leaf",
        )
        assert fleet.hub.leaf_connections() == 1
        assert rogue.leaf_connections() == 0
    finally:
        rogue.stop()


async def read_siblings_log(topo: AuthTopology) -> tuple[list[bytes], str]:
    """edge-a2 reads the envelope log through edge-a1's consumer, then through its own."""
    assert topo.leaf is not None
    operator = await topo.connect(topo.hub, OPERATOR_USER)
    attacker = await topo.connect(topo.leaf, "edge-a2")
    read: list[bytes] = []
    refusal = ""
    try:
        log = await NatsEnvelopeLog.open(operator, SUBJECTS, domain="hub", max_bytes=1 << 20)
        await log.publish(b"edge-a1 only", "global/region-a/edge-a1")
        await provision_inbox(operator, SUBJECTS, plane="edge-a1", interest=PLANES["edge-a1"])
        stolen = NatsInbox(
            attacker, SUBJECTS, durable="edge-a1", interest=PLANES["edge-a2"], domain="hub",
            fetch_timeout=0.5, timeout=1.0,
        )  # fmt: skip
        try:
            await stolen.deliver(read.extend)
        except TransportError as exc:
            refusal = str(exc)
        finally:
            await stolen.close()
    finally:
        await attacker.close()
        await operator.close()
    return read, refusal


def test_a_zone_cannot_read_the_log_through_a_siblings_consumer(fleet: AuthTopology) -> None:
    async def scenario() -> None:
        read, refusal = await read_siblings_log(fleet)
        assert read == []
        assert refusal  # the consumer's info request has no responder it may reach

    run(scenario())


def test_control_an_attacker_granted_everything_reads_the_log(open_fleet: AuthTopology) -> None:
    async def scenario() -> None:
        read, refusal = await read_siblings_log(open_fleet)
        assert read == [b"edge-a1 only"]
        assert refusal == ""

    run(scenario())


# --------------------------------------------------------------------------- honest use


def test_store_and_forward_through_the_leaf_works_with_each_planes_own_login(
    fleet: AuthTopology,
) -> None:
    """The edge's outbox, its relay, the log and both inboxes, each plane as itself."""
    assert fleet.leaf is not None
    leaf, hub = fleet.leaf, fleet.hub

    async def scenario() -> None:
        operator = await fleet.connect(hub, OPERATOR_USER)
        edge = await fleet.connect(leaf, "edge-a1")
        region = await fleet.connect(hub, "region-a")
        closables: list[NatsRelay | NatsInbox] = []
        try:
            # Provisioning, as the operator: the log and each reader's consumer.
            await NatsEnvelopeLog.open(operator, SUBJECTS, domain="hub", max_bytes=1 << 20)
            for plane in ("edge-a1", "region-a"):
                await provision_inbox(
                    operator, SUBJECTS, plane=plane, interest=PLANES[plane], domain="hub"
                )
            # The edge creates its own outbox on its leaf and relays it (through the leaf link).
            outbox = await NatsOutbox.open(
                edge, SUBJECTS, origin="edge-a1", domain="leaf", max_bytes=1 << 20
            )
            for i in range(3):
                await outbox.publish(f"edge-{i}".encode(), PLANES["edge-a1"])
            relay = NatsRelay(outbox, edge, fetch_timeout=0.1)
            closables.append(relay)
            # The region publishes into the log directly: its own scope and one below it.
            log = NatsEnvelopeLog(region, SUBJECTS, domain="hub")
            await log.publish(b"region", PLANES["region-a"])
            await log.publish(b"for edge-a1", PLANES["edge-a1"])
            await log.publish(b"for edge-a2", PLANES["edge-a2"])
            region_inbox = NatsInbox(
                region, SUBJECTS, durable="region-a", interest=PLANES["region-a"], domain="hub",
                fetch_timeout=0.1,
            )  # fmt: skip
            edge_inbox = NatsInbox(
                edge, SUBJECTS, durable="edge-a1", interest=PLANES["edge-a1"], domain="hub",
                fetch_timeout=0.1,
            )  # fmt: skip
            closables += [region_inbox, edge_inbox]
            region_got: list[bytes] = []
            edge_got: list[bytes] = []
            for _ in range(100):
                if len(region_got) == 6 and len(edge_got) == 5:
                    break
                try:
                    await relay.relay_once()
                    await region_inbox.deliver(region_got.extend)
                    await edge_inbox.deliver(edge_got.extend)
                except TransportError:
                    continue  # the leaf link's interest is still settling
            assert sorted(region_got) == sorted(
                [b"region", b"for edge-a1", b"for edge-a2", b"edge-0", b"edge-1", b"edge-2"]
            )
            assert sorted(edge_got) == sorted(
                [b"region", b"for edge-a1", b"edge-0", b"edge-1", b"edge-2"]
            )
            assert relay.stats.relayed == 3
            assert (await log.state()).messages == 6  # STREAM.INFO of the log is granted
        finally:
            for closable in closables:
                await closable.close()
            for connection in (region, edge, operator):
                await connection.close()

    run(scenario())


# --------------------------------------------------------------------------- peer processes

BASE = "plane: edge-a1\nkeys: k\nstore: s\ntransport: nats\n"


def test_a_peer_config_names_its_nats_user_and_password_file(tmp_path: Path) -> None:
    text = BASE + "nats: {url: 'nats://127.0.0.1:4243', user: edge-a1, password_file: a/e.pw}\n"
    config = parse_peer_config(text, file="peer.yaml", base=tmp_path)
    assert (config.nats_url, config.nats_user) == ("nats://127.0.0.1:4243", "edge-a1")
    assert config.nats_password_file == tmp_path / "a" / "e.pw"
    plain = parse_peer_config(BASE + "nats: nats://127.0.0.1:4243\n", file="peer.yaml")
    assert (plain.nats_user, plain.nats_password_file) == (None, None)


@pytest.mark.parametrize(
    ("nats_field", "field", "detail"),
    [
        ("{user: e, password_file: p}", "nats.url", "missing"),
        ("{url: 'nats://h:1', user: e}", "nats.password_file", "missing"),
        ("{url: 'nats://h:1', password_file: p}", "nats.user", "missing"),
        ("{url: 'nats://h:1', user: e, password: hunter2}", "nats.password", "unknown field"),
        ("{url: 'http://h:1'}", "nats.url", "nats:// URL"),
        ("'nats://e:hunter2@h:1'", "nats", "no credentials in the URL"),
        ("{url: 'nats://h:1', user: '', password_file: p}", "nats.user", "non-empty"),
    ],
)
def test_nats_login_errors_name_the_field(nats_field: str, field: str, detail: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_peer_config(BASE + f"nats: {nats_field}\n", file="peer.yaml")
    assert caught.value.field == field
    assert detail in str(caught.value)


@pytest.fixture
def single(tmp_path: Path, server_binary: Path) -> Iterator[tuple[NatsServer, Path, Path]]:
    """One server with the example fleet's users, its auth directory and a key directory."""
    keys = tmp_path / "keys"
    result = CliRunner().invoke(
        cli, ["keys", "init", str(TOPOLOGY), "--out", str(keys), "--seed", "auth"]
    )
    assert result.exit_code == 0, result.output
    auth = tmp_path / "auth"
    result = CliRunner().invoke(
        cli, ["nats", "credentials", str(TOPOLOGY), "--out", str(auth), "--rounds", "4"]
    )
    assert result.exit_code == 0, result.output
    with NatsServer(
        tmp_path / "server",
        name="single",
        domain="single",
        include=[auth / "authorization.conf"],
        binary=server_binary,
    ) as server:
        yield server, auth, keys


def edge_config(server: NatsServer, keys: Path, password_file: Path, peer: str) -> PeerConfig:
    return PeerConfig(
        plane="edge-a1",
        keys=keys,
        store=keys.parent / "edge.sqlite3",
        transport="nats",
        nats_url=server.url,
        nats_user="edge-a1",
        nats_password_file=password_file,
        upstream=PeerLink(name=peer),
        retry=Backoff(initial=0.01, maximum=0.05),
    )


def test_a_refused_login_stops_the_peer_with_a_clear_error(
    single: tuple[NatsServer, Path, Path],
) -> None:
    server, auth, keys = single
    wrong = keys.parent / "wrong.password"
    wrong.write_text("not-the-password\n")
    lines: list[str] = []

    async def scenario() -> None:
        process = PeerProcess(edge_config(server, keys, wrong, "region-a"), log=lines.append)
        with pytest.raises(TransportError) as caught:
            await process.start()  # refused at once, not retried forever
        assert caught.value.reason == "unauthorized"
        assert "edge-a1" in str(caught.value)
        assert str(wrong) in str(caught.value)
        missing = PeerProcess(edge_config(server, keys, auth / "nobody.password", "region-a"))
        with pytest.raises(ConfigError) as config_error:
            await missing.start()
        assert config_error.value.field == "nats.password_file"

    run(scenario())


def test_a_refused_subscription_is_logged(single: tuple[NatsServer, Path, Path]) -> None:
    """A plane configured with a peer it has no grant for is told so in its log."""
    server, auth, keys = single
    lines: list[str] = []

    async def scenario() -> None:
        # edge-a1 may only talk to region-a: a session with global is refused by the server.
        config = edge_config(server, keys, auth / "edge-a1.password", "global")
        process = PeerProcess(config, log=lines.append)
        await process.start()
        try:
            for _ in range(500):
                if any("refused:" in line and "violation" in line for line in lines):
                    break
                await asyncio.sleep(0.01)
        finally:
            await process.stop()
        assert any("connected to NATS" in line and "as edge-a1" in line for line in lines)
        refused = [line for line in lines if "NATS server" in line and "refused:" in line]
        assert refused, lines
        assert "souverix.souverix-example.sync.global.edge-a1" in refused[0]

    run(scenario())
