"""Writer documents over ``pycrdt.Doc`` and the merged, indexed view of a scope.

pycrdt settles concurrent writes to one map key by client id, not by time, and a Yjs update can
touch anything in its document. So every (scope, writer) pair gets its own
:class:`WriterDocument`, a ``pycrdt.Doc`` that only that writer ever changes, with four fixed root
maps (:data:`COLLECTIONS`) created deterministically at construction. Each entry is the writer's
current register for the key, as msgpack bytes.

:class:`ScopeState` merges a scope's writer documents with the LWW layer: it keeps an index
(each writer's register per key, the winner per key, a bounded history and the conflict chains)
updated incrementally from document changes, so reading a winner is a dictionary lookup.
A writer's updates are applied strictly in its sequence order; early arrivals wait until the gap
fills, because pycrdt 0.14 silently loses updates applied out of causal order.

:class:`FleetState` holds the scopes of one replica, computes effective values down the tree
(an overlay, not stored) and fans out change notifications.

Nothing here signs, stores or sends; the envelope and replica layers do that.
"""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Final, NamedTuple, NoReturn, Protocol, TypeAlias

import attrs
import msgpack
import pycrdt

from .conflicts import ConflictLog, ConflictRecord, bounded, settle
from .errors import DecodeError, InvalidUpdateError, InvalidValueError, UnknownCollectionError
from .hlc import Timestamp
from .lww import (
    REGISTER_FORMAT,
    KeyRef,
    Register,
    Strategy,
    VersionRef,
    check_storable,
    concurrent,
    order_key,
    register_stamp,
    supersedes,
    winner,
)
from .scope import Scope

__all__ = [
    "COLLECTIONS",
    "MAX_KEY_LENGTH",
    "AllowAll",
    "Change",
    "FleetState",
    "MapChanges",
    "NotApplied",
    "ScopeState",
    "WriteOp",
    "WriteResult",
    "WriterDocument",
    "WriterPolicy",
    "check_collection",
    "client_id_for",
    "decode_state_vector",
    "entry_bytes",
]

#: ``(collection, {key: pycrdt map event entry})``: what one update changed in one collection.
MapChanges: TypeAlias = tuple[str, dict[str, dict[str, Any]]]

#: The fixed root maps of every writer document.
COLLECTIONS: Final = ("policies", "versions", "nodes", "meta")
#: Longest key accepted in a collection, in characters.
MAX_KEY_LENGTH: Final = 512
#: Early arrivals held per writer while waiting for a gap to fill.
DEFAULT_MAX_PENDING: Final = 100_000

_COLLECTION_SET: Final = frozenset(COLLECTIONS)


def client_id_for(scope: Scope, writer: str) -> int:
    """The Yjs client id of the writer document for ``(scope, writer)``.

    Derived, not random: every replica builds the same document, and only its writer edits it.
    """
    digest = hashlib.sha256(f"souverix-crdt/client-id/v1\x00{scope}\x00{writer}".encode()).digest()
    # 32 bits keep the id inside what every Yjs implementation accepts.
    return int.from_bytes(digest[:4], "big")


def _read_varuint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise DecodeError("bad varuint in state vector", reason="state-vector")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return value, pos


def decode_state_vector(data: bytes) -> dict[int, int]:
    """Decode a Yjs (lib0) state vector: client id → next clock.

    Raises:
        DecodeError: if the bytes are not a state vector.
    """
    count, pos = _read_varuint(data, 0)
    if count > len(data):
        raise DecodeError("state vector count exceeds its size", reason="state-vector")
    result: dict[int, int] = {}
    for _ in range(count):
        client, pos = _read_varuint(data, pos)
        clock, pos = _read_varuint(data, pos)
        result[client] = clock
    if pos != len(data):
        raise DecodeError("trailing bytes in state vector", reason="state-vector")
    return result


