"""Chain verification: the rights a writer holds through exactly one delegation chain."""

from __future__ import annotations

from collections.abc import Sequence

import attrs

from souverix_crdt.errors import (
    CapabilityViolationError,
    ExpiredError,
    ForeignFleetError,
    NotYetValidError,
    ScopeViolationError,
    TooLargeError,
    UnknownDelegationError,
    UntrustedKeyError,
)
from souverix_crdt.hlc import Timestamp
from souverix_crdt.naming import describe_writer, plane_name
from souverix_crdt.scope import Autonomy, Scope, Tier

from ._wire import (
    MAX_CHAIN_DEPTH,
    _malformed,
)
from .anchors import (
    TrustAnchors,
    _check_root_act,
)
from .capabilities import (
    COLLECTION_CAPABILITY,
    Capability,
)
from .delegation import (
    Delegation,
)
from .keys import (
    PublicKey,
    _verify_signatures,
)

# --------------------------------------------------------------------------- chains


@attrs.frozen(repr=False)
class Grant:
    """The rights a writer holds through one verified chain, at one point in time.

    Attributes:
        subject: The writer's public key.
        scope: The scope subtree it may write.
        capabilities: What it may do there.
        tier: Its authority tier.
        autonomy: Its autonomy.
        not_before: Start of the leaf's validity window (inclusive).
        not_after: End of the leaf's validity window (exclusive).
        leaf_digest: Digest of the leaf delegation (the one envelopes name).
        chain_digests: Digests of the chain's links, root-issued link first, leaf last.
        chain_subjects: Key ids of the links' subjects, in the same order (the writer last).
        name: The plane name its leaf delegation binds (``""`` if it binds none).
    """

    subject: PublicKey
    scope: Scope
    capabilities: frozenset[Capability]
    tier: Tier
    autonomy: Autonomy
    not_before: Timestamp
    not_after: Timestamp
    leaf_digest: bytes
    chain_digests: tuple[bytes, ...]
    chain_subjects: tuple[str, ...]
    name: str = ""

    @property
    def subject_key_id(self) -> str:
        """The writer's key id."""
        return self.subject.key_id

    @property
    def plane(self) -> str:
        """The plane name the verified chain gives the writer (see ``naming.plane_name``)."""
        return plane_name(self)

    @property
    def writer_label(self) -> str:
        """``"region-a (key <key id>)"``: how messages name the writer."""
        return describe_writer(self.plane, f"key {self.subject_key_id}")

    @property
    def rank(self) -> int:
        """The tier's rank (higher wins under authority precedence)."""
        return self.tier.rank

    def allows(self, capability: Capability) -> bool:
        """True if the grant includes ``capability``."""
        return capability in self.capabilities

    def allows_collection(self, name: str) -> bool:
        """True if the writer's entries in collection ``name`` count (unknown names: False)."""
        needed = COLLECTION_CAPABILITY.get(name)
        return needed is not None and needed in self.capabilities

    def covers(self, scope: Scope | str) -> bool:
        """True if ``scope`` lies in the granted subtree (segment by segment)."""
        return self.scope.contains(Scope.parse(scope))

    def check_scope(self, scope: Scope | str) -> None:
        """Raise unless ``scope`` lies in the granted subtree.

        Raises:
            ScopeViolationError: if it does not.
        """
        target = Scope.parse(scope)
        if not self.scope.contains(target):
            raise ScopeViolationError(
                f"{self.writer_label} holds {self.scope}, not {target}",
                reason="scope",
                scope=str(target),
                writer=self.subject_key_id,
                plane=self.plane,
            )

    def check_capability(self, capability: Capability) -> None:
        """Raise unless the grant includes ``capability``.

        Raises:
            CapabilityViolationError: if it does not.
        """
        if capability not in self.capabilities:
            raise CapabilityViolationError(
                f"{self.writer_label} lacks {capability.value}",
                reason=capability.value,
                scope=str(self.scope),
                writer=self.subject_key_id,
                plane=self.plane,
            )

    def __repr__(self) -> str:
        caps = ",".join(sorted(capability.value for capability in self.capabilities))
        return (
            f"Grant(subject={self.subject_key_id!r}, scope={str(self.scope)!r}, caps={caps!r}, "
            f"tier={self.tier.value!r}, autonomy={self.autonomy.value!r})"
        )


def _check_attenuation(parent: Delegation, link: Delegation) -> None:
    """Each link may only narrow its parent: scope, capabilities, tier, autonomy, window."""
    scope = str(link.scope)
    writer = link.subject.key_id
    if not parent.scope.contains(link.scope):
        raise ScopeViolationError(
            f"link for {link.scope} widens its parent's scope {parent.scope}",
            reason="scope-widened",
            scope=scope,
            writer=writer,
        )
    extra = link.capabilities - parent.capabilities
    if extra:
        names = ", ".join(sorted(capability.value for capability in extra))
        raise CapabilityViolationError(
            f"link grants {names}, which its issuer does not hold",
            reason="capability-amplified",
            scope=scope,
            writer=writer,
        )
    if link.tier.rank > parent.tier.rank:
        raise CapabilityViolationError(
            f"link raises the tier from {parent.tier.value} to {link.tier.value}",
            reason="tier-amplified",
            scope=scope,
            writer=writer,
        )
    # A conditional scope's writes yield to higher authority on reconnect; delegating full
    # autonomy below it would let its subtree escape that rule.
    if parent.autonomy is Autonomy.CONDITIONAL and link.autonomy is Autonomy.FULL:
        raise CapabilityViolationError(
            "a conditional issuer cannot delegate full autonomy",
            reason="autonomy-amplified",
            scope=scope,
            writer=writer,
        )
    if link.not_before < parent.not_before:
        raise NotYetValidError(
            f"link window starts at {link.not_before}, before its parent's {parent.not_before}",
            reason="window-widened",
            scope=scope,
            writer=writer,
        )
    if link.not_after > parent.not_after:
        raise ExpiredError(
            f"link window ends at {link.not_after}, after its parent's {parent.not_after}",
            reason="window-widened",
            scope=scope,
            writer=writer,
        )


