"""A small deterministic fleet for tests: fixed keys, signed delegations and envelopes.

Every key comes from a fixed seed, so every run (and every machine) builds byte-identical
delegations and envelopes. The default fleet follows the product brief::

    root (pinned anchor)
    ├── global     GLOBAL      full         every capability
    ├── region-a   REGIONAL    full         every capability
    │   ├── edge-a1   LOCAL    conditional  policies, status, isolated operation
    │   └── edge-a2   LOCAL    conditional  policies, status, isolated operation
    ├── region-b   REGIONAL    full         every capability
    │   └── edge-b1   LOCAL    full (air-gapped)
    └── edge-c     AUTONOMOUS  full         everything but delegate

Typical use::

    fleet = make_fleet()
    authority = fleet.authority()
    sealed = fleet["edge-a1"].seal(seq=1, payload=b"...")
    verified = open_envelope(sealed.data, authority, physical_now=NOW, max_offset=500)
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from typing import Final

import attrs

from souverix_crdt.authority import (
    Authority,
    Capability,
    Delegation,
    PublicKey,
    SigningKey,
    TrustAnchors,
    check_plane_name,
    issue_delegation,
)
from souverix_crdt.envelope import SealedEnvelope, seal
from souverix_crdt.errors import SouverixError
from souverix_crdt.hlc import Timestamp
from souverix_crdt.scope import Autonomy, Scope, Tier

__all__ = [
    "ALL_CAPABILITIES",
    "DEFAULT_SEED",
    "EDGE_CAPABILITIES",
    "FLEET_ID",
    "NOT_AFTER",
    "NOT_BEFORE",
    "NOW",
    "EnvelopeWriter",
    "Fleet",
    "Member",
    "key_from_seed",
    "make_fleet",
]

#: The fleet id of the default test fleet.
FLEET_ID: Final = "souverix-test"
#: Prefix of the default key seeds.
DEFAULT_SEED: Final = b"souverix-crdt/testing/v1\x00"
#: 2020-01-01T00:00:00Z: start of every default delegation's window.
NOT_BEFORE: Final = Timestamp(1_577_836_800_000)
#: 2100-01-01T00:00:00Z: end of every default delegation's window (exclusive).
NOT_AFTER: Final = Timestamp(4_102_444_800_000)
#: 2023-11-14T22:13:20Z: the default "physical now" of tests, in milliseconds.
NOW: Final = 1_700_000_000_000

#: Every capability.
ALL_CAPABILITIES: Final = frozenset(Capability)
#: What an edge zone holds in the default fleet.
EDGE_CAPABILITIES: Final = frozenset(
    {Capability.MODIFY_POLICIES, Capability.REPORT_STATUS, Capability.OPERATE_ISOLATED}
)


def key_from_seed(name: str, *, seed: bytes = DEFAULT_SEED) -> SigningKey:
    """The signing key derived from ``seed`` and ``name`` (the same on every run)."""
    return SigningKey.from_private_bytes(hashlib.sha256(seed + name.encode()).digest())


@attrs.frozen
class Member:
    """A control plane of the test fleet: its key, its leaf delegation and the whole chain.

    Attributes:
        name: The member's name (``"edge-a1"``).
        key: Its signing key.
        chain: Its delegation chain, root-issued link first, its own delegation last.
        fleet_id: The fleet id.
    """

    name: str
    key: SigningKey
    chain: tuple[Delegation, ...]
    fleet_id: str = FLEET_ID

    @property
    def delegation(self) -> Delegation:
        """Its own (leaf) delegation."""
        return self.chain[-1]

    @property
    def public(self) -> PublicKey:
        """Its public key."""
        return self.key.public

    @property
    def key_id(self) -> str:
        """Its key id."""
        return self.key.key_id

    @property
    def scope(self) -> Scope:
        """The scope subtree it was delegated."""
        return self.delegation.scope

    @property
    def digest(self) -> bytes:
        """The digest of its leaf delegation (what its envelopes name)."""
        return self.delegation.digest

    def seal(
        self,
        *,
        seq: int = 1,
        prev: bytes = b"",
        hlc: Timestamp | None = None,
        scope: Scope | str | None = None,
        payload: bytes = b"",
        state_vector: bytes = b"",
        delegation_digest: bytes | None = None,
        fleet_id: str | None = None,
        epoch: int = 0,
    ) -> SealedEnvelope:
        """Seal an envelope as this member (defaults: its own scope, ``NOW``, its leaf)."""
        return seal(
            self.key,
            fleet_id=self.fleet_id if fleet_id is None else fleet_id,
            scope=self.scope if scope is None else scope,
            seq=seq,
            prev=prev,
            hlc=Timestamp(NOW) if hlc is None else hlc,
            state_vector=state_vector,
            delegation_digest=self.digest if delegation_digest is None else delegation_digest,
            payload=payload,
            epoch=epoch,
        )

    def writer(self, scope: Scope | str | None = None) -> EnvelopeWriter:
        """A writer that numbers and chains this member's envelopes in ``scope``."""
        return EnvelopeWriter(self, Scope.parse(self.scope if scope is None else scope))


class EnvelopeWriter:
    """Seals consecutive envelopes of one member in one scope (``seq`` and ``prev`` tracked).

    Args:
        member: The writing member.
        scope: The scope written.
    """

    def __init__(self, member: Member, scope: Scope) -> None:
        self.member = member
        self.scope = scope
        self.seq = 0
        self.prev = b""

    def next(
        self, payload: bytes = b"", *, hlc: Timestamp | None = None, state_vector: bytes = b""
    ) -> SealedEnvelope:
        """Seal the next envelope (``hlc`` defaults to ``NOW`` plus the sequence number)."""
        seq = self.seq + 1
        sealed = self.member.seal(
            seq=seq,
            prev=self.prev,
            hlc=Timestamp(NOW + seq) if hlc is None else hlc,
            scope=self.scope,
            payload=payload,
            state_vector=state_vector,
        )
        self.seq = seq
        self.prev = sealed.id
        return sealed


