"""File bundles for air-gapped zones: signed, streamed, imported all-or-nothing.

A zone that no network reaches (``edge-b1`` in the brief) syncs by carrying files. The exporter
writes a **bundle** with exactly what the peer lacks; the peer imports it and writes a
**receipt** with its own frontiers; the exporter imports the receipt, which settles its sync
debt and tells the next bundle where to start.

Bundle file layout (every number big-endian)::

    magic     8 bytes    b"SVXBNDL" + format version
    record*              u32 length, then ``length`` bytes: a kind byte and the record data

    record 0  MANIFEST   msgpack [body, signature]; the signature is the exporter's Ed25519
                         signature over BUNDLE_DOMAIN + body
    record 1  TABLE      one kind byte per following record, then one SHA-256 per following
                         record, in order; the manifest signs its length and its SHA-256
    then      DELEGATION, REVOCATION, PROOF records (authority the peer may need), then per
              chain an optional CHECKPOINT (when the log the peer needs was compacted) and
              ENVELOPE records in sequence order, each exactly as signed by its writer

The manifest body (canonical msgpack map) names the format version, the fleet, the source
(name, key id and delegation chain), the peer, the peer's scope, the range ``(from_seq,
to_seq]`` of every chain the bundle carries, the exporter's own frontiers, the number of records
and the SHA-256 of the table that lists the kind and SHA-256 of each of them **in order** (an
envelope's hash is its id), the id of the previous bundle exported to this peer (bundles form a
chain per peer), and a timestamp from the replica's clock. The bundle id is the SHA-256 of the
signed body. The table is a record of its own rather than a field of the body so that the one
thing a bundle holds in memory per record (33 bytes) is held once, not copied by encoding and
decoding (the table of 20,000 envelopes is 660 kB).

Import is two passes over the file, never holding more than one record, the manifest, its table
and one batch in memory:

1. **Verify.** The manifest first, and of it at first only the fields that name its signer
   (the rest of the body is skipped, not decoded): fleet id, then the source's chain against
   the pinned anchors (:func:`~souverix_crdt.authority.verify_chain`), its key and revocation,
   then the signature over the whole body, then that the ``source`` the body names is the
   signer's plane (:attr:`~souverix_crdt.authority.Grant.plane`, from its signed delegation).
   Only then is the body decoded whole, and checked to be addressed to this replica's plane.
   Then every record, streamed and hashed, against the manifest: the same kind, the same hash,
   in the same order, envelopes inside their declared chain ranges; no record missing, none
   extra, no byte cut off. Any failure raises :class:`BundleError` and nothing has been
   applied.
2. **Apply.** The same records again (their hashes checked again, so a file changed between the
   passes cannot slip anything in), through :meth:`~souverix_crdt.replica.Replica.ingest_many`
   in batches of 100 with ``source=<exporter>``. Ingest is idempotent, so importing a bundle
   twice changes nothing.

A failure of the store *during* the second pass (disk full) leaves a consistent prefix: every
batch commits atomically and chains arrive in order, so importing the bundle again completes it.

Receipt files (magic ``b"SVXRCPT"``) hold one RECEIPT record: the importer's signed frontiers,
addressed to the exporter, with the id of the last bundle it imported from it. A receipt is
verified like a manifest (signer first, its named ``source`` must be the signer's plane, its
``for`` this replica's plane).

Names and acknowledgements. A plane is known by one name only: the one its verified chain
gives it (:attr:`~souverix_crdt.authority.Grant.plane`). The exporter writes its own plane as
``source``; ``peer`` and ``for`` name the addressee's plane. A manifest or receipt whose source
is not its signer's plane is refused (``wrong-source``) before anything is imported or settled,
one addressed to another plane is refused (``wrong-peer``), so no fleet key can speak for
another plane. What a verified file says its signer holds (a receipt's frontiers, a manifest's
``frontiers``) is acknowledged for the signer's plane only, through
:meth:`~souverix_crdt.replica.Replica.acknowledge` with the signer registered at its verified
scope: rows for chains this replica does not hold, outside the signer's interest, or beyond
what this replica holds are dropped or clamped, never stored. A receipt therefore settles only
the debt towards its signer, and only for chains that exist in its interest.

A bundle starts from what the peer acknowledged (a receipt, or the frontiers the exporter's store
recorded from earlier receipts and sessions), not from what earlier bundles carried: bundles can
be lost on the way, and a resend is harmless because import is idempotent.

:class:`FileBundleTransport` is a different tool: a live :class:`~.base.Transport` whose frames
travel as files through a spool directory (one atomic file per frame), so the frame-level
conformance suite and an ordinary sync session run over a shared directory. It is for two
processes that share a filesystem (or a synced folder), not for sneakernet: carrying files by
hand is what bundles and receipts are for, because a session needs round trips.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import hashlib
import os
import re
import secrets
import shutil
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any, Final, TypeAlias

import attrs

from souverix_crdt.authority import Delegation, Grant, verify_chain
from souverix_crdt.codec import DecodeLimits, decode, decode_fields, encode, encode_canonical
from souverix_crdt.envelope import read_header
from souverix_crdt.errors import (
    AuthorityError,
    BundleError,
    DecodeError,
    ForeignFleetError,
    FrameTooLargeError,
    SouverixError,
    TransportBrokenError,
    TransportClosedError,
)
from souverix_crdt.hlc import Timestamp
from souverix_crdt.limits import DEFAULT_LIMITS
from souverix_crdt.replica import IngestOutcome, Replica
from souverix_crdt.scope import Scope
from souverix_crdt.store.base import Batch
from souverix_crdt.sync.messages import FrontierRow

from .base import DEFAULT_MAX_FRAME, Transport

__all__ = [
    "BUNDLE_DOMAIN",
    "BUNDLE_MAGIC",
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_MAX_RECORD",
    "FORMAT_VERSION",
    "RECEIPT_DOMAIN",
    "RECEIPT_MAGIC",
    "BundleInfo",
    "BundleReceipt",
    "ChainRange",
    "FileBundleTransport",
    "ImportResult",
    "Manifest",
    "Record",
    "RecordKind",
    "export_bundle",
    "export_receipt",
    "import_bundle",
    "import_receipt",
    "read_manifest",
    "read_receipt",
    "read_records",
    "verify_bundle",
]

#: Version of the bundle and receipt formats.
FORMAT_VERSION: Final = 1
#: First bytes of a bundle file.
BUNDLE_MAGIC: Final = b"SVXBNDL" + bytes([FORMAT_VERSION])
#: First bytes of a receipt file.
RECEIPT_MAGIC: Final = b"SVXRCPT" + bytes([FORMAT_VERSION])
#: Prefix of the signed manifest body: a manifest signature is valid for nothing else.
BUNDLE_DOMAIN: Final = b"souverix-crdt/bundle-manifest/v1\x00"
#: Prefix of the signed receipt body.
RECEIPT_DOMAIN: Final = b"souverix-crdt/bundle-receipt/v1\x00"
#: Largest record (kind byte included) read or written; checked before allocating it.
DEFAULT_MAX_RECORD: Final = DEFAULT_LIMITS.max_manifest
#: Envelopes per :meth:`~souverix_crdt.replica.Replica.ingest_many` call on import.
DEFAULT_BATCH_SIZE: Final = 100

_HEADER: Final = 4
_DIGEST: Final = 32
# Envelopes read from the store per query while exporting: bounds the exporter's memory.
_PAGE: Final = 256
# Bytes copied at a time when the spooled body is appended behind the manifest.
_COPY_CHUNK: Final = 64 * 1024
_META_EXPORTED: Final = "bundle:exported:"
_META_IMPORTED: Final = "bundle:imported:"
_META_PEER_SCOPE: Final = "bundle:peer-scope:"
_MANIFEST_KEYS: Final = frozenset(
    {
        "v",
        "fleet",
        "source",
        "source_key",
        "source_chain",
        "peer",
        "peer_scope",
        "ranges",
        "frontiers",
        "records",
        "table",
        "previous",
        "complete",
        "created",
        "hlc",
    }
)
#: The fields that say who signed a body: read (and checked) before the rest is decoded.
_SIGNER_KEYS: Final = frozenset({"v", "fleet", "source", "source_key", "source_chain"})
_RECEIPT_KEYS: Final = frozenset(
    {"v", "fleet", "source", "source_key", "source_chain", "for", "frontiers", "bundle", "created"}
)


class RecordKind(enum.Enum):
    """What a record holds (its first byte)."""

    MANIFEST = ord("M")
    TABLE = ord("T")
    ENVELOPE = ord("E")
    CHECKPOINT = ord("C")
    DELEGATION = ord("D")
    REVOCATION = ord("R")
    PROOF = ord("P")
    RECEIPT = ord("A")


_ITEM_KINDS: Final = frozenset(
    kind.value
    for kind in RecordKind
    if kind not in (RecordKind.MANIFEST, RecordKind.TABLE, RecordKind.RECEIPT)
)
#: Index of the first item record: after the manifest and its table.
_FIRST_ITEM: Final = 2

Rows: TypeAlias = Iterable[FrontierRow | tuple[str, str, int] | tuple[str, str, int, bytes]]
Source: TypeAlias = "str | os.PathLike[str] | IO[bytes]"


# --------------------------------------------------------------------------- values


@attrs.frozen
class Record:
    """One record of a bundle or receipt file.

    Attributes:
        kind: What it holds.
        data: Its bytes (an envelope exactly as signed, for envelopes).
        index: Its position; the manifest (or the receipt) is record 0.
        offset: Byte offset of its length header in the file.
    """

    kind: RecordKind
    data: bytes = attrs.field(repr=False)
    index: int
    offset: int


@attrs.frozen
class ChainRange:
    """What a bundle carries of one chain: sequence numbers ``from_seq < seq <= to_seq``."""

    scope: str
    chain: str
    from_seq: int
    to_seq: int


@attrs.frozen(kw_only=True)
class Manifest:
    """A bundle's verified manifest.

    Attributes:
        bundle_id: SHA-256 of the signed body: the bundle's name.
        fleet_id: The fleet.
        source: The exporter's plane name, verified: its signer's plane.
        source_key_id: The exporter's key id.
        source_scope: The exporter's verified home scope.
        peer: The plane the bundle is addressed to.
        peer_scope: The scope whose interest (subtree and ancestors) the bundle serves.
        ranges: What it carries of each chain.
        frontiers: The exporter's own frontiers ``(scope, chain, seq)`` when it wrote the bundle.
        records: Item records (after the manifest and its table).
        table: The verified table: ``records`` kind bytes, then ``records`` SHA-256 digests.
        previous: The id of the previous bundle for this peer, or ``b""``.
        complete: False when a ``limit`` cut the bundle short of what the peer lacks.
        created_ms: The exporter's wall clock when it wrote the bundle, in milliseconds.
        hlc: The exporter's HLC high-water mark then.
    """

    bundle_id: bytes
    fleet_id: str
    source: str
    source_key_id: str
    source_scope: Scope
    peer: str
    peer_scope: Scope
    ranges: tuple[ChainRange, ...]
    frontiers: tuple[tuple[str, str, int], ...]
    records: int
    table: bytes = attrs.field(repr=False)
    previous: bytes
    complete: bool
    created_ms: int
    hlc: Timestamp

    def kind(self, position: int) -> int:
        """The kind byte of item record ``position`` (0 for the first item)."""
        return self.table[position]

    def digest(self, position: int) -> bytes:
        """The SHA-256 of item record ``position`` (0 for the first item)."""
        start = self.records + position * _DIGEST
        return self.table[start : start + _DIGEST]

    def count(self, kind: RecordKind) -> int:
        """How many item records are of ``kind``."""
        return self.table.count(kind.value, 0, self.records)


@attrs.frozen(kw_only=True)
class BundleInfo:
    """What :func:`export_bundle` wrote.

    Attributes:
        path: The bundle file.
        bundle_id: Its id (the SHA-256 of its signed manifest body).
        peer: The replica it is addressed to.
        peer_scope: The scope whose interest it serves.
        previous: The id of the previous bundle for this peer, or ``b""``.
        ranges: What it carries of each chain.
        envelopes: Envelope records.
        checkpoints: Checkpoint records.
        delegations: Delegation records.
        revocations: Revocation records.
        proofs: Equivocation proof records.
        size: Bytes of the file.
        complete: False when ``limit`` cut it short; export again after the receipt.
        created_ms: The timestamp in its manifest.
    """

    path: Path
    bundle_id: bytes
    peer: str
    peer_scope: Scope
    previous: bytes
    ranges: tuple[ChainRange, ...]
    envelopes: int
    checkpoints: int
    delegations: int
    revocations: int
    proofs: int
    size: int
    complete: bool
    created_ms: int

    @property
    def records(self) -> int:
        """Item records (after the manifest and its table)."""
        return self.envelopes + self.checkpoints + self.delegations + self.revocations + self.proofs


@attrs.frozen(kw_only=True)
class ImportResult:
    """What :func:`import_bundle` did.

    Attributes:
        bundle_id: The bundle's id.
        source: The exporter's verified plane name.
        source_scope: The exporter's verified home scope.
        records: Item records (after the manifest and its table).
        envelopes: Envelope records.
        checkpoints: Checkpoint records.
        applied: Envelopes and checkpoints applied now.
        duplicates: Envelopes and checkpoints already held.
        pending: Envelopes parked (a gap, or a delegation not known yet).
        rejected: Envelopes and checkpoints refused (each with its own typed error in the
            replica's ingest result; the bundle itself was sound).
        delegations_added: Delegations that were new.
        revocations_added: Revocations that were new.
        proofs_added: Equivocation proofs that were new.
        chained: True when the bundle extends the last one imported from this source (or is
            the first, or that one again); False means a bundle in between never arrived,
            which is harmless (each bundle starts from acknowledged frontiers) but worth a log.
        created_ms: The timestamp in the manifest.
    """

    bundle_id: bytes
    source: str
    source_scope: Scope
    records: int
    envelopes: int
    checkpoints: int
    applied: int
    duplicates: int
    pending: int
    rejected: int
    delegations_added: int
    revocations_added: int
    proofs_added: int
    chained: bool
    created_ms: int

    @property
    def changed(self) -> bool:
        """True if the import changed the replica's data or authority."""
        return bool(
            self.applied or self.delegations_added or self.revocations_added or self.proofs_added
        )


@attrs.frozen(kw_only=True)
class BundleReceipt:
    """A verified receipt: how far a peer holds each chain.

    Attributes:
        receipt_id: SHA-256 of the signed body.
        fleet_id: The fleet.
        source: The importer's plane name, verified: its signer's plane (the peer the
            exporter writes bundles for, and the only one whose debt the receipt settles).
        source_key_id: The importer's key id.
        source_scope: The importer's verified home scope.
        for_peer: The exporter's plane the receipt is addressed to.
        frontiers: ``(scope, chain, seq)`` of every chain the importer holds.
        last_bundle: The id of the last bundle it imported from ``for_peer``, or ``b""``.
        created_ms: The importer's wall clock when it wrote the receipt, in milliseconds.
    """

    receipt_id: bytes
    fleet_id: str
    source: str
    source_key_id: str
    source_scope: Scope
    for_peer: str
    frontiers: tuple[tuple[str, str, int], ...]
    last_bundle: bytes
    created_ms: int


# --------------------------------------------------------------------------- reading records


def _fail(message: str, reason: str, **where: int | None) -> BundleError:
    return BundleError(message, reason=reason, **where)


class _Reader:
    """Reads length-prefixed records from a seekable binary stream, one at a time.

    Every length is compared with ``max_record`` and with the bytes left in the stream before
    anything is read for it, so a forged length costs nothing.
    """

    def __init__(self, stream: IO[bytes], max_record: int, *, max_first: int | None = None) -> None:
        self._stream = stream
        self._max = max_record
        # The first record (a manifest, or a receipt) has a budget of its own.
        self._max_first = max_record if max_first is None else max_first
        start = stream.tell()
        end = stream.seek(0, os.SEEK_END)
        stream.seek(start)
        self._remaining = end - start
        self.offset = 0
        self.index = 0

    def _read(self, size: int, what: str) -> bytes:
        if size > self._remaining:
            raise _fail(
                f"truncated: {what} needs {size} bytes, {self._remaining} left",
                "truncated",
                record=self.index,
                offset=self.offset,
            )
        data = self._stream.read(size)
        if len(data) != size:  # the file shrank under us
            raise _fail(f"truncated while reading {what}", "truncated", offset=self.offset)
        self._remaining -= size
        self.offset += size
        return data

    def magic(self, expected: bytes) -> None:
        if self._read(len(expected), "the magic") != expected:
            raise _fail("not a file of this kind or version (bad magic)", "magic", offset=0)

    def next(self) -> Record | None:
        if self._remaining == 0:
            return None
        start = self.offset
        length = int.from_bytes(self._read(_HEADER, "a record header"), "big")
        if length == 0:
            raise _fail("a record holds at least its kind", "malformed", record=self.index)
        limit = self._max_first if self.index == 0 else self._max
        if length > limit:
            raise _fail(
                f"record of {length} bytes exceeds the {limit}-byte limit",
                "too-large",
                record=self.index,
                offset=start,
            )
        kind_byte = self._read(1, "a record kind")[0]
        data = self._read(length - 1, "a record")
        try:
            kind = RecordKind(kind_byte)
        except ValueError:
            raise _fail(
                f"unknown record kind {kind_byte:#x}", "malformed", record=self.index, offset=start
            ) from None
        record = Record(kind, data, self.index, start)
        self.index += 1
        return record

    def __iter__(self) -> Iterator[Record]:
        while (record := self.next()) is not None:
            yield record


def _record_budgets(replica: Replica, max_record: int | None) -> tuple[int, int]:
    """``(largest item record, largest manifest or receipt)`` an import accepts.

    The replica's :class:`~souverix_crdt.limits.Limits` (``max_bundle_record``,
    ``max_manifest``) unless the caller gives one bound for every record.
    """
    if max_record is not None:
        return max_record, max_record
    return replica.limits.max_bundle_record, replica.limits.max_manifest


@contextlib.contextmanager
def _opened(source: Source) -> Iterator[IO[bytes]]:
    if isinstance(source, str | os.PathLike):
        with open(source, "rb") as stream:
            yield stream
        return
    if not source.seekable():
        raise ValueError("a bundle is read twice (verify, then apply): give a seekable stream")
    yield source


def read_records(
    source: Source, *, magic: bytes = BUNDLE_MAGIC, max_record: int = DEFAULT_MAX_RECORD
) -> Iterator[Record]:
    """Stream the records of a bundle (or, with ``magic=RECEIPT_MAGIC``, a receipt) file.

    Holds one record at a time; nothing is verified but the framing.

    Raises:
        BundleError: bad magic, a cut-off record, or a record over ``max_record``.
    """
    with _opened(source) as stream:
        reader = _Reader(stream, max_record)
        reader.magic(magic)
        yield from reader


# --------------------------------------------------------------------------- signed bodies


def _limits(max_record: int) -> DecodeLimits:
    return DecodeLimits(
        max_size=max_record,
        max_depth=4,
        max_str_len=4096,
        max_bin_len=max_record,
        max_array_len=1_000_000,
        max_map_len=32,
    )


def _sign(replica: Replica, domain: bytes, body: dict[str, Any]) -> tuple[bytes, bytes, bytes]:
    """Sign a body map; returns ``(encoded body, signature, id)``."""
    encoded = encode_canonical(body)
    signature = replica.identity.signing_key.sign(domain + encoded)
    return encoded, signature, hashlib.sha256(encoded).digest()


def _bin_header(size: int) -> bytes:
    # msgpack's shortest bin header, as msgpack itself writes it.
    if size < 1 << 8:
        return bytes([0xC4, size])
    if size < 1 << 16:
        return b"\xc5" + size.to_bytes(2, "big")
    return b"\xc6" + size.to_bytes(4, "big")


def _write_signed(stream: IO[bytes], kind: RecordKind, encoded: bytes, signature: bytes) -> None:
    """Write a signed record: msgpack ``[body, signature]``, framed piece by piece.

    The body of a large manifest is the biggest thing a bundle holds in memory; writing the
    framing around it (rather than encoding the pair) avoids another copy of it.
    """
    parts = (b"\x92", _bin_header(len(encoded)), encoded, _bin_header(len(signature)), signature)
    stream.write((sum(map(len, parts)) + 1).to_bytes(_HEADER, "big") + bytes([kind.value]))
    for part in parts:
        stream.write(part)


def _signed_size(encoded: bytes, signature: bytes) -> int:
    return 1 + len(_bin_header(len(encoded))) + len(encoded) + 2 + len(signature)


def _split_signed(data: bytes) -> tuple[memoryview, bytes]:
    """Split a signed record into a view of its body and its signature (no copy of the body)."""
    view = memoryview(data)
    if not view or view[0] != 0x92:
        raise _fail("a signed record is [body, signature]", "malformed", record=0)
    parts: list[memoryview] = []
    at = 1
    for _ in range(2):
        sizes = {0xC4: 1, 0xC5: 2, 0xC6: 4}
        width = sizes.get(view[at]) if at < len(view) else None
        if width is None or at + 1 + width > len(view):
            raise _fail("a signed record is [body, signature]", "malformed", record=0)
        size = int.from_bytes(view[at + 1 : at + 1 + width], "big")
        start = at + 1 + width
        if start + size > len(view):
            raise _fail("a signed record is cut short", "malformed", record=0)
        parts.append(view[start : start + size])
        at = start + size
    if at != len(view):
        raise _fail("trailing bytes after the signature", "malformed", record=0)
    return parts[0], bytes(parts[1])


def _str(value: object, what: str) -> str:
    if type(value) is not str:
        raise _fail(f"{what} must be a string", "malformed", record=0)
    return value


def _bytes(value: object, what: str) -> bytes:
    if type(value) is not bytes:
        raise _fail(f"{what} must be bytes", "malformed", record=0)
    return value


def _int(value: object, what: str) -> int:
    if type(value) is not int or value < 0:
        raise _fail(f"{what} must be a non-negative integer", "malformed", record=0)
    return value


def _list(value: object, what: str) -> list[Any]:
    if type(value) is not list:
        raise _fail(f"{what} must be a list", "malformed", record=0)
    return value


def _frontier_rows(value: object) -> tuple[tuple[str, str, int], ...]:
    rows = []
    for row in _list(value, "frontiers"):
        if type(row) is not list or len(row) != 3:
            raise _fail("a frontier row is [scope, chain, seq]", "malformed", record=0)
        rows.append((_str(row[0], "scope"), _str(row[1], "chain"), _int(row[2], "seq")))
    return tuple(rows)


def _open_signed(
    replica: Replica, data: bytes, *, domain: bytes, keys: frozenset[str], max_record: int
) -> tuple[dict[str, Any], bytes, Grant]:
    """Verify a signed body, then decode it: fleet, chain, signature, signer's name, body.

    Only the fields naming the signer are decoded before the signature is checked (the rest
    is skipped unbuilt); the body as a whole is decoded and trusted only once it is known to
    come, unchanged, from the plane it names as its source.

    Returns:
        ``(body map, id, the signer's verified grant)``.
    """
    encoded, signature = _split_signed(data)
    limits = _limits(max_record)
    try:
        signer = decode_fields(encoded, _SIGNER_KEYS, limits)
    except DecodeError as exc:
        raise _fail(f"signed record does not decode: {exc}", "malformed", record=0) from exc
    if set(signer) != _SIGNER_KEYS:
        raise _fail(f"the body must name its signer {sorted(_SIGNER_KEYS)}", "malformed", record=0)
    if signer["v"] != FORMAT_VERSION or type(signer["v"]) is not int:
        raise _fail(f"format version {signer['v']!r} is not supported", "malformed", record=0)
    fleet = _str(signer["fleet"], "fleet")
    if fleet != replica.fleet_id:
        raise _fail(f"written for fleet {fleet!r}, not {replica.fleet_id!r}", "foreign-fleet")
    try:
        links = _list(signer["source_chain"], "source chain")
        chain = [Delegation.decode(_bytes(item, "chain link")) for item in links]
        now = max(replica.clock.last, Timestamp(replica.clock.physical()))
        grant = verify_chain(replica.anchors, chain, at=now)
    except ForeignFleetError as exc:
        raise _fail(f"the signer's chain is another fleet's: {exc}", "foreign-fleet") from exc
    except (AuthorityError, DecodeError, TypeError) as exc:
        raise _fail(
            f"the signer does not chain to the fleet's anchors: {exc}", "untrusted"
        ) from exc
    key_id = _str(signer["source_key"], "source key")
    if grant.subject_key_id != key_id:
        raise _fail("the signer's key is not its chain's subject", "untrusted")
    if replica.authority.is_revoked(key_id, grant):
        raise _fail(f"the signer {key_id} is revoked", "revoked")
    try:
        grant.subject.verify(signature, domain + encoded)
    except SouverixError as exc:
        raise _fail("the signature does not verify", "signature", record=0) from exc
    # A valid signature proves who signed, not who the body says it is from: any fleet key
    # can sign a body naming another plane. The name must be the signer's own, from its chain.
    source = _str(signer["source"], "source")
    if source != grant.plane:
        raise _fail(
            f"the body names {source!r} as its source but is signed by {grant.plane!r}",
            "wrong-source",
        )
    try:
        body = decode(encoded, limits)
    except DecodeError as exc:
        raise _fail(f"signed record does not decode: {exc}", "malformed", record=0) from exc
    if type(body) is not dict or set(body) != keys:
        raise _fail(f"the body must have exactly the fields {sorted(keys)}", "malformed", record=0)
    return body, hashlib.sha256(encoded).digest(), grant


def _identity_fields(replica: Replica) -> dict[str, Any]:
    return {
        "v": FORMAT_VERSION,
        "fleet": replica.fleet_id,
        # The plane name from our own chain: the only one an importer accepts as the source.
        "source": replica.identity.plane,
        "source_key": replica.identity.key_id,
        "source_chain": [d.encode() for d in replica.identity.chain],
    }


def _parse_manifest(replica: Replica, data: bytes, max_record: int) -> Manifest:
    body, bundle_id, grant = _open_signed(
        replica, data, domain=BUNDLE_DOMAIN, keys=_MANIFEST_KEYS, max_record=max_record
    )
    table_digest = _bytes(body["table"], "table")
    if len(table_digest) != _DIGEST:
        raise _fail("table must be a SHA-256", "malformed", record=0)
    ranges = []
    for row in _list(body["ranges"], "ranges"):
        if type(row) is not list or len(row) != 4:
            raise _fail("a range is [scope, chain, from, to]", "malformed", record=0)
        scope, chain = _str(row[0], "scope"), _str(row[1], "chain")
        low, high = _int(row[2], "from"), _int(row[3], "to")
        if low >= high:
            raise _fail(f"empty range for {scope} {chain}", "malformed", record=0)
        ranges.append(ChainRange(scope, chain, low, high))
    previous = _bytes(body["previous"], "previous")
    if previous and len(previous) != _DIGEST:
        raise _fail("previous must be a bundle id", "malformed", record=0)
    if type(body["complete"]) is not bool:
        raise _fail("complete must be a boolean", "malformed", record=0)
    try:
        peer_scope = Scope.parse(_str(body["peer_scope"], "peer scope"))
        hlc = Timestamp.from_list(body["hlc"])
    except (SouverixError, ValueError, TypeError) as exc:
        raise _fail(f"manifest field does not parse: {exc}", "malformed", record=0) from exc
    return Manifest(
        bundle_id=bundle_id,
        fleet_id=replica.fleet_id,
        source=grant.plane,
        source_key_id=grant.subject_key_id,
        source_scope=grant.scope,
        peer=_str(body["peer"], "peer"),
        peer_scope=peer_scope,
        ranges=tuple(ranges),
        frontiers=_frontier_rows(body["frontiers"]),
        records=_int(body["records"], "records"),
        table=table_digest,  # replaced by the table itself once it is read and checked
        previous=previous,
        complete=body["complete"],
        created_ms=_int(body["created"], "created"),
        hlc=hlc,
    )


# --------------------------------------------------------------------------- exporting


def _meta_str(replica: Replica, key: str) -> str | None:
    raw = replica.store.meta(key)
    return None if raw is None else raw.decode()


def _rows(rows: Rows) -> dict[tuple[str, str], int]:
    have: dict[tuple[str, str], int] = {}
    for row in rows:
        if isinstance(row, FrontierRow):
            key, seq = (row.scope, row.writer), row.seq
        else:
            key, seq = (row[0], row[1]), row[2]
        have[key] = max(seq, have.get(key, 0))
    return have


def _resolve_peer(
    replica: Replica,
    peer: str,
    peer_frontiers: Rows | BundleReceipt | None,
    peer_scope: Scope | str | None,
) -> tuple[Scope, dict[tuple[str, str], int]]:
    if isinstance(peer_frontiers, BundleReceipt):
        if peer_frontiers.source != peer:
            raise _fail(
                f"the receipt comes from {peer_frontiers.source!r}, not {peer!r}", "wrong-peer"
            )
        have = _rows(peer_frontiers.frontiers)
        if peer_scope is None:
            peer_scope = peer_frontiers.source_scope
    elif peer_frontiers is None:
        have = replica.store.peer_frontiers(peer)
    else:
        have = _rows(peer_frontiers)
    if peer_scope is None:
        peer_scope = _meta_str(replica, _META_PEER_SCOPE + peer)
    if peer_scope is None:
        raise ValueError(
            f"the scope of {peer!r} is not known: pass peer_scope, or a receipt from it"
        )
    return Scope.parse(peer_scope), have


class _BodyWriter:
    """Writes item records to the spooled body and keeps their kinds and hashes."""

    def __init__(self, stream: IO[bytes], max_record: int) -> None:
        self.stream = stream
        self.max_record = max_record
        self.kinds = bytearray()
        self.hashes = bytearray()
        self.counts: dict[RecordKind, int] = dict.fromkeys(RecordKind, 0)

    def write(self, kind: RecordKind, data: bytes) -> None:
        length = len(data) + 1
        if length > self.max_record:
            raise _fail(
                f"a {kind.name.lower()} of {len(data)} bytes exceeds the limit", "too-large"
            )
        self.stream.write(length.to_bytes(_HEADER, "big") + bytes([kind.value]))
        self.stream.write(data)
        self.kinds.append(kind.value)
        self.hashes += hashlib.sha256(data).digest()
        self.counts[kind] += 1

    def table_digest(self) -> bytes:
        """The SHA-256 of the table (kinds, then hashes)."""
        digest = hashlib.sha256(self.kinds)
        digest.update(self.hashes)
        return digest.digest()

    def write_table(self, stream: IO[bytes]) -> None:
        """Write the table record straight from the writer's buffers (no copy of them)."""
        length = len(self.kinds) + len(self.hashes) + 1
        if length > self.max_record:
            raise _fail("the record table exceeds the record limit", "too-large", record=1)
        stream.write(length.to_bytes(_HEADER, "big") + bytes([RecordKind.TABLE.value]))
        stream.write(self.kinds)
        stream.write(self.hashes)


def _write_chains(
    replica: Replica,
    writer: _BodyWriter,
    peer_scope: Scope,
    have: dict[tuple[str, str], int],
    limit: int | None,
) -> tuple[list[ChainRange], bool]:
    """Write what the peer lacks of every chain in its interest; returns (ranges, complete)."""
    budget = limit
    ranges: list[ChainRange] = []
    complete = True
    for scope, chain, seq, _ in replica.frontiers([peer_scope]):
        start = at = have.get((scope, chain), 0)
        while at < seq and (budget is None or budget > 0):
            page = _PAGE if budget is None else min(_PAGE, budget)
            checkpoint, batch = replica.catch_up(scope, chain, at, page)
            if checkpoint is not None:
                # The log the peer needs was compacted: the writer's snapshot replaces it.
                writer.write(RecordKind.CHECKPOINT, checkpoint)
                at = read_header(checkpoint).seq
                sent = 1
            elif batch:
                for data in batch:
                    writer.write(RecordKind.ENVELOPE, data)
                at = read_header(batch[-1]).seq
                sent = len(batch)
            else:
                break
            if budget is not None:
                budget -= sent
        if at > start:
            ranges.append(ChainRange(scope, chain, start, at))
        complete = complete and at >= seq
    return ranges, complete


def _fsync_directory(directory: Path) -> None:
    # A rename is durable only once the directory entry is; not every platform can open one.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomically(path: Path, write: Callable[[IO[bytes]], None]) -> int:
    """Write a file through a temporary sibling, fsync it, rename it into place."""
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        with open(temporary, "wb") as stream:
            write(stream)
            stream.flush()
            os.fsync(stream.fileno())
            size = stream.tell()
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    _fsync_directory(path.parent)
    return size


def export_bundle(
    replica: Replica,
    path: str | os.PathLike[str],
    *,
    peer: str,
    peer_frontiers: Rows | BundleReceipt | None = None,
    peer_scope: Scope | str | None = None,
    limit: int | None = None,
    max_record: int = DEFAULT_MAX_RECORD,
) -> BundleInfo:
    """Write a signed bundle of what ``peer`` lacks, for its scope's interest.

    The file appears whole or not at all (written aside, fsynced, renamed). Memory stays
    bounded: envelopes are read from the store a page at a time and spooled to a temporary
    file while they are hashed; the manifest (32 bytes per record) is written in front of them
    at the end.

    Args:
        replica: The exporting replica.
        path: Where to write the bundle.
        peer: The plane the bundle is for: its plane name, as its signed delegation gives it
            (the importer refuses a bundle addressed to any other).
        peer_frontiers: How far the peer holds each chain: rows ``(scope, chain, seq)``, a
            verified :class:`BundleReceipt` from the peer, or ``None`` for what this replica's
            store recorded from earlier receipts and sessions.
        peer_scope: The peer's home scope; by default from the receipt, or as remembered from
            an earlier export or receipt.
        limit: Most envelopes and checkpoints to carry; the rest go in a later bundle.
        max_record: Largest record written.

    Returns:
        What was written.

    Raises:
        ValueError: the peer's scope is not known, ``limit`` is not positive, or ``peer`` is
            this replica.
        BundleError: the receipt comes from another replica (``wrong-peer``), or an item is
            larger than ``max_record`` (``too-large``).
        OSError: the file could not be written (nothing was left behind).
        StoreError: the bundle was written but its id could not be remembered.
    """
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit!r}")
    if peer in (replica.name, replica.identity.plane):
        raise ValueError("a replica does not write bundles for itself")
    target = Path(path)
    scope, have = _resolve_peer(replica, peer, peer_frontiers, peer_scope)
    # From now on every new envelope in the peer's interest is queued for it: its sync debt.
    replica.register_peer(peer, [scope])
    previous = replica.store.meta(_META_EXPORTED + peer) or b""
    spool = target.with_name(f".{target.name}.{secrets.token_hex(4)}.body")
    try:
        with open(spool, "w+b") as body_stream:
            writer = _BodyWriter(body_stream, max_record)
            for data in replica.delegations():
                writer.write(RecordKind.DELEGATION, data)
            for data in replica.revocations():
                writer.write(RecordKind.REVOCATION, data)
            for first, second in replica.proofs():
                writer.write(RecordKind.PROOF, encode([first, second]))
            ranges, complete = _write_chains(replica, writer, scope, have, limit)
            created = replica.clock.physical()
            body = {
                **_identity_fields(replica),
                "peer": peer,
                "peer_scope": str(scope),
                "ranges": [[r.scope, r.chain, r.from_seq, r.to_seq] for r in ranges],
                "frontiers": [[s, c, q] for s, c, q, _ in replica.frontiers()],
                "records": len(writer.kinds),
                "table": writer.table_digest(),
                "previous": previous,
                "complete": complete,
                "created": created,
                "hlc": replica.clock.last.to_list(),
            }
            encoded, signature, bundle_id = _sign(replica, BUNDLE_DOMAIN, body)
            if _signed_size(encoded, signature) + 1 > max_record:
                raise _fail("the manifest exceeds the record limit", "too-large", record=0)

            def write(stream: IO[bytes]) -> None:
                stream.write(BUNDLE_MAGIC)
                _write_signed(stream, RecordKind.MANIFEST, encoded, signature)
                writer.write_table(stream)
                body_stream.seek(0)
                shutil.copyfileobj(body_stream, stream, _COPY_CHUNK)

            size = _write_atomically(target, write)
    finally:
        spool.unlink(missing_ok=True)
    replica.store.commit(
        Batch(
            meta={
                _META_EXPORTED + peer: bundle_id,
                _META_PEER_SCOPE + peer: str(scope).encode(),
            }
        )
    )
    counts = writer.counts
    return BundleInfo(
        path=target,
        bundle_id=bundle_id,
        peer=peer,
        peer_scope=scope,
        previous=previous,
        ranges=tuple(ranges),
        envelopes=counts[RecordKind.ENVELOPE],
        checkpoints=counts[RecordKind.CHECKPOINT],
        delegations=counts[RecordKind.DELEGATION],
        revocations=counts[RecordKind.REVOCATION],
        proofs=counts[RecordKind.PROOF],
        size=size,
        complete=complete,
        created_ms=created,
    )


