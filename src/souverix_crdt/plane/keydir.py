"""Changing a key directory after bootstrap: new delegations, revocations and key rotations.

:mod:`souverix_crdt.plane.keyring` makes and reads a key directory for a whole topology. Operators
then change it: a new zone gets a key and a delegation from its region, a leaked key is revoked,
a key that has served its time is rotated. Each change here is a pure function from the
:class:`~souverix_crdt.plane.keyring.FederationKeys` it reads to the signed objects it makes; the
caller saves them (:func:`~souverix_crdt.plane.keyring.save_keys`, :func:`save_revocation`).

Two files are added to the keyring layout::

    <dir>/topology.yaml            the topology the keys were made for (``keys init`` copies it)
    <dir>/revocations/<id>.rev     signed revocations, raw; every peer learns them at start

Who signs
    A plane's delegation and its revocation are signed by whoever issued the plane's own
    delegation: the plane above it, or a quorum of the root keys for ``global``. Root keys are
    read from the directory; when they are kept offline, root-issued acts fail with a clear
    :class:`~souverix_crdt.errors.KeyFileError`.

What a revocation keeps
    Revoking a key cuts every chain that runs through it, unless the revocation *keeps* the
    delegations that key issued (see :mod:`souverix_crdt.authority`). The directory knows which
    delegations the key issued before the revocation (its child planes' links), so by default
    they are kept: the zones under a rotated region go on writing. Pass ``keep_children=False``
    for a key that leaked, whose children cannot be vouched for.
"""

from __future__ import annotations

import types
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Final

from souverix_crdt.authority import (
    Capability,
    Delegation,
    Revocation,
    SigningKey,
    check_plane_name,
    cut_key,
    issue_delegation,
    issue_revocation,
    rotate_key,
    verify_chain,
)
from souverix_crdt.envelope import chain_writer
from souverix_crdt.errors import KeyFileError, SouverixError
from souverix_crdt.hlc import Timestamp
from souverix_crdt.scope import Autonomy, Scope, Tier
from souverix_crdt.store.base import Store

from .keyring import DEFAULT_VALIDITY_MS, FederationKeys, PlaneCredentials

__all__ = [
    "REVOCATIONS_DIR",
    "TOPOLOGY_FILE",
    "children_of",
    "cut_from_store",
    "delegate_plane",
    "issuer_keys",
    "issuer_name",
    "known_children",
    "load_revocations",
    "revoke_known",
    "revoke_plane",
    "rotate_known",
    "rotate_plane",
    "save_revocation",
    "signers_of",
]

#: Where a key directory keeps the topology it was made for.
TOPOLOGY_FILE: Final = "topology.yaml"
#: Where a key directory keeps signed revocations.
REVOCATIONS_DIR: Final = "revocations"
#: Slack before "now" at which new windows start, for clocks slightly behind the operator's.
_SKEW_MS: Final = 3_600_000


def _plane(keys: FederationKeys, name: str) -> PlaneCredentials:
    try:
        return keys.planes[name]
    except KeyError:
        known = ", ".join(keys.planes)
        raise KeyFileError(f"no plane {name!r} here (planes: {known})", path=name) from None


def issuer_keys(keys: FederationKeys, name: str) -> tuple[SigningKey, ...]:
    """The key(s) that issued plane ``name``'s own delegation.

    Raises:
        KeyFileError: the plane is unknown, its issuer's key is not in the directory (rotated
            away), or the root keys it needs are kept offline.
    """
    leaf = _plane(keys, name).delegation
    if not leaf.parent:
        roots = [key for key in keys.root_keys if key.key_id in leaf.issuers]
        if len(roots) < keys.anchors.quorum:
            raise KeyFileError(
                f"{name} is delegated by the root keys, and fewer than the quorum of "
                f"{keys.anchors.quorum} are in this directory (kept offline?)",
                path="roots",
                reason="missing",
            )
        return tuple(roots[: keys.anchors.quorum])
    for creds in keys.planes.values():
        if creds.key_id in leaf.issuers:
            return (creds.key,)
    raise KeyFileError(
        f"the key that delegated {name} ({leaf.issuers[0]}) is no longer in this directory",
        path=name,
        reason="missing",
    )


def children_of(keys: FederationKeys, name: str) -> list[Delegation]:
    """The delegations plane ``name``'s key issued to other planes of the directory."""
    key_id = _plane(keys, name).key_id
    issued: dict[bytes, Delegation] = {}
    for creds in keys.planes.values():
        for link in creds.chain:
            if key_id in link.issuers:
                issued[link.digest] = link
    return list(issued.values())


