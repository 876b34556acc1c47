"""One directory per control plane: what an operator copies to the plane's machine.

``keys init`` (:func:`save_ceremony`) writes two kinds of directory::

    <out>/offline/                  kept off every plane's machine
        fleet.json                  fleet id, quorum, root public keys, plane names (public)
        roots/root-<i>.key          one file per root key (0600), so different people hold them
        roots/tls-ca.key            the fleet TLS CA's private key (0600)
        planes/<name>.json          every plane's key id and delegation chain (public)
        tls/ca.pem                  the fleet CA certificate (public)
        topology.yaml               the topology the keys were made for
    <out>/planes/<name>/            one per plane: copy it to that plane's machine
        fleet.json                  the fleet's public anchors, and ``"plane": <name>``
        planes/<name>.key           the plane's signing key (0600): the only one here
        planes/<any>.json           the public chains it knows (its own and its peers')
        tls/ca.pem                  the fleet CA certificate
        tls/<name>.pem, .key        the plane's own TLS certificate and key (0600)
        topology.yaml               the topology, for views and peers
        revocations/<id>.rev        signed revocations it knows (``keys revoke``)
        nats/<name>.password        its NATS password file, when one was given

Both keep the file names of a shared key directory (:mod:`souverix_crdt.plane.keyring`), so a
plane directory is a key directory that holds one private key: the TLS shorthand and the
revocation folder mean the same there. :func:`load_plane` reads exactly that one key, never
another plane's; stealing one machine's disk yields one plane's authority, not its issuer's.
"""

from __future__ import annotations

import os
import shutil
import types
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import attrs

from souverix_crdt.authority import (
    Delegation,
    SigningKey,
    TrustAnchors,
    check_plane_name,
    verify_chain,
)
from souverix_crdt.errors import KeyFileError, SouverixError, UnknownPlaneError
from souverix_crdt.replica import Identity
from souverix_crdt.transports.tls import (
    CA_KEY_FILE,
    DEFAULT_CERTIFICATE_VALIDITY_DAYS,
    FleetCa,
    create_fleet_ca,
    key_directory_files,
    load_ca,
    save_ca,
    save_plane_certificate,
)

from .keyring import (
    _FORMAT,
    FederationKeys,
    PlaneCredentials,
    _read_json,
    _read_private,
    _write_private,
    _write_public,
    read_fleet_file,
)

__all__ = [
    "NATS_DIR",
    "OFFLINE_DIR",
    "PLANES_DIR",
    "IssuerKeys",
    "OfflineKeys",
    "PlaneKeys",
    "check_directory_name",
    "copy_revocations",
    "is_ceremony",
    "issue_plane_tls",
    "load_issuer",
    "load_offline",
    "load_offline_ca",
    "load_plane",
    "plane_directory",
    "private_key_files",
    "record_chain",
    "save_ceremony",
    "save_plane_directory",
]

#: The folder of ``keys init``'s output holding the root keys (never copied to a plane).
OFFLINE_DIR: Final = "offline"
#: The folder of ``keys init``'s output holding one directory per plane.
PLANES_DIR: Final = "planes"
#: Where a plane directory keeps its NATS password file.
NATS_DIR: Final = "nats"
_TOPOLOGY_FILE: Final = "topology.yaml"


def check_directory_name(name: str) -> str:
    """Return ``name`` if it may name a plane's files; refuse ``..``, separators and the like.

    Raises:
        KeyFileError: ``reason="name"``: it is not a valid plane name.
    """
    try:
        return check_plane_name(name)
    except SouverixError as exc:
        # Names become file and folder names: "../x" must never reach a path.
        raise KeyFileError(
            f"plane name {name!r} must be lower-case letters, digits and inner hyphens",
            path=repr(name),
            reason="name",
        ) from exc


@attrs.frozen
class PlaneKeys:
    """What one plane's directory holds: its key and chain, the anchors, the public chains.

    Attributes:
        anchors: The fleet's pinned root public keys.
        credentials: The plane's own key and chain.
        chains: Every plane's public chain the directory knows (its own included), by name.
        directory: Where it was read from.
    """

    anchors: TrustAnchors
    credentials: PlaneCredentials
    chains: Mapping[str, tuple[Delegation, ...]]
    directory: Path

    @property
    def name(self) -> str:
        """The plane's name."""
        return self.credentials.name

    @property
    def fleet_id(self) -> str:
        """The fleet id."""
        return self.anchors.fleet_id

    @property
    def identity(self) -> Identity:
        """What the plane's :class:`~souverix_crdt.replica.Replica` writes as."""
        return self.credentials.identity

    def chain(self, name: str) -> tuple[Delegation, ...]:
        """The public chain of plane ``name``.

        Raises:
            UnknownPlaneError: the directory knows no such plane (a ``KeyError``).
        """
        try:
            return self.chains[name]
        except KeyError:
            raise UnknownPlaneError(name, self.chains, where=str(self.directory)) from None

    @classmethod
    def of(cls, keys: FederationKeys, name: str, directory: str | Path = "") -> PlaneKeys:
        """Plane ``name``'s view of a whole federation's keys (tests and in-process fleets).

        Raises:
            UnknownPlaneError: no such plane (a ``KeyError``).
        """
        chains = {plane: creds.chain for plane, creds in keys.planes.items()}
        return cls(keys.anchors, keys[name], types.MappingProxyType(chains), Path(directory))