# --------------------------------------------------------------------------- importing


def _read_manifest(replica: Replica, reader: _Reader, max_record: int) -> tuple[Manifest, bytes]:
    reader.magic(BUNDLE_MAGIC)
    first = reader.next()
    if first is None:
        raise _fail("the bundle ends before its manifest", "truncated", record=0)
    if first.kind is not RecordKind.MANIFEST:
        raise _fail("a bundle starts with its manifest", "malformed", record=0)
    manifest = _parse_manifest(replica, first.data, max_record)
    plane = replica.identity.plane
    if manifest.peer != plane:
        raise _fail(f"the bundle is addressed to {manifest.peer!r}, not {plane!r}", "wrong-peer")
    # Identifies the manifest and its table together, for the second pass to compare.
    identity = hashlib.sha256(first.data)
    del first
    table = reader.next()
    if table is None:
        raise _fail("the bundle ends before its record table", "truncated", record=1)
    if table.kind is not RecordKind.TABLE:
        raise _fail("the manifest is followed by its record table", "malformed", record=1)
    if (
        len(table.data) != (1 + _DIGEST) * manifest.records
        or hashlib.sha256(table.data).digest() != manifest.table
    ):
        raise _fail("the record table is not the one the manifest signs", "hash-mismatch", record=1)
    if not set(memoryview(table.data)[: manifest.records]) <= _ITEM_KINDS:
        raise _fail("the record table lists an unknown kind", "malformed", record=1)
    identity.update(table.data)
    return attrs.evolve(manifest, table=table.data), identity.digest()