class WriterDocument:
    """The ``pycrdt.Doc`` of one (scope, writer) pair; only that writer changes it.

    Attributes:
        scope: The scope.
        writer: The writer's key id.
        seq: The sequence number of the last update applied (0 before any).
        invalid: ``(collection, key)`` of the entries that are not valid registers.
    """

    __slots__ = (
        "_changes",
        "_last_update",
        "_natives",
        "_observer_error",
        "_observers",
        "client_id",
        "doc",
        "invalid",
        "maps",
        "scope",
        "seq",
        "writer",
    )

    def __init__(self, scope: Scope, writer: str) -> None:
        self.scope = scope
        self.writer = writer
        self.seq = 0
        # Entries that do not count (malformed, or dated after the update that carried them),
        # judged once on arrival: the verdict is stored next to a checkpoint so reopening does
        # not have to judge every entry again.
        self.invalid: set[KeyRef] = set()
        self.client_id = client_id_for(scope, writer)
        self.doc: pycrdt.Doc[Any] = pycrdt.Doc(client_id=self.client_id)
        self.maps: dict[str, pycrdt.Map[Any]] = {
            name: self.doc.get(name, type=pycrdt.Map) for name in COLLECTIONS
        }
        self._natives = {name: self.maps[name].integrated for name in COLLECTIONS}
        self._changes: list[MapChanges] = []
        self._observers = [
            (self.maps[name].integrated, self._observer(name)) for name in COLLECTIONS
        ]
        self._observer_error: BaseException | None = None
        self._last_update = b""

    def _on_transaction(self, event: Any) -> None:
        self._last_update = event.update

    def _observer(self, collection: str) -> Callable[[Any], None]:
        changes = self._changes

        def observe(event: Any) -> None:
            # Subscribed on pycrdt's native map (``Map.integrated``): the Python wrapper would
            # rebuild every event through ``process_event``, which costs more than the apply.
            # Never raise here (the exception would surface only after the transaction
            # committed): collect, and let the caller judge the entries afterwards.
            try:
                changes.append((collection, event.keys))
            except BaseException as exc:  # pragma: no cover - pycrdt hands us a malformed event
                self._observer_error = exc

        return observe

    def state_vector(self) -> bytes:
        """The Yjs state vector of the document."""
        return self.doc.get_state()

    def encode_state(self) -> bytes:
        """The full state as one pycrdt update (a checkpoint's payload)."""
        return self.doc.get_update()

    def get(self, collection: str, key: str) -> bytes | None:
        """The raw register bytes stored under ``key``, if any."""
        value = self.maps[collection].get(key)
        return bytes(value) if isinstance(value, bytes | bytearray) else None

    def entries(self) -> Iterator[tuple[str, str, bytes | None]]:
        """Every ``(collection, key, register bytes)`` of the document."""
        for name in COLLECTIONS:
            for key, value in self.maps[name].items():
                yield name, key, bytes(value) if isinstance(value, bytes | bytearray) else None

    def write(self, entries: Iterable[tuple[str, str, bytes]]) -> bytes:
        """Store ``entries`` in one transaction and return the pycrdt update it produced."""
        # Insert through the native maps: ``Map.__setitem__`` opens a nested transaction and
        # re-checks its arguments for every key, which costs three times the insert itself.
        # Keys and values are already checked (str keys, msgpack bytes) by the caller.
        inserts = {name: native.insert for name, native in self._natives.items()}
        self._last_update = b""
        # The transaction event carries exactly the delta of that transaction (asking for
        # get_update(state_before) instead costs about eight times as much per write). pycrdt
        # encodes it for every transaction while someone listens, so only local writes listen.
        subscription = self.doc._doc.observe(self._on_transaction)
        try:
            with self.doc.transaction() as txn:
                native_txn = txn._txn
                for collection, key, data in entries:
                    inserts[collection](native_txn, key, data)
        finally:
            subscription.drop()
        return bytes(self._last_update)

    def keys(self, collection: str) -> list[str]:
        """Every key the document holds in ``collection``."""
        return list(self.maps[collection].keys())

    def load(self, update: bytes) -> None:
        """Apply a full state to an empty document without reporting its entries.

        Raises:
            InvalidUpdateError: as :meth:`apply`; the document is unchanged.
        """
        self._check_update(update)
        try:
            self.doc.apply_update(update)
        except BaseException as exc:
            self._raise_apply_failed(exc)

    def apply(self, update: bytes) -> list[MapChanges]:
        """Apply one of the writer's updates; return what changed, per collection.

        Each change is pycrdt's map event entry, ``{"action": "add" | "update" | "delete",
        "newValue": …, "oldValue": …}``, exactly as received: :func:`entry_bytes` reads it.

        pycrdt decodes the whole update before it touches the document, so malformed bytes
        never reach it; the update must contain only this writer's items and must continue the
        document without a gap (pycrdt would otherwise park it and lose it later). Its header
        is read here first, because one announcing billions of clients makes pycrdt's decoder
        allocate for a second or more.

        Raises:
            InvalidUpdateError: if the update is malformed, carries another client's items or
                leaves a gap. The document is unchanged.
        """
        self._check_update(update)
        self._changes.clear()
        self._observer_error = None
        # Map observers convert every changed entry to Python; they are attached only while a
        # remote update is applied, so local writes do not pay for them.
        subscriptions = [native.observe(callback) for native, callback in self._observers]
        try:
            self.doc.apply_update(update)
        except BaseException as exc:
            self._raise_apply_failed(exc)
        finally:
            for subscription in subscriptions:
                subscription.drop()
        if self._observer_error is not None:  # pragma: no cover - see _observer
            raise InvalidUpdateError(
                f"update applied but its changes could not be read: {self._observer_error}",
                reason="apply-failed",
                scope=str(self.scope),
                writer=self.writer,
            )
        return list(self._changes)

    def _check_update(self, update: bytes) -> None:
        start = _update_start(update)
        if start is not None:
            client, clock = start
            if client != self.client_id:
                raise InvalidUpdateError(
                    "update carries items of another client",
                    reason="foreign-client",
                    scope=str(self.scope),
                    writer=self.writer,
                )
            current = decode_state_vector(self.doc.get_state()).get(self.client_id, 0)
            if clock > current:
                raise InvalidUpdateError(
                    f"update starts at clock {clock} but the document is at {current} (gap)",
                    reason="gap",
                    scope=str(self.scope),
                    writer=self.writer,
                )

    def _raise_apply_failed(self, exc: BaseException) -> NoReturn:
        if not isinstance(exc, Exception):
            _reraise_if_fatal(exc)
        # "Cannot decode update" is a ValueError (or a panic) raised before the document is
        # touched; a RuntimeError comes from integrating a decoded update.
        raise InvalidUpdateError(
            f"update failed to apply: {exc}",
            reason="apply-failed" if isinstance(exc, RuntimeError) else "malformed-update",
            scope=str(self.scope),
            writer=self.writer,
        ) from exc


def _update_start(update: bytes) -> tuple[int, int] | None:
    """The (client, first clock) of a Yjs v1 update, or None if it holds no structs.

    The header is ``clients, then per client: structs, client id, first clock``. Only one
    client is allowed in a writer's update, so any other count is refused. (``get_state`` is no
    help here: for an update that does not start at clock 0 it reports an empty state.)

    Raises:
        InvalidUpdateError: if the update names more than one client.
    """
    try:
        clients, pos = _read_varuint(update, 0)
        if clients == 0:
            return None
        if clients != 1:
            raise InvalidUpdateError(
                "update carries items of several clients", reason="foreign-client"
            )
        structs, pos = _read_varuint(update, pos)
        if structs > len(update):
            raise InvalidUpdateError(
                "update announces more structs than it holds", reason="malformed-update"
            )
        client, pos = _read_varuint(update, pos)
        clock, pos = _read_varuint(update, pos)
    except DecodeError as exc:
        raise InvalidUpdateError(
            "update header does not decode", reason="malformed-update"
        ) from exc
    return client, clock


