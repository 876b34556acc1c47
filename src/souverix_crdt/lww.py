"""Last-writer-wins registers, their orders, and the pure merge they obey.

A :class:`Register` is one writer's current value for one key: the value (or a tombstone), the
HLC of the transaction that wrote it, the writer's key id, a per-key version number, the version
it superseded, and its *context*: for every writer of this key, the newest HLC of that writer's
register the author had seen when writing (a per-key version vector). The context is what makes
conflict detection exact: two registers conflict when neither author had seen the other's.

The winner among a key's registers is the maximum under the scope's :class:`Strategy`:

* ``LAST_WRITER_WINS`` orders by ``(hlc, writer)``;
* ``AUTHORITY_PRECEDENCE`` is causal first: a register that *supersedes* another (its author
  had seen it, and it is dated later) beats it whatever the ranks, so a zone that has seen the
  region's value may change it. The winner is picked among the registers no other register
  supersedes (the causally newest ones), by ``(rank, hlc, writer)``, rank coming from the
  writer's signed delegation (never from the register itself, which the writer controls). So a
  higher authority wins only over writes that had not seen it.

Under last-writer-wins the causal rule adds nothing: a register that supersedes another is
always dated later, so ``(hlc, writer)`` already ranks it higher.

The state-based CRDT underneath is :class:`LwwMap`: for every key, each writer's newest register.
Its merge (per writer, keep the register with the greater HLC) is commutative, associative and
idempotent, and the winner is a function of the merged state only, so every replica that has
seen the same registers shows the same winner whatever the delivery order.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Final

import attrs
import msgpack

from .codec import SCALAR_TYPES, DecodeLimits, check_structure, decode, reject_ext
from .errors import DecodeError, InvalidValueError
from .hlc import MAX_LOGICAL, MAX_WALL, Timestamp

__all__ = [
    "REGISTER_FORMAT",
    "KeyRef",
    "LwwMap",
    "RankOf",
    "Register",
    "Strategy",
    "VersionRef",
    "check_storable",
    "concurrent",
    "has_seen",
    "is_plain",
    "order_key",
    "register_stamp",
    "supersedes",
    "winner",
]

#: Format tag written first in every encoded register.
REGISTER_FORMAT: Final = 1

#: Registers are small; anything bigger than this is not one of ours. A register holds a
#: user's value, which may legitimately be dense (a list of small ints costs 8x its size once
#: decoded), and the writer's own write path must accept exactly what every reader accepts:
#: so its whole-message budget is its size alone (a register cannot hold more objects than
#: bytes, nor cost more than about 200 bytes per byte), never a ratio a writer cannot see.
REGISTER_LIMITS: Final = DecodeLimits(
    max_size=1024 * 1024,
    max_objects=1024 * 1024,
    max_expansion=256,
    max_depth=24,
    max_str_len=1024 * 1024,
    max_bin_len=1024 * 1024,
    max_array_len=65_536,
    max_map_len=65_536,
)

_MAX_REGISTER_SIZE: Final = REGISTER_LIMITS.max_size
#: A register's value sits one level below the register itself.
_VALUE_DEPTH: Final = REGISTER_LIMITS.max_depth - 1

#: ``(collection, key)``: the address of a register inside a scope.
KeyRef = tuple[str, str]
#: Maps a writer's key id to its authority rank (used by authority precedence).
RankOf = Callable[[str], int]


class Strategy(enum.Enum):
    """How a scope picks the winner among concurrent registers."""

    LAST_WRITER_WINS = "last-writer-wins"
    AUTHORITY_PRECEDENCE = "authority-precedence"


@attrs.frozen
class VersionRef:
    """Names one register of a key: its writer and per-key version number."""

    writer: str
    version: int


def _no_rank(writer: str) -> int:
    return 0


@attrs.frozen(slots=True)
class Register:
    """One writer's value for one key, as stored in its writer document.

    Attributes:
        value: The value (plain msgpack-able data); ``None`` for a tombstone.
        hlc: Timestamp of the transaction that wrote it.
        writer: Key id of the writer.
        version: Per-key version: one more than the highest version its author had seen.
        supersedes: The register that was winning for its author when it wrote, if any.
        context: For each writer of this key, the newest HLC of theirs the author had seen.
        deleted: True for a tombstone: a delete wins or loses like any write.
    """

    value: Any
    hlc: Timestamp
    writer: str
    version: int
    supersedes: VersionRef | None = None
    context: Mapping[str, Timestamp] = attrs.field(factory=dict, eq=False, hash=False)
    deleted: bool = False

    @property
    def ref(self) -> VersionRef:
        """This register's version reference."""
        return VersionRef(self.writer, self.version)

    def encode(self) -> bytes:
        """Encode as msgpack bytes (never as Yjs numbers, which come back as floats)."""
        return encode_register_fields(
            value=self.value,
            hlc=self.hlc,
            version=self.version,
            supersedes=self.supersedes,
            writer=self.writer,
            context={w: [t.wall, t.logical] for w, t in self.context.items()},
            deleted=self.deleted,
        )

    @classmethod
    def decode(cls, data: bytes | bytearray, writer: str) -> Register:
        """Decode a register from untrusted bytes found in ``writer``'s document.

        The writer is not part of the encoding: a register belongs to the document that holds
        it, so no writer can claim another's id, and the bytes on the wire stay small.

        Raises:
            DecodeError: if the bytes are not a well-formed register.
        """
        deleted, value, wall, logical, version, sup, ctx = _register_fields(data)
        supersedes = None
        if sup is not None:
            supersedes = VersionRef(writer if sup[0] is None else sup[0], sup[1])
        return cls(
            value=value,
            hlc=Timestamp(wall, logical),
            writer=writer,
            version=version,
            supersedes=supersedes,
            context={w: Timestamp(t[0], t[1]) for w, t in ctx.items()},
            deleted=deleted,
        )