def _check_record(manifest: Manifest, record: Record) -> None:
    position = record.index - _FIRST_ITEM
    if position >= manifest.records:
        raise _fail(
            f"record {record.index} is beyond the {manifest.records} the manifest lists",
            "extra-records",
            record=record.index,
            offset=record.offset,
        )
    if record.kind.value != manifest.kind(position):
        raise _fail(
            f"record {record.index} is a {record.kind.name.lower()}, not what the manifest lists",
            "kind-mismatch",
            record=record.index,
            offset=record.offset,
        )
    if hashlib.sha256(record.data).digest() != manifest.digest(position):
        raise _fail(
            f"record {record.index} does not match its hash in the manifest",
            "hash-mismatch",
            record=record.index,
            offset=record.offset,
        )


def _verify_records(manifest: Manifest, reader: _Reader) -> None:
    # Per chain: (from, to, last seq seen); envelopes must stay inside what the signed
    # manifest declares, each chain in increasing order.
    ranges = {(r.scope, r.chain): [r.from_seq, r.to_seq, r.from_seq] for r in manifest.ranges}
    for record in reader:
        _check_record(manifest, record)
        if record.kind not in (RecordKind.ENVELOPE, RecordKind.CHECKPOINT):
            continue
        try:
            header = read_header(record.data)
        except SouverixError as exc:
            raise _fail(
                f"record {record.index} is not an envelope: {exc}",
                "malformed",
                record=record.index,
                offset=record.offset,
            ) from exc
        bounds = ranges.get((str(header.scope), header.chain))
        if (
            header.fleet_id != manifest.fleet_id
            or bounds is None
            or not bounds[2] < header.seq <= bounds[1]
        ):
            raise _fail(
                f"record {record.index} lies outside the chain ranges of the manifest",
                "range",
                record=record.index,
                offset=record.offset,
            )
        bounds[2] = header.seq
    held = reader.index - _FIRST_ITEM
    if held != manifest.records:
        raise _fail(
            f"the manifest lists {manifest.records} records, the file holds {held}",
            "missing-records",
            record=reader.index,
            offset=reader.offset,
        )


