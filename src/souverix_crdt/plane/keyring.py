"""Keys and delegations for a whole topology: bootstrap, save to a directory, load back.

:func:`bootstrap_keys` gives every control plane of a
:class:`~souverix_crdt.plane.topology.Topology` a signing key and a delegation chained down the
tree: the root key(s) delegate to ``global``, ``global`` to the regions and to ``edge-c``, each
region to its zones (the issuer of a plane is the plane at its nearest ancestor scope). What a
delegation grants follows the plane's authority block:

* ``report_status`` always (a plane reports its own nodes);
* ``modify_policies``, ``deploy_versions`` and ``operate_isolated`` exactly when the matching
  ``can_…`` flag is true;
* ``delegate`` for global and regional planes, and for any plane that issues to another;
* tier = the plane's level; autonomy = its mode (``conditional`` zones yield to higher authority
  on reconnect).

Keys are random by default. With ``seed`` they are derived deterministically (SHA-256 of a domain
prefix, the fleet id, the seed and the plane's name), so a demo or a test rebuilds byte-identical
delegations on every run; never use a seed for a real fleet.

:func:`save_keys` writes a directory a CLI can use later::

    <dir>/fleet.json            fleet id, quorum, root public keys, plane names (public)
    <dir>/roots/root-<i>.key    root private keys, mode 0600 (omit with include_roots=False)
    <dir>/planes/<name>.key     a plane's private key, mode 0600
    <dir>/planes/<name>.json    its key id and delegation chain (public)
    <dir>/tls/ca.pem            the fleet's TLS CA certificate (public)
    <dir>/roots/tls-ca.key      the CA's private key, 0600 (omitted with include_roots=False)
    <dir>/tls/<name>.pem        a plane's TLS certificate, signed by the CA (public)
    <dir>/tls/<name>.key        its TLS private key, 0600

The TLS files are :mod:`souverix_crdt.transports.tls`'s: each save gives a certificate to every
plane that has none, as long as the CA's private key is there to sign it.

:func:`load_keys` refuses private key files that group or others can read, as ssh does.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import types
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import attrs

from souverix_crdt.authority import (
    Capability,
    Delegation,
    Grant,
    PublicKey,
    SigningKey,
    TrustAnchors,
    issue_delegation,
    verify_chain,
)
from souverix_crdt.errors import KeyFileError, SouverixError, UnknownPlaneError
from souverix_crdt.hlc import Timestamp, system_wall_clock
from souverix_crdt.replica import Identity
from souverix_crdt.scope import Tier
from souverix_crdt.transports.tls import (
    DEFAULT_CERTIFICATE_VALIDITY_DAYS,
    TlsUpdate,
    update_key_directory,
)

from .topology import ControlPlaneSpec, Topology

__all__ = [
    "DEFAULT_VALIDITY_MS",
    "FederationKeys",
    "PlaneCredentials",
    "bootstrap_keys",
    "capabilities_for",
    "load_keys",
    "save_keys",
    "save_tls",
]

#: Default validity of bootstrapped delegations: one year.
DEFAULT_VALIDITY_MS: Final = 365 * 86_400_000
#: Slack before "now" at which bootstrapped windows start, for clocks slightly behind ours.
_SKEW_MS: Final = 3_600_000
_SEED_DOMAIN: Final = b"souverix-crdt/federation-key/v1\x00"
_FORMAT: Final = 1
_PRIVATE_MODE: Final = 0o600


@attrs.frozen
class PlaneCredentials:
    """A control plane's signing key and its delegation chain (root-issued link first).

    Attributes:
        name: The plane's name.
        key: Its private key (never in ``repr``).
        chain: Its delegation chain; the leaf is delegated to ``key``.
    """

    name: str
    key: SigningKey = attrs.field(repr=False)
    chain: tuple[Delegation, ...]

    @property
    def key_id(self) -> str:
        """The plane's key id."""
        return self.key.key_id

    @property
    def delegation(self) -> Delegation:
        """Its own (leaf) delegation."""
        return self.chain[-1]

    @property
    def identity(self) -> Identity:
        """What a :class:`~souverix_crdt.replica.Replica` writes as."""
        return Identity(self.key, self.chain)


