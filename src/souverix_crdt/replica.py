"""The replica: the one object a control-plane service holds.

A :class:`Replica` ties together an identity (signing key and delegation chain), the fleet's
trust anchors and what it knows of delegations and revocations (:class:`Authority`), a hybrid
logical clock, the merged documents (:class:`~souverix_crdt.document.FleetState`) and a durable
:class:`~souverix_crdt.store.Store`.

Writing
    A local transaction becomes one pycrdt update in this process's writer document, sealed into
    one envelope, committed to the store together with its outbox entries and the HLC high-water
    mark, and only then acknowledged with a :class:`Receipt`. If the commit fails, the document
    is rebuilt from the log and the clock rewound: the caller gets a typed error, no receipt, and
    nothing changed.

Receiving
    :meth:`Replica.ingest_many` verifies each envelope (signature, chain, scope, revocation,
    clock bound), then orders it within its writer's chain: duplicates are ignored, early
    arrivals wait in the pending area until the gap fills, a second envelope for a sequence
    number already held is an equivocation, and an envelope whose delegation is unknown waits
    until the delegation arrives. Envelopes dated beyond ``now + max_offset`` are quarantined:
    not applied, not forwarded, the clock unchanged; they are looked at again by :meth:`tick`.

Budgets on the receive path
    Nothing is held before it is authenticated: a gapped or far-future envelope only after its
    signature, chain, scope and revocation status verified (it is then charged to its verified
    writer key), one whose delegation is unknown only after its signature verified wherever the
    writer's key is known at all (it is then charged to the session ``source`` it came from).
    Each source has its own count and byte budget in the gap-pending area, the area awaiting a
    delegation and the quarantine, within totals for all pending items (:class:`Limits`). A full
    budget refuses the newcomer (``TooLargeError`` whose ``reason`` is the budget's name) and
    never evicts what another source holds; the envelope that fills a gap is applied at once and
    never needs pending room. A writer key may have at most ``chains_per_writer`` chains here: a
    newcomer beyond that is refused before its signature is even checked, and the chains already
    held are kept.

Chains and epochs
    A replica writes under an *epoch*, so its chain id is ``"<key id>~<epoch>"``. By default
    each incarnation takes a fresh random one; ``peer run`` and ``peer write`` pass the epoch
    the store kept at its last clean close (:mod:`souverix_crdt.plane.chains`), and a fresh
    one whenever the store may be an old copy. A replica restarted from an old copy therefore
    never reuses a sequence number or a Yjs client clock it already published, and since every
    register is named by (chain, HLC), never an event identity either. Its clock starts above
    everything its store recorded; within the very millisecond of writes the old copy lost, a
    timestamp value may repeat under the new chain id, and the chain id breaks the tie the same
    way on every replica.

Decisions that arrive late
    A revocation or an equivocation proof that arrives after the envelopes it judges is applied
    by rebuilding that one chain's document from its log without the envelopes that no longer
    count, so every replica ends in the same state whatever order it learned things in.
    Equivocation rule: once two different envelopes are known for one (scope, chain, seq), every
    envelope of that chain from that seq on stops counting, everywhere.
"""

from __future__ import annotations

import contextlib
import enum
import hashlib
import secrets
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from typing import Any, Final

import attrs

from souverix_crdt.store.base import (
    Batch,
    OutboxEntry,
    OutboxStats,
    Store,
    StoredCheckpoint,
    StoredEnvelope,
    StoredItem,
)

from .authority import (
    COLLECTION_CAPABILITY,
    Authority,
    Delegation,
    Grant,
    Revocation,
    SigningKey,
    TrustAnchors,
)
from .authority import verify_chain as _verify_chain
from .checkpoint import VerifiedCheckpoint, open_checkpoint, seal_checkpoint
from .codec import DEFAULT_LIMITS as DEFAULT_DECODE_LIMITS
from .codec import decode, encode, encode_canonical
from .conflicts import ConflictRecord
from .document import COLLECTIONS, Change, FleetState, NotApplied, WriteOp, check_collection
from .envelope import (
    EnvelopeHeader,
    VerifiedEnvelope,
    chain_id,
    chain_writer,
    envelope_id,
    open_envelope,
    read_header,
    seal,
)
from .errors import (
    AuthorityError,
    DecodeError,
    EquivocationError,
    InvalidUpdateError,
    QuarantinedError,
    SignatureError,
    SouverixError,
    StoreError,
    TooLargeError,
    UnknownDelegationError,
)
from .handles import ScopeHandle, Transaction, change_stream
from .hlc import DEFAULT_MAX_OFFSET_MS, MAX_LOGICAL, Clock, Timestamp, system_wall_clock
from .limits import DEFAULT_LIMITS, Limits
from .lww import Strategy
from .naming import plane_name
from .refusals import META_PREFIX as REFUSED_META
from .refusals import REASONS as REFUSAL_REASONS
from .refusals import RefusalLog, RefusedEnvelope, refusal_reason
from .scope import Scope

__all__ = [
    "AckResult",
    "ChainGap",
    "Identity",
    "IngestOutcome",
    "IngestResult",
    "Receipt",
    "Replica",
    "ReplicaStatus",
    "SourceUsage",
    "SyncDebt",
]

#: Items held in the pending area before new ones are refused (``Limits.pending_total``).
DEFAULT_MAX_PENDING: Final = DEFAULT_LIMITS.pending_total

_EQUIVOCATION_META: Final = "equivocation:"
#: Entries kept in each of the replica's interest caches before they start afresh.
_RELATED_CACHE: Final = 65_536
#: Meta key prefix of the verdict kept with each checkpoint (``verdict:<scope>|<chain>``).
_VERDICT_META: Final = "verdict:"


def _size(data: object) -> int:
    """The byte size of received ``data`` (0 for what is not bytes: the decoder refuses it)."""
    if isinstance(data, memoryview):
        return data.nbytes
    return len(data) if isinstance(data, bytes | bytearray) else 0


def _contradiction(
    a: VerifiedEnvelope | VerifiedCheckpoint, b: VerifiedEnvelope | VerifiedCheckpoint
) -> str | None:
    """What makes two signed items of one (scope, chain, seq) an equivocation, if anything.

    Two envelopes: different ids. A checkpoint commits to the envelope at its sequence number:
    its id (``last_id``), and the header facts they share (``prev``, ``hlc``, the document's
    state vector); a checkpoint that differs from that envelope, or from another checkpoint
    of the same sequence number, in any of them is a second history of the chain.
    """
    if isinstance(a, VerifiedEnvelope) and isinstance(b, VerifiedEnvelope):
        return "two envelopes" if a.id != b.id else None
    facts = []
    for item in (a, b):
        header = item.header
        last = item.last_id if isinstance(item, VerifiedCheckpoint) else item.id
        facts.append((last, header.prev, header.hlc, header.state_vector))
    return "checkpoint" if facts[0] != facts[1] else None


def _verdict_key(key: tuple[Scope, str]) -> str:
    return f"{_VERDICT_META}{key[0]}|{key[1]}"


@attrs.frozen
class Identity:
    """Who a replica writes as: its signing key and its delegation chain, root first.

    Attributes:
        signing_key: The private key (never shown in ``repr``).
        chain: The delegations from a root to this key, the leaf last.
    """

    signing_key: SigningKey = attrs.field(repr=False)
    chain: tuple[Delegation, ...]

    def __attrs_post_init__(self) -> None:
        if not self.chain:
            raise ValueError("an identity needs a delegation chain")
        if self.chain[-1].subject.key_id != self.signing_key.key_id:
            raise ValueError("the chain's leaf is not delegated to this signing key")

    @property
    def key_id(self) -> str:
        """The signing key's id."""
        return self.signing_key.key_id

    @property
    def leaf(self) -> Delegation:
        """The delegation this key writes under."""
        return self.chain[-1]

    @property
    def plane(self) -> str:
        """The plane name its leaf delegation binds, else its scope's last segment.

        The same as :attr:`~souverix_crdt.authority.Grant.plane` of the verified chain: the
        name peers know this replica by.
        """
        return plane_name(self.leaf)

    @property
    def scope(self) -> Scope:
        """The subtree this identity is master of record for."""
        return self.leaf.scope


@attrs.frozen
class Receipt:
    """Proof that a local transaction is durable.

    Attributes:
        envelope_id: Id of the envelope that carries it.
        scope: The scope written.
        chain: The writer chain (``key id~epoch``).
        seq: Its sequence number in that chain.
        hlc: The transaction's timestamp.
        not_applied: The writes of the transaction that are durable and signed but did not
            take effect: their key shows another register (each names why). Empty when every
            write is its key's visible value.
    """

    envelope_id: bytes
    scope: str
    chain: str
    seq: int
    hlc: Timestamp
    not_applied: tuple[NotApplied, ...] = ()

    @property
    def applied(self) -> bool:
        """True if every write of the transaction took effect."""
        return not self.not_applied


class IngestOutcome(enum.Enum):
    """What happened to one received envelope."""

    APPLIED = "applied"
    DUPLICATE = "duplicate"
    PENDING = "pending"
    QUARANTINED = "quarantined"
    REJECTED = "rejected"
    EQUIVOCATION = "equivocation"


@attrs.frozen
class IngestResult:
    """The outcome of one received envelope, with the typed error when it was refused."""

    outcome: IngestOutcome
    envelope_id: bytes = b""
    scope: str = ""
    chain: str = ""
    seq: int = 0
    error: SouverixError | None = None

    @property
    def reason(self) -> str:
        """Why it was refused: the refusal record's reason, else the error's own; ``""`` if not.

        See :func:`souverix_crdt.refusals.refusal_reason`.
        """
        if self.error is None:
            return ""
        return refusal_reason(self.error) or self.error.reason or type(self.error).__name__


@attrs.frozen
class AckResult:
    """What :meth:`Replica.acknowledge` made of one acknowledgement.

    Attributes:
        accepted: Chains whose frontier was stored for the peer (one row each, however often
            the acknowledgement names them; clamped ones included).
        clamped: Accepted chains whose sequence number was beyond what this replica holds,
            stored as what it holds.
        refused: Rows dropped: malformed, for a chain this replica does not hold, outside the
            peer's interest, or from a peer that was never registered. A caller may log or
            limit a peer whose acknowledgements are mostly refused.
    """

    accepted: int = 0
    clamped: int = 0
    refused: int = 0