@attrs.frozen
class OfflineKeys:
    """What the offline directory holds: the anchors, the root keys, every public chain.

    Attributes:
        anchors: The fleet's pinned root public keys.
        root_keys: The root private keys found there (never in ``repr``).
        chains: Every plane's public chain, by name.
        directory: Where it was read from.
    """

    anchors: TrustAnchors
    root_keys: tuple[SigningKey, ...] = attrs.field(repr=False)
    chains: Mapping[str, tuple[Delegation, ...]]
    directory: Path


# --------------------------------------------------------------------------- writing


def _fleet_document(
    anchors: TrustAnchors, names: Iterable[str], plane: str | None
) -> dict[str, Any]:
    document: dict[str, Any] = {
        "format": _FORMAT,
        "fleet_id": anchors.fleet_id,
        "quorum": anchors.quorum,
        "roots": sorted(public.raw.hex() for public in anchors.roots),
        "planes": list(dict.fromkeys(names)),
    }
    if plane is not None:
        document["plane"] = plane
    return document


def _make_dir(path: Path) -> None:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.chmod(0o700)


def _write_chain(directory: Path, name: str, chain: Sequence[Delegation]) -> None:
    check_directory_name(name)
    _make_dir(directory / PLANES_DIR)
    _write_public(
        directory / PLANES_DIR / f"{name}.json",
        {
            "name": name,
            "key_id": chain[-1].subject.key_id,
            "chain": [link.encode().hex() for link in chain],
        },
    )


def record_chain(directory: str | Path, name: str, chain: Sequence[Delegation]) -> None:
    """Add plane ``name``'s public chain to a plane or offline directory (and its fleet file).

    Raises:
        KeyFileError: the name is not a valid plane name, or the fleet file is unreadable.
    """
    root = Path(directory)
    _write_chain(root, name, chain)
    fleet = _read_json(root / "fleet.json")
    names = [str(n) for n in fleet.get("planes", [])]
    if name not in names:
        fleet["planes"] = [*names, name]
        _write_public(root / "fleet.json", fleet)


def issue_plane_tls(
    ca: FleetCa,
    directory: str | Path,
    name: str,
    *,
    hosts: Sequence[str] = (),
    validity_days: int = DEFAULT_CERTIFICATE_VALIDITY_DAYS,
) -> None:
    """Write the fleet CA certificate and a new certificate for plane ``name`` into its directory.

    Raises:
        KeyFileError: the CA's private key is not at hand.
    """
    files = key_directory_files(directory, check_directory_name(name))
    certificate = ca.issue(name, hosts=hosts, validity_days=validity_days)
    save_ca(FleetCa(ca.certificate), files.ca, None)
    save_plane_certificate(certificate, files.cert, files.key)