@attrs.frozen
class FederationKeys:
    """The trust anchors and every plane's credentials for one topology.

    Attributes:
        anchors: The pinned root public keys.
        planes: Credentials by plane name, parents first.
        root_keys: The root private keys; empty when they were kept offline.
    """

    anchors: TrustAnchors
    planes: Mapping[str, PlaneCredentials]
    root_keys: tuple[SigningKey, ...] = attrs.field(default=(), repr=False)

    @property
    def fleet_id(self) -> str:
        """The fleet id."""
        return self.anchors.fleet_id

    def __getitem__(self, name: str) -> PlaneCredentials:
        """The credentials of plane ``name``.

        Raises:
            UnknownPlaneError: no such plane (a ``KeyError``); the closest names are suggested.
        """
        try:
            return self.planes[name]
        except KeyError:
            raise UnknownPlaneError(name, self.planes, where=f"fleet {self.fleet_id}") from None

    def identity(self, name: str) -> Identity:
        """The identity of plane ``name``, for a :class:`~souverix_crdt.replica.Replica`.

        Raises:
            UnknownPlaneError: no such plane (a ``KeyError``); the closest names are suggested.
        """
        return self[name].identity

    def verify(self, *, at: Timestamp) -> dict[str, Grant]:
        """Verify every plane's chain against the anchors at ``at``; return the grants.

        Raises:
            AuthorityError: a chain does not verify (its typed subclass says why).
        """
        return {
            name: verify_chain(self.anchors, creds.chain, at=at)
            for name, creds in self.planes.items()
        }


def capabilities_for(plane: ControlPlaneSpec, *, issues: bool) -> frozenset[Capability]:
    """What plane ``plane`` is delegated (``issues``: it delegates to another plane)."""
    granted = {Capability.REPORT_STATUS}
    flags = plane.autonomy
    if flags.can_modify_policies:
        granted.add(Capability.MODIFY_POLICIES)
    if flags.can_deploy_versions:
        granted.add(Capability.DEPLOY_VERSIONS)
    if flags.can_operate_isolated:
        granted.add(Capability.OPERATE_ISOLATED)
    if issues or plane.level in (Tier.GLOBAL, Tier.REGIONAL):
        granted.add(Capability.DELEGATE)
    return frozenset(granted)


def _seeded_key(fleet_id: str, seed: bytes, label: str) -> SigningKey:
    material = _SEED_DOMAIN + fleet_id.encode() + b"\x00" + seed + b"\x00" + label.encode()
    return SigningKey.from_private_bytes(hashlib.sha256(material).digest())


def _seed_bytes(seed: bytes | str | int) -> bytes:
    if isinstance(seed, bytes):
        return seed
    return str(seed).encode()


def bootstrap_keys(
    topology: Topology,
    *,
    seed: bytes | str | int | None = None,
    not_before: Timestamp | None = None,
    not_after: Timestamp | None = None,
    wall_clock: Callable[[], int] = system_wall_clock,
    roots: int = 1,
    quorum: int = 1,
) -> FederationKeys:
    """Make root keys and one delegation per plane, chained down the topology's tree.

    Args:
        topology: The validated topology.
        seed: Derive every key from this seed (demos and tests); random keys when ``None``.
        not_before: Start of every delegation's window (default: an hour before now).
        not_after: End of every window, exclusive (default: a year after ``not_before``).
        wall_clock: Where "now" comes from for the default window, in milliseconds.
        roots: How many root keys to pin.
        quorum: How many of them co-sign root-issued delegations.

    Returns:
        The anchors, the root keys and every plane's credentials.
    """
    fleet_id = topology.fleet_id
    if not_before is None:
        not_before = Timestamp(max(0, wall_clock() - _SKEW_MS))
    if not_after is None:
        not_after = Timestamp(not_before.wall + DEFAULT_VALIDITY_MS)

    def make_key(label: str) -> SigningKey:
        if seed is None:
            return SigningKey.generate()
        return _seeded_key(fleet_id, _seed_bytes(seed), label)

    root_keys = tuple(make_key(f"root:{index}") for index in range(roots))
    anchors = TrustAnchors(fleet_id, frozenset(key.public for key in root_keys), quorum)
    planes: dict[str, PlaneCredentials] = {}
    for plane in topology.parents_first():
        issuer = topology.issuer_of(plane.name)
        key = make_key(f"plane:{plane.name}")
        parent_chain: tuple[Delegation, ...] = () if issuer is None else planes[issuer].chain
        delegation = issue_delegation(
            root_keys[:quorum] if issuer is None else planes[issuer].key,
            fleet_id=fleet_id,
            subject=key.public,
            scope=plane.scope,
            capabilities=capabilities_for(plane, issues=bool(topology.children(plane.name))),
            tier=plane.level,
            autonomy=plane.autonomy.mode,
            not_before=not_before,
            not_after=not_after,
            parent=parent_chain[-1] if parent_chain else None,
            name=plane.name,
        )
        planes[plane.name] = PlaneCredentials(plane.name, key, (*parent_chain, delegation))
    ordered = {name: planes[name] for name in topology.planes}
    return FederationKeys(anchors, types.MappingProxyType(ordered), root_keys)


