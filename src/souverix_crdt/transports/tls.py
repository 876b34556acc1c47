"""The fleet's TLS material: a fleet CA, one certificate per control plane, and SSL contexts.

TCP sessions can run inside TLS 1.3 (stdlib :mod:`ssl`), with certificates made here with
``cryptography`` — no ``openssl`` command needed. The shape:

* **The fleet CA** (:func:`create_fleet_ca`): a self-signed ECDSA P-256 certificate
  (basicConstraints CA, path length 0, keyUsage keyCertSign + cRLSign). It signs plane
  certificates and nothing else; its private key belongs offline with the root keys.
* **A plane certificate** (:meth:`FleetCa.issue`): ECDSA P-256, signed by the CA, the plane's
  name as subject common name *and* as the first DNS name of the subjectAltName (plus any extra
  host names or IP addresses given), extendedKeyUsage serverAuth + clientAuth (the same
  certificate serves and dials), a random serial number and a bounded validity.
* **Contexts**: :func:`server_context` (TLS 1.3 minimum; with ``ca`` it requires a client
  certificate from the fleet CA — mutual TLS) and :func:`client_context` (verifies the server
  against the fleet CA only, never the system roots, and checks the name: dial with
  ``server_hostname=<the upstream plane's name>``; with ``cert`` it presents its own).
* :func:`certificate_plane_name` reads the plane name out of a *verified* peer certificate, so
  that a server can check that the TLS identity and the session's authenticated plane agree
  (:attr:`~souverix_crdt.transports.tcp.TcpTransport.peer_certificate_name`).

Files are PEM; private keys are PKCS#8, unencrypted, written 0600 (created so, never widened)
and refused on load when group or others can read them, as ssh does. Every function takes
explicit paths; :func:`key_directory_files` and :func:`update_key_directory` map them onto a key
directory::

    <dir>/tls/ca.pem            the fleet CA certificate (public)
    <dir>/roots/tls-ca.key      the fleet CA private key, 0600 (offline, like the root keys)
    <dir>/tls/<plane>.pem       the plane's certificate
    <dir>/tls/<plane>.key       the plane's TLS private key, 0600

What TLS adds to the sync session's own authentication: confidentiality of what crosses the
network, and (mutual) a gate that refuses any connection without a fleet certificate before a
single sync frame is read.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import ssl
import stat
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from souverix_crdt.errors import KeyFileError

__all__ = [
    "CA_KEY_FILE",
    "DEFAULT_CA_VALIDITY_DAYS",
    "DEFAULT_CERTIFICATE_VALIDITY_DAYS",
    "TLS_DIR",
    "FleetCa",
    "PlaneCertificate",
    "TlsFiles",
    "TlsUpdate",
    "certificate_plane_name",
    "check_key_pair",
    "client_context",
    "create_fleet_ca",
    "key_directory_files",
    "load_ca",
    "load_certificate",
    "load_private_key",
    "save_ca",
    "save_plane_certificate",
    "server_context",
    "update_key_directory",
]

#: The folder of a key directory that holds the CA certificate and the plane certificates.
TLS_DIR: Final = "tls"
#: Where a key directory keeps the fleet CA's private key (next to the root keys).
CA_KEY_FILE: Final = "roots/tls-ca.key"
#: How long a fleet CA is valid by default.
DEFAULT_CA_VALIDITY_DAYS: Final = 10 * 365
#: How long a plane certificate is valid by default (never longer than its CA).
DEFAULT_CERTIFICATE_VALIDITY_DAYS: Final = 365
# Certificates start this much before "now", for peers whose clocks are a little behind.
_SKEW: Final = datetime.timedelta(hours=1)
_PRIVATE_MODE: Final = 0o600

PrivateKey = ec.EllipticCurvePrivateKey


def _now(now: datetime.datetime | None) -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC) if now is None else now


def _hosts(hosts: Iterable[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return names


@attrs.frozen
class PlaneCertificate:
    """A plane's TLS certificate and its private key.

    Attributes:
        name: The plane's name (the certificate's common name and first DNS name).
        certificate: The certificate, signed by the fleet CA.
        key: Its private key (never in ``repr``).
    """

    name: str
    certificate: x509.Certificate
    key: PrivateKey = attrs.field(repr=False)


@attrs.frozen
class FleetCa:
    """The fleet's certificate authority.

    Attributes:
        certificate: The self-signed CA certificate (what every peer trusts).
        key: The CA private key, or ``None`` where it is kept offline (never in ``repr``).
    """

    certificate: x509.Certificate
    key: PrivateKey | None = attrs.field(default=None, repr=False)

    def issue(
        self,
        name: str,
        *,
        hosts: Sequence[str] = (),
        now: datetime.datetime | None = None,
        validity_days: int = DEFAULT_CERTIFICATE_VALIDITY_DAYS,
    ) -> PlaneCertificate:
        """Issue plane ``name`` a certificate (a fresh key) for serving and dialling.

        Args:
            name: The plane's name; the peers that dial it check their connection against it.
            hosts: Extra DNS names or IP addresses for the subjectAltName (``127.0.0.1``,
                ``localhost``), for clients that dial an address rather than a plane name.
            now: The issue time (default: the system clock).
            validity_days: Days of validity, cut to the CA's own.

        Raises:
            KeyFileError: the CA's private key is not here (``reason="missing"``).
            ValueError: ``name`` is empty or ``validity_days`` below 1.
        """
        if self.key is None:
            raise KeyFileError(
                "the fleet CA's private key is not here (kept offline?)",
                path=CA_KEY_FILE,
                reason="missing",
            )
        if not name:
            raise ValueError("a plane certificate needs the plane's name")
        if validity_days < 1:
            raise ValueError(f"validity_days must be at least 1, got {validity_days!r}")
        start = _now(now) - _SKEW
        ca_end = self.certificate.not_valid_after_utc
        end = min(start + datetime.timedelta(days=validity_days), ca_end)
        key = ec.generate_private_key(ec.SECP256R1())
        public = key.public_key()
        ca_public = self.key.public_key()
        certificate = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(self.certificate.subject)
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(max(start, self.certificate.not_valid_before_utc))
            .not_valid_after(end)
            .add_extension(
                x509.SubjectAlternativeName([x509.DNSName(name), *_hosts(hosts)]), critical=False
            )
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_public), critical=False
            )
            .sign(self.key, hashes.SHA256())
        )
        return PlaneCertificate(name, certificate, key)


def create_fleet_ca(
    fleet_id: str,
    *,
    now: datetime.datetime | None = None,
    validity_days: int = DEFAULT_CA_VALIDITY_DAYS,
) -> FleetCa:
    """Make a fleet CA: a fresh P-256 key and its self-signed certificate.

    Args:
        fleet_id: The fleet; named in the CA's subject.
        now: The issue time (default: the system clock).
        validity_days: Days of validity.

    Raises:
        ValueError: ``validity_days`` below 1.
    """
    if validity_days < 1:
        raise ValueError(f"validity_days must be at least 1, got {validity_days!r}")
    key = ec.generate_private_key(ec.SECP256R1())
    public = key.public_key()
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, fleet_id),
            x509.NameAttribute(NameOID.COMMON_NAME, f"{fleet_id} fleet CA"),
        ]
    )
    start = _now(now) - _SKEW
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(days=validity_days))
        # Path length 0: the CA signs plane certificates, never another CA.
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )
    return FleetCa(certificate, key)


# --------------------------------------------------------------------------- files


def _write_private(path: Path, data: bytes) -> None:
    # Created 0600 from the start (no window where it is readable), and re-chmodded in case the
    # file already existed with wider permissions.
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, _PRIVATE_MODE)
    try:
        os.fchmod(fd, _PRIVATE_MODE)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def _key_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _write_certificate(path: Path, certificate: x509.Certificate) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))


def save_ca(ca: FleetCa, certificate_path: str | Path, key_path: str | Path | None) -> None:
    """Write the CA certificate, and its private key 0600 when ``key_path`` is given.

    Raises:
        KeyFileError: ``key_path`` is given but the CA holds no private key.
    """
    _write_certificate(Path(certificate_path), ca.certificate)
    if key_path is not None:
        if ca.key is None:
            raise KeyFileError("no CA private key to write", path=str(key_path), reason="missing")
        _write_private(Path(key_path), _key_pem(ca.key))


def save_plane_certificate(
    plane: PlaneCertificate, certificate_path: str | Path, key_path: str | Path
) -> None:
    """Write a plane's certificate and (0600) its private key."""
    _write_certificate(Path(certificate_path), plane.certificate)
    _write_private(Path(key_path), _key_pem(plane.key))