def _reraise_if_fatal(exc: BaseException) -> None:
    # KeyboardInterrupt and SystemExit must keep their meaning; a pycrdt PanicException is a
    # BaseException too, but it only means "these bytes were bad", so it is contained.
    if isinstance(exc, KeyboardInterrupt | SystemExit | GeneratorExit):
        raise exc


class WriterPolicy(Protocol):
    """What the merge needs to know about a writer: its rank and which collections count."""

    def rank(self, writer: str) -> int:
        """Authority rank (higher wins under authority precedence)."""
        ...

    def allows(self, writer: str, collection: str) -> bool:
        """Whether the writer's entries in ``collection`` count in the merged view."""
        ...


class AllowAll:
    """A policy for tests and single-authority use: every writer ranks 0 and may write anything."""

    def rank(self, writer: str) -> int:
        """Every writer ranks 0."""
        return 0

    def allows(self, writer: str, collection: str) -> bool:
        """Every collection counts."""
        return True


@attrs.frozen
class WriteOp:
    """One write in a transaction: set ``value`` under ``key``, or delete it."""

    collection: str
    key: str
    value: Any = None
    deleted: bool = False


class Change(NamedTuple):
    """The winner of a key changed.

    Attributes:
        scope: The scope.
        collection: The collection.
        key: The key.
        register: The new winning register (a tombstone for a delete).
    """

    scope: Scope
    collection: str
    key: str
    register: Register


@attrs.frozen
class WriteResult:
    """What a local transaction produced.

    Attributes:
        seq: The writer's sequence number for this update.
        update: The pycrdt update (the envelope's payload).
        hlc: The transaction's timestamp.
        changed: ``(collection, key)`` of every key whose winner changed.
        not_applied: The writes that did not become their key's winner.
    """

    seq: int
    update: bytes
    hlc: Timestamp
    changed: tuple[KeyRef, ...]
    not_applied: tuple[NotApplied, ...] = ()


@attrs.frozen
class NotApplied:
    """A write that is committed and signed but is not its key's visible value.

    Attributes:
        collection: The collection.
        key: The key.
        reason: ``"outranked"`` (a register the write had not seen ranks higher under
            authority precedence), ``"superseded"`` (a register that had seen the write wins)
            or ``"not-counted"`` (this writer's registers do not count in the collection).
        winner: The register that wins the key instead (``None`` if none does).
    """

    collection: str
    key: str
    reason: str
    winner: VersionRef | None = None
    winner_hlc: Timestamp | None = None


def check_collection(name: str) -> None:
    """Raise unless ``name`` is one of :data:`COLLECTIONS`.

    Raises:
        UnknownCollectionError: it is not (an ``InvalidValueError`` and a ``KeyError``); the
            closest collection names are suggested.
    """
    if name not in _COLLECTION_SET:
        raise UnknownCollectionError(name, COLLECTIONS)


def _check_op(op: WriteOp) -> None:
    check_collection(op.collection)
    key = op.key
    if type(key) is not str or not key or len(key) > MAX_KEY_LENGTH:
        raise InvalidValueError(
            f"keys are non-empty str of at most {MAX_KEY_LENGTH} characters", reason="key", key=key
        )
    if op.deleted and op.value is not None:
        raise InvalidValueError("a delete carries no value", reason="value", key=key)


class _KeyRecord:
    """Full tracking for a key that has had more than one register.

    Most keys (a node record reported by its zone) only ever have one register; for those the
    index holds just the winning writer's id and reads the register back from its document.
    A key gets a record when its second register arrives, seeded with the first, so conflict
    detection and history see every register either way.

    ``history`` is the key's greatest registers under the strategy's order (every register ever
    indexed, bounded to the history limit), and ``pairs`` the conflicts among them: both are
    functions of the set of registers, whatever the order they arrived in. ``shown`` is the
    part of ``pairs`` in the audit log (all of it unless it passes the per-key bound).
    """

    __slots__ = ("heads", "history", "pairs", "shown", "winner", "winner_key")

    def __init__(self) -> None:
        self.heads: dict[str, Register] = {}
        self.history: list[tuple[tuple[Any, ...], Register]] = []
        self.pairs: set[ConflictRecord] = set()
        self.shown: set[ConflictRecord] = set()
        self.winner: Register | None = None
        self.winner_key: tuple[Any, ...] = ()