def register_stamp(data: bytes | bytearray) -> tuple[int, int]:
    """Check that ``data`` is a well-formed register and return its ``(wall, logical)``.

    Accepts exactly what :meth:`Register.decode` accepts, without building the register: the
    path a replica takes for every key that only one writer has written.

    Raises:
        DecodeError: if the bytes are not a well-formed register.
    """
    fields = _register_fields(data)
    return fields[2], fields[3]


def _register_fields(
    data: bytes | bytearray,
) -> tuple[bool, Any, int, int, int, list[Any] | None, dict[str, list[int]]]:
    """Decode and check a register's fields; the one validation every read path shares.

    It accepts exactly what :func:`~souverix_crdt.codec.decode` under :data:`REGISTER_LIMITS`
    followed by these field checks accepts. Every register of every received update passes
    through here, so the decoder's settings and structure walk are inlined for a register's
    shape; bytes the fast unpack refuses go through the general decoder for the precise error.
    """
    fields = _decode_register(data)
    if type(fields) is not list or len(fields) != 8 or fields[0] != REGISTER_FORMAT:
        raise DecodeError("not a register", reason="register-shape")
    _, deleted, value, wall, logical, version, sup, ctx = fields
    if type(deleted) is not bool:
        raise DecodeError("register header fields have the wrong type", reason="register")
    if type(wall) is not int or not 0 <= wall <= MAX_WALL:
        raise DecodeError(f"wall time out of range: {wall!r}", reason="hlc-wall")
    if type(logical) is not int or not 0 <= logical <= MAX_LOGICAL:
        raise DecodeError(f"logical counter out of range: {logical!r}", reason="hlc-logical")
    if type(version) is not int or version < 1:
        raise DecodeError("register version must be a positive int", reason="register")
    if sup is not None and (
        type(sup) is not list
        or len(sup) != 2
        or (sup[0] is not None and type(sup[0]) is not str)
        or type(sup[1]) is not int
    ):
        raise DecodeError("bad supersedes reference", reason="register")
    if type(ctx) is not dict:
        raise DecodeError("register context must be a map", reason="register")
    for writer, stamp in ctx.items():
        if type(writer) is not str:
            raise DecodeError("map keys must be str", reason="map-key")
        # Exactly what Timestamp.from_list accepts, without building one.
        if (
            type(stamp) is not list
            or len(stamp) != 2
            or type(stamp[0]) is not int
            or not 0 <= stamp[0] <= MAX_WALL
            or type(stamp[1]) is not int
            or not 0 <= stamp[1] <= MAX_LOGICAL
        ):
            Timestamp.from_list(stamp)  # raises the precise error
            raise DecodeError(f"bad context timestamp: {stamp!r}", reason="hlc")
    if not is_plain(value):
        check_structure(value, _VALUE_DEPTH)  # the codec's walk: depth and str map keys
    if deleted and value is not None:
        raise DecodeError("a tombstone carries no value", reason="register")
    return deleted, value, wall, logical, version, sup, ctx