def load_certificate(path: str | Path) -> x509.Certificate:
    """Read one PEM certificate.

    Raises:
        KeyFileError: the file is missing (``reason="missing"``) or not a PEM certificate
            (``"format"``).
    """
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise KeyFileError("missing certificate", path=str(path), reason="missing") from exc
    try:
        return x509.load_pem_x509_certificate(data)
    except ValueError as exc:
        raise KeyFileError(
            f"not a PEM certificate: {exc}", path=str(path), reason="format"
        ) from exc


def load_private_key(path: str | Path) -> PrivateKey:
    """Read one PEM (unencrypted) elliptic-curve private key, refusing a readable one.

    Raises:
        KeyFileError: the file is missing (``reason="missing"``), group or others can read it
            (``"permissions"``), or it is not an unencrypted EC private key (``"format"``).
    """
    file = Path(path)
    try:
        mode = stat.S_IMODE(file.stat().st_mode)
        data = file.read_bytes()
    except OSError as exc:
        raise KeyFileError("missing private key", path=str(file), reason="missing") from exc
    if mode & 0o077:
        raise KeyFileError(
            f"private key is accessible by group or others (mode {mode:04o}); chmod 600 it",
            path=str(file),
            reason="permissions",
        )
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise KeyFileError(
            f"not an unencrypted PEM private key: {exc}", path=str(file), reason="format"
        ) from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise KeyFileError(
            f"expected an elliptic-curve key, got {type(key).__name__}",
            path=str(file),
            reason="format",
        )
    return key