class ScopeState:
    """The merged, indexed state of one scope across its writer documents.

    Args:
        scope: The scope.
        strategy: How concurrent registers are ordered.
        policy: Writer ranks and which collections count per writer.
        history_limit: Registers kept per key in :meth:`history`.
        conflicts_per_key: Conflict records kept per key in the audit log (the greatest under
            the records' order, identically on every replica).
        max_pending: Early arrivals held per writer.
        conflict_log: Where settled conflicts are recorded (shared across scopes by
            :class:`FleetState`).
    """

    def __init__(
        self,
        scope: Scope,
        *,
        strategy: Strategy = Strategy.LAST_WRITER_WINS,
        policy: WriterPolicy | None = None,
        history_limit: int = 16,
        conflicts_per_key: int = 256,
        max_pending: int = DEFAULT_MAX_PENDING,
        conflict_log: ConflictLog | None = None,
    ) -> None:
        self.scope = scope
        self.path = str(scope)
        self.strategy = strategy
        self.policy: WriterPolicy = policy if policy is not None else AllowAll()
        self.history_limit = history_limit
        self.conflicts_per_key = conflicts_per_key
        self.max_pending = max_pending
        self.documents: dict[str, WriterDocument] = {}
        self.conflicts = conflict_log if conflict_log is not None else ConflictLog()
        self.invalid_entries = 0
        self.invalid_updates = 0
        # One packer per scope: msgpack.packb builds a new one for every call, which costs as
        # much as the packing. (A packer resets itself after a failed pack.)
        self._packer = msgpack.Packer(use_bin_type=True)
        # collection -> key -> id of the writer whose register wins (every live key).
        self._winner_of: dict[str, dict[str, str]] = {name: {} for name in COLLECTIONS}
        # Keys that have had more than one register.
        self._records: dict[KeyRef, _KeyRecord] = {}
        self._pending: dict[str, dict[int, bytes]] = {}

    # ------------------------------------------------------------------ reading

    def document(self, writer: str) -> WriterDocument:
        """The writer's document, created empty on first use."""
        doc = self.documents.get(writer)
        if doc is None:
            doc = self.documents[writer] = WriterDocument(self.scope, writer)
        return doc

    def register(self, collection: str, key: str) -> Register | None:
        """The winning register of a key (a tombstone included), in O(1)."""
        record = self._records.get((collection, key))
        if record is not None:
            return record.winner
        writer = self._winner_of[collection].get(key)
        if writer is None:
            return None
        data = self.documents[writer].get(collection, key)
        # Indexed entries were decoded successfully when they arrived.
        assert data is not None
        return Register.decode(data, writer)

    def get(self, collection: str, key: str, default: Any = None) -> Any:
        """The visible value of a key, or ``default`` if unset or deleted."""
        best = self.register(collection, key)
        if best is None or best.deleted:
            return default
        return best.value

    def keys(self, collection: str) -> list[str]:
        """Every key of a collection that has a register (tombstones included), sorted."""
        return sorted(self._winner_of[collection])

    def items(self, collection: str) -> Iterator[tuple[str, Any]]:
        """Visible ``(key, value)`` pairs of a collection in key order (tombstones hidden)."""
        for key in self.keys(collection):
            best = self.register(collection, key)
            if best is not None and not best.deleted:
                yield key, best.value

    def winners(self) -> Iterator[tuple[KeyRef, Register]]:
        """Every key's winning register, tombstones included, in key order."""
        for collection in COLLECTIONS:
            for key in self.keys(collection):
                best = self.register(collection, key)
                if best is not None:
                    yield (collection, key), best

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """All visible values, by collection then key (sorted; for comparisons)."""
        return {name: dict(self.items(name)) for name in COLLECTIONS}

    def history(self, collection: str, key: str) -> list[Register]:
        """The key's newest registers under the strategy's order, newest first (bounded)."""
        record = self._records.get((collection, key))
        if record is not None:
            return [register for _, register in reversed(record.history)]
        best = self.register(collection, key)
        return [] if best is None else [best]

    def heads(self, collection: str, key: str) -> dict[str, Register]:
        """Each writer's current register for a key."""
        record = self._records.get((collection, key))
        if record is not None:
            return dict(record.heads)
        best = self.register(collection, key)
        return {} if best is None else {best.writer: best}

    def next_seq(self, writer: str) -> int:
        """The sequence number the writer's next update must carry."""
        doc = self.documents.get(writer)
        return 1 if doc is None else doc.seq + 1

    def pending_count(self) -> int:
        """Early arrivals waiting for a gap to fill, over all writers.

        Only those handed to :meth:`receive` out of order: a replica holds its own early
        arrivals before they reach the scope (see ``Replica.status().gaps``).
        """
        return sum(len(p) for p in self._pending.values())

    def missing(self, writer: str) -> int | None:
        """The first sequence number the writer's pending updates wait for, if any wait.

        On a replica, ``Replica.status().gaps`` says this for every chain.
        """
        return self.next_seq(writer) if self._pending.get(writer) else None

    # ------------------------------------------------------------------ writing

    def write(self, writer: str, hlc: Timestamp, ops: Sequence[WriteOp]) -> WriteResult:
        """Apply a local transaction of ``writer``: one pycrdt update for all of ``ops``.

        Several ops on one key keep only the last (they share the transaction's timestamp, and
        other replicas only ever see the last).

        Raises:
            InvalidValueError: if an op names an unknown collection, a bad key or a value that
                cannot be stored. Nothing is written.
        """
        if len(ops) > 1:
            ops = list({(op.collection, op.key): op for op in ops}.values())
        entries: list[tuple[str, str, bytes]] = []
        fresh: list[tuple[str, str]] = []
        tracked: list[tuple[KeyRef, Register]] = []
        winner_of = self._winner_of
        records = self._records
        wall, logical = hlc
        pack = self._packer.pack
        allowed = self._allowed(writer)
        for op in ops:
            collection = op.collection
            key = op.key
            if (
                op.deleted
                or collection not in _COLLECTION_SET
                or type(key) is not str
                or not key
                or len(key) > MAX_KEY_LENGTH
            ):
                _check_op(op)  # the slow checks, only when a fast one flags something
            value = op.value
            ref = (collection, key)
            if key not in winner_of[collection] and ref not in records:
                # The fast path: a key nobody has written.
                try:
                    data = pack([REGISTER_FORMAT, op.deleted, value, wall, logical, 1, None, {}])
                except (TypeError, ValueError, OverflowError) as exc:
                    raise InvalidValueError(
                        f"value cannot be stored: {exc}", reason="value", key=key
                    ) from exc
                check_storable(value, data)
                entries.append((collection, key, data))
                fresh.append(ref)
                continue
            register = self._next_register(ref, writer, hlc, op)
            entries.append((collection, key, register.encode()))
            tracked.append((ref, register))
        doc = self.document(writer)  # created only once every op passed its checks
        update = doc.write(entries)
        doc.seq += 1
        changed: list[KeyRef] = []
        for collection, key in fresh:
            if allowed[collection]:
                winner_of[collection][key] = writer
                changed.append((collection, key))
        not_applied: list[NotApplied] = []
        for ref, register in tracked:
            if not allowed[ref[0]]:
                not_applied.append(NotApplied(ref[0], ref[1], "not-counted"))
                continue
            if self._index(ref, register):
                changed.append(ref)
            best = self._records[ref].winner
            if best is not register:
                not_applied.append(self._not_applied(ref, register, best))
        if fresh and not all(allowed[collection] for collection, _ in fresh):
            not_applied.extend(
                NotApplied(collection, key, "not-counted")
                for collection, key in fresh
                if not allowed[collection]
            )
        return WriteResult(
            seq=doc.seq,
            update=update,
            hlc=hlc,
            changed=tuple(changed),
            not_applied=tuple(not_applied),
        )

    @staticmethod
    def _not_applied(ref: KeyRef, register: Register, best: Register | None) -> NotApplied:
        """Why ``register`` is not its key's winner: ``best`` is, having seen it or not."""
        if best is None:
            return NotApplied(ref[0], ref[1], "not-counted")
        reason = "superseded" if supersedes(best, register) else "outranked"
        return NotApplied(ref[0], ref[1], reason, best.ref, best.hlc)

    def _next_register(self, ref: KeyRef, writer: str, hlc: Timestamp, op: WriteOp) -> Register:
        """The register ``writer`` writes over a key that already has registers."""
        record = self._record(ref, None)
        context: dict[str, Timestamp] = {}
        version = 1
        # The author's context is everything its heads had seen, plus the heads themselves.
        for other in record.heads.values():
            for w, t in other.context.items():
                if w not in context or t > context[w]:
                    context[w] = t
            if other.writer not in context or other.hlc > context[other.writer]:
                context[other.writer] = other.hlc
            if other.version >= version:
                version = other.version + 1
        context.pop(writer, None)  # a writer always sees its own registers
        current = record.winner
        return Register(
            value=None if op.deleted else op.value,
            hlc=hlc,
            writer=writer,
            version=version,
            supersedes=None if current is None else VersionRef(current.writer, current.version),
            context=context,
            deleted=op.deleted,
        )

    # ------------------------------------------------------------------ receiving

    def receive(
        self, writer: str, seq: int, update: bytes, *, max_hlc: Timestamp | None = None
    ) -> list[KeyRef]:
        """Take one of a writer's updates, in any order; apply what is contiguous.

        Duplicates (``seq`` already applied) are ignored. Early arrivals wait until the gap
        before them fills, then everything contiguous is applied in order.

        ``max_hlc`` bounds the timestamps of the registers the update carries (the envelope's
        own HLC, which was checked against the clock): a register dated later does not count,
        so a writer cannot smuggle a far-future timestamp past the clock bound inside its data.

        Returns:
            ``(collection, key)`` of every key whose winner changed.

        Raises:
            InvalidUpdateError: if the update with the next sequence number is malformed; it is
                dropped and the document is unchanged.
        """
        if type(seq) is not int or seq < 1:
            raise InvalidUpdateError("sequence numbers start at 1", reason="seq", writer=writer)
        created = writer not in self.documents
        doc = self.document(writer)
        if seq <= doc.seq:
            return []
        if seq > doc.seq + 1:
            pending = self._pending.setdefault(writer, {})
            if seq not in pending and len(pending) >= self.max_pending:
                raise InvalidUpdateError(
                    f"more than {self.max_pending} early updates from one writer",
                    reason="pending-full",
                    scope=self.path,
                    writer=writer,
                )
            pending.setdefault(seq, update)
            return []
        try:
            changed = self.apply_next(writer, update, max_hlc=max_hlc)
        except InvalidUpdateError:
            if created:
                del self.documents[writer]  # leave no trace of a writer that sent only garbage
            raise
        waiting = self._pending.get(writer)
        while waiting:
            following = waiting.pop(doc.seq + 1, None)
            if following is None:
                break
            try:
                changed.extend(self.apply_next(writer, following))
            except InvalidUpdateError:
                # The writer's next update is bad; what came before stays applied, and the
                # writer waits for a good copy of that sequence number again.
                self.invalid_updates += 1
                break
        if waiting is not None and not waiting:
            del self._pending[writer]
        return changed

    def apply_next(
        self, writer: str, update: bytes, *, max_hlc: Timestamp | None = None
    ) -> list[KeyRef]:
        """Apply the update that carries the writer's next sequence number.

        Returns:
            ``(collection, key)`` of every key whose winner changed.

        Raises:
            InvalidUpdateError: if the update is malformed; the document is unchanged.
        """
        doc = self.document(writer)
        changes = doc.apply(update)
        doc.seq += 1
        allowed = self._allowed(writer)
        winner_of = self._winner_of
        records = self._records
        invalid = doc.invalid
        changed: list[KeyRef] = []
        for collection, keys in changes:
            counts_here = allowed[collection]
            table = winner_of[collection]
            for key, change in keys.items():
                ref = (collection, key)
                data, old = entry_bytes(change)
                if not counts_here:
                    # Does not count for this writer; judged anyway, so the document's verdict
                    # stays complete if the writer's rights change.
                    _judge(invalid, ref, data is not None and not _counts(data, max_hlc))
                    continue
                if data is not None and key not in table and ref not in records:
                    # The common case: a key nobody else has a register for. Validate without
                    # building a Register; the index only needs to know who holds the winner.
                    if _counts(data, max_hlc):
                        table[key] = writer
                        changed.append(ref)
                        if invalid:
                            invalid.discard(ref)
                    else:
                        self.invalid_entries += 1
                        invalid.add(ref)
                    continue
                if self._apply_tracked(doc, ref, data, old, max_hlc):
                    changed.append(ref)
        return changed

    def _apply_tracked(
        self,
        doc: WriterDocument,
        ref: KeyRef,
        data: bytes | bytearray | None,
        old: bytes | bytearray | None,
        max_hlc: Timestamp | None,
    ) -> bool:
        """Apply one entry for a key that has (or had) registers; True if its winner changed."""
        writer = doc.writer
        register: Register | None = None
        if data is not None:
            try:
                register = Register.decode(data, writer)
            except DecodeError:
                register = None
            if register is not None and max_hlc is not None and register.hlc > max_hlc:
                register = None
        _judge(doc.invalid, ref, data is not None and register is None)
        if register is None:
            # Deterministic on every replica: an entry that is not a register does not count,
            # and hides whatever the writer had there before.
            self.invalid_entries += data is not None
            return self._drop_head(ref, writer, old)
        self._record(ref, old if self._winner_of[ref[0]].get(ref[1]) == writer else None)
        return self._index(ref, register)

    def apply_checkpoint(
        self,
        writer: str,
        seq: int,
        state: bytes,
        *,
        max_hlc: Timestamp | None = None,
        invalid: Iterable[KeyRef] | None = None,
        history: Iterable[tuple[str, str, bytes]] = (),
    ) -> list[KeyRef]:
        """Bring a writer's document forward to a snapshot of it taken at sequence ``seq``.

        ``history`` is the writer's past registers the snapshot carries
        (:meth:`remember_history`).

        The snapshot is a full-state pycrdt update; what the document already holds merges
        idempotently. Only moves forward.

        ``invalid`` is this replica's own verdict on the snapshot (:attr:`WriterDocument.invalid`
        when it was taken or received, kept in its store): with it, an empty document is
        loaded without judging every entry again, which is what makes reopening a large
        replica cheap. It must come from this replica's store, never from the network.

        Raises:
            InvalidUpdateError: if the snapshot does not decode; the document is unchanged.
        """
        doc = self.document(writer)
        if seq <= doc.seq:
            return []
        if invalid is not None and doc.seq == 0:
            changed = self._load_judged(doc, state, set(invalid))
        else:
            changed = self.apply_next(writer, state, max_hlc=max_hlc)
        doc.seq = seq
        self._pending.pop(writer, None)
        self.remember_history(writer, history, max_hlc)
        return changed

    def _load_judged(self, doc: WriterDocument, state: bytes, invalid: set[KeyRef]) -> list[KeyRef]:
        """Load a full state into an empty document, trusting a stored verdict on its entries."""
        doc.load(state)
        doc.invalid = invalid
        self.invalid_entries += len(invalid)
        writer = doc.writer
        allowed = self._allowed(writer)
        records = self._records
        changed: list[KeyRef] = []
        for collection in COLLECTIONS:
            if not allowed[collection]:
                continue
            table = self._winner_of[collection]
            for key in doc.keys(collection):
                ref = (collection, key)
                if invalid and ref in invalid:
                    continue
                if key not in table and ref not in records:
                    table[key] = writer
                    changed.append(ref)
                    continue
                # Another writer holds the key too: full tracking needs the register itself.
                data = doc.get(collection, key)
                try:
                    register = Register.decode(data if data is not None else b"", writer)
                except DecodeError:
                    invalid.add(ref)  # the stored verdict missed it: judge it like any entry
                    self.invalid_entries += 1
                    continue
                self._record(ref, None)
                if self._index(ref, register):
                    changed.append(ref)
        return changed

    # ------------------------------------------------------------------ index

    def _allowed(self, writer: str) -> dict[str, bool]:
        policy = self.policy
        return {name: policy.allows(writer, name) for name in COLLECTIONS}

    def _record(self, ref: KeyRef, old_own: bytes | bytearray | None) -> _KeyRecord:
        """The key's full record, created from its single register on first need.

        ``old_own`` is the previous bytes of the single register when its own writer's document
        has just been overwritten (the document no longer holds them).
        """
        record = self._records.get(ref)
        if record is not None:
            return record
        record = self._records[ref] = _KeyRecord()
        writer = self._winner_of[ref[0]].get(ref[1])
        if writer is not None:
            data = old_own if old_own is not None else self.documents[writer].get(*ref)
            assert data is not None
            self._index(ref, Register.decode(data, writer))
        return record

    def _index(self, ref: KeyRef, register: Register) -> bool:
        """Add a tracked key's new register; True if it became the winner."""
        record = self._records[ref]
        record.heads[register.writer] = register
        key = self._remember(ref, record, register)
        strategy = self.strategy
        if strategy is Strategy.AUTHORITY_PRECEDENCE:
            # Causal first: the new register may supersede the winner whatever the ranks, or
            # replace its writer's head that was superseding another one; judged over the heads.
            rank_of = self.policy.rank
            best = winner(record.heads.values(), strategy, rank_of)
            if best is record.winner or best is None:
                return False
            record.winner, record.winner_key = best, order_key(best, strategy, rank_of)
            self._winner_of[ref[0]][ref[1]] = best.writer
            return True
        if record.winner is None or key > record.winner_key:
            record.winner, record.winner_key = register, key
            self._winner_of[ref[0]][ref[1]] = register.writer
            return True
        return False

    def _remember(self, ref: KeyRef, record: _KeyRecord, register: Register) -> tuple[Any, ...]:
        """Put a register into the key's bounded history and its conflicts; its order key.

        History is the top ``history_limit`` registers of the key, and a conflict is recorded
        between two concurrent registers while both are in it. The top N of a set is order
        independent (``top(S + x) == top(top(S) + x)``), so history and conflicts are a function
        of the registers a replica holds, and recording one costs O(history), however many
        chains wrote the key before.
        """
        strategy = self.strategy
        rank_of = self.policy.rank
        key = order_key(register, strategy, rank_of)
        history = record.history
        at = bisect.bisect_left(history, key, key=_first)
        for other_key, other in history[at:]:
            if other_key != key:
                break
            if other == register:
                return key  # already remembered (a checkpoint over envelopes this replica holds)
        history.insert(at, (key, register))
        evicted = history.pop(0)[1] if len(history) > self.history_limit else None
        if evicted is register:
            return key
        pairs = record.pairs
        before = len(pairs)
        if evicted is not None and pairs:
            pairs.difference_update([p for p in pairs if _involves(p, evicted)])
        changed = len(pairs) != before
        for _, other in history:
            if other.writer != register.writer and concurrent(register, other):
                pairs.add(
                    settle(
                        register,
                        other,
                        scope=self.path,
                        ref=ref,
                        strategy=strategy,
                        rank_of=rank_of,
                    )
                )
                changed = True
        if changed:
            self._show(record)
        return key

    def _show(self, record: _KeyRecord) -> None:
        """Bring the audit log in line with the key's conflicts (bounded per key)."""
        shown = bounded(record.pairs, self.conflicts_per_key)
        if shown == record.shown:
            return
        for gone in record.shown - shown:
            self.conflicts.discard(gone)
        for new in sorted(shown - record.shown):
            self.conflicts.add(new)
        record.shown = shown

    def own_history(self, writer: str) -> list[tuple[str, str, bytes]]:
        """The writer's registers in the keys' histories, apart from its current heads.

        They are what a snapshot of the writer's document cannot rebuild (the document keeps
        only the newest register per key); a checkpoint carries them, so a replica starting
        from it holds the same history and conflicts as one that replayed the chain.
        """
        found: list[tuple[str, str, bytes]] = []
        for (collection, name), record in sorted(self._records.items()):
            head = record.heads.get(writer)
            for _, register in record.history:
                if register.writer == writer and register != head:
                    found.append((collection, name, register.encode()))
        return found

    def remember_history(
        self, writer: str, entries: Iterable[tuple[str, str, bytes]], max_hlc: Timestamp | None
    ) -> None:
        """Take a writer's past registers (from its checkpoint) into the keys' histories.

        An entry counts only if it decodes to a register of ``writer`` older than the writer's
        current head for that key and within ``max_hlc``; anything else is ignored, the same
        way on every replica.
        """
        allowed = self._allowed(writer)
        per_key: dict[KeyRef, int] = {}
        for collection, name, data in entries:
            if collection not in _COLLECTION_SET or not allowed[collection]:
                continue
            ref = (collection, name)
            if per_key.get(ref, 0) >= self.history_limit:
                continue  # more than history can hold: the rest could never show
            head_data = self.documents[writer].get(collection, name)
            if head_data is None or ref in self.documents[writer].invalid:
                continue
            try:
                register = Register.decode(data, writer)
                head = Register.decode(head_data, writer)
            except DecodeError:
                continue
            if register.hlc >= head.hlc or (max_hlc is not None and register.hlc > max_hlc):
                continue
            per_key[ref] = per_key.get(ref, 0) + 1
            self._remember(ref, self._record(ref, None), register)

    def _drop_head(self, ref: KeyRef, writer: str, old: bytes | bytearray | None) -> bool:
        """A writer's entry vanished or became invalid; True if the winner changed."""
        winner_of = self._winner_of[ref[0]]
        record = self._records.get(ref)
        if record is None:
            if winner_of.get(ref[1]) == writer:
                del winner_of[ref[1]]
                return True
            return False
        if record.heads.pop(writer, None) is None:
            return False
        if self.strategy is Strategy.AUTHORITY_PRECEDENCE:
            # The head that vanished may have been superseding a register that now wins.
            previous = record.winner
            best = winner(record.heads.values(), self.strategy, self.policy.rank)
            record.winner = best
            record.winner_key = (
                () if best is None else order_key(best, self.strategy, self.policy.rank)
            )
            if best is None:
                winner_of.pop(ref[1], None)
            else:
                winner_of[ref[1]] = best.writer
            return best is not previous
        if record.winner is None or record.winner.writer != writer:
            return False
        record.winner, record.winner_key = None, ()
        best = winner(record.heads.values(), self.strategy, self.policy.rank)
        if best is not None:
            record.winner = best
            record.winner_key = order_key(best, self.strategy, self.policy.rank)
        if record.winner is None:
            winner_of.pop(ref[1], None)
        else:
            winner_of[ref[1]] = record.winner.writer
        return True

    def reset(self) -> None:
        """Forget every document and the whole index (before replaying the scope's log)."""
        self.documents.clear()
        for table in self._winner_of.values():
            table.clear()
        self._records.clear()
        self._pending.clear()
        self.invalid_entries = 0
        self.invalid_updates = 0

    def rebuild_index(self) -> None:
        """Recompute the index from the documents (after a policy change: a rank or a grant).

        The registers in the keys' histories are kept and re-ordered under the new policy, so
        history and conflicts stay those of the registers held.
        """
        past = [
            (ref, register)
            for ref, record in self._records.items()
            for _, register in record.history
            if record.heads.get(register.writer) != register
        ]
        for table in self._winner_of.values():
            table.clear()
        for record in self._records.values():
            for shown in record.shown:
                self.conflicts.discard(shown)
        self._records.clear()
        for writer, doc in sorted(self.documents.items()):
            allowed = self._allowed(writer)
            for collection, key, data in doc.entries():
                if data is None or not allowed[collection] or (collection, key) in doc.invalid:
                    continue
                try:
                    register = Register.decode(data, writer)
                except DecodeError:
                    continue
                ref = (collection, key)
                if key not in self._winner_of[collection] and ref not in self._records:
                    self._winner_of[collection][key] = writer
                else:
                    self._record(ref, None)
                    self._index(ref, register)
        for ref, register in past:
            if self.policy.allows(register.writer, ref[0]):
                self._remember(ref, self._record(ref, None), register)