@attrs.frozen
class SyncDebt:
    """How far one peer is behind this replica.

    Attributes:
        envelopes: Envelopes not acknowledged.
        bytes: Their total size.
        oldest_age_ms: Age of the oldest one, in milliseconds (0 when there is no debt).
    """

    envelopes: int
    bytes: int
    oldest_age_ms: int

    def to_json(self) -> dict[str, int]:
        """A JSON-serialisable form."""
        return {
            "envelopes": self.envelopes,
            "bytes": self.bytes,
            "oldest_age_ms": self.oldest_age_ms,
        }


@attrs.frozen
class ChainGap:
    """A chain whose next envelope is missing while later ones wait for it.

    Attributes:
        missing: The first sequence number not held: nothing after it applies until it arrives.
        waiting: Envelopes of the chain held in the pending area behind it.
        since_ms: Wall time (ms) the oldest of them has been held since (on this replica, since
            it was opened for envelopes held across a restart).
    """

    missing: int
    waiting: int
    since_ms: int

    def to_json(self) -> dict[str, int]:
        """A JSON-serialisable form."""
        return {"missing": self.missing, "waiting": self.waiting, "since_ms": self.since_ms}


@attrs.frozen
class SourceUsage:
    """What one source holds in one of the replica's side areas (pending, quarantine).

    Attributes:
        count: Items it holds.
        bytes: Their total size.
    """

    count: int
    bytes: int

    def to_json(self) -> dict[str, int]:
        """A JSON-serialisable form."""
        return {"count": self.count, "bytes": self.bytes}


class _Area:
    """Count and bytes per source in one side area, and the area's totals (mutable, private)."""

    __slots__ = ("bytes", "count", "sources")

    def __init__(self) -> None:
        self.sources: dict[str, list[int]] = {}  # source -> [count, bytes]
        self.count = 0
        self.bytes = 0

    def held(self, source: str) -> tuple[int, int]:
        held = self.sources.get(source)
        return (0, 0) if held is None else (held[0], held[1])

    def add(self, source: str, size: int) -> None:
        held = self.sources.setdefault(source, [0, 0])
        held[0] += 1
        held[1] += size
        self.count += 1
        self.bytes += size

    def remove(self, source: str, size: int) -> None:
        held = self.sources.get(source)
        if held is None:  # pragma: no cover - every removal follows its addition
            return
        held[0] -= 1
        held[1] -= size
        self.count -= 1
        self.bytes -= size
        if held[0] <= 0:
            del self.sources[source]

    def usage(self) -> dict[str, SourceUsage]:
        return {source: SourceUsage(*held) for source, held in sorted(self.sources.items())}


@attrs.frozen
class ReplicaStatus:
    """A snapshot of a replica's health, for operators and views.

    Attributes:
        name: The replica's name.
        plane: The plane name its own verified delegation gives it.
        key_id: Its signing key id.
        chain: Its current writer chain.
        durability: The store's durability (``full`` unless explicitly weakened).
        frontiers: ``"scope|chain"`` → last sequence number applied.
        pending: Items waiting in the pending area.
        pending_by_writer: Envelopes waiting for a gap to fill, per verified writer key id
            (count and bytes, against ``pending_per_source`` / ``pending_bytes_per_source``).
        pending_by_source: Items waiting for a delegation (or a revocation's key), per session
            source they came from (``""``: handed in locally), against the same budgets.
        parked_delegations: Delegations waiting for their parent; they count for nothing.
        refused_authority: Delegations and revocations refused since the replica opened, per
            reason (``"not-a-root"``, ``"scope-widened"``, ``"not-an-ancestor"``,
            ``"delegation-parking"``...).
        quarantined: Quarantined envelopes per writer key id.
        quarantine_by_writer: Quarantined envelopes per writer key id, count and bytes
            (against ``quarantine_per_source`` / ``quarantine_bytes_per_source``).
        equivocators: ``"scope|chain"`` → the first sequence number that stopped counting.
        sync_debt: Per peer, what it has not acknowledged.
        hlc: The clock's high-water mark.
        writers: Chain → the plane name of its writer, for every chain in ``frontiers``.
        refused: Envelopes refused for a reason that cannot change, per reason: their count
            and the lowest-id ones (see :mod:`souverix_crdt.refusals`); the same on every
            replica given the same envelopes.
        gaps: ``"scope|chain"`` → what the chain is missing, for every chain with envelopes
            waiting behind a gap.
    """

    name: str
    plane: str
    key_id: str
    chain: str
    durability: str
    frontiers: dict[str, int]
    pending: int
    parked_delegations: int
    refused_authority: dict[str, int]
    quarantined: dict[str, int]
    equivocators: dict[str, int]
    sync_debt: dict[str, SyncDebt]
    hlc: Timestamp
    writers: dict[str, str] = attrs.field(factory=dict)
    pending_by_writer: dict[str, SourceUsage] = attrs.field(factory=dict)
    pending_by_source: dict[str, SourceUsage] = attrs.field(factory=dict)
    quarantine_by_writer: dict[str, SourceUsage] = attrs.field(factory=dict)
    refused: dict[str, Any] = attrs.field(factory=dict)
    gaps: dict[str, ChainGap] = attrs.field(factory=dict)

    def to_json(self) -> dict[str, Any]:
        """A JSON-serialisable form."""
        return {
            "name": self.name,
            "plane": self.plane,
            "key_id": self.key_id,
            "chain": self.chain,
            "durability": self.durability,
            "frontiers": self.frontiers,
            "pending": self.pending,
            "parked_delegations": self.parked_delegations,
            "refused_authority": self.refused_authority,
            "quarantined": self.quarantined,
            "equivocators": self.equivocators,
            "sync_debt": {peer: debt.to_json() for peer, debt in self.sync_debt.items()},
            "hlc": str(self.hlc),
            "writers": self.writers,
            "pending_by_writer": {k: v.to_json() for k, v in self.pending_by_writer.items()},
            "pending_by_source": {k: v.to_json() for k, v in self.pending_by_source.items()},
            "quarantine_by_writer": {k: v.to_json() for k, v in self.quarantine_by_writer.items()},
            "refused": self.refused,
            "gaps": {k: v.to_json() for k, v in self.gaps.items()},
        }


@attrs.define
class _Chain:
    """Bookkeeping for one (scope, chain): how far it is applied and what waits."""

    seq: int = 0
    last_id: bytes = b""
    pending: dict[int, tuple[bytes, bytes]] = attrs.field(factory=dict)  # seq -> (id, data)
    held_since: dict[int, int] = attrs.field(factory=dict)  # seq -> wall ms it was held from
    cut_from: int | None = None  # equivocation: this seq and later do not count


@attrs.define
class _Step:
    """What one ingest call accumulates before its single durable commit."""

    source: str | None
    batch: Batch = attrs.field(factory=Batch)
    touched: set[tuple[Scope, str]] = attrs.field(factory=set)
    accepted: list[tuple[StoredEnvelope, str | None]] = attrs.field(factory=list)
    unacked: list[tuple[str, tuple[Scope, str], int, bytes]] = attrs.field(factory=list)
    changes: list[tuple[Scope, list[tuple[str, str]]]] = attrs.field(factory=list)


class _GrantPolicy:
    """Writer policy over chains: rank and collection rights from each chain's grant."""

    def __init__(self) -> None:
        self.grants: dict[str, Grant] = {}

    def rank(self, writer: str) -> int:
        grant = self.grants.get(writer)
        return 0 if grant is None else grant.rank

    def allows(self, writer: str, collection: str) -> bool:
        grant = self.grants.get(writer)
        return grant is not None and grant.allows_collection(collection)


Key = tuple[Scope, str]