def save_plane_directory(
    directory: str | Path,
    anchors: TrustAnchors,
    credentials: PlaneCredentials,
    chains: Mapping[str, Sequence[Delegation]],
    *,
    ca: FleetCa | None = None,
    topology_text: str | None = None,
    revocations: Iterable[bytes] = (),
    nats_password: Path | None = None,
    hosts: Sequence[str] = (),
    validity_days: int = DEFAULT_CERTIFICATE_VALIDITY_DAYS,
) -> Path:
    """Write one plane's directory (see the module documentation); private files are 0600.

    Args:
        directory: Where (created 0700).
        anchors: The fleet's anchors.
        credentials: The plane's own key and chain: the one private key written.
        chains: The public chains it should know (its own is added).
        ca: The fleet CA; with its private key, the plane gets a TLS certificate.
        topology_text: The topology to copy in.
        revocations: Signed revocations to copy in.
        nats_password: A NATS password file to copy in (0600).
        hosts: Extra subjectAltName entries of its TLS certificate.
        validity_days: Validity of its TLS certificate.

    Returns:
        The directory.

    Raises:
        KeyFileError: the plane's name is not a valid plane name.
    """
    from .keydir import save_revocation  # noqa: PLC0415 - keydir imports this module's callers

    name = check_directory_name(credentials.name)
    root = Path(directory)
    _make_dir(root)
    known = {**chains, name: credentials.chain}
    _write_public(root / "fleet.json", _fleet_document(anchors, known, name))
    _make_dir(root / PLANES_DIR)
    _write_private(
        root / PLANES_DIR / f"{name}.key", credentials.key.private_bytes().hex().encode()
    )
    for plane, chain in known.items():
        _write_chain(root, plane, chain)
    if ca is not None:
        if ca.key is not None:
            issue_plane_tls(ca, root, name, hosts=hosts, validity_days=validity_days)
        else:
            save_ca(ca, key_directory_files(root, name).ca, None)
    if topology_text is not None:
        (root / _TOPOLOGY_FILE).write_text(topology_text, "utf-8")
    from souverix_crdt.authority import Revocation  # noqa: PLC0415

    for raw in revocations:
        save_revocation(root, Revocation.decode(raw))
    if nats_password is not None:
        _make_dir(root / NATS_DIR)
        _write_private(root / NATS_DIR / f"{name}.password", nats_password.read_bytes())
    return root


def save_ceremony(
    keys: FederationKeys,
    out: str | Path,
    *,
    include_roots: bool = True,
    topology_text: str | None = None,
    nats_passwords: Mapping[str, Path] | None = None,
    hosts: Sequence[str] = (),
    validity_days: int = DEFAULT_CERTIFICATE_VALIDITY_DAYS,
) -> Path:
    """Write ``keys`` as ``out/offline/`` (roots, TLS CA key) and one ``out/planes/<name>/`` each.

    Args:
        keys: A fleet's keys, just bootstrapped.
        out: The folder to write into.
        include_roots: Write the root private keys and the TLS CA's private key (offline);
            without it they are used now and forgotten.
        topology_text: The topology, copied into every directory.
        nats_passwords: Per plane, a NATS password file to copy into its directory.
        hosts: Extra subjectAltName entries of every TLS certificate.
        validity_days: Validity of the TLS certificates.

    Returns:
        ``out``.

    Raises:
        KeyFileError: a plane name is not a valid plane name.
    """
    root = Path(out)
    offline = root / OFFLINE_DIR
    for name in keys.planes:
        check_directory_name(name)
    _make_dir(root)
    _make_dir(offline)
    _write_public(offline / "fleet.json", _fleet_document(keys.anchors, keys.planes, None))
    if include_roots:
        _make_dir(offline / "roots")
        for index, key in enumerate(keys.root_keys):
            _write_private(
                offline / "roots" / f"root-{index}.key", key.private_bytes().hex().encode()
            )
    chains = {name: creds.chain for name, creds in keys.planes.items()}
    for name, chain in chains.items():
        _write_chain(offline, name, chain)
    ca = create_fleet_ca(keys.fleet_id)
    files = key_directory_files(offline, "")
    save_ca(ca, files.ca, offline / CA_KEY_FILE if include_roots else None)
    if topology_text is not None:
        (offline / _TOPOLOGY_FILE).write_text(topology_text, "utf-8")
    passwords = nats_passwords or {}
    for name, creds in keys.planes.items():
        save_plane_directory(
            root / PLANES_DIR / name,
            keys.anchors,
            creds,
            chains,
            ca=ca,
            topology_text=topology_text,
            nats_password=passwords.get(name),
            hosts=hosts,
            validity_days=validity_days,
        )
    return root


# --------------------------------------------------------------------------- reading


def is_ceremony(directory: str | Path) -> bool:
    """Whether ``directory`` is the whole output of ``keys init`` (``offline/`` and ``planes/``)."""
    root = Path(directory)
    return (root / OFFLINE_DIR / "fleet.json").is_file() and (root / PLANES_DIR).is_dir()


def plane_directory(directory: str | Path, plane: str) -> Path:
    """The directory of plane ``plane``: ``directory`` itself, or its ``planes/<plane>/``.

    A plane's machine holds only its own directory; on the machine where ``keys init`` ran,
    naming the whole output and the plane reads that plane's directory in it, and nothing else.

    Raises:
        KeyFileError: ``plane`` is not a valid plane name.
        UnknownPlaneError: the output of ``keys init`` has no directory for ``plane``.
    """
    check_directory_name(plane)
    root = Path(directory)
    if is_ceremony(root):
        folder = root / PLANES_DIR / plane
        if not (folder / "fleet.json").is_file():
            known = sorted(p.name for p in (root / PLANES_DIR).iterdir() if p.is_dir())
            raise UnknownPlaneError(plane, known, where=f"the key directory {root}")
        return folder
    return root