def entry_bytes(
    change: dict[str, Any],
) -> tuple[bytes | bytearray | None, bytes | bytearray | None]:
    """``(new, old)`` register bytes of one map event entry (``new`` is None for a delete).

    Anything but bytes (a Yjs number, a nested type) is not a register: as the new value it
    becomes ``b""``, which never decodes, so it is counted and ignored like any invalid entry;
    as the old value it becomes None (nothing of it was indexed).
    """
    old = change.get("oldValue")
    if type(old) is not bytearray and type(old) is not bytes:
        old = None
    if change.get("action") == "delete":
        return None, old
    new = change.get("newValue")
    if type(new) is not bytearray and type(new) is not bytes:
        new = b""
    return new, old


def _judge(invalid: set[KeyRef], ref: KeyRef, is_invalid: bool) -> None:
    """Record the verdict on one entry of a writer document."""
    if is_invalid:
        invalid.add(ref)
    elif invalid:
        invalid.discard(ref)


def _involves(record: ConflictRecord, register: Register) -> bool:
    rid = (register.hlc, register.writer, register.version)
    for side in (record.winner, record.loser):
        if (side.hlc, side.writer, side.version) == rid:
            return True
    return False


def _counts(data: bytes | bytearray, max_hlc: Timestamp | None) -> bool:
    """True if ``data`` is a valid register dated no later than ``max_hlc``."""
    try:
        stamp = register_stamp(data)
    except DecodeError:
        return False
    return max_hlc is None or stamp <= max_hlc


