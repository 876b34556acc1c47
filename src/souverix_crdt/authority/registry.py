"""The Authority registry: what one replica knows of delegations and revocations."""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Iterable, Iterator
from typing import Any, Final

from souverix_crdt.errors import (
    AuthorityError,
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

#: Delegations held while their parent is not known yet, before newcomers are refused.
DEFAULT_MAX_PARKED_DELEGATIONS: Final = 1024
#: Encoded bytes of the delegations held while their parent is not known yet (1 MiB).
DEFAULT_MAX_PARKED_BYTES: Final = 1 << 20

# --------------------------------------------------------------------------- the registry


def parents_first(delegations: Iterable[Delegation]) -> list[Delegation]:
    """``delegations`` reordered so that a parent given with its children comes before them.

    Peers send delegations in digest order, which is unrelated to chain order; adding them
    parents first means a batch that holds whole chains never needs the parking area.
    Otherwise the order is kept (the sort is stable). Duplicates are dropped.
    """
    by_digest: dict[bytes, Delegation] = {}
    for delegation in delegations:
        by_digest.setdefault(delegation.digest, delegation)
    depth: dict[bytes, int] = {}
    for digest, delegation in by_digest.items():
        if digest in depth:
            continue
        # Walk up through the batch; a digest names its parent, so there are no cycles, but the
        # walk is bounded anyway (a chain deeper than the batch cannot exist within it).
        path = [digest]
        link = delegation
        while link.parent in by_digest and link.parent not in depth and len(path) <= len(by_digest):
            path.append(link.parent)
            link = by_digest[link.parent]
        base = depth.get(link.parent, -1)
        for offset, step in enumerate(reversed(path)):
            depth.setdefault(step, base + 1 + offset)
    return sorted(by_digest.values(), key=lambda delegation: depth[delegation.digest])


class Authority:
    """What one replica knows: its trust anchors, delegations and revocations.

    The only mutable object of this module. Authority comes only from the anchors: a
    delegation is recorded, and shows in any answer of this registry (strategies, public keys,
    chains, :meth:`delegations`), only once its whole chain verifies to the pinned roots
    (signatures, root quorum, parent links, attenuation, depth). Its validity window is judged
    later, when a grant is used at a timestamp, so an expired but genuine delegation still
    counts for the envelopes signed while it was valid.

    A delegation whose parent is not known yet waits in a bounded *parking area* and is
    examined again when the parent arrives (a chain that arrives leaf first completes when its
    root-issued link does). Nothing in the parking area counts for anything.

    A revocation is recorded only if it counts: issued by a quorum of roots, or by a strict
    ancestor of the revoked key in that key's own verified chain.

    Args:
        anchors: The fleet's pinned roots.
        max_depth: Longest chain accepted.
        max_parked_delegations: Delegations the parking area holds before refusing newcomers.
        max_parked_bytes: Encoded bytes the parking area holds before refusing newcomers.
    """

    __slots__ = (
        "_by_subject",
        "_conditional",
        "_delegations",
        "_parked",
        "_parked_bytes",
        "_parked_children",
        "_revocations",
        "_revocations_of",
        "_root_revocations",
        "anchors",
        "max_depth",
        "max_parked_bytes",
        "max_parked_delegations",
        "refusals",
    )

    def __init__(
        self,
        anchors: TrustAnchors,
        *,
        max_depth: int = MAX_CHAIN_DEPTH,
        max_parked_delegations: int = DEFAULT_MAX_PARKED_DELEGATIONS,
        max_parked_bytes: int = DEFAULT_MAX_PARKED_BYTES,
    ) -> None:
        if max_depth < 1:
            raise ValueError("max_depth must be >= 1")
        if max_parked_delegations < 0 or max_parked_bytes < 0:
            raise ValueError("parking budgets must be >= 0")
        self.anchors = anchors
        self.max_depth = max_depth
        self.max_parked_delegations = max_parked_delegations
        self.max_parked_bytes = max_parked_bytes
        #: Refused delegations and revocations since this registry was made, per reason.
        self.refusals: Counter[str] = Counter()
        self._delegations: dict[bytes, Delegation] = {}
        self._by_subject: dict[str, list[Delegation]] = {}
        self._conditional: set[Scope] = set()
        self._parked: dict[bytes, Delegation] = {}
        self._parked_children: dict[bytes, list[bytes]] = {}
        self._parked_bytes = 0
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

    def add_delegation(self, delegation: Delegation) -> tuple[Delegation, ...]:
        """Verify a delegation's whole chain and record it, or park it until its parent arrives.

        Returns:
            The delegations this call made count: ``delegation`` first, then the parked
            descendants it completed, parents before children. Empty if it already counted.

        Raises:
            UnknownDelegationError: its parent is not known yet; it was parked (reason
                ``"parked"``, ``missing`` the digest of the first link still lacking).
            TooLargeError: its parent is not known yet and the parking area is full (reason
                ``"delegation-parking"``); it was not kept.
            ForeignFleetError, SignatureError, UntrustedKeyError, QuorumError,
            ScopeViolationError, CapabilityViolationError, NotYetValidError, ExpiredError,
            TooLargeError, MalformedEnvelopeError: its chain does not verify to the anchors
                (see :func:`~souverix_crdt.authority.verify_chain`, windows excepted); it was
                not kept.
        """
        if delegation.digest in self._delegations:
            return ()
        try:
            if delegation.digest in self._parked:
                raise self._parked_error(delegation)
            self._check_fleet(delegation.fleet_id)
            orphan = not delegation.is_root_issued and delegation.parent not in self._delegations
            if orphan:
                # Before the signature: a flood of orphans past the budget costs no verification.
                self._check_parking_room(delegation)
            # The one check only the new link needs: its parent's chain already passed it.
            delegation.verify_signatures()
            if orphan:
                self._park(delegation)
            self._verify_structure(delegation)
        except AuthorityError as exc:
            if not (isinstance(exc, UnknownDelegationError) and exc.reason == "parked"):
                self.refusals[exc.reason or type(exc).__name__] += 1
            raise
        self._record(delegation)
        return (delegation, *self._complete(delegation.digest))

    def add_delegations(
        self, delegations: Iterable[Delegation], *, park: bool = True
    ) -> tuple[tuple[Delegation, ...], tuple[AuthorityError, ...]]:
        """Add several delegations, parents first whatever their order (see :meth:`add_delegation`).

        Args:
            delegations: The delegations, in any order.
            park: Whether one whose parent stays unknown is parked (``False``: it is dropped,
                as when loading a store: what a store holds must verify on its own).

        Returns:
            ``(what now counts, the refusals)``: the delegations that count since this call, in
            the order they came to count, and the error of each one refused or parked.
        """
        added: list[Delegation] = []
        errors: list[AuthorityError] = []
        for delegation in parents_first(delegations):
            if (
                not park
                and not delegation.is_root_issued
                and delegation.parent not in self._delegations
            ):
                errors.append(
                    UnknownDelegationError(
                        f"delegation {delegation.digest.hex()}: parent not known",
                        missing=delegation.parent,
                        writer=delegation.subject.key_id,
                    )
                )
                continue
            try:
                added.extend(self.add_delegation(delegation))
            except AuthorityError as exc:
                errors.append(exc)
        return tuple(added), tuple(errors)

    def _verify_structure(self, delegation: Delegation) -> None:
        """Verify the chain ending at ``delegation`` (its parent's chain counts already)."""
        links = (*self.chain(delegation.parent), delegation) if delegation.parent else (delegation,)
        # Signatures of the parent's chain were verified when each link came to count; this
        # link's were verified by the caller. Windows are judged at use.
        _verify_chain(
            self.anchors, links, at=None, max_depth=self.max_depth, check_signatures=False
        )

    def _record(self, delegation: Delegation) -> None:
        self._delegations[delegation.digest] = delegation
        self._by_subject.setdefault(delegation.subject.key_id, []).append(delegation)
        if delegation.autonomy is Autonomy.CONDITIONAL:
            self._conditional.add(delegation.scope)

    def _parked_error(self, delegation: Delegation) -> UnknownDelegationError:
        return UnknownDelegationError(
            f"delegation {delegation.digest.hex()} waits for its parent "
            f"{delegation.parent.hex()} (parked)",
            missing=self._missing_above(delegation.parent),
            reason="parked",
            scope=str(delegation.scope),
            writer=delegation.subject.key_id,
        )

    def _missing_above(self, digest: bytes) -> bytes:
        """The first link not held at all, walking up from ``digest`` through the parking area."""
        for _ in range(self.max_depth + 1):
            parked = self._parked.get(digest)
            if parked is None or parked.is_root_issued:
                break
            digest = parked.parent
        return digest

    def _check_parking_room(self, delegation: Delegation) -> None:
        if (
            len(self._parked) >= self.max_parked_delegations
            or self._parked_bytes + len(delegation.encode()) > self.max_parked_bytes
        ):
            # Never evict: what is parked may be the honest half of a chain in transit.
            raise TooLargeError(
                f"the delegation parking area is full ({len(self._parked)} delegations, "
                f"{self._parked_bytes} bytes); delegation {delegation.digest.hex()} refused",
                reason="delegation-parking",
            )

    def _park(self, delegation: Delegation) -> None:
        self._parked[delegation.digest] = delegation
        self._parked_children.setdefault(delegation.parent, []).append(delegation.digest)
        self._parked_bytes += len(delegation.encode())
        raise self._parked_error(delegation)

    def _unpark(self, digest: bytes) -> Delegation:
        delegation = self._parked.pop(digest)
        self._parked_bytes -= len(delegation.encode())
        return delegation

    def _complete(self, digest: bytes) -> list[Delegation]:
        """Examine the delegations parked under ``digest`` (which just came to count), cascading."""
        completed: list[Delegation] = []
        queue = deque(self._parked_children.pop(digest, ()))
        while queue:
            child = self._unpark(queue.popleft())
            try:
                self._verify_structure(child)
            except AuthorityError as exc:
                # The parent is final now, so the verdict is too; nothing below can count.
                self.refusals[exc.reason or type(exc).__name__] += 1
                self._drop_below(child.digest)
                continue
            self._record(child)
            completed.append(child)
            queue.extend(self._parked_children.pop(child.digest, ()))
        return completed

    def _drop_below(self, digest: bytes) -> None:
        queue = deque(self._parked_children.pop(digest, ()))
        while queue:
            dropped = self._unpark(queue.popleft())
            self.refusals["parent-refused"] += 1
            queue.extend(self._parked_children.pop(dropped.digest, ()))

    @property
    def parked_count(self) -> int:
        """Delegations waiting in the parking area for their parent."""
        return len(self._parked)

    @property
    def parked_bytes(self) -> int:
        """Encoded bytes of the delegations in the parking area."""
        return self._parked_bytes

    def is_parked(self, digest: bytes) -> bool:
        """True if the delegation ``digest`` waits in the parking area (it counts for nothing)."""
        return digest in self._parked

    def parked_delegation(self, digest: bytes) -> Delegation | None:
        """The delegation ``digest`` waiting in the parking area, if any (it counts for nothing).

        Its subject key is only good for checking a signature made with it; it grants nothing.
        """
        return self._parked.get(digest)

    def is_conditional(self, scope: Scope) -> bool:
        """True if a delegation that counts makes ``scope`` conditionally autonomous."""
        return scope in self._conditional

    def delegation(self, digest: bytes) -> Delegation | None:
        """The delegation with ``digest``, if it counts (parked ones do not)."""
        return self._delegations.get(digest)

    def delegations(self) -> Iterator[Delegation]:
        """Every delegation that counts, in digest order (deterministic); never a parked one."""
        for digest in sorted(self._delegations):
            yield self._delegations[digest]

    def delegations_for(self, key_id: str) -> tuple[Delegation, ...]:
        """The delegations that count whose subject is ``key_id``."""
        return tuple(self._by_subject.get(key_id, ()))

    def public_key(self, key_id: str) -> PublicKey | None:
        """The public key with ``key_id``: a root, or the subject of a delegation that counts."""
        root = self.anchors.root(key_id)
        if root is not None:
            return root
        known = self._by_subject.get(key_id)
        return known[0].subject if known else None

    def chain(self, leaf_digest: bytes) -> tuple[Delegation, ...]:
        """The chain ending at ``leaf_digest``, root-issued link first, built from parent links.

        Only delegations that count are used, so a chain found here has verified structurally.

        Raises:
            UnknownDelegationError: if ``leaf_digest`` does not count yet (``missing`` is the
                digest of the first link not held at all, looking through the parking area).
            TooLargeError: if the chain is longer than :attr:`max_depth`.
        """
        links: list[Delegation] = []
        digest = leaf_digest
        while True:
            link = self._delegations.get(digest)
            if link is None:
                raise UnknownDelegationError(
                    f"delegation {digest.hex()} is not known yet",
                    missing=self._missing_above(digest),
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
        # Signatures and structure were verified when each link came to count; the structure
        # is cheap to check again, and the windows are judged here, at the envelope's time.
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
        """Record a revocation if it counts; return whether it is new (idempotent).

        It counts when its issuers are a quorum of roots, or one key that is a strict ancestor
        of the revoked key in a verified chain of that key (and so holds ``delegate`` there). A
        zone, a sibling branch or an outsider cannot revoke: such a revocation is refused and
        not kept.

        Raises:
            ForeignFleetError: another fleet's revocation.
            SignatureError: a signature does not verify.
            QuorumError: root signers below the quorum.
            UntrustedKeyError: roots and non-roots mixed, several non-root signers, a root key
                named as revoked (roots are rotated by re-pinning anchors), or an issuer that is
                not an ancestor of the revoked key in its chain (reason ``"not-an-ancestor"``).
            UnknownDelegationError: no verified delegation of the revoked key is known yet
                (reason ``"revoked-unknown"``); park and retry.
        """
        if revocation.digest in self._revocations:
            return False
        try:
            is_root_act = self._check_revocation(revocation)
        except AuthorityError as exc:
            if not isinstance(exc, UnknownDelegationError):
                self.refusals[exc.reason or type(exc).__name__] += 1
            raise
        self._revocations[revocation.digest] = revocation
        self._revocations_of.setdefault(revocation.revoked, []).append(revocation)
        if is_root_act:
            self._root_revocations.add(revocation.digest)
        return True

    def _check_revocation(self, revocation: Revocation) -> bool:
        """Raise unless ``revocation`` counts; return whether it is a root act."""
        self._check_fleet(revocation.fleet_id)
        revocation.verify_signatures()
        if self.anchors.is_root(revocation.revoked):
            raise UntrustedKeyError(
                "root keys are rotated by pinning new trust anchors, not revoked",
                reason="revoke-root",
                writer=revocation.revoked,
            )
        if set(revocation.issuers) & self.anchors.root_ids:
            _check_root_act(self.anchors, revocation.signatures, what="root revocation")
            return True
        if len(revocation.issuers) != 1:
            raise UntrustedKeyError(
                "a non-root revocation has exactly one issuer", reason="issuers"
            )
        issuer = revocation.issuers[0]
        known = self._by_subject.get(revocation.revoked, ())
        if not known:
            raise UnknownDelegationError(
                f"no verified delegation of the revoked key {revocation.revoked} is known yet",
                missing=revocation.revoked,
                reason="revoked-unknown",
                writer=issuer,
            )
        for delegation in known:
            links = self.chain(delegation.digest)
            # Every link above the leaf of a verified chain holds delegate (it issued the next
            # one); the check says so rather than relying on it.
            if any(
                link.subject.key_id == issuer and Capability.DELEGATE in link.capabilities
                for link in links[:-1]
            ):
                return False
        raise UntrustedKeyError(
            f"{issuer} is not an ancestor of {revocation.revoked} in any chain of that key",
            reason="not-an-ancestor",
            writer=issuer,
        )

    def revocations(self) -> Iterator[Revocation]:
        """Every known revocation, in digest order (deterministic)."""
        for digest in sorted(self._revocations):
            yield self._revocations[digest]

    def revocations_of(self, key_id: str) -> tuple[Revocation, ...]:
        """The known revocations naming ``key_id``."""
        return tuple(self._revocations_of.get(key_id, ()))

    def is_revoked(self, key_id: str, grant: Grant | None = None) -> bool:
        """True if a revocation that counts names ``key_id``.

        Args:
            key_id: The key asked about.
            grant: When given, only revocations that reach this grant's chain are considered
                (root ones, or those whose issuer stands above ``key_id`` in it): a key delegated
                twice may be revoked in one chain and not in the other.
        """
        revocations = self._revocations_of.get(key_id, ())
        if grant is None:
            return bool(revocations)
        subjects = grant.chain_subjects
        above = subjects[: subjects.index(key_id)] if key_id in subjects else ()
        return any(
            revocation.digest in self._root_revocations or revocation.issuers[0] in above
            for revocation in revocations
        )

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
