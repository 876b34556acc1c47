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
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, Final, Protocol

import attrs
import pycrdt

from .conflicts import ConflictLog, ConflictRecord, RegisterChains, settle
from .errors import DecodeError, InvalidUpdateError, InvalidValueError
from .hlc import Timestamp
from .lww import (
    KeyRef,
    Register,
    Strategy,
    VersionRef,
    encode_register_fields,
    order_key,
)
from .scope import Scope

__all__ = [
    "COLLECTIONS",
    "MAX_KEY_LENGTH",
    "AllowAll",
    "Change",
    "FleetState",
    "ScopeState",
    "WriteOp",
    "WriteResult",
    "WriterDocument",
    "WriterPolicy",
    "client_id_for",
]

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
    """

    __slots__ = (
        "_changes",
        "_collecting",
        "_last_update",
        "_subscriptions",
        "client_id",
        "doc",
        "maps",
        "scope",
        "seq",
        "writer",
    )

    def __init__(self, scope: Scope, writer: str) -> None:
        self.scope = scope
        self.writer = writer
        self.seq = 0
        self.client_id = client_id_for(scope, writer)
        self.doc: pycrdt.Doc[Any] = pycrdt.Doc(client_id=self.client_id)
        self.maps: dict[str, pycrdt.Map[Any]] = {
            name: self.doc.get(name, type=pycrdt.Map) for name in COLLECTIONS
        }
        self._collecting = False
        self._changes: list[tuple[str, str, bytes | None]] = []
        self._last_update = b""
        self._subscriptions = [
            self.maps[name].observe(self._observer(name)) for name in COLLECTIONS
        ]
        # The transaction event carries exactly the delta of that transaction; asking for
        # get_update(state_before) instead costs about eight times as much per write.
        self._subscriptions.append(self.doc.observe(self._on_transaction))

    def _on_transaction(self, event: pycrdt.TransactionEvent) -> None:
        self._last_update = event.update

    def _observer(self, collection: str) -> Callable[[pycrdt.MapEvent], None]:
        changes = self._changes

        def observe(event: pycrdt.MapEvent) -> None:
            # Never raise here: pycrdt reports observer exceptions only after the transaction
            # committed. Collect, and let apply() judge the entries afterwards.
            if not self._collecting:
                return
            keys: dict[str, dict[str, Any]] = event.keys  # type: ignore[attr-defined]
            for key, change in keys.items():
                new = change.get("newValue") if change.get("action") != "delete" else None
                changes.append(
                    (collection, key, bytes(new) if isinstance(new, bytes | bytearray) else None)
                )

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
        maps = self.maps
        self._last_update = b""
        with self.doc.transaction():
            for collection, key, data in entries:
                maps[collection][key] = data
        return bytes(self._last_update)

    def apply(self, update: bytes) -> list[tuple[str, str, bytes | None]]:
        """Apply one of the writer's updates; return the entries it changed.

        The update is decoded first (``get_state``) so malformed bytes never reach the
        document; it must contain only this writer's items and must continue the document
        without a gap (pycrdt would otherwise park it and lose it later).

        Raises:
            InvalidUpdateError: if the update is malformed, carries another client's items or
                leaves a gap. The document is unchanged.
        """
        try:
            update_sv = decode_state_vector(pycrdt.get_state(update))
        except BaseException as exc:  # pycrdt panics are BaseException
            if not isinstance(exc, Exception):
                _reraise_if_fatal(exc)
            raise InvalidUpdateError(
                f"update does not decode: {exc}",
                reason="malformed-update",
                scope=str(self.scope),
                writer=self.writer,
            ) from exc
        foreign = set(update_sv) - {self.client_id}
        if foreign:
            raise InvalidUpdateError(
                "update carries items of another client",
                reason="foreign-client",
                scope=str(self.scope),
                writer=self.writer,
            )
        self._changes.clear()
        self._collecting = True
        try:
            self.doc.apply_update(update)
        except BaseException as exc:
            if not isinstance(exc, Exception):
                _reraise_if_fatal(exc)
            raise InvalidUpdateError(
                f"update failed to apply: {exc}",
                reason="apply-failed",
                scope=str(self.scope),
                writer=self.writer,
            ) from exc
        finally:
            self._collecting = False
        wanted = update_sv.get(self.client_id, 0)
        if wanted and decode_state_vector(self.doc.get_state()).get(self.client_id, 0) < wanted:
            raise InvalidUpdateError(
                "update does not continue the document (gap)",
                reason="gap",
                scope=str(self.scope),
                writer=self.writer,
            )
        return list(self._changes)


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


@attrs.frozen
class Change:
    """The winner of a key changed.

    Attributes:
        scope: The scope.
        collection: The collection.
        key: The key.
        register: The new winning register (a tombstone for a delete).
        previous: The register that was winning before, if any.
    """

    scope: Scope
    collection: str
    key: str
    register: Register
    previous: Register | None


@attrs.frozen
class WriteResult:
    """What a local transaction produced.

    Attributes:
        seq: The writer's sequence number for this update.
        update: The pycrdt update (the envelope's payload).
        hlc: The transaction's timestamp.
        changes: Winners that changed.
    """

    seq: int
    update: bytes
    hlc: Timestamp
    changes: tuple[Change, ...]


def _check_op(op: WriteOp) -> None:
    if op.collection not in _COLLECTION_SET:
        raise InvalidValueError(
            f"unknown collection {op.collection!r}; expected one of {COLLECTIONS}",
            reason="collection",
            key=op.collection,
        )
    key = op.key
    if type(key) is not str or not key or len(key) > MAX_KEY_LENGTH:
        raise InvalidValueError(
            f"keys are non-empty str of at most {MAX_KEY_LENGTH} characters", reason="key", key=key
        )
    if op.deleted and op.value is not None:
        raise InvalidValueError("a delete carries no value", reason="value", key=key)


class ScopeState:
    """The merged, indexed state of one scope across its writer documents.

    Args:
        scope: The scope.
        strategy: How concurrent registers are ordered.
        policy: Writer ranks and which collections count per writer.
        history_limit: Registers kept per key in :meth:`history`.
        conflict_window: Registers kept per writer and key for conflict detection.
        max_pending: Early arrivals held per writer.
    """

    def __init__(
        self,
        scope: Scope,
        *,
        strategy: Strategy = Strategy.LAST_WRITER_WINS,
        policy: WriterPolicy | None = None,
        history_limit: int = 16,
        conflict_window: int = 64,
        max_pending: int = DEFAULT_MAX_PENDING,
        conflict_log: ConflictLog | None = None,
    ) -> None:
        self.scope = scope
        self.path = str(scope)
        self.strategy = strategy
        self.policy: WriterPolicy = policy if policy is not None else AllowAll()
        self.history_limit = history_limit
        self.max_pending = max_pending
        self.documents: dict[str, WriterDocument] = {}
        self.conflicts = conflict_log if conflict_log is not None else ConflictLog()
        self.invalid_entries = 0
        self.invalid_updates = 0
        self._chains = RegisterChains(conflict_window)
        self._heads: dict[KeyRef, dict[str, Register]] = {}
        self._winners: dict[KeyRef, Register] = {}
        self._history: dict[KeyRef, list[tuple[tuple[Any, ...], Register]]] = {}
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
        return self._winners.get((collection, key))

    def get(self, collection: str, key: str, default: Any = None) -> Any:
        """The visible value of a key, or ``default`` if unset or deleted."""
        best = self._winners.get((collection, key))
        if best is None or best.deleted:
            return default
        return best.value

    def items(self, collection: str) -> Iterator[tuple[str, Any]]:
        """Visible ``(key, value)`` pairs of a collection (tombstones hidden)."""
        for (name, key), best in self._winners.items():
            if name == collection and not best.deleted:
                yield key, best.value

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """All visible values, by collection then key (sorted; for comparisons)."""
        view: dict[str, dict[str, Any]] = {name: {} for name in COLLECTIONS}
        for (name, key), best in sorted(self._winners.items()):
            if not best.deleted:
                view[name][key] = best.value
        return view

    def winners(self) -> Mapping[KeyRef, Register]:
        """Every key's winning register, tombstones included (read-only view)."""
        return self._winners

    def history(self, collection: str, key: str) -> list[Register]:
        """The key's newest registers under the strategy's order, newest first (bounded)."""
        entries = self._history.get((collection, key), [])
        return [register for _, register in reversed(entries)]

    def heads(self, collection: str, key: str) -> dict[str, Register]:
        """Each writer's current register for a key."""
        return dict(self._heads.get((collection, key), {}))

    def next_seq(self, writer: str) -> int:
        """The sequence number the writer's next update must carry."""
        doc = self.documents.get(writer)
        return 1 if doc is None else doc.seq + 1

    def pending_count(self) -> int:
        """Early arrivals waiting for a gap to fill, over all writers."""
        return sum(len(p) for p in self._pending.values())

    def missing(self, writer: str) -> int | None:
        """The first sequence number the writer's pending updates wait for, if any wait."""
        return self.next_seq(writer) if self._pending.get(writer) else None

    # ------------------------------------------------------------------ writing

    def write(self, writer: str, hlc: Timestamp, ops: Sequence[WriteOp]) -> WriteResult:
        """Apply a local transaction of ``writer``: one pycrdt update for all of ``ops``.

        Raises:
            InvalidValueError: if an op names an unknown collection, a bad key or a value that
                cannot be stored. Nothing is written.
        """
        doc = self.document(writer)
        entries: list[tuple[str, str, bytes]] = []
        registers: list[tuple[KeyRef, Register]] = []
        heads_index = self._heads
        winners = self._winners
        for op in ops:
            _check_op(op)
            ref = (op.collection, op.key)
            heads = heads_index.get(ref)
            context: dict[str, Timestamp] = {}
            version = 1
            supersedes: VersionRef | None = None
            if heads:
                for other in heads.values():
                    for w, t in other.context.items():
                        if w not in context or t > context[w]:
                            context[w] = t
                    if other.writer not in context or other.hlc > context[other.writer]:
                        context[other.writer] = other.hlc
                    if other.version >= version:
                        version = other.version + 1
                current = winners.get(ref)
                if current is not None:
                    supersedes = VersionRef(current.writer, current.version)
            context.pop(writer, None)  # a writer always sees its own registers
            value = None if op.deleted else op.value
            data = encode_register_fields(
                value=value,
                hlc=hlc,
                writer=writer,
                version=version,
                supersedes=supersedes,
                context={w: [t.wall, t.logical] for w, t in context.items()},
                deleted=op.deleted,
            )
            entries.append((op.collection, op.key, data))
            registers.append(
                (
                    ref,
                    Register(
                        value=value,
                        hlc=hlc,
                        writer=writer,
                        version=version,
                        supersedes=supersedes,
                        context=context,
                        deleted=op.deleted,
                    ),
                )
            )
        update = doc.write(entries)
        doc.seq += 1
        changes = self._index_many(writer, registers)
        return WriteResult(seq=doc.seq, update=update, hlc=hlc, changes=tuple(changes))

    # ------------------------------------------------------------------ receiving

    def receive(self, writer: str, seq: int, update: bytes) -> list[Change]:
        """Take one of a writer's updates, in any order; apply what is contiguous.

        Duplicates (``seq`` already applied) are ignored. Early arrivals wait until the gap
        before them fills, then everything contiguous is applied in order.

        Raises:
            InvalidUpdateError: if the update at the head of the queue is malformed; it is
                dropped and the document is unchanged.
        """
        if seq < 1:
            raise InvalidUpdateError("sequence numbers start at 1", reason="seq", writer=writer)
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
        changes = self.apply_next(writer, update)
        waiting = self._pending.get(writer)
        while waiting:
            following = waiting.pop(doc.seq + 1, None)
            if following is None:
                break
            try:
                changes.extend(self.apply_next(writer, following))
            except InvalidUpdateError:
                # The writer's next update is bad; what came before stays applied, and the
                # writer waits for a good copy of that sequence number again.
                self.invalid_updates += 1
                break
        if waiting is not None and not waiting:
            del self._pending[writer]
        return changes

    def apply_next(self, writer: str, update: bytes) -> list[Change]:
        """Apply the update that carries the writer's next sequence number.

        Raises:
            InvalidUpdateError: if the update is malformed; the document is unchanged.
        """
        doc = self.document(writer)
        entries = doc.apply(update)
        doc.seq += 1
        registers: list[tuple[KeyRef, Register]] = []
        for collection, key, data in entries:
            ref = (collection, key)
            if data is None:
                self._drop_head(ref, writer)
                continue
            try:
                register = Register.decode(data)
            except DecodeError:
                register = None
            if register is None or register.writer != writer:
                # Deterministic on every replica: an entry that is not a register of this
                # writer does not count, and hides whatever the writer had there before.
                self.invalid_entries += 1
                self._drop_head(ref, writer)
                continue
            registers.append((ref, register))
        return self._index_many(writer, registers)

    # ------------------------------------------------------------------ index

    def _index_many(self, writer: str, registers: list[tuple[KeyRef, Register]]) -> list[Change]:
        policy = self.policy
        allowed = {name: policy.allows(writer, name) for name in COLLECTIONS}
        changes: list[Change] = []
        for ref, register in registers:
            if not allowed[ref[0]]:
                continue
            change = self._index(ref, register)
            if change is not None:
                changes.append(change)
        return changes

    def _index(self, ref: KeyRef, register: Register) -> Change | None:
        heads = self._heads.get(ref)
        if heads is None:
            heads = self._heads[ref] = {}
        heads[register.writer] = register
        rank_of = self.policy.rank
        strategy = self.strategy
        for other in self._chains.add(ref, register):
            self.conflicts.add(
                settle(
                    register, other, scope=self.path, ref=ref, strategy=strategy, rank_of=rank_of
                )
            )
        key = order_key(register, strategy, rank_of)
        history = self._history.get(ref)
        if history is None:
            self._history[ref] = [(key, register)]
        else:
            # Top-N of a set is order independent: top(S + x) == top(top(S) + x).
            bisect.insort(history, (key, register), key=lambda entry: entry[0])
            if len(history) > self.history_limit:
                del history[0]
        previous = self._winners.get(ref)
        if previous is None or key > order_key(previous, strategy, rank_of):
            self._winners[ref] = register
            return Change(self.scope, ref[0], ref[1], register, previous)
        return None

    def _drop_head(self, ref: KeyRef, writer: str) -> None:
        heads = self._heads.get(ref)
        if not heads or writer not in heads:
            return
        del heads[writer]
        self._winners.pop(ref, None)
        best: Register | None = None
        rank_of = self.policy.rank
        for register in heads.values():
            if best is None or order_key(register, self.strategy, rank_of) > order_key(
                best, self.strategy, rank_of
            ):
                best = register
        if best is not None:
            self._winners[ref] = best

    def rebuild_index(self) -> None:
        """Recompute the index from the documents (after a policy change: a rank or a grant)."""
        self._heads.clear()
        self._winners.clear()
        self._history.clear()
        self._chains.clear()
        for writer, doc in sorted(self.documents.items()):
            registers: list[tuple[KeyRef, Register]] = []
            for collection, key, data in doc.entries():
                if data is None:
                    continue
                try:
                    register = Register.decode(data)
                except DecodeError:
                    continue
                if register.writer == writer:
                    registers.append(((collection, key), register))
            self._index_many(writer, registers)


class FleetState:
    """The scopes of one replica, with effective values down the tree and change fan-out.

    Args:
        strategy_for: The strategy of each scope (default: last-writer-wins everywhere).
        policy: Writer ranks and collection rights, shared by every scope.
        history_limit: Registers kept per key in history.
    """

    def __init__(
        self,
        *,
        strategy_for: Callable[[Scope], Strategy] | None = None,
        policy: WriterPolicy | None = None,
        history_limit: int = 16,
    ) -> None:
        self._strategy_for = strategy_for or (lambda _scope: Strategy.LAST_WRITER_WINS)
        self.policy: WriterPolicy = policy if policy is not None else AllowAll()
        self.history_limit = history_limit
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
                conflict_log=self.conflicts,
            )
        return state

    def write(
        self, scope: Scope | str, writer: str, hlc: Timestamp, ops: Sequence[WriteOp]
    ) -> WriteResult:
        """A local transaction of ``writer`` in ``scope``; notifies subscribers."""
        result = self.scope(scope).write(writer, hlc, ops)
        self._notify(result.changes)
        return result

    def receive(self, scope: Scope | str, writer: str, seq: int, update: bytes) -> list[Change]:
        """Take one of a writer's updates in any order; notifies subscribers of applied changes."""
        changes = self.scope(scope).receive(writer, seq, update)
        self._notify(changes)
        return changes

    def effective(self, scope: Scope | str, collection: str, key: str, default: Any = None) -> Any:
        """The value in force at ``scope``: its own if set, else the nearest ancestor's.

        A delete removes a scope's own override, so the ancestor's value shows through again.
        """
        for level in Scope.parse(scope).lineage():
            state = self.scopes.get(level)
            if state is None:
                continue
            best = state.register(collection, key)
            if best is not None and not best.deleted:
                return best.value
        return default

    def effective_items(self, scope: Scope | str, collection: str) -> dict[str, Any]:
        """Every key in force at ``scope`` with its effective value."""
        view: dict[str, Any] = {}
        for level in reversed(list(Scope.parse(scope).lineage())):
            state = self.scopes.get(level)
            if state is None:
                continue
            for (name, key), best in state.winners().items():
                if name != collection:
                    continue
                if best.deleted:
                    continue
                view[key] = best.value
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

    def _notify(self, changes: Sequence[Change]) -> None:
        if changes:
            for callback in list(self._subscribers):
                callback(changes)