def _read_chains(
    root: Path, anchors: TrustAnchors, names: Iterable[str]
) -> dict[str, tuple[Delegation, ...]]:
    chains: dict[str, tuple[Delegation, ...]] = {}
    for name in names:
        check_directory_name(name)
        path = root / PLANES_DIR / f"{name}.json"
        document = _read_json(path)
        try:
            chain = tuple(Delegation.decode(bytes.fromhex(raw)) for raw in document["chain"])
            # Checked at the latest window start: signatures, attenuation and rooting, not
            # expiry, which is judged at each write against the clock of that moment.
            verify_chain(anchors, chain, at=max(link.not_before for link in chain))
        except (KeyError, TypeError, ValueError, SouverixError) as exc:
            raise KeyFileError(
                f"chain does not verify: {exc}", path=str(path), reason="chain"
            ) from exc
        chains[name] = chain
    return chains


def load_plane(directory: str | Path, plane: str | None = None) -> PlaneKeys:
    """Read a plane directory: its one private key, the anchors and the public chains.

    Args:
        directory: The plane's directory (or the output of ``keys init``, with ``plane``).
        plane: The plane expected there; ``None`` takes the directory's.

    Raises:
        KeyFileError: a file is missing or malformed, the private key is readable by others,
            a chain does not verify, or the directory is another plane's (``reason="plane"``).
    """
    if plane is not None:
        directory = plane_directory(directory, plane)
    root = Path(directory)
    fleet_path = root / "fleet.json"
    fleet = _read_json(fleet_path)
    anchors, names = read_fleet_file(fleet, fleet_path)
    own = fleet.get("plane")
    if not isinstance(own, str):
        raise KeyFileError(
            "not a plane directory (its fleet.json names no plane; keys init writes one per "
            "plane in planes/<name>/)",
            path=str(fleet_path),
            reason="plane",
        )
    if plane is not None and plane != own:
        raise KeyFileError(
            f"this is {own}'s directory, not {plane}'s", path=str(root), reason="plane"
        )
    chains = _read_chains(root, anchors, dict.fromkeys([*names, own]))
    key = _read_private(root / PLANES_DIR / f"{own}.key")
    credentials = PlaneCredentials(own, key, chains[own])
    try:
        credentials.identity  # noqa: B018  (checks the leaf is delegated to this key)
    except SouverixError as exc:
        raise KeyFileError(
            f"the key is not the one {own}'s chain delegates to: {exc}",
            path=str(root / PLANES_DIR / f"{own}.key"),
            reason="chain",
        ) from exc
    return PlaneKeys(anchors, credentials, types.MappingProxyType(chains), root)


def load_offline(directory: str | Path) -> OfflineKeys:
    """Read the offline directory: anchors, whatever root keys it holds, the public chains.

    Raises:
        KeyFileError: a file is missing or malformed, a key is readable by others, or a
            chain does not verify.
    """
    root = Path(directory)
    if is_ceremony(root):
        root = root / OFFLINE_DIR
    fleet_path = root / "fleet.json"
    fleet = _read_json(fleet_path)
    anchors, names = read_fleet_file(fleet, fleet_path)
    if "plane" in fleet:
        raise KeyFileError(
            f"this is {fleet['plane']}'s plane directory, not the offline one",
            path=str(root),
            reason="plane",
        )
    roots = tuple(_read_private(path) for path in sorted((root / "roots").glob("root-*.key")))
    return OfflineKeys(
        anchors, roots, types.MappingProxyType(_read_chains(root, anchors, names)), root
    )


def load_offline_ca(directory: str | Path) -> FleetCa:
    """The fleet CA of an offline directory, with its private key when it is there.

    Raises:
        KeyFileError: the CA files are unusable.
    """
    root = Path(directory)
    return load_ca(key_directory_files(root, "").ca, root / CA_KEY_FILE)


def copy_revocations(source: str | Path, target: str | Path) -> int:
    """Copy every revocation file of ``source`` into ``target``; return how many."""
    from .keydir import REVOCATIONS_DIR  # noqa: PLC0415

    count = 0
    folder = Path(source) / REVOCATIONS_DIR
    for path in sorted(folder.glob("*.rev")):
        _make_dir(Path(target) / REVOCATIONS_DIR)
        shutil.copyfile(path, Path(target) / REVOCATIONS_DIR / path.name)
        count += 1
    return count


