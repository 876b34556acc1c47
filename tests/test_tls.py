"""TLS and mutual TLS for TCP sessions: the fleet CA, plane certificates, contexts, peer configs.

The connection tests run real sync sessions between replicas over a real
:class:`~souverix_crdt.transports.tcp.TcpServer` on 127.0.0.1, through the parity scenario's
:class:`~souverix_crdt.testing.parity.SessionFabric`. Each attack is performed the way an
attacker would (no certificate, a certificate from another CA, a server certificate of another
plane, plain TCP, TLS 1.2, a certificate of one plane with the session key of another) and must
leave the server's replica without the attacker's write.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import ssl
import stat
import time
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from souverix_crdt.cli import cli
from souverix_crdt.errors import ConfigError, KeyFileError, TransportBrokenError
from souverix_crdt.plane.peer import (
    PeerConfig,
    PeerLink,
    PeerProcess,
    PeerTls,
    parse_peer_config,
    tls_contexts,
)
from souverix_crdt.replica import Replica
from souverix_crdt.testing.fleet import make_fleet
from souverix_crdt.testing.parity import SessionFabric, make_parity_replicas
from souverix_crdt.transports import tcp
from souverix_crdt.transports.base import Transport
from souverix_crdt.transports.tls import (
    CA_KEY_FILE,
    FleetCa,
    TlsFiles,
    certificate_plane_name,
    check_key_pair,
    client_context,
    create_fleet_ca,
    key_directory_files,
    load_ca,
    load_certificate,
    load_private_key,
    save_ca,
    save_plane_certificate,
    server_context,
    update_key_directory,
)

LOOPBACK = "127.0.0.1"
PLANES = ("global", "region-a", "edge-a1")
REGION = "global/region-a"
TOPOLOGY = Path(__file__).resolve().parents[1] / "examples" / "tcp-peers" / "topology.yaml"
GUARD = 30.0


def run(scenario: Coroutine[Any, Any, Any]) -> Any:
    async def guarded() -> Any:
        async with asyncio.timeout(GUARD):
            return await scenario

    return asyncio.run(guarded())


@pytest.fixture
def fleet_tls(tmp_path: Path) -> Callable[[str], TlsFiles]:
    """A key directory's TLS material for the three planes; returns each plane's files."""
    update_key_directory(tmp_path / "keys", "souverix-test", PLANES)
    return lambda plane: key_directory_files(tmp_path / "keys", plane)


@pytest.fixture
def other_ca(tmp_path: Path) -> Callable[[str], TlsFiles]:
    """Another CA, with certificates for the same plane names: an attacker's own PKI."""
    update_key_directory(tmp_path / "other", "souverix-test", PLANES)
    return lambda plane: key_directory_files(tmp_path / "other", plane)


# --------------------------------------------------------------------------- certificates


def test_the_fleet_ca_is_a_p256_ca_that_signs_only_end_certificates() -> None:
    ca = create_fleet_ca("fleet-x")
    certificate = ca.certificate
    assert isinstance(certificate.public_key(), ec.EllipticCurvePublicKey)
    assert isinstance(certificate.public_key().curve, ec.SECP256R1)
    assert certificate.issuer == certificate.subject
    certificate.verify_directly_issued_by(certificate)
    constraints = certificate.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical
    assert constraints.value.ca
    assert constraints.value.path_length == 0
    usage = certificate.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_cert_sign
    assert not usage.digital_signature
    assert "fleet-x" in certificate.subject.rfc4514_string()


def test_a_plane_certificate_names_the_plane_serves_and_dials_and_is_bounded() -> None:
    now = datetime.datetime.now(datetime.UTC)
    ca = create_fleet_ca("fleet-x", now=now, validity_days=30)
    plane = ca.issue("region-a", hosts=["localhost", "127.0.0.1"], now=now, validity_days=365)
    certificate = plane.certificate
    certificate.verify_directly_issued_by(ca.certificate)
    names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["region-a", "localhost"]
    assert names.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    usage = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(usage) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert not certificate.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    # Cut to the CA's own window; starts a little before now for clocks behind ours.
    assert certificate.not_valid_after_utc == ca.certificate.not_valid_after_utc
    assert certificate.not_valid_before_utc < now
    assert ca.issue("region-a").certificate.serial_number != certificate.serial_number
    assert "key" not in repr(plane).replace("PlaneCertificate", "")