# --------------------------------------------------------------------------- files


def _write_private(path: Path, data: bytes) -> None:
    # Created 0600 from the start (no window where it is readable), and re-chmodded in case the
    # file already existed with wider permissions.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, _PRIVATE_MODE)
    try:
        os.fchmod(fd, _PRIVATE_MODE)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_public(path: Path, document: Mapping[str, Any]) -> None:
    path.write_text(json.dumps(document, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def save_keys(
    keys: FederationKeys,
    directory: str | Path,
    *,
    include_roots: bool = True,
    new_tls_ca: bool = False,
    renew_tls: Iterable[str] = (),
    tls_hosts: Sequence[str] = (),
    tls_validity_days: int = DEFAULT_CERTIFICATE_VALIDITY_DAYS,
) -> Path:
    """Write ``keys`` to ``directory`` (created 0700); private keys are written 0600.

    The TLS material is brought up to date too (:func:`save_tls`).

    Args:
        keys: What to save.
        directory: Where.
        include_roots: Also write the root private keys and the TLS CA's private key (keep
            them offline otherwise).
        new_tls_ca: Make a new TLS CA and certificates for every plane (a new fleet).
        renew_tls: Planes whose TLS certificate is replaced (a rotated plane).
        tls_hosts: Extra subjectAltName entries of the certificates issued now.
        tls_validity_days: Validity of the certificates issued now.

    Returns:
        The directory.

    Raises:
        KeyFileError: the directory's TLS CA files are unusable.
    """
    root = Path(directory)
    for folder in (root, root / "roots", root / "planes"):
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        folder.chmod(0o700)
    _write_public(
        root / "fleet.json",
        {
            "format": _FORMAT,
            "fleet_id": keys.fleet_id,
            "quorum": keys.anchors.quorum,
            "roots": sorted(public.raw.hex() for public in keys.anchors.roots),
            "planes": list(keys.planes),
        },
    )
    if include_roots:
        for index, key in enumerate(keys.root_keys):
            _write_private(root / "roots" / f"root-{index}.key", key.private_bytes().hex().encode())
    for name, creds in keys.planes.items():
        _write_private(root / "planes" / f"{name}.key", creds.key.private_bytes().hex().encode())
        _write_public(
            root / "planes" / f"{name}.json",
            {
                "name": name,
                "key_id": creds.key_id,
                "chain": [link.encode().hex() for link in creds.chain],
            },
        )
    save_tls(
        keys,
        root,
        include_ca_key=include_roots,
        new_ca=new_tls_ca,
        renew=renew_tls,
        hosts=tls_hosts,
        validity_days=tls_validity_days,
    )
    return root


def save_tls(
    keys: FederationKeys,
    directory: str | Path,
    *,
    include_ca_key: bool = True,
    new_ca: bool = False,
    renew: Iterable[str] = (),
    hosts: Sequence[str] = (),
    validity_days: int = DEFAULT_CERTIFICATE_VALIDITY_DAYS,
) -> TlsUpdate:
    """Give every plane of ``keys`` a TLS certificate in ``directory``; say what was done.

    A directory without a CA gets one; planes without a certificate (and those in ``renew``)
    get one when the CA's private key is in the directory, and are listed as ``unissued``
    otherwise. See :func:`~souverix_crdt.transports.tls.update_key_directory`.

    Raises:
        KeyFileError: the directory's TLS CA files are unusable.
    """
    return update_key_directory(
        directory,
        keys.fleet_id,
        keys.planes,
        include_ca_key=include_ca_key,
        new_ca=new_ca,
        renew=renew,
        hosts=hosts,
        validity_days=validity_days,
    )


def _read_private(path: Path) -> SigningKey:
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        raise KeyFileError("missing private key", path=str(path), reason="missing") from exc
    if stat.S_IMODE(mode) & 0o077:
        raise KeyFileError(
            f"private key is accessible by group or others (mode {stat.S_IMODE(mode):04o}); "
            "chmod 600 it",
            path=str(path),
            reason="permissions",
        )
    try:
        return SigningKey.from_private_bytes(bytes.fromhex(path.read_text("ascii").strip()))
    except (ValueError, SouverixError) as exc:
        raise KeyFileError(
            "not a hex-encoded 32-byte private key", path=str(path), reason="format"
        ) from exc


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text("utf-8"))
    except OSError as exc:
        raise KeyFileError("missing file", path=str(path), reason="missing") from exc
    except ValueError as exc:
        raise KeyFileError(f"not JSON: {exc}", path=str(path), reason="format") from exc
    if not isinstance(value, dict):
        raise KeyFileError("expected a JSON object", path=str(path), reason="format")
    return value


def read_fleet_file(fleet: Mapping[str, Any], path: Path) -> tuple[TrustAnchors, list[str]]:
    """The anchors and plane names of a decoded ``fleet.json``.

    Raises:
        KeyFileError: another format, or a field that does not parse (``reason="format"``).
    """
    if fleet.get("format") != _FORMAT:
        raise KeyFileError(
            f"unsupported format {fleet.get('format')!r}", path=str(path), reason="format"
        )
    try:
        anchors = TrustAnchors(
            str(fleet["fleet_id"]),
            frozenset(PublicKey(bytes.fromhex(raw)) for raw in fleet["roots"]),
            int(fleet["quorum"]),
        )
        names = [str(name) for name in fleet["planes"]]
    except (KeyError, TypeError, ValueError, SouverixError) as exc:
        raise KeyFileError(f"bad fleet file: {exc}", path=str(path), reason="format") from exc
    return anchors, names


def load_keys(directory: str | Path) -> FederationKeys:
    """Load what :func:`save_keys` wrote, checking permissions and every chain.

    Given the whole output of ``keys init`` (``offline/`` and one ``planes/<name>/`` per
    plane, :mod:`~souverix_crdt.plane.planedir`), it gathers the root keys and every plane
    directory's key: for tools and tests that act as the whole fleet. A plane's own commands
    read only its directory (:func:`~souverix_crdt.plane.planedir.load_plane`).

    Raises:
        KeyFileError: a file is missing or malformed, a private key is readable by others, or a
            chain does not verify against the anchors.
    """
    root = Path(directory)
    if (root / "offline" / "fleet.json").is_file() and (root / "planes").is_dir():
        return _load_ceremony(root)
    fleet_path = root / "fleet.json"
    anchors, names = read_fleet_file(_read_json(fleet_path), fleet_path)
    root_keys = tuple(_read_private(path) for path in sorted((root / "roots").glob("root-*.key")))
    planes: dict[str, PlaneCredentials] = {}
    for name in names:
        key = _read_private(root / "planes" / f"{name}.key")
        public_path = root / "planes" / f"{name}.json"
        document = _read_json(public_path)
        try:
            chain = tuple(Delegation.decode(bytes.fromhex(raw)) for raw in document["chain"])
            creds = PlaneCredentials(name, key, chain)
            creds.identity  # noqa: B018  (checks the leaf is delegated to this key)
            # Checked at the latest window start: signatures, attenuation and rooting, but not
            # expiry, which is judged at each write against the clock of that moment.
            verify_chain(anchors, chain, at=max(link.not_before for link in chain))
        except (KeyError, TypeError, ValueError, SouverixError) as exc:
            raise KeyFileError(
                f"chain does not verify: {exc}", path=str(public_path), reason="chain"
            ) from exc
        planes[name] = creds
    return FederationKeys(anchors, types.MappingProxyType(planes), root_keys)


def _load_ceremony(root: Path) -> FederationKeys:
    from .planedir import OFFLINE_DIR, PLANES_DIR, load_offline, load_plane  # noqa: PLC0415

    offline = load_offline(root / OFFLINE_DIR)
    planes: dict[str, PlaneCredentials] = {}
    folders = {path.name for path in (root / PLANES_DIR).iterdir() if path.is_dir()}
    for name in dict.fromkeys([*offline.chains, *sorted(folders)]):
        if name in folders:
            planes[name] = load_plane(root / PLANES_DIR / name).credentials
    return FederationKeys(offline.anchors, types.MappingProxyType(planes), offline.root_keys)