def read_manifest(replica: Replica, source: Source, *, max_record: int | None = None) -> Manifest:
    """Verify a bundle's manifest and its record table (the records themselves are not read).

    Raises:
        BundleError: the manifest does not verify for this replica.
    """
    with _opened(source) as stream:
        records, first = _record_budgets(replica, max_record)
        return _read_manifest(replica, _Reader(stream, records, max_first=first), first)[0]


def verify_bundle(replica: Replica, source: Source, *, max_record: int | None = None) -> Manifest:
    """Verify a whole bundle for this replica without applying anything (import's first pass).

    Raises:
        BundleError: the bundle does not verify; ``reason`` says why.
    """
    with _opened(source) as stream:
        records, first = _record_budgets(replica, max_record)
        reader = _Reader(stream, records, max_first=first)
        manifest, _ = _read_manifest(replica, reader, first)
        _verify_records(manifest, reader)
        return manifest


@attrs.define
class _Tally:
    applied: int = 0
    duplicates: int = 0
    pending: int = 0
    rejected: int = 0
    delegations: int = 0
    revocations: int = 0
    proofs: int = 0

    def count(self, outcome: IngestOutcome) -> None:
        if outcome is IngestOutcome.APPLIED:
            self.applied += 1
        elif outcome is IngestOutcome.DUPLICATE:
            self.duplicates += 1
        elif outcome is IngestOutcome.PENDING:
            self.pending += 1
        else:
            self.rejected += 1