def test_issuing_without_the_ca_key_is_a_typed_error() -> None:
    offline = FleetCa(create_fleet_ca("fleet-x").certificate)
    with pytest.raises(KeyFileError) as caught:
        offline.issue("region-a")
    assert caught.value.reason == "missing"
    assert caught.value.path == CA_KEY_FILE


def test_files_round_trip_and_private_keys_are_0600(tmp_path: Path) -> None:
    ca = create_fleet_ca("fleet-x")
    save_ca(ca, tmp_path / "ca.pem", tmp_path / "ca.key")
    plane = ca.issue("edge-a1")
    save_plane_certificate(plane, tmp_path / "edge-a1.pem", tmp_path / "edge-a1.key")
    for name in ("ca.key", "edge-a1.key"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o600
    loaded = load_ca(tmp_path / "ca.pem", tmp_path / "ca.key")
    assert loaded.certificate == ca.certificate
    assert loaded.key is not None
    assert load_ca(tmp_path / "ca.pem").key is None
    assert check_key_pair(tmp_path / "edge-a1.pem", tmp_path / "edge-a1.key") == plane.certificate


def test_a_private_key_readable_by_others_is_refused(tmp_path: Path) -> None:
    plane = create_fleet_ca("fleet-x").issue("edge-a1")
    save_plane_certificate(plane, tmp_path / "edge-a1.pem", tmp_path / "edge-a1.key")
    (tmp_path / "edge-a1.key").chmod(0o644)
    with pytest.raises(KeyFileError) as caught:
        load_private_key(tmp_path / "edge-a1.key")
    assert caught.value.reason == "permissions"


@pytest.mark.parametrize(
    ("content", "reason"),
    [(None, "missing"), (b"not pem", "format"), (b"-----BEGIN CERTIFICATE-----\n", "format")],
)
def test_bad_certificate_files_are_typed(
    tmp_path: Path, content: bytes | None, reason: str
) -> None:
    path = tmp_path / "x.pem"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(KeyFileError) as caught:
        load_certificate(path)
    assert caught.value.reason == reason


def test_a_key_of_another_certificate_is_a_mismatch(fleet_tls: Callable[[str], TlsFiles]) -> None:
    with pytest.raises(KeyFileError) as caught:
        check_key_pair(fleet_tls("global").cert, fleet_tls("edge-a1").key)
    assert caught.value.reason == "mismatch"
    with pytest.raises(KeyFileError):
        server_context(cert=fleet_tls("global").cert, key=fleet_tls("edge-a1").key)


def test_update_key_directory_issues_only_what_is_missing(tmp_path: Path) -> None:
    first = update_key_directory(tmp_path, "f", ["a", "b"])
    assert first.created_ca
    assert first.issued == ("a", "b")
    before = load_certificate(key_directory_files(tmp_path, "a").cert)
    again = update_key_directory(tmp_path, "f", ["a", "b", "c"], renew=["b"])
    assert not again.created_ca
    assert again.issued == ("b", "c")
    assert load_certificate(key_directory_files(tmp_path, "a").cert) == before
    (tmp_path / CA_KEY_FILE).unlink()
    offline = update_key_directory(tmp_path, "f", ["a", "b", "c", "d"])
    assert offline.unissued == ("d",)
    assert not key_directory_files(tmp_path, "d").cert.exists()


def test_certificate_plane_name_needs_the_name_in_both_places() -> None:
    def peercert(common: str, *dns: str) -> dict[str, Any]:
        return {
            "subject": ((("commonName", common),),),
            "subjectAltName": tuple(("DNS", name) for name in dns),
        }

    assert certificate_plane_name(peercert("edge-a1", "edge-a1", "localhost")) == "edge-a1"
    assert certificate_plane_name(peercert("edge-a1", "global")) is None
    assert certificate_plane_name({}) is None
    assert certificate_plane_name(None) is None


# --------------------------------------------------------------------------- connections


class TlsFabric(SessionFabric):
    """Sessions over TCP on 127.0.0.1 with TLS contexts chosen per test.

    ``server`` gives the upper plane's server context; ``client`` the lower plane's client
    context and the name it dials (``server_hostname``). ``served`` counts the connections
    whose handler ran: a refused TLS handshake never reaches it.
    """

    def __init__(
        self,
        server: Callable[[str], ssl.SSLContext | None],
        client: Callable[[str], ssl.SSLContext | None],
        *,
        hostname: Callable[[str], str] = lambda upper: upper,
    ) -> None:
        super().__init__()
        self.server_for = server
        self.client_for = client
        self.hostname = hostname
        self.servers: dict[str, tcp.TcpServer] = {}
        self.served: list[tcp.TcpTransport] = []
        self.dialled: list[tcp.TcpTransport] = []

    async def open(self, lower: Replica, upper: Replica) -> Transport:
        server = self.servers.get(upper.name)
        if server is None:

            async def handler(transport: tcp.TcpTransport) -> None:
                self.served.append(transport)
                from souverix_crdt.sync.driver import run_session  # noqa: PLC0415
                from souverix_crdt.sync.session import SyncSession  # noqa: PLC0415

                await run_session(SyncSession(upper), transport)

            server = self.servers[upper.name] = await tcp.TcpServer.start(
                LOOPBACK, 0, handler=handler, ssl=self.server_for(upper.name)
            )
        context = self.client_for(lower.name)
        transport = await tcp.connect(
            LOOPBACK,
            server.port,
            peer=upper.name,
            ssl=context,
            server_hostname=self.hostname(upper.name) if context is not None else None,
        )
        self.dialled.append(transport)
        return transport

    async def close(self) -> None:
        for server in self.servers.values():
            await server.close()


def mutual_server(files: Callable[[str], TlsFiles]) -> Callable[[str], ssl.SSLContext]:
    return lambda plane: server_context(
        cert=files(plane).cert, key=files(plane).key, ca=files(plane).ca
    )


def mutual_client(files: Callable[[str], TlsFiles]) -> Callable[[str], ssl.SSLContext]:
    return lambda plane: client_context(
        ca=files(plane).ca, cert=files(plane).cert, key=files(plane).key
    )


@pytest.fixture
def replicas() -> Iterator[dict[str, Replica]]:
    made = make_parity_replicas(make_fleet(), lambda: 1_700_000_000_000)
    try:
        yield made
    finally:
        for replica in made.values():
            replica.close()


def attempt(fabric: TlsFabric, replicas: dict[str, Replica]) -> Exception | None:
    """region-a writes and syncs to global over ``fabric``; the error it met, if any."""
    replicas["region-a"].scope(REGION).policies.set("window", "sat")

    async def scenario() -> Exception | None:
        try:
            await fabric.sync(replicas["region-a"], replicas["global"])
        except (RuntimeError, TransportBrokenError) as exc:
            return exc
        finally:
            await fabric.aclose()
            await fabric.close()
        return None

    result: Exception | None = run(scenario())
    return result


def test_mutual_tls_syncs_and_each_side_sees_the_others_plane(
    fleet_tls: Callable[[str], TlsFiles], replicas: dict[str, Replica]
) -> None:
    fabric = TlsFabric(mutual_server(fleet_tls), mutual_client(fleet_tls))
    assert attempt(fabric, replicas) is None
    assert replicas["global"].get(REGION, "policies", "window") == "sat"
    (served,) = fabric.served
    (dialled,) = fabric.dialled
    assert served.peer_certificate_name == "region-a"
    assert dialled.peer_certificate_name == "global"
    assert "tls" in repr(dialled)


def test_one_way_tls_syncs_and_the_client_stays_anonymous(
    fleet_tls: Callable[[str], TlsFiles], replicas: dict[str, Replica]
) -> None:
    fabric = TlsFabric(
        lambda plane: server_context(cert=fleet_tls(plane).cert, key=fleet_tls(plane).key),
        lambda plane: client_context(ca=fleet_tls(plane).ca),
    )
    assert attempt(fabric, replicas) is None
    assert replicas["global"].get(REGION, "policies", "window") == "sat"
    assert fabric.served[0].tls
    assert fabric.served[0].peer_certificate_name is None


def refused(fabric: TlsFabric, replicas: dict[str, Replica]) -> Exception:
    error = attempt(fabric, replicas)
    assert error is not None, "the attacker's session went through"
    assert fabric.served == [], "the server ran a session for the attacker"
    assert replicas["global"].get(REGION, "policies", "window", None) is None
    # The coordinator reports a failed sync; the transport's error is its cause.
    cause = error.__cause__ if isinstance(error, RuntimeError) else error
    assert isinstance(cause, Exception)
    return cause


def test_mutual_tls_refuses_a_client_without_a_certificate(
    fleet_tls: Callable[[str], TlsFiles], replicas: dict[str, Replica]
) -> None:
    # In TLS 1.3 the client finishes its side of the handshake first; the server's refusal
    # arrives as the connection's end, before the server ran any session.
    fabric = TlsFabric(
        mutual_server(fleet_tls), lambda plane: client_context(ca=fleet_tls(plane).ca)
    )
    refused(fabric, replicas)


def test_mutual_tls_refuses_a_client_certificate_from_another_ca(
    fleet_tls: Callable[[str], TlsFiles],
    other_ca: Callable[[str], TlsFiles],
    replicas: dict[str, Replica],
) -> None:
    # The attacker's certificate names region-a, and trusts the real fleet CA for the server.
    fabric = TlsFabric(
        mutual_server(fleet_tls),
        lambda plane: client_context(
            ca=fleet_tls(plane).ca, cert=other_ca(plane).cert, key=other_ca(plane).key
        ),
    )
    refused(fabric, replicas)


def test_a_server_certificate_for_another_plane_is_refused(
    fleet_tls: Callable[[str], TlsFiles], replicas: dict[str, Replica]
) -> None:
    # A genuine fleet certificate, but edge-a1's, on the address region-a believes is global.
    fabric = TlsFabric(
        lambda _plane: server_context(
            cert=fleet_tls("edge-a1").cert, key=fleet_tls("edge-a1").key, ca=fleet_tls("edge-a1").ca
        ),
        mutual_client(fleet_tls),
    )
    error = refused(fabric, replicas)
    assert isinstance(error, TransportBrokenError)
    assert error.reason == "tls"
    assert "Hostname mismatch" in str(error)


def test_a_server_certificate_from_another_ca_is_refused(
    fleet_tls: Callable[[str], TlsFiles],
    other_ca: Callable[[str], TlsFiles],
    replicas: dict[str, Replica],
) -> None:
    fabric = TlsFabric(
        lambda plane: server_context(cert=other_ca(plane).cert, key=other_ca(plane).key),
        mutual_client(fleet_tls),
    )
    error = refused(fabric, replicas)
    assert isinstance(error, TransportBrokenError)
    assert error.reason == "tls"
    assert "certificate verify failed" in str(error)


def test_a_plain_tcp_client_is_refused_by_a_tls_server(
    fleet_tls: Callable[[str], TlsFiles], replicas: dict[str, Replica]
) -> None:
    fabric = TlsFabric(mutual_server(fleet_tls), lambda _plane: None)
    refused(fabric, replicas)


def test_a_tls_1_2_client_is_refused(
    fleet_tls: Callable[[str], TlsFiles], replicas: dict[str, Replica]
) -> None:
    def old_client(plane: str) -> ssl.SSLContext:
        context = client_context(
            ca=fleet_tls(plane).ca, cert=fleet_tls(plane).cert, key=fleet_tls(plane).key
        )
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.maximum_version = ssl.TLSVersion.TLSv1_2
        return context

    fabric = TlsFabric(mutual_server(fleet_tls), old_client)
    # The server answers a 1.2-only hello with an alert or a reset, whichever comes first.
    assert isinstance(refused(fabric, replicas), TransportBrokenError)


# --------------------------------------------------------------------------- peer configs


def config(text: str, base: Path = Path("/etc/souverix")) -> PeerConfig:
    lines = ["plane: region-a", "keys: keys", "store: s.sqlite3", "listen: 7302", text]
    return parse_peer_config("\n".join(lines) + "\n", file="peer.yaml", base=base)


def test_tls_true_means_the_key_directorys_material_mutual() -> None:
    tls = config("tls: true").tls
    assert tls is not None
    assert tls.ca == Path("/etc/souverix/keys/tls/ca.pem")
    assert tls.cert == Path("/etc/souverix/keys/tls/region-a.pem")
    assert tls.key == Path("/etc/souverix/keys/tls/region-a.key")
    assert tls.mutual
    assert config("tls: false").tls is None
    assert config("").tls is None


def test_a_tls_mapping_takes_paths_relative_to_the_config() -> None:
    tls = config("tls: {ca: pki/ca.pem, cert: pki/r.pem, key: /abs/r.key, mutual: false}").tls
    assert tls is not None
    assert tls.ca == Path("/etc/souverix/pki/ca.pem")
    assert tls.cert == Path("/etc/souverix/pki/r.pem")
    assert tls.key == Path("/abs/r.key")
    assert not tls.mutual


@pytest.mark.parametrize(
    ("text", "field", "detail"),
    [
        ("tls: yes please", "tls", "expected true, false or a mapping"),
        ("tls: 1", "tls", "expected true, false or a mapping"),
        ("tls: {ca: ca.pem, cert: c.pem, key: k.pem, verify: none}", "tls.verify", "unknown"),
        ("tls: {cert: c.pem, key: k.pem}", "tls.ca", "missing"),
        ("tls: {ca: ca.pem, cert: c.pem}", "tls.key", "missing"),
        ("tls: {ca: ca.pem, key: k.pem}", "tls.cert", "missing"),
        ("tls: {ca: ca.pem}", "tls.cert", "a plane that listens presents one"),
        ("tls: {ca: ca.pem, cert: c.pem, key: k.pem, mutual: 'no'}", "tls.mutual", "true or"),
        ("tls: {ca: '', cert: c.pem, key: k.pem}", "tls.ca", "non-empty string"),
    ],
)
def test_tls_config_errors_name_the_field(text: str, field: str, detail: str) -> None:
    with pytest.raises(ConfigError) as caught:
        config(text)
    assert caught.value.field == field
    assert detail in caught.value.detail
    assert str(caught.value).startswith(f"peer.yaml: {field}: ")


def test_tls_is_only_for_tcp() -> None:
    text = "plane: edge-a1\nkeys: k\nstore: s\ntransport: nats\nnats: nats://127.0.0.1:4222\n"
    with pytest.raises(ConfigError) as caught:
        parse_peer_config(text + "tls: true\n", file="peer.yaml")
    assert caught.value.field == "tls"
    assert "only for transport: tcp" in caught.value.detail


def test_a_dialler_with_one_way_tls_needs_only_the_ca() -> None:
    text = "plane: edge-a1\nkeys: k\nstore: s\nupstream: {name: region-a, address: 7302}\n"
    tls = parse_peer_config(text + "tls: {ca: ca.pem, mutual: false}\n").tls
    assert tls is not None
    assert tls.cert is None
    with pytest.raises(ConfigError) as caught:
        parse_peer_config(text + "tls: {ca: ca.pem}\n")
    assert caught.value.field == "tls.cert"


def write_material(directory: Path) -> TlsFiles:
    update_key_directory(directory / "keys", "f", ["region-a", "global"])
    return key_directory_files(directory / "keys", "region-a")


def test_tls_file_errors_name_the_field(tmp_path: Path) -> None:
    files = write_material(tmp_path)
    good = "tls: {ca: keys/tls/ca.pem, cert: keys/tls/region-a.pem, key: keys/tls/region-a.key}"
    server, client = tls_contexts(config(good, tmp_path))
    assert server is not None
    assert server.verify_mode is ssl.CERT_REQUIRED
    assert server.minimum_version is ssl.TLSVersion.TLSv1_3
    assert client is not None
    assert client.check_hostname

    def error(text: str) -> ConfigError:
        with pytest.raises(ConfigError) as caught:
            tls_contexts(config(text, tmp_path))
        return caught.value

    missing = error(good.replace("tls/ca.pem", "tls/nope.pem"))
    assert (missing.field, missing.reason) == ("tls.ca", "missing")
    mismatch = error(good.replace("region-a.key", "global.key"))
    assert (mismatch.field, mismatch.reason) == ("tls.key", "mismatch")
    assert "does not belong to the certificate" in mismatch.detail
    (tmp_path / "bad.pem").write_text("garbage")
    bad = error(good.replace("keys/tls/region-a.pem", "bad.pem"))
    assert (bad.field, bad.reason) == ("tls.cert", "format")
    files.key.chmod(0o640)
    loose = error(good)
    assert (loose.field, loose.reason) == ("tls.key", "permissions")
    files.key.chmod(0o600)
    files.cert.unlink()
    shorthand = error("tls: true")
    assert (shorthand.field, shorthand.reason) == ("tls", "missing")
    assert "region-a.pem" in shorthand.detail
    assert "souverix-crdt keys tls --keys" in shorthand.detail


# --------------------------------------------------------------------------- peer processes


def make_keys(directory: Path) -> Path:
    keys = directory / "keys"
    result = CliRunner().invoke(cli, ["keys", "init", str(TOPOLOGY), "--out", str(keys)])
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(
        cli,
        [
            *("keys", "delegate", "--keys", str(keys), "--issuer", "global"),
            *("--scope", "global/region-b", "--tier", "regional", "--autonomy", "full"),
            *("--capability", "modify_policies"),
            "region-b",
        ],
    )
    assert result.exit_code == 0, result.output
    return keys


async def wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 20
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        await asyncio.sleep(0.02)


def test_a_session_must_be_the_plane_its_certificate_names(tmp_path: Path) -> None:
    """region-b dials with region-a's certificate (stolen, or misconfigured): refused.

    Both planes are peers of global, both certificates are genuine, and region-b's session
    key is its own: only the binding of the TLS identity to the session identity refuses it.
    """
    keys = make_keys(tmp_path)
    lines: list[str] = []
    files = {
        plane: key_directory_files(keys / "planes" / plane, plane)
        for plane in ("global", "region-a")
    }
    upper = PeerConfig(
        plane="global",
        keys=keys,
        store=tmp_path / "g.sqlite3",
        listen_port=0,
        downstream=(PeerLink(name="region-a"), PeerLink(name="region-b")),
        tick_s=0.5,
        watch_s=0.02,
        tls=PeerTls(ca=files["global"].ca, cert=files["global"].cert, key=files["global"].key),
    )

    async def scenario() -> None:
        global_process = PeerProcess(upper, log=lines.append)
        await global_process.start()
        assert global_process.port
        lower = PeerConfig(
            plane="region-b",
            keys=keys,
            store=tmp_path / "b.sqlite3",
            upstream=PeerLink(name="global", host=LOOPBACK, port=global_process.port),
            tick_s=0.5,
            watch_s=0.02,
            tls=PeerTls(
                ca=files["region-a"].ca, cert=files["region-a"].cert, key=files["region-a"].key
            ),
        )
        region_process = PeerProcess(lower, log=lines.append)
        await region_process.start()
        try:
            assert region_process.replica is not None
            region_process.replica.scope("global/region-b").policies.set("window", "sun")
            await wait_for(
                lambda: any("its TLS certificate names 'region-a'" in line for line in lines),
                "the refusal",
            )
            replica = global_process.replica
            assert replica is not None
            assert replica.get("global/region-b", "policies", "window", None) is None
            assert not any("global: synced with region-b" in line for line in lines)
        finally:
            await region_process.stop()
            await global_process.stop()

    run(scenario())