class Fleet:
    """Root keys, anchors and members of a deterministic test fleet.

    Args:
        fleet_id: The fleet id.
        roots: How many root keys to pin.
        quorum: How many of them sign root-level acts.
        seed: Prefix of every key seed; change it for an unrelated fleet with other keys.
    """

    def __init__(
        self,
        fleet_id: str = FLEET_ID,
        *,
        roots: int = 1,
        quorum: int = 1,
        seed: bytes = DEFAULT_SEED,
    ) -> None:
        self.fleet_id = fleet_id
        self.seed = seed
        self.root_keys = tuple(key_from_seed(f"root-{index}", seed=seed) for index in range(roots))
        self.anchors = TrustAnchors(
            fleet_id, frozenset(key.public for key in self.root_keys), quorum
        )
        self.members: dict[str, Member] = {}

    @property
    def root(self) -> SigningKey:
        """The first root key."""
        return self.root_keys[0]

    @property
    def quorum_keys(self) -> tuple[SigningKey, ...]:
        """Exactly enough root keys to reach the quorum."""
        return self.root_keys[: self.anchors.quorum]

    def __getitem__(self, name: str) -> Member:
        return self.members[name]

    def __iter__(self) -> Iterator[Member]:
        return iter(self.members.values())

    def key(self, name: str) -> SigningKey:
        """The fleet's deterministic key for ``name`` (a member's, or a spare one)."""
        return key_from_seed(name, seed=self.seed)

    def delegate(
        self,
        name: str,
        *,
        parent: str | None,
        scope: Scope | str,
        capabilities: Iterable[Capability],
        tier: Tier,
        autonomy: Autonomy,
        not_before: Timestamp = NOT_BEFORE,
        not_after: Timestamp = NOT_AFTER,
        serial: int = 0,
        key: SigningKey | None = None,
    ) -> Member:
        """Issue a delegation to ``name`` (from the roots, or from member ``parent``) and add it.

        Nothing is checked: an invalid delegation (wider than its parent...) is issued as asked,
        so tests can build bad chains in one line.
        """
        subject_key = self.key(name) if key is None else key
        if parent is None:
            issuers: SigningKey | tuple[SigningKey, ...] = self.quorum_keys
            parent_chain: tuple[Delegation, ...] = ()
        else:
            issuers = self.members[parent].key
            parent_chain = self.members[parent].chain
        delegation = issue_delegation(
            issuers,
            fleet_id=self.fleet_id,
            subject=subject_key.public,
            scope=scope,
            capabilities=capabilities,
            tier=tier,
            autonomy=autonomy,
            not_before=not_before,
            not_after=not_after,
            parent=parent_chain[-1] if parent_chain else None,
            serial=serial,
            # Named as the member, like a real fleet's planes (whose names are unique where
            # scopes' last segments need not be); a name that is no plane name stays unnamed.
            name=name if _is_plane_name(name) else "",
        )
        member = Member(name, subject_key, (*parent_chain, delegation), self.fleet_id)
        self.members[name] = member
        return member

    def authority(self, *, members: Iterable[str] | None = None) -> Authority:
        """An :class:`Authority` knowing the chains of ``members`` (default: all of them).

        Raises:
            AuthorityError: a member's chain does not verify to the anchors (the registry
                records only chains that do; see :meth:`Authority.add_delegation`).
        """
        authority = Authority(self.anchors)
        names = self.members if members is None else members
        for name in names:
            for link in self.members[name].chain:
                authority.add_delegation(link)
        return authority


def _is_plane_name(name: str) -> bool:
    try:
        check_plane_name(name)
    except SouverixError:
        return False
    return True


def make_fleet(
    fleet_id: str = FLEET_ID, *, roots: int = 1, quorum: int = 1, seed: bytes = DEFAULT_SEED
) -> Fleet:
    """The default fleet of the module docstring, deterministic for a given ``seed``."""
    fleet = Fleet(fleet_id, roots=roots, quorum=quorum, seed=seed)
    root_scope = Scope.root()
    fleet.delegate(
        "global",
        parent=None,
        scope=root_scope,
        capabilities=ALL_CAPABILITIES,
        tier=Tier.GLOBAL,
        autonomy=Autonomy.FULL,
    )
    for region in ("region-a", "region-b"):
        fleet.delegate(
            region,
            parent=None,
            scope=root_scope.child(region),
            capabilities=ALL_CAPABILITIES,
            tier=Tier.REGIONAL,
            autonomy=Autonomy.FULL,
        )
    for region, edge, autonomy in (
        ("region-a", "edge-a1", Autonomy.CONDITIONAL),
        ("region-a", "edge-a2", Autonomy.CONDITIONAL),
        ("region-b", "edge-b1", Autonomy.FULL),
    ):
        fleet.delegate(
            edge,
            parent=region,
            scope=root_scope.child(region).child(edge),
            capabilities=EDGE_CAPABILITIES,
            tier=Tier.LOCAL,
            autonomy=autonomy,
        )
    fleet.delegate(
        "edge-c",
        parent=None,
        scope=root_scope.child("edge-c"),
        capabilities=ALL_CAPABILITIES - {Capability.DELEGATE},
        tier=Tier.AUTONOMOUS,
        autonomy=Autonomy.FULL,
    )
    return fleet