class Replica:
    """One control plane's replica of the fleet state.

    Args:
        identity: Signing key and delegation chain.
        anchors: The fleet's pinned root keys.
        store: Durable storage (SQLite by default in services, memory in tests).
        name: A readable name (status, sync debt, logs); by default its plane name.
        wall_clock: Physical time in milliseconds; the only time source.
        max_offset: How far ahead of local time a remote timestamp may be, in milliseconds.
        history_limit: Registers kept per key in history.
        max_pending: Deprecated: use ``limits``. When given, it overrides
            ``limits.pending_total`` (items pending in all, across sources).
        epoch: This incarnation's epoch (random by default; tests inject one).
        limits: The budgets of this replica and its process (pending and quarantine per
            source, chains per writer key, envelope size, ...); see
            :class:`~souverix_crdt.limits.Limits`.
    """

    def __init__(
        self,
        identity: Identity,
        anchors: TrustAnchors,
        store: Store,
        *,
        name: str = "",
        wall_clock: Callable[[], int] = system_wall_clock,
        max_offset: int = DEFAULT_MAX_OFFSET_MS,
        history_limit: int = 16,
        max_pending: int | None = None,
        epoch: int | None = None,
        limits: Limits = DEFAULT_LIMITS,
    ) -> None:
        self.identity = identity
        self.anchors = anchors
        self.fleet_id = anchors.fleet_id
        self.store = store
        self.name = name or identity.plane
        if max_pending is not None:
            limits = limits.evolve(pending_total=max_pending)
        self.limits = limits
        # Received envelopes decode under this replica's whole-message budgets.
        self._decode_limits = DEFAULT_DECODE_LIMITS.within(limits, max_size=limits.max_envelope)
        self.epoch = secrets.randbits(62) if epoch is None else epoch
        self.chain = chain_id(identity.key_id, self.epoch)
        self.authority = Authority(anchors)
        self.policy = _GrantPolicy()
        self.fleet = FleetState(
            strategy_for=self._strategy_for,
            policy=self.policy,
            history_limit=history_limit,
            conflicts_per_key=limits.conflicts_per_key,
        )
        self._chains: dict[Key, _Chain] = {}
        # Per interest, the chains it covers in frontier order (cleared when a chain appears),
        # and which scopes an interest covers: both asked for on every batch a session sends.
        self._frontier_keys: dict[tuple[Scope, ...] | None, list[tuple[Key, str]]] = {}
        self._related: dict[tuple[tuple[Scope, ...], Scope], bool] = {}
        # id -> (data, reason, source charged): waiting for a delegation or a revoked key.
        self._delegation_pending: dict[bytes, tuple[bytes, str, str]] = {}
        self._quarantine: dict[bytes, tuple[bytes, str]] = {}  # id -> (data, writer)
        # What each source holds: gap-pending per writer key, awaiting a delegation per session
        # source, quarantined per writer key.
        self._gap = _Area()
        self._awaiting = _Area()
        self._quarantined = _Area()
        # Writer key id -> the chains of it this replica holds (bounded by chains_per_writer).
        self._writer_chains: dict[str, set[str]] = {}
        self._peers: dict[str, tuple[Scope, ...]] = {}
        self._unacked: dict[str, dict[Key, deque[tuple[int, bytes]]]] = {}
        self._envelope_listeners: list[Callable[[StoredEnvelope, str | None], None]] = []
        self._authority_listeners: list[Callable[[], None]] = []
        self._authority_dirty = False
        #: Grows each time a delegation, revocation or equivocation proof is learned.
        self.authority_version = 0
        #: Grows each time a scope is rebuilt (a late revocation or proof): chains may then hold
        #: less than they did, which sessions must tell their peers.
        self.rebuilds = 0
        self._proofs: dict[Key, tuple[int, bytes, bytes]] = {}
        #: Envelopes refused for reasons that cannot change (see :mod:`souverix_crdt.refusals`).
        self.refused = RefusalLog()
        self._checkpoints: dict[Key, tuple[int, bytes]] = {}
        self._own_grant: Grant | None = None
        self.clock = Clock(wall_clock, max_offset=max_offset, floor=store.hlc())
        self._load()

    # ================================================================== loading

    def _load(self) -> None:
        # The identity's own chain must verify to the anchors (a typed error otherwise).
        for delegation in self.identity.chain:
            self.authority.add_delegation(delegation)
        # A store written by an older version may hold items kept without verifying them: only
        # those that verify now are loaded (and so used or re-sent). Nothing is parked from the
        # store: what it holds of a chain must be whole on its own.
        self._learn_delegations(item.data for item in self.store.delegations())
        for item in self.store.revocations():
            self._learn_revocation(item.data)
        self._own_grant_at(self.clock.last)  # the identity must verify against the anchors
        self._load_refusals()
        for scope_path, chain, seq, first, second in self._stored_proofs():
            self._proofs[(Scope.parse(scope_path), chain)] = (seq, first, second)
            self._chain((Scope.parse(scope_path), chain)).cut_from = seq
        for checkpoint in self.store.checkpoints():
            key = (Scope.parse(checkpoint.scope), checkpoint.writer)
            self._checkpoints[key] = (checkpoint.seq, checkpoint.data)
            cut = self._chain(key).cut_from
            self._restore_checkpoint(key, limit=None if cut is None else cut - 1)
        for stored in self.store.iter_envelopes():
            key = (Scope.parse(stored.scope), stored.writer)
            state = self._chain(key)
            if state.cut_from is not None and stored.seq >= state.cut_from:
                continue
            if stored.seq != state.seq + 1:
                continue  # a later part of a chain whose earlier part was cut
            self._replay(key, stored)
        self._load_outbox()
        self._load_side_areas()

    def _load_side_areas(self) -> None:
        """Pending and quarantine from the store, admitted under the budgets of arrival.

        In store order (oldest first), so what is kept is what was admitted when it arrived.
        An item the budgets no longer admit (they were lowered), or that is no longer needed,
        leaves the store, so the store never holds more than the budgets either.
        """
        cleanup = Batch()
        for item in self.store.pending():
            if not self._reload_pending(item):
                cleanup.pending_remove.append(item.id)
        for item in self.store.quarantine():
            if not self._reload_quarantined(item):
                cleanup.quarantine_remove.append(item.id)
        if not cleanup.is_empty():
            self.store.commit(cleanup)

    def _reload_pending(self, item: StoredItem) -> bool:
        """Take one stored pending item back; False if it is no longer admitted or needed."""
        if item.reason != "gap":
            # Charged to the source it came from (``writer`` holds it; ``""`` from an older
            # version, which kept none).
            if item.id not in self._delegation_pending:
                if self._pending_refusal(self._awaiting, item.writer, len(item.data)) is not None:
                    return False
                self._hold_awaiting(item.id, item.data, item.reason, item.writer)
            return True
        return self._reload_gap(item)

    def _reload_gap(self, item: StoredItem) -> bool:
        try:
            header = read_header(item.data)
        except SouverixError:
            return False
        key = (header.scope, header.chain)
        state = self._chains.get(key)
        if state is not None and (
            header.seq <= state.seq
            or header.seq in state.pending
            or (state.cut_from is not None and header.seq >= state.cut_from)
        ):
            return False  # applied, superseded or cut since it was kept
        if state is None and self._chain_refusal(header.writer, header.chain) is not None:
            return False
        if self._pending_refusal(self._gap, header.writer, len(item.data)) is not None:
            return False
        self._hold_gap(key, self._chain(key), header.seq, item.id, item.data)
        return True

    def _reload_quarantined(self, item: StoredItem) -> bool:
        """Take one stored quarantined envelope back; False if it is no longer admitted."""
        if item.id in self._quarantine:
            return True
        if self.store.envelope(item.id) is not None:
            return False  # applied since (an older version never removed released ones)
        if self._quarantine_refusal(item.writer, len(item.data)) is not None:
            return False
        self._hold_quarantined(item.id, item.data, item.writer)
        return True

    def _load_outbox(self) -> None:
        for peer in self.store.peers():
            for entry in self.store.outbox(peer, limit=1_000_000):
                queued = self.store.envelope(entry.envelope_id)
                if queued is not None:
                    key = (Scope.parse(queued.scope), queued.writer)
                    queue = self._unacked.setdefault(peer, {}).setdefault(key, deque())
                    queue.append((queued.seq, queued.id))

    def _replay(self, key: Key, stored: StoredEnvelope) -> bool:
        """Re-apply a stored envelope while loading or rebuilding; False if it no longer counts."""
        try:
            verified = open_envelope(
                stored.data,
                self.authority,
                physical_now=max(self.clock.physical(), stored.hlc.wall),
                max_offset=self.clock.max_offset,
                max_logical=MAX_LOGICAL,  # accepted once already: a tighter bound since is moot
            )
        except SouverixError:
            return False  # revoked since, or no longer verifiable: it stops counting here
        state = self._chain(key)
        self.policy.grants[key[1]] = verified.grant
        self.fleet.scope(key[0]).receive(
            key[1], stored.seq, verified.payload, max_hlc=verified.header.hlc
        )
        state.seq, state.last_id = stored.seq, stored.id
        if stored.hlc > self.clock.last:
            self.clock.observe(stored.hlc)
        return True

    def _restore_checkpoint(self, key: Key, *, limit: int | None = None) -> bool:
        """Apply the kept checkpoint of a chain while loading or rebuilding."""
        kept = self._checkpoints.get(key)
        if kept is None or (limit is not None and kept[0] > limit):
            return False
        try:
            verified = open_checkpoint(
                kept[1],
                self.authority,
                physical_now=self.clock.physical(),
                max_offset=1 << 62,  # it was judged on arrival; only the authority may change
            )
        except SouverixError:
            return False
        state = self._chain(key)
        self.policy.grants[key[1]] = verified.grant
        self.fleet.scope(key[0]).apply_checkpoint(
            key[1],
            kept[0],
            verified.state,
            max_hlc=verified.header.hlc,
            invalid=self._stored_verdict(key, kept[0]),
            history=verified.history,
        )
        state.seq, state.last_id = kept[0], verified.last_id
        return True

    def _stored_verdict(self, key: Key, seq: int) -> list[tuple[str, str]] | None:
        """The entries of a kept checkpoint judged invalid when it was taken or received.

        ``None`` (judge every entry again) if there is none for this sequence number or it
        does not decode.
        """
        raw = self.store.meta(_verdict_key(key))
        if raw is None:
            return None
        try:
            stored_seq, entries = decode(raw)
            if stored_seq != seq:
                return None
            return [(collection, name) for collection, name in entries]
        except (DecodeError, TypeError, ValueError):
            return None

    def _verdict(self, key: Key, seq: int) -> dict[str, bytes]:
        """The meta row keeping a checkpoint's verdict, for the batch that keeps it."""
        invalid = self.fleet.scope(key[0]).document(key[1]).invalid
        entries = sorted([collection, name] for collection, name in invalid)
        return {_verdict_key(key): encode([seq, entries])}

    def _stored_proofs(self) -> Iterator[tuple[str, str, int, bytes, bytes]]:
        raw = self.store.meta(_EQUIVOCATION_META + "index")
        if raw is None:
            return
        for entry in decode(raw):
            scope_path, chain = entry
            value = self.store.meta(f"{_EQUIVOCATION_META}{scope_path}|{chain}")
            if value is not None:
                seq, first, second = decode(value)
                yield scope_path, chain, seq, first, second

    # ================================================================== identity and policy

    def _own_grant_at(self, at: Timestamp) -> Grant:
        # Verifying the chain costs a signature check per link; a write only needs it again
        # when the window ends or the authority changes (a revocation clears the cache).
        at = max(at, self.identity.leaf.not_before)
        cached = self._own_grant
        if cached is not None and cached.not_before <= at < cached.not_after:
            return cached
        grant = _verify_chain(self.anchors, self.identity.chain, at=at)
        self._own_grant = grant
        return grant

    def _strategy_for(self, scope: Scope) -> Strategy:
        # The master of record's autonomy decides: a conditional scope lets a higher authority
        # win concurrent writes after reconnecting.
        if self.authority.is_conditional(scope):
            return Strategy.AUTHORITY_PRECEDENCE
        return Strategy.LAST_WRITER_WINS

    def _refresh_strategies(self) -> None:
        for scope, state in self.fleet.scopes.items():
            strategy = self._strategy_for(scope)
            if strategy is not state.strategy:
                state.strategy = strategy
                self._rebuild_scope(scope)

    def _chain(self, key: Key) -> _Chain:
        state = self._chains.get(key)
        if state is None:
            state = self._chains[key] = _Chain()
            self._writer_chains.setdefault(chain_writer(key[1]), set()).add(key[1])
            self._frontier_keys.clear()
        return state

    def _discard_empty_chain(self, key: Key) -> None:
        """Forget a chain this call created but that holds nothing (its envelope was refused)."""
        state = self._chains.get(key)
        if state is None or state.seq or state.pending or state.cut_from is not None:
            return
        del self._chains[key]
        self._frontier_keys.clear()
        if not any(other[1] == key[1] for other in self._chains):
            # Nor its grant: a writer sending garbage under ever new chains leaves no trace.
            self.policy.grants.pop(key[1], None)
            chains = self._writer_chains.get(chain_writer(key[1]))
            if chains is not None:
                chains.discard(key[1])

    # ================================================================== reading

    def scope(self, path: Scope | str) -> ScopeHandle:
        """A handle to read and write one scope."""
        return ScopeHandle(self, Scope.parse(path))

    def transaction(self, path: Scope | str) -> Transaction:
        """Batch several writes to one scope into one envelope: ``with replica.transaction(s)``."""
        return Transaction(self, Scope.parse(path))

    def get(self, scope: Scope | str, collection: str, key: str, default: Any = None) -> Any:
        """The scope's own visible value for a key, or ``default``.

        Raises:
            UnknownCollectionError: ``collection`` is not one of
                :data:`~souverix_crdt.document.COLLECTIONS` (the closest is suggested).
        """
        check_collection(collection)
        target = Scope.parse(scope)
        state = self.fleet.scopes.get(target)
        return default if state is None else state.get(collection, key, default)

    def effective(self, scope: Scope | str, collection: str, key: str, default: Any = None) -> Any:
        """The value in force at ``scope``: its own, else the nearest ancestor's.

        Raises:
            UnknownCollectionError: ``collection`` is not a collection (the closest is suggested).
        """
        return self.fleet.effective(scope, collection, key, default)

    def conflicts(self) -> list[ConflictRecord]:
        """The audit log of settled conflicts, in canonical order, writers named by plane."""
        return [self._named(record) for record in self.fleet.conflicts.records()]

    def plane_of(self, writer: str) -> str:
        """The plane name of a writer chain (``"<key id>~<epoch>"``) or key id; ``""`` if unknown.

        The name is what the writer's verified delegation says
        (:func:`~souverix_crdt.naming.plane_name`): the grant its envelopes were accepted
        under, else a delegation of its key that this replica holds (they are verified to the
        anchors before they are kept).
        """
        grant = self.policy.grants.get(writer)
        if grant is not None:
            return plane_name(grant)
        key_id = chain_writer(writer)
        if key_id == self.identity.key_id:
            return plane_name(self.identity.leaf)
        names = sorted({plane_name(link) for link in self.authority.delegations_for(key_id)})
        return "|".join(names)

    def _named(self, record: ConflictRecord) -> ConflictRecord:
        return attrs.evolve(
            record,
            winner_plane=self.plane_of(record.winner.writer),
            loser_plane=self.plane_of(record.loser.writer),
        )

    def snapshot(self) -> dict[str, dict[str, dict[str, Any]]]:
        """Every non-empty scope's visible values (sorted)."""
        view: dict[str, dict[str, dict[str, Any]]] = {}
        for scope, collections in self.fleet.snapshot().items():
            kept = {name: values for name, values in collections.items() if values}
            if kept:
                view[scope] = kept
        return view

    def digest(self) -> str:
        """A canonical digest of the materialised state: equal on converged replicas."""
        return hashlib.sha256(encode_canonical(self.snapshot())).hexdigest()

    # ================================================================== subscriptions

    def on_change(self, callback: Callable[[Sequence[Change]], None]) -> Callable[[], None]:
        """Call ``callback`` with each batch of winner changes; returns an unsubscribe function."""
        return self.fleet.subscribe(callback)

    def on_conflict(self, callback: Callable[[ConflictRecord], None]) -> Callable[[], None]:
        """Call ``callback`` for every new conflict record; returns an unsubscribe function."""
        return self.fleet.subscribe_conflicts(lambda record: callback(self._named(record)))

    def on_envelope(
        self, callback: Callable[[StoredEnvelope, str | None], None]
    ) -> Callable[[], None]:
        """Call ``callback(envelope, source)`` for every envelope made or accepted, once durable.

        Sync sessions use it to push envelopes live; ``source`` is the peer it came from.
        """
        self._envelope_listeners.append(callback)

        def unsubscribe() -> None:
            if callback in self._envelope_listeners:
                self._envelope_listeners.remove(callback)

        return unsubscribe

    def on_authority(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call ``callback()`` after new delegations, revocations or proofs are durable.

        Sync sessions use it to push authority at once and to close a session whose peer was
        just revoked. Returns an unsubscribe function.
        """
        self._authority_listeners.append(callback)

        def unsubscribe() -> None:
            if callback in self._authority_listeners:
                self._authority_listeners.remove(callback)

        return unsubscribe

    def _authority_changed(self) -> None:
        self._authority_dirty = False
        self.authority_version += 1
        for callback in list(self._authority_listeners):
            callback()

    def changes(self) -> AsyncIterator[Change]:
        """An async iterator of winner changes: ``async for change in replica.changes()``."""
        return change_stream(self)

    # ================================================================== writing

    def write(self, scope: Scope | str, ops: Sequence[WriteOp]) -> Receipt:
        """Commit one local transaction; return its receipt once it is durable.

        Raises:
            ScopeViolationError, CapabilityViolationError: this identity may not write there.
            InvalidValueError: a key or value cannot be stored.
            StoreError: the commit failed; nothing changed.
        """
        target = Scope.parse(scope)
        if not ops:
            raise ValueError("a transaction needs at least one write")
        grant = self._own_grant_at(self.clock.last)
        grant.check_scope(target)
        if self.authority.is_revoked(self.identity.key_id):
            self.authority.check_not_revoked(
                grant, target, self._chain((target, self.chain)).seq + 1
            )
        for collection in {op.collection for op in ops}:
            if collection in COLLECTIONS and not grant.allows_collection(collection):
                grant.check_capability(COLLECTION_CAPABILITY[collection])
        key = (target, self.chain)
        state = self._chain(key)
        before = self.clock.last
        hlc = self.clock.now()
        self.policy.grants[self.chain] = grant
        scope_state = self.fleet.scope(target)
        try:
            result = scope_state.write(self.chain, hlc, ops)
        except SouverixError:
            self.clock.rewind(before)
            raise
        sealed = seal(
            self.identity.signing_key,
            fleet_id=self.fleet_id,
            scope=target,
            seq=result.seq,
            prev=state.last_id,
            hlc=hlc,
            state_vector=scope_state.document(self.chain).state_vector(),
            delegation_digest=self.identity.leaf.digest,
            payload=result.update,
            epoch=self.epoch,
        )
        stored = StoredEnvelope(sealed.id, str(target), self.chain, result.seq, hlc, sealed.data)
        batch = Batch(envelopes=[stored], hlc=hlc)
        unacked = self._enqueue(batch, key, stored, source=None)
        try:
            self.store.commit(batch)
        except StoreError:
            self.clock.rewind(before)
            self._rebuild(key)
            raise
        self._commit_unacked(unacked)
        state.seq, state.last_id = result.seq, sealed.id
        self.fleet.notify(scope_state, result.changed)
        self._announce([(stored, None)])
        return Receipt(sealed.id, str(target), self.chain, result.seq, hlc, result.not_applied)

    # ================================================================== receiving

    def ingest(self, data: bytes, *, source: str | None = None) -> IngestResult:
        """Receive one envelope (see :meth:`ingest_many`)."""
        return self.ingest_many([data], source=source)[0]

    def ingest_many(
        self, frames: Iterable[bytes], *, source: str | None = None
    ) -> list[IngestResult]:
        """Verify, order and apply received envelopes; one durable commit for all of them.

        Every refusal is reported as an :class:`IngestResult` with its typed error, never
        raised: one bad envelope does not stop the others.

        Raises:
            StoreError: the commit failed; the replica is as it was before the call.
        """
        step = _Step(source)
        before = self.clock.last
        items = list(frames)
        results = [self._ingest_one(data, step) for data in items]
        changed: set[str] = set()
        for index, result in enumerate(results):
            if result.outcome is IngestOutcome.REJECTED:
                results[index] = self._refused(items[index], result, changed)
        self._save_refusals(changed, step.batch)
        self._finish(step, before)
        return results

    def _save_refusals(self, reasons: Iterable[str], batch: Batch) -> None:
        # The record is kept in the same commit as the receive step that refused: a restart
        # shows the same record, which depends only on the envelopes refused.
        for reason in reasons:
            batch.meta[REFUSED_META + reason] = self.refused.encode_reason(reason)

    def _load_refusals(self) -> None:
        for reason in REFUSAL_REASONS:
            raw = self.store.meta(REFUSED_META + reason)
            if raw is not None:
                with contextlib.suppress(DecodeError):  # our own row; a bad one starts afresh
                    self.refused.load_reason(reason, raw)

    def _refused(self, data: bytes, result: IngestResult, changed: set[str]) -> IngestResult:
        """Name a refused envelope (as far as its bytes tell) and record a lasting refusal."""
        if not result.envelope_id and isinstance(data, bytes | bytearray | memoryview):
            named: dict[str, Any] = {"envelope_id": envelope_id(bytes(data))}
            try:
                header = read_header(data)
            except SouverixError:
                pass
            else:
                named.update(scope=str(header.scope), chain=header.chain, seq=header.seq)
            result = attrs.evolve(result, **named)
        reason = refusal_reason(result.error)
        if (
            reason is not None
            and result.envelope_id
            and self.refused.add(
                reason,
                RefusedEnvelope(result.envelope_id, result.scope, result.chain, result.seq),
            )
        ):
            changed.add(reason)
        return result

    def _record_revoked(self, key: Key, grant: Grant) -> None:
        """Record as revoked what a chain holds past a revocation's cut (order-independent).

        An envelope applied before the revocation arrived is refused now, as it would have been
        had it arrived after: the refusal record depends on the envelopes, not their order.
        """
        epoch = int(key[1].partition("~")[2] or "0", 16)
        changed = False
        for stored in self.store.envelopes_after(str(key[0]), key[1], 0, 1 << 30):
            if self.authority.is_cut(grant, key[0], stored.seq, epoch=epoch):
                refused = RefusedEnvelope(stored.id, stored.scope, stored.writer, stored.seq)
                changed = self.refused.add("revoked", refused) or changed
        if changed:
            batch = Batch()
            self._save_refusals(["revoked"], batch)
            self.store.commit(batch)

    def _finish(self, step: _Step, before: Timestamp) -> None:
        """Commit what one receive step accumulated, then notify; undo it all if that fails."""
        batch = step.batch
        if not batch.is_empty():
            if self.clock.last != before:
                batch.hlc = self.clock.last
            try:
                self.store.commit(batch)
            except StoreError:
                self.clock.rewind(before)
                for key in step.touched:
                    self._rebuild(key)
                self._forget_uncommitted(batch)
                raise
        self._commit_unacked(step.unacked)
        for scope, changed in step.changes:
            self.fleet.notify(self.fleet.scope(scope), changed)
        self._announce(step.accepted)
        if self._authority_dirty:
            self._authority_changed()

    def _ingest_one(  # noqa: PLR0911
        self, data: bytes, step: _Step, *, charge: str | None = None
    ) -> IngestResult:
        # One return per outcome: the function is the decision table of the receive path.
        # ``charge`` is the source an envelope awaiting its delegation is charged to (the
        # session's own by default; the original one when the pending area is retried).
        batch = step.batch
        size = _size(data)
        if size > self.limits.max_envelope:
            too_large = TooLargeError(
                f"envelope of {size} bytes exceeds max_envelope ({self.limits.max_envelope})",
                reason="max_envelope",
            )
            return IngestResult(IngestOutcome.REJECTED, error=too_large)
        try:
            verified = open_envelope(
                data,
                self.authority,
                physical_now=self.clock.physical(),
                max_offset=self.clock.max_offset,
                admit=self._admit_header,
                max_logical=self.clock.max_logical,
                limits=self._decode_limits,
            )
        except QuarantinedError as exc:
            return self._quarantine_envelope(data, exc, batch)
        except UnknownDelegationError as exc:
            source = step.source if charge is None else charge
            return self._park(data, "delegation", batch, exc, source=source)
        except SouverixError as exc:
            return IngestResult(IngestOutcome.REJECTED, error=exc)
        header = verified.header
        key = (header.scope, header.chain)
        state = self._chains.get(key)
        if state is None:
            # Not held yet: registered only once something of it is held (the chain budget
            # counts chains with content, and the admit check above refused one beyond it).
            state = _Chain()
        base = IngestResult(
            IngestOutcome.APPLIED, verified.id, str(header.scope), header.chain, header.seq
        )
        if state.cut_from is not None and header.seq >= state.cut_from:
            return attrs.evolve(base, outcome=IngestOutcome.EQUIVOCATION)
        if header.seq <= state.seq:
            held = self._held_id(key, header.seq, batch)
            kept = self._checkpoints.get(key)
            if held is None and kept is not None and kept[0] == header.seq:
                # Compacted here: the envelope meets the checkpoint that summarises it.
                return self._against_checkpoint(key, kept[1], data, step, base)
            if held is None or held == verified.id:
                return attrs.evolve(base, outcome=IngestOutcome.DUPLICATE)
            return self._equivocation(key, header.seq, (held, None), verified, step, base)
        if header.seq > state.seq + 1:
            return self._hold_early(key, state, verified, step, base)
        # The envelope that fills the gap: applied at once, it never needs pending room.
        known = key in self._chains
        result = self._apply(key, verified, step)
        if result.outcome is IngestOutcome.APPLIED:
            self._drain_chain(key, step)
        elif not known:
            self._discard_empty_chain(key)
        return result

    def _hold_early(
        self, key: Key, state: _Chain, verified: VerifiedEnvelope, step: _Step, base: IngestResult
    ) -> IngestResult:
        """An envelope beyond its chain's next sequence number: it waits for the gap to fill."""
        header = verified.header
        waiting = state.pending.get(header.seq)
        if waiting is not None:
            if waiting[0] == verified.id:
                return attrs.evolve(base, outcome=IngestOutcome.DUPLICATE)
            return self._equivocation(
                key, header.seq, (waiting[0], waiting[1]), verified, step, base
            )
        # Charged to the verified writer key: one writer's flood of gapped envelopes fills its
        # own budget, never another writer's.
        full = self._pending_refusal(self._gap, header.writer, len(verified.data))
        if full is not None:
            return attrs.evolve(base, outcome=IngestOutcome.REJECTED, error=full)
        self._hold_gap(key, self._chain(key), header.seq, verified.id, verified.data)
        step.batch.pending_add.append(StoredItem(verified.id, verified.data, "gap", header.writer))
        return attrs.evolve(base, outcome=IngestOutcome.PENDING)

    def _admit_header(self, header: EnvelopeHeader) -> None:
        """Refuse, before any signature is verified, a new chain of a writer at its chain budget.

        A forgery naming that writer is refused the same way, which costs the writer nothing: the
        refusal evicts no chain, and the writer could not start a new chain here either.
        """
        chains = self._writer_chains.get(header.writer)
        if chains is not None and len(chains) >= self.limits.chains_per_writer:
            error = self._chain_refusal(header.writer, header.chain)
            if error is not None:
                raise error

    def _chain_refusal(self, writer: str, chain: str) -> TooLargeError | None:
        """The refusal of ``chain`` if it is new and ``writer`` is at ``chains_per_writer``."""
        chains = self._writer_chains.get(writer)
        limit = self.limits.chains_per_writer
        if chains is None or len(chains) < limit or chain in chains:
            return None
        return TooLargeError(
            f"writer {writer} already has {len(chains)} chains here (chains_per_writer "
            f"{limit}); chain {chain} refused",
            reason="chains_per_writer",
            writer=writer,
        )

    def _pending_refusal(self, area: _Area, source: str, size: int) -> TooLargeError | None:
        """The refusal of a ``size``-byte item from ``source`` if ``area`` cannot take it.

        Never an eviction: what the area holds stays; the newcomer is refused.
        """
        limits = self.limits
        count, held = area.held(source)
        if count >= limits.pending_per_source:
            name, limit = "pending_per_source", limits.pending_per_source
        elif held + size > limits.pending_bytes_per_source:
            name, limit = "pending_bytes_per_source", limits.pending_bytes_per_source
        elif self._gap.count + self._awaiting.count >= limits.pending_total:
            name, limit = "pending_total", limits.pending_total
        elif self._gap.bytes + self._awaiting.bytes + size > limits.pending_bytes_total:
            name, limit = "pending_bytes_total", limits.pending_bytes_total
        else:
            return None
        return TooLargeError(
            f"the pending area is full for {source or 'local input'!r} ({name} {limit}; "
            f"it holds {count} items, {held} bytes)",
            reason=name,
            writer=source if area is self._gap else "",
        )

    def _quarantine_refusal(self, writer: str, size: int) -> TooLargeError | None:
        """The refusal of a ``size``-byte envelope of ``writer`` if its quarantine is full."""
        limits = self.limits
        count, held = self._quarantined.held(writer)
        if count >= limits.quarantine_per_source:
            name, limit = "quarantine_per_source", limits.quarantine_per_source
        elif held + size > limits.quarantine_bytes_per_source:
            name, limit = "quarantine_bytes_per_source", limits.quarantine_bytes_per_source
        else:
            return None
        return TooLargeError(
            f"the quarantine is full for writer {writer} ({name} {limit}; it holds {count} "
            f"envelopes, {held} bytes)",
            reason=name,
            writer=writer,
        )

    def _hold_gap(self, key: Key, state: _Chain, seq: int, item_id: bytes, data: bytes) -> None:
        state.pending[seq] = (item_id, data)
        state.held_since[seq] = self.clock.physical()
        self._gap.add(chain_writer(key[1]), len(data))

    def _drop_gap(self, key: Key, state: _Chain, seq: int) -> tuple[bytes, bytes] | None:
        item = state.pending.pop(seq, None)
        state.held_since.pop(seq, None)
        if item is not None:
            self._gap.remove(chain_writer(key[1]), len(item[1]))
        return item

    def _hold_awaiting(self, item_id: bytes, data: bytes, reason: str, source: str) -> None:
        self._delegation_pending[item_id] = (data, reason, source)
        self._awaiting.add(source, len(data))

    def _drop_awaiting(self, item_id: bytes) -> None:
        item = self._delegation_pending.pop(item_id, None)
        if item is not None:
            self._awaiting.remove(item[2], len(item[0]))

    def _hold_quarantined(self, item_id: bytes, data: bytes, writer: str) -> None:
        self._quarantine[item_id] = (data, writer)
        self._quarantined.add(writer, len(data))

    def _drop_quarantined(self, item_id: bytes) -> tuple[bytes, str] | None:
        item = self._quarantine.pop(item_id, None)
        if item is not None:
            self._quarantined.remove(item[1], len(item[0]))
        return item

    def _apply(self, key: Key, verified: VerifiedEnvelope, step: _Step) -> IngestResult:
        header = verified.header
        state = self._chain(key)
        base = IngestResult(
            IngestOutcome.APPLIED, verified.id, str(header.scope), header.chain, header.seq
        )
        if header.prev != state.last_id and state.seq > 0:
            error = EquivocationError(
                "envelope extends a different previous envelope than the one held",
                reason="prev-mismatch",
                scope=str(header.scope),
                writer=header.writer,
            )
            return attrs.evolve(base, outcome=IngestOutcome.REJECTED, error=error)
        self.policy.grants[header.chain] = verified.grant
        scope_state = self.fleet.scope(header.scope)
        try:
            changed = scope_state.receive(
                header.chain, header.seq, verified.payload, max_hlc=header.hlc
            )
        except InvalidUpdateError as exc:
            return attrs.evolve(base, outcome=IngestOutcome.REJECTED, error=exc)
        step.touched.add(key)
        state.seq, state.last_id = header.seq, verified.id
        if header.hlc > self.clock.last:
            self.clock.observe(header.hlc)
        stored = StoredEnvelope(
            verified.id, str(header.scope), header.chain, header.seq, header.hlc, verified.data
        )
        step.batch.envelopes.append(stored)
        step.unacked.extend(self._enqueue(step.batch, key, stored, source=step.source))
        step.accepted.append((stored, step.source))
        step.changes.append((header.scope, changed))
        return base

    def _drain_chain(self, key: Key, step: _Step) -> None:
        state = self._chain(key)
        while (waiting := self._drop_gap(key, state, state.seq + 1)) is not None:
            item_id, data = waiting
            step.batch.pending_remove.append(item_id)
            try:
                verified = open_envelope(
                    data,
                    self.authority,
                    physical_now=self.clock.physical(),
                    max_offset=self.clock.max_offset,
                    max_logical=self.clock.max_logical,
                    limits=self._decode_limits,
                )
            except SouverixError:
                break
            result = self._apply(key, verified, step)
            if result.outcome is not IngestOutcome.APPLIED:
                break

    def _park(
        self,
        data: bytes,
        reason: str,
        batch: Batch,
        error: SouverixError,
        *,
        source: str | None = None,
    ) -> IngestResult:
        item_id = hashlib.sha256(data).digest()
        # The chain is not verified yet (its signature is, wherever the writer's key is known);
        # the header only names the chain in the result, so that a sync session can report how
        # far it really holds that chain (and get it resent).
        try:
            header = read_header(data)
            base = IngestResult(
                IngestOutcome.PENDING, item_id, str(header.scope), header.chain, header.seq
            )
        except SouverixError:
            base = IngestResult(IngestOutcome.PENDING, item_id)
        if item_id in self._delegation_pending:
            return attrs.evolve(base, error=error)
        # Charged to the session it came from: nothing verified names a writer to charge yet,
        # and a peer's flood of them fills that peer's budget only.
        charge = source or ""
        full = self._pending_refusal(self._awaiting, charge, len(data))
        if full is not None:
            return attrs.evolve(base, outcome=IngestOutcome.REJECTED, error=full)
        self._hold_awaiting(item_id, data, reason, charge)
        batch.pending_add.append(StoredItem(item_id, data, reason, charge))
        return attrs.evolve(base, error=error)

    @property
    def awaiting_authority(self) -> int:
        """Items parked until a delegation or an issuer they name becomes known."""
        return len(self._delegation_pending)

    @property
    def max_pending(self) -> int:
        """Deprecated: ``limits.pending_total``, the items pending in all."""
        return self.limits.pending_total

    def _quarantine_envelope(
        self, data: bytes, error: QuarantinedError, batch: Batch
    ) -> IngestResult:
        item_id = hashlib.sha256(data).digest()
        header: EnvelopeHeader | None = error.header
        writer = header.writer if header is not None else ""
        result = IngestResult(
            IngestOutcome.QUARANTINED,
            item_id,
            scope="" if header is None else str(header.scope),
            chain="" if header is None else header.chain,
            seq=0 if header is None else header.seq,
            error=error,
        )
        if item_id not in self._quarantine:
            # Signature, chain, scope and revocation verified (open_envelope judges the clock
            # last): the verified writer is charged.
            full = self._quarantine_refusal(writer, len(data))
            if full is not None:
                return attrs.evolve(result, outcome=IngestOutcome.REJECTED, error=full)
            self._hold_quarantined(item_id, data, writer)
            batch.quarantine_add.append(StoredItem(item_id, data, "clock-skew", writer))
        return result

    def _pending_count(self) -> int:
        return self._gap.count + self._awaiting.count

    def _held_id(self, key: Key, seq: int, batch: Batch) -> bytes | None:
        for stored in batch.envelopes:
            if (Scope.parse(stored.scope), stored.writer) == key and stored.seq == seq:
                return stored.id
        held = self.store.envelope_at(str(key[0]), key[1], seq)
        return None if held is None else held.id

    # ================================================================== equivocation

    def _equivocation(  # noqa: PLR0917  (private; each argument is one fact of the proof)
        self,
        key: Key,
        seq: int,
        held: tuple[bytes, bytes | None],
        verified: VerifiedEnvelope,
        step: _Step,
        base: IngestResult,
    ) -> IngestResult:
        batch = step.batch
        held_id, held_data = held
        if held_data is None:
            stored = self.store.envelope_at(str(key[0]), key[1], seq)
            held_data = b"" if stored is None else stored.data
            for kept in batch.envelopes:
                if kept.id == held_id:
                    held_data = kept.data
        first, second = sorted((held_data, verified.data))
        self._record_proof(key, seq, first, second, batch)
        step.touched.add(key)
        error = EquivocationError(
            f"two envelopes for seq {seq} of {key[1]} in {key[0]}",
            reason="equivocation",
            scope=str(key[0]),
            writer=chain_writer(key[1]),
        )
        return attrs.evolve(base, outcome=IngestOutcome.EQUIVOCATION, error=error)

    def _checkpoint_behind(
        self, key: Key, data: bytes, source: str | None, base: IngestResult
    ) -> IngestResult:
        """A checkpoint at or below the chain's head: a duplicate, or a contradiction of it."""
        seq = base.seq
        held = self.store.envelope_at(str(key[0]), key[1], seq)
        kept = self._checkpoints.get(key)
        if held is not None:
            other = held.data
        elif kept is not None and kept[0] == seq and kept[1] != data:
            other = kept[1]
        else:
            return attrs.evolve(base, outcome=IngestOutcome.DUPLICATE)
        step = _Step(source)
        result = self._against_checkpoint(key, data, other, step, base)
        self._finish(step, self.clock.last)  # announces the proof (authority changed)
        return result

    def _against_checkpoint(
        self, key: Key, checkpoint: bytes, other: bytes, step: _Step, base: IngestResult
    ) -> IngestResult:
        """A checkpoint met the envelope (or another checkpoint) at its sequence number.

        If they contradict each other (:func:`_contradiction`) the pair is an equivocation
        proof, recorded and forwarded like two envelopes at one sequence number.
        """
        seq = read_header(checkpoint).seq
        if _contradiction(self._open_item(checkpoint), self._open_item(other)) is None:
            return attrs.evolve(base, outcome=IngestOutcome.DUPLICATE)
        self._record_proof(key, seq, checkpoint, other, step.batch)
        step.touched.add(key)
        error = EquivocationError(
            f"a checkpoint of seq {seq} of {key[1]} in {key[0]} contradicts the chain",
            reason="checkpoint-equivocation",
            scope=str(key[0]),
            writer=chain_writer(key[1]),
        )
        return attrs.evolve(base, outcome=IngestOutcome.EQUIVOCATION, error=error)

    def _open_item(self, data: bytes) -> VerifiedEnvelope | VerifiedCheckpoint:
        """An envelope or a checkpoint of a proof, verified (at any age: it was signed)."""
        physical = max(self.clock.physical(), 0)
        try:
            return open_envelope(data, self.authority, physical_now=physical, max_offset=1 << 62)
        except SignatureError:
            return open_checkpoint(data, self.authority, physical_now=physical, max_offset=1 << 62)

    def _proves_more(self, key: Key, seq: int, first: bytes, second: bytes) -> bool:
        """True if a proof at ``seq`` made of ``(first, second)`` replaces what is held.

        A lower seq cuts more; at the same seq (three branches give three pairs) the smaller
        pair wins, so every replica ends holding the same proof whatever it found first.
        """
        state = self._chain(key)
        if state.cut_from is None or seq < state.cut_from:
            return True
        held = self._proofs.get(key)
        return seq == state.cut_from and held is not None and (first, second) < held[1:]

    def _record_proof(self, key: Key, seq: int, first: bytes, second: bytes, batch: Batch) -> None:
        first, second = sorted((first, second))
        if not self._proves_more(key, seq, first, second):
            return
        state = self._chain(key)
        state.cut_from = seq
        self._proofs[key] = (seq, first, second)
        self._authority_dirty = True
        index = sorted([str(k[0]), k[1]] for k in self._proofs)
        batch.meta[_EQUIVOCATION_META + "index"] = encode(index)
        batch.meta[f"{_EQUIVOCATION_META}{key[0]}|{key[1]}"] = encode([seq, first, second])
        for dropped in [s for s in state.pending if s >= seq]:
            item = self._drop_gap(key, state, dropped)
            if item is not None:
                batch.pending_remove.append(item[0])
        if state.seq >= seq:
            self._rebuild(key, pending_batch=batch)

    def add_proof(self, first: bytes, second: bytes) -> bool:
        """Take an equivocation proof from a peer: two signed items at one (scope, chain, seq).

        Either two envelopes, or a checkpoint and the envelope (or another checkpoint) at its
        sequence number that it contradicts (:func:`_contradiction`).

        Returns:
            True if it was new and applied.

        Raises:
            EquivocationError: if the two items do not prove an equivocation.
            AuthorityError: if either item does not verify.
        """
        opened = [self._open_item(d) for d in (first, second)]
        a, b = (o.header for o in opened)
        if (a.scope, a.chain, a.seq) != (b.scope, b.chain, b.seq) or _contradiction(
            *opened
        ) is None:
            raise EquivocationError("not two envelopes of one sequence number", reason="proof")
        key = (a.scope, a.chain)
        if key not in self._chains:
            refusal = self._chain_refusal(a.writer, a.chain)
            if refusal is not None:
                raise refusal
        low, high = sorted((first, second))
        if not self._proves_more(key, a.seq, low, high):
            return False
        batch = Batch()
        self._record_proof(key, a.seq, low, high, batch)
        self.store.commit(batch)
        self._authority_changed()
        return True

    def proofs(self) -> list[tuple[bytes, bytes]]:
        """Every equivocation proof known (to forward to peers)."""
        return [(first, second) for _, first, second in self._proofs.values()]

    # ================================================================== rebuilding

    def _rebuild(self, key: Key, *, pending_batch: Batch | None = None) -> None:
        """Rebuild the scope of one chain from the log, without what no longer counts.

        Every chain of the scope is replayed, not only the one that changed, so conflict chains,
        history and the audit records of the scope come out exactly as if the late decision (a
        revocation, an equivocation, a strategy) had been known from the start.
        """
        self._rebuild_scope(key[0], pending_batch=pending_batch)

    def _rebuild_scope(self, scope: Scope, *, pending_batch: Batch | None = None) -> None:
        self.rebuilds += 1
        scope_state = self.fleet.scope(scope)
        scope_state.reset()
        self.fleet.conflicts.discard_scope(str(scope))
        for key in sorted((k for k in self._chains if k[0] == scope), key=lambda k: k[1]):
            self._replay_chain(key, pending_batch)

    def _replay_chain(self, key: Key, pending_batch: Batch | None) -> None:
        path, chain = str(key[0]), key[1]
        state = self._chain(key)
        state.seq, state.last_id = 0, b""
        limit = state.cut_from - 1 if state.cut_from is not None else None
        self._restore_checkpoint(key, limit=limit)
        extra: list[StoredEnvelope] = []
        if pending_batch is not None:
            extra = sorted(
                (e for e in pending_batch.envelopes if (e.scope, e.writer) == (path, chain)),
                key=lambda e: e.seq,
            )
            if limit is not None:
                # Envelopes of this batch that now lie past the cut must not be committed.
                pending_batch.envelopes = [
                    e
                    for e in pending_batch.envelopes
                    if (e.scope, e.writer) != (path, chain) or e.seq <= limit
                ]
        after = state.seq
        while True:
            rows = self.store.envelopes_after(path, chain, after, 1000)
            if not rows:
                rows = [e for e in extra if e.seq > after]
                if not rows:
                    return
            for stored in rows:
                if stored.seq != state.seq + 1 or (limit is not None and stored.seq > limit):
                    return
                if not self._replay(key, stored):
                    return
            after = rows[-1].seq

    def _forget_uncommitted(self, batch: Batch) -> None:
        for item in batch.pending_add:
            if item.reason != "gap":
                self._drop_awaiting(item.id)
                continue
            header = read_header(item.data)
            key = (header.scope, header.chain)
            state = self._chains.get(key)
            if state is not None and state.pending.get(header.seq, (b"",))[0] == item.id:
                self._drop_gap(key, state, header.seq)
        for item in batch.quarantine_add:
            self._drop_quarantined(item.id)

    # ================================================================== checkpoints

    def checkpoint(self, scope: Scope | str) -> bytes | None:
        """Sign a snapshot of this process's own document in ``scope``; compact the log before it.

        New replicas and peers that fell behind the compacted log start from it.

        Returns:
            The checkpoint bytes, or ``None`` if this process has not written ``scope``.

        Raises:
            StoreError: the commit failed; nothing changed.
        """
        target = Scope.parse(scope)
        key = (target, self.chain)
        state = self._chains.get(key)
        if state is None or state.seq == 0:
            return None
        kept = self._checkpoints.get(key)
        if kept is not None and kept[0] == state.seq:
            return kept[1]
        last = self.store.envelope_at(str(target), self.chain, state.seq)
        if last is None:  # pragma: no cover - our own head is always kept
            return None
        header = read_header(last.data)
        document = self.fleet.scope(target).document(self.chain)
        data = seal_checkpoint(
            self.identity.signing_key,
            fleet_id=self.fleet_id,
            scope=target,
            epoch=self.epoch,
            seq=state.seq,
            prev=header.prev,
            last_id=last.id,
            hlc=last.hlc,
            state_vector=document.state_vector(),
            state=document.encode_state(),
            delegation_digest=header.delegation,
            history=self.fleet.scope(target).own_history(self.chain),
        )
        self.store.commit(
            Batch(
                checkpoints=[StoredCheckpoint(str(target), self.chain, state.seq, data)],
                compact=[(str(target), self.chain, state.seq)],
                meta=self._verdict(key, state.seq),
            )
        )
        self._checkpoints[key] = (state.seq, data)
        return data

    def ingest_checkpoint(self, data: bytes, *, source: str | None = None) -> IngestResult:
        """Take a writer's signed snapshot: jump that chain forward to it.

        Raises:
            StoreError: the commit failed; nothing changed.
        """
        try:
            verified = open_checkpoint(
                data,
                self.authority,
                physical_now=self.clock.physical(),
                max_offset=self.clock.max_offset,
                max_logical=self.clock.max_logical,
            )
        except SouverixError as exc:
            return IngestResult(IngestOutcome.REJECTED, error=exc)
        header = verified.header
        key = (header.scope, header.chain)
        if key not in self._chains:
            refusal = self._chain_refusal(header.writer, header.chain)
            if refusal is not None:
                return IngestResult(
                    IngestOutcome.REJECTED,
                    b"",
                    str(header.scope),
                    header.chain,
                    header.seq,
                    error=refusal,
                )
        known = key in self._chains
        state = self._chain(key)
        base = IngestResult(IngestOutcome.APPLIED, b"", str(header.scope), header.chain, header.seq)
        if state.cut_from is not None and header.seq >= state.cut_from:
            return attrs.evolve(base, outcome=IngestOutcome.EQUIVOCATION)
        if header.seq <= state.seq:
            return self._checkpoint_behind(key, data, source, base)
        step = _Step(source)
        before = self.clock.last
        self.policy.grants[header.chain] = verified.grant
        scope_state = self.fleet.scope(header.scope)
        try:
            changed = scope_state.apply_checkpoint(
                header.chain,
                header.seq,
                verified.state,
                max_hlc=header.hlc,
                history=verified.history,
            )
        except InvalidUpdateError as exc:
            if not known:
                self._discard_empty_chain(key)
            return attrs.evolve(base, outcome=IngestOutcome.REJECTED, error=exc)
        state.seq, state.last_id = header.seq, verified.last_id
        for seq in [s for s in state.pending if s <= header.seq]:
            item = self._drop_gap(key, state, seq)
            if item is not None:
                step.batch.pending_remove.append(item[0])
        if header.hlc > self.clock.last:
            self.clock.observe(header.hlc)
        path = str(header.scope)
        step.batch.checkpoints.append(StoredCheckpoint(path, header.chain, header.seq, data))
        step.batch.compact.append((path, header.chain, header.seq))
        step.batch.meta.update(self._verdict(key, header.seq))
        self._checkpoints[key] = (header.seq, data)
        step.touched.add(key)
        step.changes.append((header.scope, changed))
        self._drain_chain(key, step)
        self._finish(step, before)
        return base

    def catch_up(
        self, scope: Scope | str, chain: str, seq: int, limit: int
    ) -> tuple[bytes | None, list[bytes]]:
        """What a peer at ``seq`` of a chain needs next.

        A checkpoint if the log it needs was compacted, else up to ``limit`` envelopes.

        Returns:
            ``(checkpoint or None, envelopes)``.
        """
        key = (Scope.parse(scope), chain)
        state = self._chains.get(key)
        if state is None or state.seq <= seq:
            return None, []
        rows = self.store.envelopes_after(str(key[0]), chain, seq, limit)
        if rows and rows[0].seq == seq + 1:
            return None, [row.data for row in rows]
        kept = self._checkpoints.get(key)
        if kept is not None and kept[0] > seq:
            return kept[1], []
        return None, [row.data for row in rows]

    # ================================================================== authority items

    def _learn_delegations(
        self, items: Iterable[bytes], *, park: bool = False
    ) -> tuple[Delegation, ...]:
        """Decode ``items`` and add them to the registry; return those that came to count."""
        known = self.authority.delegation
        decoded: list[Delegation] = []
        for data in items:
            # A delegation's name is the SHA-256 of its canonical encoding, and only canonical
            # bytes decode: one already known is recognised without decoding it again (peers
            # send writers' chains ahead of every batch).
            if isinstance(data, bytes) and known(hashlib.sha256(data).digest()) is not None:
                continue
            try:
                decoded.append(Delegation.decode(data))
            except (DecodeError, AuthorityError) as exc:
                self.authority.refusals[exc.reason or "malformed"] += 1
        added, _refused = self.authority.add_delegations(decoded, park=park)
        return added

    def _learn_revocation(self, data: bytes) -> None:
        try:
            self.authority.add_revocation(Revocation.decode(data))
        except UnknownDelegationError:
            # Kept by an older version before the revoked key's chain was known: it waits (in
            # memory; the store still holds it) like one that arrives now.
            item_id = hashlib.sha256(data).digest()
            if (
                item_id not in self._delegation_pending
                and self._pending_refusal(self._awaiting, "", len(data)) is None
            ):
                self._hold_awaiting(item_id, data, "revocation", "")
        except SouverixError:
            pass  # does not count: not loaded, so never used or re-sent

    def add_delegations(self, items: Iterable[bytes]) -> int:
        """Learn delegations (encoded); persist those that count and retry what waited for them.

        A delegation counts once its whole chain verifies to the anchors. One whose parent is
        not known yet waits in the registry's bounded parking area (not persisted, not sent);
        one that does not verify is refused and forgotten (see :attr:`Authority.refusals`).

        Returns:
            How many came to count (with parked ones this batch completed).
        """
        added = self._learn_delegations(items, park=True)
        if added:
            self.store.commit(Batch(delegations=[StoredItem(d.digest, d.encode()) for d in added]))
            self._refresh_strategies()
            self.retry_pending()
            self._authority_changed()
        return len(added)

    def add_revocations(self, items: Iterable[bytes]) -> int:
        """Learn revocations (encoded); persist those that count and rebuild the chains they cut.

        A revocation counts when a quorum of roots, or a strict ancestor of the revoked key in
        that key's verified chain, issued it. Any other is refused: not stored, not sent, no
        effect. One whose revoked key has no verified delegation yet waits in the pending area.

        Returns:
            How many were new.
        """
        batch = Batch()
        new = 0
        for data in items:
            try:
                revocation = Revocation.decode(data)
                added = self.authority.add_revocation(revocation)
            except UnknownDelegationError as exc:
                self._park(data, "revocation", batch, exc)
                continue
            except (DecodeError, AuthorityError):
                continue
            if added:
                new += 1
                batch.revocations.append(StoredItem(revocation.digest, revocation.encode()))
        if not batch.is_empty():
            self.store.commit(batch)
        if new:
            self._own_grant = None
            for key, state in list(self._chains.items()):
                grant = self.policy.grants.get(key[1])
                if (
                    grant is not None
                    and state.seq
                    and self.authority.is_cut(
                        grant, key[0], state.seq, epoch=int(key[1].partition("~")[2] or "0", 16)
                    )
                ):
                    self._record_revoked(key, grant)
                    self._rebuild(key)
        if new or self._authority_dirty:
            self._authority_changed()
        return new

    def authority_digest(self) -> bytes:
        """A digest of the delegations, revocations and proofs that count (equal sets: equal).

        Parked and refused items are not in it, so a forged item never makes two replicas differ.
        """
        digests = sorted(d.digest for d in self.authority.delegations())
        digests += sorted(r.digest for r in self.authority.revocations())
        digests += sorted(hashlib.sha256(a + b).digest() for a, b in self.proofs())
        return hashlib.sha256(b"".join(digests)).digest()

    def delegations(self) -> list[bytes]:
        """Every delegation that counts, encoded (to send to peers)."""
        return [d.encode() for d in self.authority.delegations()]

    def revocations(self) -> list[bytes]:
        """Every revocation that counts, encoded (to send to peers)."""
        return [r.encode() for r in self.authority.revocations()]

    def retry_pending(self) -> list[IngestResult]:
        """Re-evaluate the pending area (after delegations arrived)."""
        items = list(self._delegation_pending.items())
        if not items:
            return []
        batch = Batch()
        revocations = []
        for item_id, (data, reason, _source) in items:
            self._drop_awaiting(item_id)
            batch.pending_remove.append(item_id)
            if reason == "revocation":
                revocations.append(data)
        self.store.commit(batch)
        if revocations:
            self.add_revocations(revocations)
        # Each envelope stays charged to the source it came from if it has to wait again.
        step = _Step(None)
        before = self.clock.last
        results = [
            self._ingest_one(data, step, charge=source)
            for _, (data, reason, source) in items
            if reason != "revocation"
        ]
        self._finish(step, before)
        return results

    def tick(self) -> list[IngestResult]:
        """Look again at quarantined envelopes whose time has come (call periodically)."""
        now = self.clock.physical()
        due = []
        for item_id, (data, _writer) in list(self._quarantine.items()):
            try:
                header = read_header(data)
            except SouverixError:
                continue
            if header.hlc.wall - now <= self.clock.max_offset:
                due.append((item_id, data))
        if not due:
            return []
        released = [(item_id, self._drop_quarantined(item_id)) for item_id, _ in due]
        step = _Step(None)
        before = self.clock.last
        results = [self._ingest_one(data, step) for _, data in due]
        # Released for good unless it came straight back (the clock stepped back meanwhile).
        step.batch.quarantine_remove.extend(i for i, _ in due if i not in self._quarantine)
        try:
            self._finish(step, before)
        except StoreError:
            for item_id, held in released:
                if held is not None and item_id not in self._quarantine:
                    self._hold_quarantined(item_id, held[0], held[1])
            raise
        return results

    # ================================================================== sync support

    def register_peer(self, peer: str, interest: Sequence[Scope | str]) -> None:
        """Queue future envelopes in ``interest`` for ``peer`` (its outbox and sync debt)."""
        self._peers[peer] = tuple(Scope.parse(s) for s in interest)
        self._unacked.setdefault(peer, {})

    def interested(self, interest: Sequence[Scope], scope: Scope) -> bool:
        """True if a replica with ``interest`` receives data of ``scope`` (subtree + ancestors)."""
        key = (interest if type(interest) is tuple else tuple(interest), scope)
        known = self._related.get(key)
        if known is None:
            if len(self._related) >= _RELATED_CACHE:
                self._related.clear()
            known = self._related[key] = any(home.is_related_to(scope) for home in interest)
        return known

    def _enqueue(
        self, batch: Batch, key: Key, stored: StoredEnvelope, *, source: str | None
    ) -> list[tuple[str, Key, int, bytes]]:
        queued = []
        now = self.clock.physical()
        for peer, interest in self._peers.items():
            if peer == source or not self.interested(interest, key[0]):
                continue
            batch.outbox.append(OutboxEntry(peer, stored.id, len(stored.data), now))
            queued.append((peer, key, stored.seq, stored.id))
        return queued

    def _commit_unacked(self, queued: Iterable[tuple[str, Key, int, bytes]]) -> None:
        for peer, key, seq, queued_id in queued:
            self._unacked.setdefault(peer, {}).setdefault(key, deque()).append((seq, queued_id))

    def acknowledge(self, peer: str, frontiers: Iterable[tuple[str, str, int]]) -> AckResult:
        """A peer reports how far it has each chain: settle its outbox and sync debt.

        An acknowledgement is the peer's word about itself, so only the part this replica can
        check is kept: rows for chains it holds, in the interest ``peer`` was registered with
        (:meth:`register_peer`), with the sequence number clamped to what it holds. Stored
        peer frontiers only grow and decide where the next bundle for the peer starts, so a
        row for a chain that does not exist (a flood of them), for a sibling's chain, or
        beyond what exists would otherwise cost a row each, settle debt the peer never
        received, or make every later bundle skip that chain. A peer that was never
        registered gets nothing stored and nothing settled.

        Args:
            peer: The peer's plane name, as authenticated by the caller (never a name the
                peer merely declared).
            frontiers: ``(scope, chain, seq)`` rows.

        Returns:
            How many rows were accepted, clamped and refused.
        """
        interest = self._peers.get(peer)
        if interest is None:
            return AckResult(refused=sum(1 for _ in frontiers))
        chains = self._chains
        accepted: dict[Key, tuple[str, int]] = {}
        clamped: set[Key] = set()
        refused = 0
        for scope_path, chain, seq in frontiers:
            try:
                key = (Scope.parse(scope_path), chain)
            except (SouverixError, TypeError, ValueError):
                refused += 1
                continue
            state = chains.get(key) if type(chain) is str else None
            if (
                state is None
                or not state.seq
                or type(seq) is not int
                or seq < 1
                or not self.interested(interest, key[0])
            ):
                refused += 1
                continue
            # Never beyond what exists: a frontier only grows, so an inflated one would make
            # every later bundle for the peer skip what this chain gains until then.
            stored = min(seq, state.seq)
            if stored < seq:
                clamped.add(key)
            held = accepted.get(key)
            if held is None or stored > held[1]:
                accepted[key] = (str(key[0]), stored)
        batch = Batch()
        queues = self._unacked.get(peer, {})
        acked: list[bytes] = []
        for key, (scope_path, seq) in accepted.items():
            batch.peer_frontiers.append((peer, scope_path, key[1], seq))
            queue = queues.get(key)
            while queue and queue[0][0] <= seq:
                acked.append(queue.popleft()[1])
        if acked:
            batch.acked.append((peer, acked))
        if not batch.is_empty():
            self.store.commit(batch)
        return AckResult(accepted=len(accepted), clamped=len(clamped), refused=refused)

    def frontiers(
        self, interest: Sequence[Scope] | None = None
    ) -> list[tuple[str, str, int, bytes]]:
        """``(scope, chain, seq, last id)`` of every chain held (within ``interest``).

        A chain that a cut took back to nothing (an equivocation proof or a revocation whose
        cut falls below the only checkpoint held of it) is listed at seq 0, so a peer that
        kept the envelopes before the cut sends them again.
        """
        wanted = None if interest is None else tuple(interest)
        keys = self._frontier_keys.get(wanted)
        if keys is None:
            if len(self._frontier_keys) >= _RELATED_CACHE:
                self._frontier_keys.clear()
            ordered = sorted((str(key[0]), key[1], key) for key in self._chains)
            keys = self._frontier_keys[wanted] = [
                (key, path)
                for path, _, key in ordered
                if wanted is None or self.interested(wanted, key[0])
            ]
        chains = self._chains
        rows = []
        for key, path in keys:
            state = chains[key]
            if state.seq or state.cut_from is not None or key in self._checkpoints:
                rows.append((path, key[1], state.seq, state.last_id))
        return rows

    def chain_head(self, scope: Scope | str, chain: str) -> tuple[int, bytes]:
        """``(seq, id)`` of the last envelope applied for a chain (``(0, b"")`` if none)."""
        state = self._chains.get((Scope.parse(scope), chain))
        return (0, b"") if state is None else (state.seq, state.last_id)

    def chain_cut(self, scope: Scope | str, chain: str) -> int | None:
        """The first sequence number of a chain that stopped counting (an equivocation), if any."""
        state = self._chains.get((Scope.parse(scope), chain))
        return None if state is None else state.cut_from

    def envelope_at(self, scope: Scope | str, chain: str, seq: int) -> bytes | None:
        """The chain's envelope at ``seq`` as this replica holds it (its log), if kept."""
        stored = self.store.envelope_at(str(scope), chain, seq)
        return None if stored is None else stored.data

    def chain_seq(self, scope: Scope | str, chain: str) -> int:
        """The last sequence number applied for a chain (0 if none)."""
        state = self._chains.get((Scope.parse(scope), chain))
        return 0 if state is None else state.seq

    def envelopes_after(self, scope: Scope | str, chain: str, seq: int, limit: int) -> list[bytes]:
        """Up to ``limit`` of a chain's envelopes after ``seq`` (what a peer lacks)."""
        state = self._chains.get((Scope.parse(scope), chain))
        if state is None or state.seq <= seq:
            return []
        return [e.data for e in self.store.envelopes_after(str(scope), chain, seq, limit)]

    def _announce(self, accepted: Sequence[tuple[StoredEnvelope, str | None]]) -> None:
        for stored, source in accepted:
            for callback in list(self._envelope_listeners):
                callback(stored, source)

    # ================================================================== status

    def sync_debt(self, peer: str) -> SyncDebt:
        """What ``peer`` has not acknowledged: envelopes, bytes and the oldest one's age."""
        stats: OutboxStats = self.store.outbox_stats(peer)
        age = 0 if stats.oldest is None else max(0, self.clock.physical() - stats.oldest)
        return SyncDebt(stats.count, stats.bytes, age)

    def status(self) -> ReplicaStatus:
        """Frontiers, pending, quarantine, equivocators and sync debt, for operators."""
        frontiers = self.frontiers()
        return ReplicaStatus(
            name=self.name,
            plane=plane_name(self.identity.leaf),
            key_id=self.identity.key_id,
            chain=self.chain,
            durability=self.store.durability,
            frontiers={f"{s}|{c}": q for s, c, q, _ in frontiers},
            pending=self._pending_count(),
            parked_delegations=self.authority.parked_count,
            refused_authority=dict(sorted(self.authority.refusals.items())),
            quarantined={w: n for w, (n, _) in sorted(self._quarantined.sources.items())},
            equivocators={f"{k[0]}|{k[1]}": v[0] for k, v in self._proofs.items()},
            refused=self.refused.to_json(),
            sync_debt={peer: self.sync_debt(peer) for peer in sorted(self._peers)},
            hlc=self.clock.last,
            writers={c: self.plane_of(c) for c in sorted({c for _, c, _, _ in frontiers})},
            pending_by_writer=self._gap.usage(),
            pending_by_source=self._awaiting.usage(),
            quarantine_by_writer=self._quarantined.usage(),
            gaps=self.gaps(),
        )

    def gaps(self) -> dict[str, ChainGap]:
        """Per chain with envelopes waiting behind a gap (``"scope|chain"``), what it misses."""
        gaps: dict[str, ChainGap] = {}
        for (scope, chain), state in sorted(self._chains.items(), key=lambda kv: str(kv[0])):
            if state.pending:
                gaps[f"{scope}|{chain}"] = ChainGap(
                    missing=state.seq + 1,
                    waiting=len(state.pending),
                    since_ms=min(state.held_since.values(), default=0),
                )
        return gaps

    def close(self) -> None:
        """Close the store."""
        self.store.close()