def _first(entry: tuple[tuple[Any, ...], Register]) -> tuple[Any, ...]:
    return entry[0]


class FleetState:
    """The scopes of one replica, with effective values down the tree and change fan-out.

    Args:
        strategy_for: The strategy of each scope (default: last-writer-wins everywhere).
        policy: Writer ranks and collection rights, shared by every scope.
        history_limit: Registers kept per key in history.
        conflicts_per_key: Conflict records kept per key in the audit log.
    """

    def __init__(
        self,
        *,
        strategy_for: Callable[[Scope], Strategy] | None = None,
        policy: WriterPolicy | None = None,
        history_limit: int = 16,
        conflicts_per_key: int = 256,
    ) -> None:
        self._strategy_for = strategy_for or (lambda _scope: Strategy.LAST_WRITER_WINS)
        self.policy: WriterPolicy = policy if policy is not None else AllowAll()
        self.history_limit = history_limit
        self.conflicts_per_key = conflicts_per_key
        self.scopes: dict[Scope, ScopeState] = {}
        self.conflicts = ConflictLog()
        self._subscribers: list[Callable[[Sequence[Change]], None]] = []

    def scope(self, scope: Scope | str) -> ScopeState:
        """The state of ``scope``, created empty on first use."""
        key = Scope.parse(scope)
        state = self.scopes.get(key)
        if state is None:
            state = self.scopes[key] = ScopeState(
                key,
                strategy=self._strategy_for(key),
                policy=self.policy,
                history_limit=self.history_limit,
                conflicts_per_key=self.conflicts_per_key,
                conflict_log=self.conflicts,
            )
        return state

    def write(
        self, scope: Scope | str, writer: str, hlc: Timestamp, ops: Sequence[WriteOp]
    ) -> WriteResult:
        """A local transaction of ``writer`` in ``scope``; notifies subscribers."""
        state = self.scope(scope)
        result = state.write(writer, hlc, ops)
        self.notify(state, result.changed)
        return result

    def receive(self, scope: Scope | str, writer: str, seq: int, update: bytes) -> list[KeyRef]:
        """Take one of a writer's updates in any order; notifies subscribers of applied changes."""
        state = self.scope(scope)
        changed = state.receive(writer, seq, update)
        self.notify(state, changed)
        return changed

    def effective(self, scope: Scope | str, collection: str, key: str, default: Any = None) -> Any:
        """The value in force at ``scope``: its own if set, else the nearest ancestor's.

        A delete removes a scope's own override, so the ancestor's value shows through again.

        Raises:
            UnknownCollectionError: ``collection`` is not a collection (the closest is suggested).
        """
        check_collection(collection)
        for level in Scope.parse(scope).lineage():
            state = self.scopes.get(level)
            if state is None:
                continue
            best = state.register(collection, key)
            if best is not None and not best.deleted:
                return best.value
        return default

    def effective_items(self, scope: Scope | str, collection: str) -> dict[str, Any]:
        """Every key in force at ``scope`` with its effective value, in key order.

        Raises:
            UnknownCollectionError: ``collection`` is not a collection (the closest is suggested).
        """
        check_collection(collection)
        view: dict[str, Any] = {}
        for level in reversed(list(Scope.parse(scope).lineage())):
            state = self.scopes.get(level)
            if state is not None:
                view.update(state.items(collection))
        return dict(sorted(view.items()))

    def subscribe(self, callback: Callable[[Sequence[Change]], None]) -> Callable[[], None]:
        """Call ``callback`` with each batch of winner changes; returns an unsubscribe function."""
        self._subscribers.append(callback)

        def unsubscribe() -> None:
            if callback in self._subscribers:
                self._subscribers.remove(callback)

        return unsubscribe

    def subscribe_conflicts(self, callback: Callable[[ConflictRecord], None]) -> Callable[[], None]:
        """Call ``callback`` for each new conflict record; returns an unsubscribe function."""
        return self.conflicts.subscribe(callback)

    def snapshot(self) -> dict[str, dict[str, dict[str, Any]]]:
        """Every scope's visible values (sorted; for comparisons)."""
        return {str(s): self.scopes[s].snapshot() for s in sorted(self.scopes)}

    def notify(self, state: ScopeState, changed: Sequence[KeyRef]) -> None:
        """Tell subscribers which winners changed in ``state`` (built only if anyone listens)."""
        if not changed or not self._subscribers:
            return
        changes = []
        for collection, key in changed:
            register = state.register(collection, key)
            if register is not None:
                changes.append(Change(state.scope, collection, key, register))
        for callback in list(self._subscribers):
            callback(changes)