def delegate_plane(
    keys: FederationKeys,
    *,
    issuer: str,
    name: str,
    scope: Scope | str,
    capabilities: Iterable[Capability],
    tier: Tier,
    autonomy: Autonomy,
    now_ms: int,
    validity_ms: int = DEFAULT_VALIDITY_MS,
    key: SigningKey | None = None,
) -> FederationKeys:
    """Give a new plane ``name`` a key and a delegation from plane ``issuer``.

    The window starts an hour before ``now_ms`` and lasts ``validity_ms``, cut to the issuer's
    own window (a link can never outlive its parent).

    Returns:
        The directory's keys with the new plane added.

    Raises:
        KeyFileError: ``name`` exists already, or ``issuer`` is unknown.
        AuthorityError: the chain would not verify (a scope outside the issuer's, a capability
            it does not hold, a higher tier...): the typed subclass says which.
    """
    try:
        check_plane_name(name)
    except SouverixError as exc:
        # The name becomes file names in the key directory: refuse "../x" before any is written.
        raise KeyFileError(
            f"plane name {name!r} must be lower-case letters, digits and inner hyphens",
            path=name,
            reason="name",
        ) from exc
    if name in keys.planes:
        raise KeyFileError(f"a plane called {name!r} exists already", path=name, reason="exists")
    parent = _plane(keys, issuer)
    subject = SigningKey.generate() if key is None else key
    not_before = Timestamp(max(parent.delegation.not_before.wall, now_ms - _SKEW_MS))
    not_after = Timestamp(min(parent.delegation.not_after.wall, not_before.wall + validity_ms))
    delegation = issue_delegation(
        parent.key,
        fleet_id=keys.fleet_id,
        subject=subject.public,
        scope=scope,
        capabilities=capabilities,
        tier=tier,
        autonomy=autonomy,
        not_before=not_before,
        not_after=not_after,
        parent=parent.delegation,
        name=name,
    )
    chain = (*parent.chain, delegation)
    verify_chain(keys.anchors, chain, at=Timestamp(max(now_ms, not_before.wall)))
    planes = {**keys.planes, name: PlaneCredentials(name, subject, chain)}
    return FederationKeys(keys.anchors, types.MappingProxyType(planes), keys.root_keys)


def revoke_plane(
    keys: FederationKeys,
    name: str,
    *,
    cut: Mapping[str, int],
    now_ms: int,
    keep_children: bool = True,
) -> Revocation:
    """Revoke plane ``name``'s key, signed by its issuer.

    Args:
        keys: The directory's keys.
        name: The plane whose key is revoked.
        cut: Per scope path, the key's last sequence number that still counts (see
            :func:`cut_from_store`); a scope not listed keeps none of its writes.
        now_ms: The issuer's clock, in milliseconds.
        keep_children: Keep the delegations the key issued to other planes valid.

    Raises:
        KeyFileError: the plane or its issuer's key is not in the directory.
    """
    creds = _plane(keys, name)
    return issue_revocation(
        issuer_keys(keys, name),
        fleet_id=keys.fleet_id,
        revoked=creds.key.public,
        cut=dict(cut),
        hlc=Timestamp(now_ms),
        kept=children_of(keys, name) if keep_children else (),
    )


def rotate_plane(
    keys: FederationKeys,
    name: str,
    *,
    cut: Mapping[str, int],
    now_ms: int,
    key: SigningKey | None = None,
) -> tuple[FederationKeys, Delegation, Revocation]:
    """Move plane ``name``'s authority to a new key: a new delegation, the old key revoked.

    The delegations the old key issued are kept, so the planes below keep writing through it.

    Returns:
        The directory's keys with the plane's new key and chain, the new delegation, and the
        revocation of the old key.

    Raises:
        KeyFileError: the plane or its issuer's key is not in the directory.
    """
    creds = _plane(keys, name)
    new_key = SigningKey.generate() if key is None else key
    delegation, revocation = rotate_key(
        issuer_keys(keys, name),
        creds.delegation,
        new_key.public,
        cut=dict(cut),
        hlc=Timestamp(now_ms),
        kept=children_of(keys, name),
    )
    planes = {
        **keys.planes,
        name: PlaneCredentials(name, new_key, (*creds.chain[:-1], delegation)),
    }
    return (
        FederationKeys(keys.anchors, types.MappingProxyType(planes), keys.root_keys),
        delegation,
        revocation,
    )


def cut_from_store(store: Store, key_id: str) -> dict[str, int]:
    """Per chain, the highest sequence number of ``key_id``'s chains that ``store`` holds.

    What a revoker has seen of the key, as its own store records it: the natural cut. Keys are
    :func:`~souverix_crdt.authority.cut_key` entries (scope and epoch), since every process
    incarnation of a key numbers its own chain from 1.
    """
    cut: dict[str, int] = {}
    for (scope, chain), (seq, _) in store.frontiers().items():
        if chain_writer(chain) == key_id:
            entry = cut_key(scope, int(chain.partition("~")[2] or "0", 16))
            cut[entry] = max(cut.get(entry, 0), seq)
    return cut


def save_revocation(directory: str | Path, revocation: Revocation) -> Path:
    """Write ``revocation`` into ``directory/revocations/`` (idempotent); return its path."""
    folder = Path(directory) / REVOCATIONS_DIR
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = folder / f"{revocation.revoked}-{revocation.digest.hex()[:16]}.rev"
    path.write_bytes(revocation.encode())
    return path