def check_key_pair(certificate_path: str | Path, key_path: str | Path) -> x509.Certificate:
    """Check that the private key at ``key_path`` belongs to the certificate; return it.

    Raises:
        KeyFileError: either file is unusable (see :func:`load_certificate` and
            :func:`load_private_key`), or the key is another certificate's
            (``reason="mismatch"``, naming the key file).
    """
    certificate = load_certificate(certificate_path)
    key = load_private_key(key_path)
    if certificate.public_key() != key.public_key():
        raise KeyFileError(
            f"this private key does not belong to the certificate {certificate_path}",
            path=str(key_path),
            reason="mismatch",
        )
    return certificate


def load_ca(certificate_path: str | Path, key_path: str | Path | None = None) -> FleetCa:
    """Read a fleet CA; its private key too when ``key_path`` is given and exists.

    Raises:
        KeyFileError: a file is unusable, or the key is not the certificate's.
    """
    certificate = load_certificate(certificate_path)
    if key_path is None or not Path(key_path).exists():
        return FleetCa(certificate)
    key = load_private_key(key_path)
    if certificate.public_key() != key.public_key():
        raise KeyFileError(
            f"this private key does not belong to the CA certificate {certificate_path}",
            path=str(key_path),
            reason="mismatch",
        )
    return FleetCa(certificate, key)


# --------------------------------------------------------------------------- key directories


@attrs.frozen
class TlsFiles:
    """Where one plane's TLS material lies.

    Attributes:
        ca: The fleet CA certificate.
        cert: The plane's certificate.
        key: The plane's private key.
    """

    ca: Path
    cert: Path
    key: Path


def key_directory_files(directory: str | Path, plane: str) -> TlsFiles:
    """The TLS files of ``plane`` in a key directory (see the module documentation)."""
    folder = Path(directory) / TLS_DIR
    return TlsFiles(ca=folder / "ca.pem", cert=folder / f"{plane}.pem", key=folder / f"{plane}.key")


@attrs.frozen
class TlsUpdate:
    """What :func:`update_key_directory` did.

    Attributes:
        created_ca: A new fleet CA was made.
        issued: Planes that got a new certificate.
        unissued: Planes left without a certificate, the CA's private key being offline.
    """

    created_ca: bool
    issued: tuple[str, ...]
    unissued: tuple[str, ...]