def _apply_group(
    replica: Replica, kind: RecordKind, items: Sequence[bytes], source: str, tally: _Tally
) -> None:
    if kind is RecordKind.DELEGATION:
        tally.delegations += replica.add_delegations(items)
    elif kind is RecordKind.REVOCATION:
        tally.revocations += replica.add_revocations(items)
    elif kind is RecordKind.PROOF:
        for item in items:
            try:
                first, second = decode(item)
                tally.proofs += replica.add_proof(first, second)
            except (SouverixError, TypeError, ValueError):
                continue  # a proof that does not prove anything is simply not one
    elif kind is RecordKind.CHECKPOINT:
        for item in items:
            tally.count(replica.ingest_checkpoint(item, source=source).outcome)
    else:
        for result in replica.ingest_many(items, source=source):
            tally.count(result.outcome)


def _apply_records(
    replica: Replica, manifest: Manifest, reader: _Reader, batch_size: int
) -> _Tally:
    tally = _Tally()
    group: list[bytes] = []
    group_kind: RecordKind | None = None
    for record in reader:
        try:
            _check_record(manifest, record)
        except BundleError as exc:
            raise _fail(
                f"the bundle changed while it was imported: {exc}",
                "changed",
                record=record.index,
                offset=record.offset,
            ) from exc
        if group and (record.kind is not group_kind or len(group) >= batch_size):
            assert group_kind is not None
            _apply_group(replica, group_kind, group, manifest.source, tally)
            group = []
        group_kind = record.kind
        group.append(record.data)
    if group:
        assert group_kind is not None
        _apply_group(replica, group_kind, group, manifest.source, tally)
    return tally