#: Items in one list or map of a value (msgpack refuses longer headers under REGISTER_LIMITS).
_MAX_ITEMS: Final = min(REGISTER_LIMITS.max_array_len, REGISTER_LIMITS.max_map_len)
_MAX_ARRAY: Final = REGISTER_LIMITS.max_array_len
_MAX_MAP: Final = REGISTER_LIMITS.max_map_len
_UNDECODED: Final = object()


def _decode_register(data: bytes | bytearray) -> Any:
    """The codec's decode under :data:`REGISTER_LIMITS`, minus its structure walk."""
    kind = type(data)
    size = len(data) if kind is bytes or kind is bytearray else 0
    fields: Any = _UNDECODED
    if 0 < size <= _MAX_REGISTER_SIZE:
        try:
            # The codec's unpacker settings: every length capped by the input size.
            fields = msgpack.unpackb(
                data,
                raw=False,
                strict_map_key=False,
                ext_hook=reject_ext,
                max_str_len=size,
                max_bin_len=size,
                max_array_len=size if size < _MAX_ARRAY else _MAX_ARRAY,
                max_map_len=size >> 1 if size >> 1 < _MAX_MAP else _MAX_MAP,
                max_ext_len=0,
            )
        except Exception:
            fields = _UNDECODED
    if fields is _UNDECODED:
        fields = decode(data, REGISTER_LIMITS, unique_keys=False)
    return fields


def encode_register_fields(
    *,
    value: Any,
    hlc: Timestamp,
    version: int,
    supersedes: VersionRef | None,
    context: Mapping[str, list[int]],
    deleted: bool,
    writer: str = "",
) -> bytes:
    """Encode register fields without building a :class:`Register` (the write hot path).

    A writer superseding its own register names itself as ``nil``: the document already says
    who it is, and the common case (a writer updating its own key) saves a chain id per key.

    Raises:
        InvalidValueError: if ``value`` is not plain msgpack-able data.
    """
    sup: list[Any] | None = None
    if supersedes is not None:
        sup = [None if supersedes.writer == writer else supersedes.writer, supersedes.version]
    try:
        data: bytes = msgpack.packb(
            [REGISTER_FORMAT, deleted, value, hlc.wall, hlc.logical, version, sup, context],
            use_bin_type=True,
        )
    except (TypeError, ValueError, OverflowError) as exc:
        raise InvalidValueError(f"value cannot be stored: {exc}", reason="value") from exc
    check_storable(value, data)
    return data


def check_storable(value: Any, data: bytes) -> None:
    """Refuse a register every other replica would refuse: what a writer sees, all see.

    ``data`` is the encoded register holding ``value``. Plain values (a scalar, or a flat map
    with str keys, or a flat list) of a register within the size limit are accepted at once;
    anything else is judged by the very check receivers run on it.

    Raises:
        InvalidValueError: if receivers would not count the register.
    """
    if len(data) <= _MAX_REGISTER_SIZE and is_plain(value):
        return
    try:
        register_stamp(data)
    except DecodeError as exc:
        raise InvalidValueError(f"value cannot be stored: {exc}", reason="value") from exc


def is_plain(value: Any) -> bool:
    """True for a scalar, a map of str to scalars, or a list of scalars (not too long).

    Such a value passes the structure checks of the decoder whatever it holds (no nesting,
    str keys, no extension types), so neither side has to walk it.
    """
    kind = type(value)
    if kind in SCALAR_TYPES:
        return True
    # Plain loops: faster than set operations over map(type, ...) for the few items of a record.
    scalars = SCALAR_TYPES
    plain = (kind is dict or kind is list) and len(value) <= _MAX_ITEMS
    if plain and kind is dict:
        for key, item in value.items():
            if type(key) is not str or type(item) not in scalars:
                plain = False
                break
    elif plain:
        for item in value:
            if type(item) not in scalars:
                plain = False
                break
    return plain


def has_seen(author: Register, other: Register) -> bool:
    """True if ``author`` was written with ``other`` in its causal past (for this key)."""
    if author.writer == other.writer:
        return author.hlc >= other.hlc
    seen = author.context.get(other.writer)
    return seen is not None and seen >= other.hlc