def _check_window(link: Delegation, at: Timestamp) -> None:
    scope = str(link.scope)
    writer = link.subject.key_id
    if at < link.not_before:
        raise NotYetValidError(
            f"delegation to {writer} is valid from {link.not_before}, judged at {at}",
            reason="not-yet-valid",
            scope=scope,
            writer=writer,
        )
    if at >= link.not_after:
        raise ExpiredError(
            f"delegation to {writer} expired at {link.not_after}, judged at {at}",
            reason="expired",
            scope=scope,
            writer=writer,
        )


def _check_issued_by(parent: Delegation, link: Delegation) -> None:
    """``link`` names ``parent``, is signed by its subject alone, and ``parent`` may delegate."""
    scope = str(link.scope)
    writer = link.subject.key_id
    if link.parent != parent.digest:
        raise UntrustedKeyError(
            "link does not name the previous link as its parent",
            reason="chain-broken",
            scope=scope,
            writer=writer,
        )
    issuer = parent.subject.key_id
    if link.issuers != (issuer,):
        raise UntrustedKeyError(
            f"link must be signed by its parent's subject {issuer} alone",
            reason="issuer",
            scope=scope,
            writer=writer,
        )
    if Capability.DELEGATE not in parent.capabilities:
        raise CapabilityViolationError(
            f"issuer {issuer} does not hold delegate",
            reason="delegate",
            scope=scope,
            writer=issuer,
        )


def _verify_chain(
    anchors: TrustAnchors,
    chain: Sequence[Delegation],
    *,
    at: Timestamp | None,
    max_depth: int,
    check_signatures: bool,
) -> Grant:
    # ``at=None`` checks the structure alone (signatures, roots, links, attenuation, depth),
    # which does not change with time: what a registry needs before it stores a link. An
    # expired link still verifies that way; its window is judged when a grant is used.
    if not chain:
        raise _malformed("an empty chain grants nothing", "chain-empty")
    if len(chain) > max_depth:
        raise TooLargeError(f"chain longer than {max_depth} links", reason="chain-depth")
    seen_subjects = set(anchors.root_ids)
    parent: Delegation | None = None
    for link in chain:
        if not isinstance(link, Delegation):
            raise TypeError("a chain holds Delegation values")
        if link.fleet_id != anchors.fleet_id:
            raise ForeignFleetError(
                f"delegation belongs to fleet {link.fleet_id!r}, not {anchors.fleet_id!r}",
                fleet_id=link.fleet_id,
            )
        if parent is not None:
            _check_issued_by(parent, link)
            _check_attenuation(parent, link)
        elif link.is_root_issued:
            _check_root_act(
                anchors, link.signatures, what="root-issued delegation", scope=str(link.scope)
            )
        else:
            raise UnknownDelegationError(
                "chain does not start at a root-issued delegation",
                missing=link.parent,
                reason="chain-not-rooted",
                scope=str(link.scope),
                writer=link.subject.key_id,
            )
        if check_signatures:
            _verify_signatures(link.signatures, link.signed_bytes)
        if link.subject.key_id in seen_subjects:
            raise _malformed(f"key {link.subject.key_id} appears twice in one chain", "chain-cycle")
        seen_subjects.add(link.subject.key_id)
        if at is not None:
            _check_window(link, at)
        parent = link
    assert parent is not None
    return Grant(
        subject=parent.subject,
        scope=parent.scope,
        capabilities=parent.capabilities,
        tier=parent.tier,
        autonomy=parent.autonomy,
        not_before=parent.not_before,
        not_after=parent.not_after,
        leaf_digest=parent.digest,
        chain_digests=tuple(link.digest for link in chain),
        chain_subjects=tuple(link.subject.key_id for link in chain),
        name=parent.name,
    )


def verify_chain(
    anchors: TrustAnchors,
    chain: Sequence[Delegation],
    *,
    at: Timestamp,
    max_depth: int = MAX_CHAIN_DEPTH,
) -> Grant:
    """Verify a delegation chain, root-issued link first, and return the leaf's rights at ``at``.

    Revocations are not consulted here (see :meth:`Authority.check_not_revoked`).

    Raises:
        UntrustedKeyError: a root-issued link signed by a key that is not a pinned root (a
            self-signed "root"), or a link not signed by its parent's subject.
        UnknownDelegationError: the first link is not root-issued (its parent is missing).
        QuorumError: fewer distinct root signatures than the quorum.
        SignatureError: a signature does not verify.
        ForeignFleetError: a link of another fleet.
        ScopeViolationError: a link widens its parent's scope.
        CapabilityViolationError: a link amplifies capabilities, tier or autonomy, or its issuer
            lacks ``delegate``.
        NotYetValidError: a link's window starts before its parent's, or after ``at``.
        ExpiredError: a link's window ends after its parent's, or at or before ``at``.
        TooLargeError: more than ``max_depth`` links.
        MalformedEnvelopeError: an empty chain, or a key appearing twice.
    """
    return _verify_chain(anchors, chain, at=at, max_depth=max_depth, check_signatures=True)