def import_bundle(
    replica: Replica,
    source: Source,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    max_record: int | None = None,
) -> ImportResult:
    """Verify a whole bundle, then apply it; nothing is applied unless all of it verifies.

    Args:
        replica: The importing replica (the bundle must be addressed to its name).
        source: A path, or a seekable binary stream (it is read twice).
        batch_size: Envelopes per ingest call.
        max_record: Largest record accepted; checked before allocating it.

    Returns:
        What was applied. Importing the same bundle again applies nothing.

    Raises:
        BundleError: the bundle does not verify (nothing was applied), or it changed between
            the two passes (``changed``: what was applied before the change verified).
        StoreError: the store failed; the batches committed before it stay, re-import to
            complete.
        OSError: the file cannot be read.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size!r}")
    records, first = _record_budgets(replica, max_record)
    with _opened(source) as stream:
        start = stream.tell()
        reader = _Reader(stream, records, max_first=first)
        manifest, manifest_hash = _read_manifest(replica, reader, first)
        _verify_records(manifest, reader)

        stream.seek(start)
        reader = _Reader(stream, records, max_first=first)
        reader.magic(BUNDLE_MAGIC)
        identity = hashlib.sha256()
        for _ in range(_FIRST_ITEM):
            again = reader.next()
            identity.update(b"" if again is None else again.data)
        if identity.digest() != manifest_hash:
            raise _fail("the bundle changed while it was imported", "changed", record=0)
        # The exporter becomes a peer: what we make from now on and it lacks is our debt to it,
        # and what it says it holds (its frontiers in the manifest) settles that debt.
        replica.register_peer(manifest.source, [manifest.source_scope])
        tally = _apply_records(replica, manifest, reader, batch_size)
    replica.acknowledge(manifest.source, manifest.frontiers)
    chained = _remember_import(replica, manifest)
    return ImportResult(
        bundle_id=manifest.bundle_id,
        source=manifest.source,
        source_scope=manifest.source_scope,
        records=manifest.records,
        envelopes=manifest.count(RecordKind.ENVELOPE),
        checkpoints=manifest.count(RecordKind.CHECKPOINT),
        applied=tally.applied,
        duplicates=tally.duplicates,
        pending=tally.pending,
        rejected=tally.rejected,
        delegations_added=tally.delegations,
        revocations_added=tally.revocations,
        proofs_added=tally.proofs,
        chained=chained,
        created_ms=manifest.created_ms,
    )


def _last_import(replica: Replica, source: str) -> tuple[tuple[int, int, int], bytes]:
    """When the last bundle imported from ``source`` was made (wall, HLC), and its id."""
    raw = replica.store.meta(_META_IMPORTED + source)
    if raw is None:
        return (0, 0, 0), b""
    created, wall, logical, bundle_id = decode(raw)
    return (created, wall, logical), bundle_id


def _remember_import(replica: Replica, manifest: Manifest) -> bool:
    made, last = _last_import(replica, manifest.source)
    chained = last in (manifest.previous, manifest.bundle_id)
    # Only a newer bundle moves the mark: re-importing an old one must not rewind it. The
    # exporter's HLC orders its bundles even when its wall clock stood still.
    when = (manifest.created_ms, manifest.hlc.wall, manifest.hlc.logical)
    if when > made or not last:
        replica.store.commit(
            Batch(meta={_META_IMPORTED + manifest.source: encode([*when, manifest.bundle_id])})
        )
    return chained


# --------------------------------------------------------------------------- receipts


def export_receipt(
    replica: Replica,
    path: str | os.PathLike[str],
    *,
    for_peer: str,
    max_record: int = DEFAULT_MAX_RECORD,
) -> BundleReceipt:
    """Write a signed receipt of this replica's frontiers for the exporter ``for_peer``.

    Returns:
        The receipt as written.

    Raises:
        OSError: the file could not be written (nothing was left behind).
    """
    _, last = _last_import(replica, for_peer)
    created = replica.clock.physical()
    frontiers = tuple((s, c, q) for s, c, q, _ in replica.frontiers())
    body = {
        **_identity_fields(replica),
        "for": for_peer,
        "frontiers": [list(row) for row in frontiers],
        "bundle": last,
        "created": created,
    }
    encoded, signature, receipt_id = _sign(replica, RECEIPT_DOMAIN, body)
    if _signed_size(encoded, signature) + 1 > max_record:
        raise _fail("the receipt exceeds the record limit", "too-large", record=0)

    def write(stream: IO[bytes]) -> None:
        stream.write(RECEIPT_MAGIC)
        _write_signed(stream, RecordKind.RECEIPT, encoded, signature)

    _write_atomically(Path(path), write)
    return BundleReceipt(
        receipt_id=receipt_id,
        fleet_id=replica.fleet_id,
        source=replica.identity.plane,
        source_key_id=replica.identity.key_id,
        source_scope=replica.identity.scope,
        for_peer=for_peer,
        frontiers=frontiers,
        last_bundle=last,
        created_ms=created,
    )


def read_receipt(
    replica: Replica, source: Source, *, max_record: int | None = None
) -> BundleReceipt:
    """Verify a receipt addressed to this replica; nothing is changed.

    Raises:
        BundleError: the receipt does not verify, names a source other than its signer's plane
            (``wrong-source``), or is addressed to another plane (``wrong-peer``).
    """
    records, first = _record_budgets(replica, max_record)
    with _opened(source) as stream:
        reader = _Reader(stream, records, max_first=first)
        reader.magic(RECEIPT_MAGIC)
        record = reader.next()
        if record is None:
            raise _fail("the receipt ends before its record", "truncated", record=0)
        if record.kind is not RecordKind.RECEIPT:
            raise _fail("a receipt holds one receipt record", "malformed", record=0)
        if reader.next() is not None:
            raise _fail("a receipt holds one record", "extra-records", record=1)
    body, receipt_id, grant = _open_signed(
        replica, record.data, domain=RECEIPT_DOMAIN, keys=_RECEIPT_KEYS, max_record=first
    )
    for_peer = _str(body["for"], "for")
    plane = replica.identity.plane
    if for_peer != plane:
        raise _fail(f"the receipt is addressed to {for_peer!r}, not {plane!r}", "wrong-peer")
    last = _bytes(body["bundle"], "bundle")
    if last and len(last) != _DIGEST:
        raise _fail("bundle must be a bundle id", "malformed", record=0)
    return BundleReceipt(
        receipt_id=receipt_id,
        fleet_id=replica.fleet_id,
        source=grant.plane,
        source_key_id=grant.subject_key_id,
        source_scope=grant.scope,
        for_peer=for_peer,
        frontiers=_frontier_rows(body["frontiers"]),
        last_bundle=last,
        created_ms=_int(body["created"], "created"),
    )


def import_receipt(
    replica: Replica, source: Source, *, max_record: int | None = None
) -> BundleReceipt:
    """Verify a receipt and settle the sync debt towards its signer, and no one else.

    The signer's frontiers are acknowledged for the signer's verified plane (its outbox entries
    up to them are dropped and the store records them for the next :func:`export_bundle`), and
    its verified scope is remembered. Only rows for chains this replica holds, in the signer's
    interest, count, clamped to what this replica holds
    (:meth:`~souverix_crdt.replica.Replica.acknowledge`).

    Returns:
        The verified receipt (also usable as ``peer_frontiers`` of :func:`export_bundle`).

    Raises:
        BundleError: the receipt does not verify, names a source other than its signer's plane
            (``wrong-source``), or is addressed to another plane (``wrong-peer``); nothing was
            settled.
        StoreError: the acknowledgement could not be committed.
    """
    receipt = read_receipt(replica, source, max_record=max_record)
    replica.register_peer(receipt.source, [receipt.source_scope])
    replica.acknowledge(receipt.source, receipt.frontiers)
    key = _META_PEER_SCOPE + receipt.source
    if _meta_str(replica, key) != str(receipt.source_scope):
        replica.store.commit(Batch(meta={key: str(receipt.source_scope).encode()}))
    return receipt


# --------------------------------------------------------------------------- spool transport

_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}", re.ASCII)
_CLOSED_MARKER: Final = "closed"
#: Seconds between looks at the spool while waiting, for a peer in another process (a peer in
#: this process wakes the receiver at once).
DEFAULT_POLL_INTERVAL: Final = 0.05

# Receivers waiting in this process, by the directory they read: a sender wakes them at once.
_WAITING: dict[str, weakref.WeakSet[FileBundleTransport]] = {}


def _notify(directory: Path) -> None:
    for transport in list(_WAITING.get(str(directory), ())):
        transport._arrived.set()


class FileBundleTransport(Transport):
    """A :class:`~.base.Transport` whose frames are files in a spool directory.

    Each side writes into its own subdirectory of ``spool`` (named after it) and reads the
    peer's. A frame is one file ``<index>.frame`` holding a 4-byte length and the frame,
    written atomically (temporary file, fsync, rename, directory fsync), so a reader never sees
    half a frame. ``receive`` reads the next index in order and deletes it. ``close`` writes a
    ``closed`` marker holding the number of frames sent, so the peer reads every frame before it
    sees the end (``TransportBrokenError``) and its sends fail from then on.

    One spool serves one connection: both ends must be opened on a fresh directory (see
    :meth:`pair`). A receiver in the same process is woken as soon as a frame lands; one in
    another process looks every ``poll_interval`` seconds. Ordered and reliable. Like the other
    transports, an end belongs to one event loop; it is not thread-safe.

    Args:
        spool: The connection's directory (created if missing).
        local: This side's name (a file-name-safe token).
        peer: The other side's name.
        max_frame: Frames larger than this are refused, at send and at receive (before the body
            is read).
        fsync: Make every frame durable before ``send`` returns (the default); off, a crash may
            lose the last frames, never corrupt one.
        poll_interval: Seconds between looks for a peer in another process.
    """

    def __init__(
        self,
        spool: str | os.PathLike[str],
        *,
        local: str,
        peer: str,
        max_frame: int = DEFAULT_MAX_FRAME,
        fsync: bool = True,
        poll_interval: float = DEFAULT_POLL_INTERVAL,
    ) -> None:
        for name in (local, peer):
            if not _NAME.fullmatch(name):
                raise ValueError(f"{name!r} is not a file-name-safe token")
        if local == peer:
            raise ValueError("the two ends need different names")
        if not 0 < max_frame < 2 ** (8 * _HEADER):
            raise ValueError(f"max_frame must fit a {_HEADER}-byte length, got {max_frame}")
        if not poll_interval > 0:
            raise ValueError(f"poll_interval must be > 0, got {poll_interval!r}")
        # Resolved, so that both ends name the directories alike and wake each other.
        self.spool = Path(spool).resolve()
        self.local = local
        self.peer = peer
        self.max_frame = max_frame
        self.fsync = fsync
        self.poll_interval = poll_interval
        self.outgoing = self.spool / local
        self.incoming = self.spool / peer
        self.outgoing.mkdir(parents=True, exist_ok=True)
        self.incoming.mkdir(parents=True, exist_ok=True)
        if any(self.outgoing.iterdir()):
            raise ValueError(f"{self.outgoing} was used by an earlier connection")
        self._sent = 0
        self._received = 0
        self._closed = False
        self._broken: str | None = None
        self._arrived = asyncio.Event()

    @classmethod
    def pair(
        cls, spool: str | os.PathLike[str], a: str = "a", b: str = "b", **options: Any
    ) -> tuple[FileBundleTransport, FileBundleTransport]:
        """Two connected ends over a fresh spool (tests, or two tasks of one process)."""
        return cls(spool, local=a, peer=b, **options), cls(spool, local=b, peer=a, **options)

    def __repr__(self) -> str:
        return f"<FileBundleTransport {self.local}->{self.peer} at {self.spool}>"

    @property
    def closed(self) -> bool:
        """True once this side closed or the peer's end was seen."""
        return self._closed or self._broken is not None

    def _peer_closed_at(self) -> int | None:
        try:
            return int((self.incoming / _CLOSED_MARKER).read_text("ascii"))
        except FileNotFoundError:
            return None
        except ValueError:
            return 0  # a marker cut short by a crash still says the peer is gone

    def _check_open(self) -> None:
        if self._closed:
            raise TransportClosedError(f"{self!r} is closed", reason="closed")
        if self._broken is not None:
            raise TransportBrokenError(f"{self!r}: {self._broken}", reason=self._broken)

    def _write(self, name: str, data: bytes) -> None:
        temporary = self.outgoing / f".{name}.tmp"
        with open(temporary, "wb") as stream:
            stream.write(data)
            if self.fsync:
                stream.flush()
                os.fsync(stream.fileno())
        os.replace(temporary, self.outgoing / name)
        if self.fsync:
            _fsync_directory(self.outgoing)
        _notify(self.outgoing)

    async def send(self, frame: bytes) -> None:
        """Write one frame file.

        Raises:
            TransportClosedError: this side closed.
            TransportBrokenError: the peer closed its end.
            FrameTooLargeError: the frame exceeds ``max_frame``.
        """
        self._check_open()
        if self._peer_closed_at() is not None:
            self._broken = "peer-closed"
            self._check_open()
        if len(frame) > self.max_frame:
            raise FrameTooLargeError(size=len(frame), limit=self.max_frame)
        self._write(f"{self._sent:012d}.frame", len(frame).to_bytes(_HEADER, "big") + frame)
        self._sent += 1

    def _take(self) -> bytes | None:
        """The next frame if its file is there (read and deleted); no await inside."""
        path = self.incoming / f"{self._received:012d}.frame"
        try:
            stream = open(path, "rb")  # noqa: SIM115 - closed below, before unlink
        except FileNotFoundError:
            return None
        with stream:
            header = stream.read(_HEADER)
            size = int.from_bytes(header, "big")
            oversized = len(header) == _HEADER and size > self.max_frame
            body = b"" if oversized else stream.read(size + 1)
        path.unlink()
        self._received += 1
        if oversized:
            # Refused before its body is read; the frame is dropped and the spool stays usable.
            raise FrameTooLargeError(size=size, limit=self.max_frame)
        if len(header) != _HEADER or len(body) != size:
            self._broken = "truncated"
            self._check_open()
        return body

    async def receive(self) -> bytes:
        """Wait for the next frame file, in order.

        Raises:
            TransportClosedError: this side closed (a pending receive wakes up with it).
            TransportBrokenError: the peer closed and every frame it sent was read.
            FrameTooLargeError: the next frame exceeds ``max_frame`` (it is skipped).
        """
        key = str(self.incoming)
        waiting = _WAITING.setdefault(key, weakref.WeakSet())
        waiting.add(self)
        try:
            while True:
                self._check_open()
                self._arrived.clear()
                frame = self._take()
                if frame is not None:
                    return frame
                count = self._peer_closed_at()
                if count is not None and self._received >= count:
                    self._broken = "peer-closed"
                    self._check_open()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.poll_interval):
                        await self._arrived.wait()
        finally:
            waiting.discard(self)
            if not waiting:
                _WAITING.pop(key, None)

    async def close(self) -> None:
        """Write the ``closed`` marker (once) and stop; a pending receive wakes up."""
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(OSError):
            self._write(_CLOSED_MARKER, str(self._sent).encode("ascii"))
        self._arrived.set()