def private_key_files(directory: str | Path) -> list[Path]:
    """The signing-key files under ``directory`` (``*.key`` but TLS keys), for audits and tests."""
    found = []
    for base, _, files in os.walk(directory):
        for file in files:
            path = Path(base) / file
            if file.endswith(".key") and path.parent.name != "tls":
                found.append(path)
    return sorted(found)


# --------------------------------------------------------------------------- issuers


@attrs.frozen
class IssuerKeys:
    """What an issuer has at hand to change the fleet's keys: its own key, or the roots.

    Attributes:
        anchors: The fleet's anchors.
        chains: The public chains it knows.
        plane: The issuing plane's directory, when a plane issues.
        root_keys: The root keys at hand, when the roots issue (never in ``repr``).
        directory: Where its revocations are kept (its plane directory or the offline one).
        offline: The offline directory, when at hand (the fleet CA's private key is there).
        ceremony: The whole output of ``keys init``, when that is what was named.
    """

    anchors: TrustAnchors
    chains: Mapping[str, tuple[Delegation, ...]]
    plane: PlaneKeys | None
    root_keys: tuple[SigningKey, ...] = attrs.field(repr=False)
    directory: Path
    offline: Path | None
    ceremony: Path | None

    def signers(self, name: str) -> tuple[SigningKey, ...]:
        """The key(s) that sign for plane ``name``: its issuer's.

        Raises:
            KeyFileError: what is at hand is not ``name``'s issuer.
        """
        from .keydir import signers_of  # noqa: PLC0415 - keydir imports this module

        return signers_of(
            self.chains,
            name,
            plane=None if self.plane is None else self.plane.credentials,
            root_keys=self.root_keys,
            quorum=self.anchors.quorum,
        )

    def ca(self) -> FleetCa | None:
        """The fleet CA: with its private key when the offline directory is at hand."""
        if self.offline is not None:
            return load_offline_ca(self.offline)
        if self.plane is not None:
            path = key_directory_files(self.plane.directory, self.plane.name).ca
            if path.is_file():
                return load_ca(path)
        return None

    def topology_text(self) -> str | None:
        """The topology file's text, copied into new plane directories."""
        for folder in (self.directory, self.offline):
            if folder is not None and (folder / _TOPOLOGY_FILE).is_file():
                return (folder / _TOPOLOGY_FILE).read_text("utf-8")
        return None

    def record(self, name: str, chain: Sequence[Delegation]) -> None:
        """Add plane ``name``'s new chain to every directory at hand (issuer, offline)."""
        for folder in dict.fromkeys(f for f in (self.directory, self.offline) if f is not None):
            record_chain(folder, name, chain)


def load_issuer(
    directory: str | Path,
    *,
    issuer: str | None = None,
    target: str | None = None,
    offline: str | Path | None = None,
) -> IssuerKeys:
    """Read what an issuer holds: its plane directory, the offline directory, or both.

    Args:
        directory: The issuer's plane directory; the offline directory (the roots issue);
            or the whole output of ``keys init``, where ``issuer`` (or ``target``'s issuer,
            found from its chain) picks the directory to read.
        issuer: The plane expected to issue.
        target: The plane acted on (revoke, rotate): finds the issuer in a ``keys init``
            output.
        offline: The offline directory, for the root keys and the fleet CA's private key.

    Raises:
        KeyFileError: a directory cannot be read, or is not the expected issuer's.
    """
    root = Path(directory)
    offline_dir = None if offline is None else Path(offline)
    if offline_dir is not None and is_ceremony(offline_dir):
        offline_dir = offline_dir / OFFLINE_DIR
    ceremony = root if is_ceremony(root) else None
    if ceremony is not None:
        offline_dir = offline_dir or ceremony / OFFLINE_DIR
        if issuer is None and target is not None:
            from .keydir import issuer_name  # noqa: PLC0415

            issuer = issuer_name(load_offline(offline_dir).chains, check_directory_name(target))
        root = plane_directory(ceremony, issuer) if issuer is not None else offline_dir
    fleet = _read_json(root / "fleet.json")
    if "plane" in fleet:
        plane = load_plane(root, issuer)
        roots = () if offline_dir is None else load_offline(offline_dir).root_keys
        return IssuerKeys(plane.anchors, plane.chains, plane, roots, root, offline_dir, ceremony)
    if issuer is not None:
        raise KeyFileError(
            f"this is the offline directory: give {issuer}'s plane directory",
            path=str(root),
            reason="plane",
        )
    keys = load_offline(root)
    return IssuerKeys(keys.anchors, keys.chains, None, keys.root_keys, root, root, ceremony)
