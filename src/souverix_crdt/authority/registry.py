"""The Authority registry: what one replica knows of delegations and revocations."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from souverix_crdt.errors import (
    ForeignFleetError,
    RevokedError,
    TooLargeError,
    UnknownDelegationError,
    UntrustedKeyError,
)
from souverix_crdt.hlc import Timestamp
from souverix_crdt.scope import Autonomy, Scope

from ._wire import (
    MAX_CHAIN_DEPTH,
)
from .anchors import (
    TrustAnchors,
    _check_root_act,
)
from .capabilities import (
    Capability,
)
from .chain import (
    Grant,
    _verify_chain,
)
from .delegation import (
    Delegation,
)
from .keys import (
    PublicKey,
)
from .revocation import (
    Revocation,
    cut_key,
)

# --------------------------------------------------------------------------- the registry


class Authority:
    """What one replica knows: its trust anchors, delegations and revocations.

    The only mutable object of this module. Delegations are checked for shape and signatures
    when added and their chains verified on use, so they may arrive in any order. Revocations
    are checked for signatures and the issuer's authority when added.

    Args:
        anchors: The fleet's pinned roots.
        max_depth: Longest chain accepted.
    """

    __slots__ = (
        "_by_subject",
        "_conditional",
        "_delegations",
        "_revocations",
        "_revocations_of",
        "_root_revocations",
        "anchors",
        "max_depth",
    )

    def __init__(self, anchors: TrustAnchors, *, max_depth: int = MAX_CHAIN_DEPTH) -> None:
        if max_depth < 1:
            raise ValueError("max_depth must be >= 1")
        self.anchors = anchors
        self.max_depth = max_depth
        self._delegations: dict[bytes, Delegation] = {}
        self._by_subject: dict[str, list[Delegation]] = {}
        self._conditional: set[Scope] = set()
        self._revocations: dict[bytes, Revocation] = {}
        self._revocations_of: dict[str, list[Revocation]] = {}
        self._root_revocations: set[bytes] = set()

    # ------------------------------------------------------------------ delegations

    def _check_fleet(self, fleet_id: str) -> None:
        if fleet_id != self.anchors.fleet_id:
            raise ForeignFleetError(
                f"fleet {fleet_id!r} is not this replica's fleet {self.anchors.fleet_id!r}",
                fleet_id=fleet_id,
            )

    def add_delegation(self, delegation: Delegation) -> bool:
        """Record a delegation after checking its fleet and signatures; return whether it is new.

        Its chain is verified when a grant uses it, so a child may arrive before its parent.

        Raises:
            ForeignFleetError: if it belongs to another fleet.
            SignatureError: if a signature does not verify.
        """
        if delegation.digest in self._delegations:
            return False
        self._check_fleet(delegation.fleet_id)
        delegation.verify_signatures()
        self._delegations[delegation.digest] = delegation
        self._by_subject.setdefault(delegation.subject.key_id, []).append(delegation)
        if delegation.autonomy is Autonomy.CONDITIONAL:
            self._conditional.add(delegation.scope)
        return True

    def is_conditional(self, scope: Scope) -> bool:
        """True if some known delegation makes ``scope`` conditionally autonomous."""
        return scope in self._conditional

    def delegation(self, digest: bytes) -> Delegation | None:
        """The known delegation with ``digest``, if any."""
        return self._delegations.get(digest)

    def delegations(self) -> Iterator[Delegation]:
        """Every known delegation, in digest order (deterministic)."""
        for digest in sorted(self._delegations):
            yield self._delegations[digest]

    def delegations_for(self, key_id: str) -> tuple[Delegation, ...]:
        """The known delegations whose subject is ``key_id``."""
        return tuple(self._by_subject.get(key_id, ()))

    def public_key(self, key_id: str) -> PublicKey | None:
        """The public key with ``key_id`` among the roots and known delegation subjects."""
        root = self.anchors.root(key_id)
        if root is not None:
            return root
        known = self._by_subject.get(key_id)
        return known[0].subject if known else None

    def chain(self, leaf_digest: bytes) -> tuple[Delegation, ...]:
        """The chain ending at ``leaf_digest``, root-issued link first, built from parent links.

        Raises:
            UnknownDelegationError: if a link is not known yet (``missing`` is its digest).
            TooLargeError: if the chain is longer than :attr:`max_depth`.
        """
        links: list[Delegation] = []
        digest = leaf_digest
        while True:
            link = self._delegations.get(digest)
            if link is None:
                raise UnknownDelegationError(
                    f"delegation {digest.hex()} is not known yet", missing=digest
                )
            links.append(link)
            if link.is_root_issued:
                break
            if len(links) >= self.max_depth:
                raise TooLargeError(
                    f"chain longer than {self.max_depth} links", reason="chain-depth"
                )
            digest = link.parent
        links.reverse()
        return tuple(links)

    def grant_for(self, writer_key_id: str, leaf_digest: bytes, *, at: Timestamp) -> Grant:
        """The rights ``writer_key_id`` holds through the chain ending at ``leaf_digest``.

        Exactly one chain is consulted: the one the leaf names. Revocations are not (see
        :meth:`check_not_revoked`).

        Raises:
            UnknownDelegationError: a link of the chain is not known yet; park and retry.
            UntrustedKeyError: the leaf's subject is not ``writer_key_id``, or see
                :func:`verify_chain` for every other refusal.
        """
        links = self.chain(leaf_digest)
        leaf = links[-1]
        if leaf.subject.key_id != writer_key_id:
            raise UntrustedKeyError(
                f"delegation {leaf_digest.hex()} is for {leaf.subject.key_id}, not {writer_key_id}",
                reason="writer-mismatch",
                scope=str(leaf.scope),
                writer=writer_key_id,
            )
        # Signatures were verified by add_delegation; the structure is checked on every use.
        return _verify_chain(
            self.anchors, links, at=at, max_depth=self.max_depth, check_signatures=False
        )

    @staticmethod
    def check_write(grant: Grant, scope: Scope | str, capability: Capability | None = None) -> None:
        """Raise unless ``grant`` covers ``scope`` (and ``capability``, when given).

        Raises:
            ScopeViolationError: ``scope`` is outside the granted subtree.
            CapabilityViolationError: the grant lacks ``capability``.
        """
        grant.check_scope(scope)
        if capability is not None:
            grant.check_capability(capability)

    # ------------------------------------------------------------------ revocations

    def add_revocation(self, revocation: Revocation) -> bool:
        """Record a revocation after checking it; return whether it is new (idempotent).

        The issuers must be a quorum of roots, or one key that is the subject of a known
        delegation holding ``delegate``.

        Raises:
            ForeignFleetError: another fleet's revocation.
            SignatureError: a signature does not verify.
            QuorumError: root signers below the quorum.
            UntrustedKeyError: roots and non-roots mixed, several non-root signers, or a root
                key named as revoked (roots are rotated by re-pinning anchors).
            UnknownDelegationError: no known delegation gives the issuer ``delegate`` yet;
                park and retry.
        """
        if revocation.digest in self._revocations:
            return False
        self._check_fleet(revocation.fleet_id)
        revocation.verify_signatures()
        if self.anchors.is_root(revocation.revoked):
            raise UntrustedKeyError(
                "root keys are rotated by pinning new trust anchors, not revoked",
                reason="revoke-root",
                writer=revocation.revoked,
            )
        signer_ids = set(revocation.issuers)
        is_root_act = bool(signer_ids & self.anchors.root_ids)
        if is_root_act:
            _check_root_act(self.anchors, revocation.signatures, what="root revocation")
        else:
            if len(revocation.issuers) != 1:
                raise UntrustedKeyError(
                    "a non-root revocation has exactly one issuer", reason="issuers"
                )
            issuer = revocation.issuers[0]
            if not any(
                Capability.DELEGATE in known.capabilities
                for known in self._by_subject.get(issuer, ())
            ):
                raise UnknownDelegationError(
                    f"no known delegation gives {issuer} the delegate capability",
                    missing=issuer,
                    reason="issuer-authority",
                    writer=issuer,
                )
        self._revocations[revocation.digest] = revocation
        self._revocations_of.setdefault(revocation.revoked, []).append(revocation)
        if is_root_act:
            self._root_revocations.add(revocation.digest)
        return True

    def revocations(self) -> Iterator[Revocation]:
        """Every known revocation, in digest order (deterministic)."""
        for digest in sorted(self._revocations):
            yield self._revocations[digest]

    def revocations_of(self, key_id: str) -> tuple[Revocation, ...]:
        """The known revocations naming ``key_id``."""
        return tuple(self._revocations_of.get(key_id, ()))

    def is_revoked(self, key_id: str) -> bool:
        """True if any known revocation names ``key_id`` (whatever chains it reaches)."""
        return key_id in self._revocations_of

    def _revocation_reason(
        self, grant: Grant, scope: Scope | str, seq: int, epoch: int
    ) -> str | None:
        subjects = grant.chain_subjects
        leaf_index = len(subjects) - 1
        path = cut_key(scope, epoch)
        for index, key_id in enumerate(subjects):
            for revocation in self._revocations_of.get(key_id, ()):
                # A revocation reaches only chains where its issuer sits above the revoked key
                # (a root revocation reaches all): no one revokes a grant they did not stand over.
                if revocation.digest not in self._root_revocations and (
                    revocation.issuers[0] not in subjects[:index]
                ):
                    continue
                if index == leaf_index:
                    if seq > revocation.cut.get(path, 0):
                        return (
                            f"key {key_id} is revoked in {path} after sequence "
                            f"{revocation.cut.get(path, 0)}; this write is {seq}"
                        )
                elif grant.chain_digests[index + 1] not in revocation.kept:
                    return (
                        f"key {key_id} is revoked and the delegation it issued in this "
                        "chain was not kept"
                    )
        return None

    def is_cut(self, grant: Grant, scope: Scope | str, seq: int, *, epoch: int = 0) -> bool:
        """True if the write ``seq`` of chain ``epoch`` in ``scope`` does not count (revoked).

        See the module docstring for the rule: the writer's own cut, and the cascade through
        revoked ancestors.
        """
        return self._revocation_reason(grant, scope, seq, epoch) is not None

    def check_not_revoked(
        self, grant: Grant, scope: Scope | str, seq: int, *, epoch: int = 0
    ) -> None:
        """Raise if the write ``seq`` in ``scope`` through ``grant`` is past a revocation's cut.

        Raises:
            RevokedError: if it is.
        """
        reason = self._revocation_reason(grant, scope, seq, epoch)
        if reason is not None:
            raise RevokedError(
                reason, reason="revoked", scope=str(scope), writer=grant.subject_key_id
            )

    # ------------------------------------------------------------------ description

    def describe(self) -> dict[str, Any]:
        """A JSON-serialisable summary (for the Digital Twin Service and debugging)."""
        return {
            "fleet_id": self.anchors.fleet_id,
            "quorum": self.anchors.quorum,
            "roots": sorted(self.anchors.root_ids),
            "delegations": [
                {
                    "digest": delegation.digest.hex(),
                    "parent": delegation.parent.hex(),
                    "issuers": list(delegation.issuers),
                    "subject": delegation.subject.key_id,
                    "scope": str(delegation.scope),
                    "capabilities": sorted(cap.value for cap in delegation.capabilities),
                    "tier": delegation.tier.value,
                    "autonomy": delegation.autonomy.value,
                    "not_before": str(delegation.not_before),
                    "not_after": str(delegation.not_after),
                    "serial": delegation.serial,
                    "revoked": self.is_revoked(delegation.subject.key_id),
                }
                for delegation in self.delegations()
            ],
            "revocations": [
                {
                    "digest": revocation.digest.hex(),
                    "issuers": list(revocation.issuers),
                    "revoked": revocation.revoked,
                    "cut": dict(revocation.cut),
                    "kept": sorted(digest.hex() for digest in revocation.kept),
                    "hlc": str(revocation.hlc),
                }
                for revocation in self.revocations()
            ],
        }