def load_revocations(directory: str | Path) -> list[bytes]:
    """Every revocation file of a key directory, raw and in name order (none: empty).

    Raises:
        KeyFileError: a file does not decode as a revocation.
    """
    folder = Path(directory) / REVOCATIONS_DIR
    items = []
    for path in sorted(folder.glob("*.rev")):
        data = path.read_bytes()
        try:
            Revocation.decode(data)
        except SouverixError as exc:
            raise KeyFileError(f"not a revocation: {exc}", path=str(path), reason="format") from exc
        items.append(data)
    return items


# --------------------------------------------------------------------------- per-plane directories


def issuer_name(chains: Mapping[str, tuple[Delegation, ...]], name: str) -> str | None:
    """The plane whose key issued plane ``name``'s delegation; ``None`` for the root keys.

    Raises:
        KeyFileError: ``name``'s chain is unknown, or its issuer is no plane of ``chains``.
    """
    try:
        leaf = chains[name][-1]
    except KeyError:
        known = ", ".join(chains)
        raise KeyFileError(f"no plane {name!r} known here (planes: {known})", path=name) from None
    if not leaf.parent:
        return None
    for plane, chain in chains.items():
        if chain[-1].subject.key_id in leaf.issuers:
            return plane
    raise KeyFileError(
        f"the key that delegated {name} ({leaf.issuers[0]}) is no plane's any more",
        path=name,
        reason="missing",
    )


def signers_of(
    chains: Mapping[str, tuple[Delegation, ...]],
    name: str,
    *,
    plane: PlaneCredentials | None = None,
    root_keys: Iterable[SigningKey] = (),
    quorum: int = 1,
) -> tuple[SigningKey, ...]:
    """The key(s) that may sign for plane ``name``: its issuer's, from what is at hand.

    Args:
        chains: The public chains known (``name``'s among them).
        name: The plane acted on.
        plane: The issuer's own credentials (its plane directory), if the issuer is a plane.
        root_keys: The root keys at hand (the offline directory), if the issuer is the roots.
        quorum: How many root keys a root act needs.

    Raises:
        KeyFileError: the key at hand is not ``name``'s issuer (``reason="issuer"``), or
            fewer than ``quorum`` of the roots that issued it are at hand.
    """
    leaf = chains[name][-1] if name in chains else None
    issuer = issuer_name(chains, name)
    assert leaf is not None  # issuer_name raised otherwise
    if issuer is None:
        roots = [key for key in root_keys if key.key_id in leaf.issuers]
        if len(roots) < quorum:
            raise KeyFileError(
                f"{name} is delegated by the root keys: run this with the offline directory, "
                f"holding at least {quorum} of them",
                path="roots",
                reason="missing",
            )
        return tuple(roots[:quorum])
    if plane is None or plane.key_id not in leaf.issuers:
        raise KeyFileError(
            f"{name} is delegated by {issuer}: run this with {issuer}'s directory",
            path=name,
            reason="issuer",
        )
    return (plane.key,)


def known_children(chains: Mapping[str, tuple[Delegation, ...]], name: str) -> list[Delegation]:
    """The delegations plane ``name``'s key issued, among the known public chains."""
    key_id = chains[name][-1].subject.key_id
    issued: dict[bytes, Delegation] = {}
    for chain in chains.values():
        for link in chain:
            if key_id in link.issuers:
                issued[link.digest] = link
    return list(issued.values())


def revoke_known(
    fleet_id: str,
    chains: Mapping[str, tuple[Delegation, ...]],
    name: str,
    signers: Sequence[SigningKey],
    *,
    cut: Mapping[str, int],
    now_ms: int,
    keep_children: bool = True,
) -> Revocation:
    """Revoke plane ``name``'s key (its public chain is enough), signed by ``signers``."""
    return issue_revocation(
        signers,
        fleet_id=fleet_id,
        revoked=chains[name][-1].subject,
        cut=dict(cut),
        hlc=Timestamp(now_ms),
        kept=known_children(chains, name) if keep_children else (),
    )


def rotate_known(
    chains: Mapping[str, tuple[Delegation, ...]],
    name: str,
    signers: Sequence[SigningKey],
    *,
    cut: Mapping[str, int],
    now_ms: int,
    key: SigningKey | None = None,
) -> tuple[PlaneCredentials, Delegation, Revocation]:
    """Move plane ``name``'s authority to a new key, signed by ``signers`` (its issuer).

    Returns:
        The plane's new credentials, its new delegation and the revocation of the old key.
    """
    chain = chains[name]
    new_key = SigningKey.generate() if key is None else key
    delegation, revocation = rotate_key(
        signers,
        chain[-1],
        new_key.public,
        cut=dict(cut),
        hlc=Timestamp(now_ms),
        kept=known_children(chains, name),
    )
    return PlaneCredentials(name, new_key, (*chain[:-1], delegation)), delegation, revocation