def concurrent(a: Register, b: Register) -> bool:
    """True if neither register's author had seen the other's: a conflict."""
    return not has_seen(a, b) and not has_seen(b, a)


def supersedes(newer: Register, older: Register) -> bool:
    """True if ``newer`` causally supersedes ``older``: another writer's register that had seen it.

    Both conditions are needed: the context says the author had seen ``older``, and the later
    timestamp makes the relation acyclic even for registers whose contexts were forged (a
    writer controls its own context), so a set of registers always has causally newest members
    and the winner stays a function of the set.
    """
    if newer.writer == older.writer or newer.hlc <= older.hlc:
        return False
    seen = newer.context.get(older.writer)
    return seen is not None and seen >= older.hlc


def order_key(
    register: Register, strategy: Strategy, rank_of: RankOf = _no_rank
) -> tuple[Any, ...]:
    """The total order a strategy uses among concurrent registers (the largest key wins)."""
    if strategy is Strategy.AUTHORITY_PRECEDENCE:
        return (rank_of(register.writer), register.hlc, register.writer)
    return (register.hlc, register.writer)


def winner(
    registers: Iterable[Register], strategy: Strategy, rank_of: RankOf = _no_rank
) -> Register | None:
    """The winning register under ``strategy``, or ``None`` if there are none.

    ``registers`` are a key's heads, one per writer. Under authority precedence, the winner is
    the largest by :func:`order_key` among the registers no other of them supersedes; under
    last-writer-wins, simply the largest (which is never superseded).
    """
    candidates = list(registers)
    if strategy is Strategy.AUTHORITY_PRECEDENCE and len(candidates) > 1:
        # Greatest first: the first one nothing supersedes wins, usually the first or second.
        candidates.sort(key=lambda r: order_key(r, strategy, rank_of), reverse=True)
        for register in candidates:
            if not any(supersedes(other, register) for other in candidates):
                return register
    best: Register | None = None
    best_key: tuple[Any, ...] = ()
    for register in candidates:
        key = order_key(register, strategy, rank_of)
        if best is None or key > best_key:
            best, best_key = register, key
    return best


@attrs.frozen
class LwwMap:
    """The state-based CRDT: per key, each writer's newest register.

    ``merge`` is the join of a semilattice (per writer, the register with the greater HLC), so
    it is commutative, associative and idempotent; :meth:`value` depends only on the joined state.
    """

    entries: Mapping[KeyRef, Mapping[str, Register]] = attrs.field(factory=dict)

    @classmethod
    def of(cls, registers: Iterable[tuple[KeyRef, Register]]) -> LwwMap:
        """Build the state holding ``registers`` (the newest per writer and key)."""
        state = cls()
        for ref, register in registers:
            state = state.merge(cls({ref: {register.writer: register}}))
        return state

    def merge(self, other: LwwMap) -> LwwMap:
        """Join two states; pure."""
        merged: dict[KeyRef, dict[str, Register]] = {
            ref: dict(heads) for ref, heads in self.entries.items()
        }
        for ref, heads in other.entries.items():
            target = merged.setdefault(ref, {})
            for writer, register in heads.items():
                mine = target.get(writer)
                # Ties on (writer, hlc) can only come from one transaction: keep the larger
                # encoding so the join is still a function of the two inputs.
                if (
                    mine is None
                    or register.hlc > mine.hlc
                    or (register.hlc == mine.hlc and register.encode() > mine.encode())
                ):
                    target[writer] = register
        return LwwMap(merged)

    def winner(
        self, ref: KeyRef, strategy: Strategy, rank_of: RankOf = _no_rank
    ) -> Register | None:
        """The register that wins ``ref`` (a tombstone included), or ``None``."""
        return winner(self.entries.get(ref, {}).values(), strategy, rank_of)

    def value(self, strategy: Strategy, rank_of: RankOf = _no_rank) -> dict[KeyRef, Any]:
        """The visible key/value view: winners that are not tombstones."""
        view: dict[KeyRef, Any] = {}
        for ref in self.entries:
            best = self.winner(ref, strategy, rank_of)
            if best is not None and not best.deleted:
                view[ref] = best.value
        return view

    def __iter__(self) -> Iterator[KeyRef]:
        return iter(self.entries)