def update_key_directory(
    directory: str | Path,
    fleet_id: str,
    planes: Iterable[str],
    *,
    include_ca_key: bool = True,
    new_ca: bool = False,
    renew: Iterable[str] = (),
    hosts: Sequence[str] = (),
    validity_days: int = DEFAULT_CERTIFICATE_VALIDITY_DAYS,
    now: datetime.datetime | None = None,
) -> TlsUpdate:
    """Give every plane of a key directory a certificate from the fleet CA.

    A CA is made when the directory has none (or ``new_ca``), and then every plane gets a new
    certificate. Otherwise only planes without a certificate, and those in ``renew``, get one,
    which needs the CA's private key in the directory.

    Args:
        directory: The key directory.
        fleet_id: The fleet (named in a new CA).
        planes: Every plane of the directory.
        include_ca_key: Write a new CA's private key next to the root keys; without it, the
            key is used for this call's certificates and then forgotten.
        new_ca: Replace the fleet CA (and so every certificate).
        renew: Planes whose certificate is replaced even if they have one (a rotated key).
        hosts: Extra subjectAltName entries of the certificates issued now.
        validity_days: Validity of the certificates issued now.
        now: The issue time (default: the system clock).

    Raises:
        KeyFileError: the directory's CA files are unusable.
    """
    root = Path(directory)
    ca_path = key_directory_files(root, "").ca
    ca_key_path = root / CA_KEY_FILE
    created = new_ca or not ca_path.exists()
    if created:
        ca = create_fleet_ca(fleet_id, now=now)
        save_ca(ca, ca_path, ca_key_path if include_ca_key else None)
    else:
        ca = load_ca(ca_path, ca_key_path)
    again = set(renew)
    issued: list[str] = []
    unissued: list[str] = []
    for plane in planes:
        files = key_directory_files(root, plane)
        if not (created or plane in again or not files.cert.exists()):
            continue
        if ca.key is None:
            unissued.append(plane)
            continue
        certificate = ca.issue(plane, hosts=hosts, now=now, validity_days=validity_days)
        save_plane_certificate(certificate, files.cert, files.key)
        issued.append(plane)
    return TlsUpdate(created_ca=created, issued=tuple(issued), unissued=tuple(unissued))


# --------------------------------------------------------------------------- contexts


def server_context(
    *, cert: str | Path, key: str | Path, ca: str | Path | None = None
) -> ssl.SSLContext:
    """A TLS 1.3 server context presenting ``cert``; with ``ca``, mutual TLS.

    Args:
        cert: The plane's certificate (PEM).
        key: Its private key (PEM).
        ca: The fleet CA certificate: clients must then present a certificate it signed, or
            the handshake fails before the server reads a byte from them.

    Raises:
        KeyFileError: a file is unusable or the key is not the certificate's.
    """
    check_key_pair(cert, key)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.load_cert_chain(str(cert), str(key))
    if ca is not None:
        load_certificate(ca)
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(cafile=str(ca))
    return context


def client_context(
    *, ca: str | Path, cert: str | Path | None = None, key: str | Path | None = None
) -> ssl.SSLContext:
    """A TLS 1.3 client context that trusts the fleet CA only and checks the server's name.

    Dial with ``server_hostname=<the peer's plane name>``: a certificate of another plane,
    or of another CA, fails the handshake.

    Args:
        ca: The fleet CA certificate (PEM).
        cert: The plane's own certificate, presented to servers that require one (mutual TLS).
        key: Its private key; given exactly when ``cert`` is.

    Raises:
        KeyFileError: a file is unusable or the key is not the certificate's.
        ValueError: only one of ``cert`` and ``key`` is given.
    """
    if (cert is None) != (key is None):
        raise ValueError("cert and key go together")
    load_certificate(ca)
    # PROTOCOL_TLS_CLIENT: CERT_REQUIRED and check_hostname are on; no system roots are loaded.
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.load_verify_locations(cafile=str(ca))
    if cert is not None and key is not None:
        check_key_pair(cert, key)
        context.load_cert_chain(str(cert), str(key))
    return context


def certificate_plane_name(peercert: Mapping[str, Any] | None) -> str | None:
    """The plane a verified peer certificate names, or ``None``.

    ``peercert`` is :meth:`ssl.SSLSocket.getpeercert` (asyncio's ``"peercert"`` extra), which
    is empty unless the certificate verified. The plane name is the subject's common name, and
    only when the subjectAltName carries it as a DNS name too (as :meth:`FleetCa.issue` makes
    it): a certificate that names a plane only in one of the two names none.
    """
    if not peercert:
        return None
    common = [
        value
        for rdn in peercert.get("subject", ())
        for attribute, value in rdn
        if attribute == "commonName"
    ]
    dns = {value for kind, value in peercert.get("subjectAltName", ()) if kind == "DNS"}
    if len(common) == 1 and common[0] in dns:
        return str(common[0])
    return None
