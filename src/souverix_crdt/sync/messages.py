"""Sync protocol messages: frozen values, and their strict encoding on the wire.

A frame is one msgpack array ``[version, type, body]`` where ``body`` is a map with exactly the
fields of that message type. A session opens with a mutual handshake — :class:`Hello` (identity
and a fresh nonce), then :class:`Proof` (a signature over the transcript) — and only then do
:class:`Frontiers` and everything else flow (see :mod:`souverix_crdt.sync.session`).
Decoding goes through :func:`souverix_crdt.codec.decode` with the
protocol's limits, then a strict schema check; anything else is a
:class:`~souverix_crdt.errors.RemoteProtocolError` naming what was wrong.

Frontiers travel as ``[scope, writer, seq, last envelope id]`` rows: one per (scope, writer)
chain in the peer's interest, so they grow with the number of writers the peer may see, never
with the amount of state or the size of the fleet.
"""

from __future__ import annotations

import contextlib
import enum
import zlib
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final

import attrs
import msgpack

from souverix_crdt.codec import DecodeLimits, decode, decoded_bytes_cost, encode, reject_ext
from souverix_crdt.errors import DecodeError, RemoteProtocolError, TooLargeError
from souverix_crdt.limits import DEFAULT_LIMITS

__all__ = [
    "MESSAGE_LIMITS",
    "PROTOCOL_VERSION",
    "Ack",
    "AuthorityItems",
    "Checkpoint",
    "Close",
    "Envelopes",
    "FrontierRow",
    "Frontiers",
    "Hello",
    "Message",
    "MessageType",
    "Proof",
    "decode_message",
    "encode_message",
]

#: The protocol version this library speaks. Version 2 added the authenticated handshake; a
#: version-1 peer's frames are refused with ``reason="version"`` and the session closes.
PROTOCOL_VERSION: Final = 2
#: Bytes of the random nonce each side sends in its hello.
NONCE_SIZE: Final = 32
#: Bytes of an Ed25519 signature (a proof).
SIGNATURE_SIZE: Final = 64

#: Limits for decoding a frame: one frame is at most ``max_frame`` bytes, and the whole-message
#: budget (``decode_objects``, ``decode_expansion``) holds across all of it; envelopes inside are
#: bounded again by their own limits when they are opened.
MESSAGE_LIMITS: Final = DecodeLimits(
    max_size=DEFAULT_LIMITS.max_frame,
    max_depth=6,
    max_str_len=4096,
    max_bin_len=16 * 1024 * 1024,
    max_array_len=200_000,
    max_map_len=64,
)


class MessageType(enum.Enum):
    """The kinds of message a session exchanges."""

    HELLO = "hello"
    PROOF = "proof"
    FRONTIERS = "frontiers"
    ENVELOPES = "envelopes"
    ACK = "ack"
    AUTHORITY = "authority"
    CHECKPOINT = "checkpoint"
    CLOSE = "close"


@attrs.frozen
class FrontierRow:
    """How far one writer's chain in one scope goes: its last sequence number and envelope id."""

    scope: str
    writer: str
    seq: int
    last: bytes = b""


@attrs.frozen
class Hello:
    """Opens a session: who we claim to be, and a fresh nonce. Nothing else before the proofs.

    The claim is checked, not believed: the peer is whoever the verified ``chain`` names (key,
    scope, plane name), and only once its :class:`Proof` verifies.

    Attributes:
        fleet_id: The fleet; a peer of another fleet is refused.
        chain: The sender's delegation chain, root first (encoded delegations).
        nonce: :data:`NONCE_SIZE` fresh random bytes: the peer's proof must sign them, so a
            recorded handshake cannot be replayed.
    """

    fleet_id: str
    chain: tuple[bytes, ...]
    nonce: bytes


@attrs.frozen
class Proof:
    """Possession of the key the hello's chain names: its signature over the transcript."""

    signature: bytes


@attrs.frozen
class Frontiers:
    """How far the sender holds every chain in the *peer's* interest.

    Sent once both proofs verified, and again after every tick.

    Attributes:
        rows: One row per chain the peer may receive (its subtree and its ancestors): never a
            sibling's writers or sequence numbers.
        authority: Digest of the delegations, revocations and proofs both sides' interests
            share; a peer whose digest differs sends its items in that shared interest.
    """

    rows: tuple[FrontierRow, ...]
    authority: bytes = b""


@attrs.frozen
class Envelopes:
    """A batch of envelopes, each exactly as signed, at most ``batch_size`` of them."""

    items: tuple[bytes, ...]


@attrs.frozen
class Ack:
    """Frontiers after applying what arrived; also re-requests whatever lies beyond them.

    Attributes:
        frontiers: How far the sender now holds each chain the batch touched, with the id of
            its last envelope (two sides at one seq with different ids hold a fork).
        refused: Envelopes of the batch the sender refused for a reason that cannot change
            (``[scope, chain, seq, envelope id]``): the peer never sends them, nor anything
            after them on that chain, again on this session.
        deferred: Envelopes it refused or set aside for now (a full budget, a far-future
            timestamp): the peer offers them again after its next tick, not at once.
    """

    frontiers: tuple[FrontierRow, ...]
    refused: tuple[FrontierRow, ...] = ()
    deferred: tuple[FrontierRow, ...] = ()


@attrs.frozen
class AuthorityItems:
    """Delegations, revocations and equivocation proofs (pairs of envelopes).

    Attributes:
        delegations: Encoded delegations.
        revocations: Encoded revocations.
        proofs: Equivocation proofs: two envelopes of one sequence number.
        digest: The sender's shared authority digest once it sent these (see
            :class:`Frontiers`), so the receiver knows where the sender stands; ``b""`` if
            not given.
    """

    delegations: tuple[bytes, ...] = ()
    revocations: tuple[bytes, ...] = ()
    proofs: tuple[tuple[bytes, bytes], ...] = ()
    digest: bytes = b""


@attrs.frozen
class Checkpoint:
    """A writer's signed snapshot, for a peer that is behind the compacted log."""

    data: bytes


@attrs.frozen
class Close:
    """The sender ends the session, saying why."""

    reason: str


Message = Hello | Proof | Frontiers | Envelopes | Ack | AuthorityItems | Checkpoint | Close


# --------------------------------------------------------------------------- encoding


def _rows(rows: tuple[FrontierRow, ...]) -> list[list[Any]]:
    return [[r.scope, r.writer, r.seq, r.last] for r in rows]


def encode_message(message: Message) -> bytes:
    """Encode a message as one frame."""
    body: dict[str, Any]
    if isinstance(message, Hello):
        kind = MessageType.HELLO
        body = {"fleet": message.fleet_id, "chain": list(message.chain), "nonce": message.nonce}
    elif isinstance(message, Proof):
        kind, body = MessageType.PROOF, {"signature": message.signature}
    elif isinstance(message, Frontiers):
        kind = MessageType.FRONTIERS
        body = {"frontiers": _rows(message.rows), "authority": message.authority}
    elif isinstance(message, Envelopes):
        kind, body = MessageType.ENVELOPES, _envelopes_body(message.items)
    elif isinstance(message, Ack):
        kind = MessageType.ACK
        body = {
            "frontiers": _rows(message.frontiers),
            "refused": _rows(message.refused),
            "deferred": _rows(message.deferred),
        }
    elif isinstance(message, AuthorityItems):
        kind = MessageType.AUTHORITY
        body = {
            "delegations": list(message.delegations),
            "revocations": list(message.revocations),
            "proofs": [list(p) for p in message.proofs],
            "digest": message.digest,
        }
    elif isinstance(message, Checkpoint):
        kind, body = MessageType.CHECKPOINT, {"data": message.data}
    else:
        kind, body = MessageType.CLOSE, {"reason": message.reason}
    return encode([PROTOCOL_VERSION, kind.value, body])


#: Batches smaller than this are sent as they are: compressing them gains nothing.
COMPRESS_ABOVE: Final = 1024
#: Memory the envelopes of any compressed batch may take once inflated, whatever its size.
INFLATE_FREELY: Final = 64 * 1024
#: Bytes inflated at a time: a compressed batch is inflated and decoded piece by piece, so its
#: plain form is never held whole beside the envelopes decoded from it.
INFLATE_CHUNK: Final = 64 * 1024


def inflation_budget(compressed: int, expansion: int = DEFAULT_LIMITS.decode_expansion) -> int:
    """Memory the envelopes of a compressed batch of ``compressed`` bytes may take, decoded.

    The whole-message budget of the frame that carries it (``decode_expansion`` times its
    size), or :data:`INFLATE_FREELY`, whichever is larger: a deflate bomb costs no more than
    any other frame of its size. A sender whose batch would exceed it sends the batch plain.
    """
    return max(INFLATE_FREELY, expansion * compressed)


def _batch_cost(items: Iterable[bytes]) -> int:
    return sum(decoded_bytes_cost(len(item)) for item in items)


def _envelopes_body(items: tuple[bytes, ...]) -> dict[str, Any]:
    # Fleet data is repetitive (the same fields and values in every node record), so a batch
    # usually deflates to a fraction of its size; the signed envelopes inside are untouched.
    plain = encode(list(items))
    if len(plain) > COMPRESS_ABOVE:
        packed = zlib.compress(plain, 6)
        if len(packed) < len(plain) * 9 // 10 and _batch_cost(items) <= inflation_budget(
            len(packed)
        ):
            return {"items": [], "z": packed}
    return {"items": list(items), "z": b""}


def _inflate(data: bytes, limits: DecodeLimits) -> list[bytes]:  # noqa: PLR0912 - one bounded loop
    """Inflate and decode a compressed batch piece by piece, within the frame's budget.

    Checked while inflating, never after: the plain bytes never exceed a frame, the envelopes
    decoded from them never exceed :func:`inflation_budget` of the compressed size, and no
    more than :data:`INFLATE_CHUNK` plain bytes wait undecoded at any time.
    """
    budget = inflation_budget(len(data), limits.max_expansion)
    inflater = zlib.decompressobj()
    unpacker = msgpack.Unpacker(
        raw=False,
        max_buffer_size=limits.max_size,
        # Items are bytes: any other container is refused at its header, never built (the
        # batch's own array header is read by read_array_header, which these do not bound).
        max_str_len=0,
        max_bin_len=limits.max_bin_len,
        max_array_len=0,
        max_map_len=0,
        max_ext_len=0,
        ext_hook=reject_ext,
    )
    items: list[bytes] = []
    count: int | None = None
    plain = cost = 0
    pending = data
    try:
        while True:
            chunk = inflater.decompress(pending, INFLATE_CHUNK)
            pending = inflater.unconsumed_tail
            plain += len(chunk)
            if plain > limits.max_size:
                raise _fail("compressed batch inflates past a frame", "max_frame")
            unpacker.feed(chunk)
            with contextlib.suppress(msgpack.OutOfData):
                if count is None:
                    count = unpacker.read_array_header()
                    if count > limits.max_objects or count > limits.max_array_len:
                        raise _fail("compressed batch holds too many items", "decode_objects")
                while len(items) < count:
                    item = unpacker.unpack()
                    if type(item) is not bytes:
                        raise _fail("a batch item must be bytes", "schema")
                    cost += decoded_bytes_cost(len(item))
                    if cost > budget:
                        raise _fail(
                            f"compressed batch decodes past {budget} bytes "
                            f"({limits.max_expansion}x its size)",
                            "decode_expansion",
                        )
                    items.append(item)
            if not chunk and not pending:
                break
    except zlib.error as exc:
        raise _fail(f"compressed batch does not inflate: {exc}", "malformed") from exc
    except (ValueError, TypeError, OverflowError, MemoryError, msgpack.StackError) as exc:
        if isinstance(exc, RemoteProtocolError):
            raise
        raise _fail(f"compressed batch does not decode: {exc}", "malformed") from exc
    if not inflater.eof or inflater.unused_data or count is None or len(items) != count:
        raise _fail("compressed batch is truncated or has trailing bytes", "malformed")
    if unpacker.tell() != plain:
        raise _fail("compressed batch has trailing bytes", "malformed")
    return items


def _envelopes(body: Mapping[str, Any], limits: DecodeLimits = MESSAGE_LIMITS) -> Envelopes:
    items = _list(body["items"], "items")
    packed = _bytes(body["z"], "z")
    if packed:
        if items:
            raise _fail("a batch is either plain or compressed", "schema")
        items = _inflate(packed, limits)
    return Envelopes(tuple(_bytes(i, "envelope") for i in items))


# --------------------------------------------------------------------------- decoding


def _fail(message: str, reason: str) -> RemoteProtocolError:
    return RemoteProtocolError(message, reason=reason)


def _str(value: object, what: str) -> str:
    if type(value) is not str:
        raise _fail(f"{what} must be a string", "schema")
    return value


def _bytes(value: object, what: str) -> bytes:
    if type(value) is not bytes:
        raise _fail(f"{what} must be bytes", "schema")
    return value


def _list(value: object, what: str) -> list[Any]:
    if type(value) is not list:
        raise _fail(f"{what} must be a list", "schema")
    return value


def _frontiers(value: object) -> tuple[FrontierRow, ...]:
    rows = []
    for row in _list(value, "frontiers"):
        if type(row) is not list or len(row) != 4:
            raise _fail("frontier rows are [scope, writer, seq, last]", "schema")
        scope, writer, seq, last = row
        if type(seq) is not int or seq < 0:
            raise _fail("frontier seq must be a non-negative int", "schema")
        rows.append(
            FrontierRow(_str(scope, "scope"), _str(writer, "writer"), seq, _bytes(last, "last"))
        )
    return tuple(rows)


def _sized(value: object, size: int, what: str) -> bytes:
    data = _bytes(value, what)
    if len(data) != size:
        raise _fail(f"{what} must be {size} bytes", "schema")
    return data


#: Most links a hello's chain may carry (the authority layer's own depth limit is lower).
MAX_HELLO_CHAIN: Final = 16


def _hello(body: Mapping[str, Any]) -> Hello:
    chain = _list(body["chain"], "chain")
    if not chain or len(chain) > MAX_HELLO_CHAIN:
        raise _fail(f"a hello carries 1 to {MAX_HELLO_CHAIN} chain links", "schema")
    return Hello(
        fleet_id=_str(body["fleet"], "fleet"),
        chain=tuple(_bytes(item, "chain item") for item in chain),
        nonce=_sized(body["nonce"], NONCE_SIZE, "nonce"),
    )


def _frontiers_message(body: Mapping[str, Any]) -> Frontiers:
    return Frontiers(_frontiers(body["frontiers"]), _bytes(body["authority"], "authority"))


def _authority(body: Mapping[str, Any]) -> AuthorityItems:
    proofs = []
    for proof in _list(body["proofs"], "proofs"):
        if type(proof) is not list or len(proof) != 2:
            raise _fail("a proof is a pair of envelopes", "schema")
        proofs.append((_bytes(proof[0], "proof"), _bytes(proof[1], "proof")))
    return AuthorityItems(
        delegations=tuple(_bytes(d, "delegation") for d in _list(body["delegations"], "d")),
        revocations=tuple(_bytes(r, "revocation") for r in _list(body["revocations"], "r")),
        proofs=tuple(proofs),
        digest=_bytes(body["digest"], "digest"),
    )


_SCHEMAS: Final[Mapping[str, tuple[frozenset[str], Callable[[Mapping[str, Any]], Message]]]] = {
    MessageType.HELLO.value: (frozenset({"fleet", "chain", "nonce"}), _hello),
    MessageType.PROOF.value: (
        frozenset({"signature"}),
        lambda b: Proof(_sized(b["signature"], SIGNATURE_SIZE, "signature")),
    ),
    MessageType.FRONTIERS.value: (frozenset({"frontiers", "authority"}), _frontiers_message),
    MessageType.ENVELOPES.value: (frozenset({"items", "z"}), _envelopes),
    MessageType.ACK.value: (
        frozenset({"frontiers", "refused", "deferred"}),
        lambda b: Ack(
            _frontiers(b["frontiers"]), _frontiers(b["refused"]), _frontiers(b["deferred"])
        ),
    ),
    MessageType.AUTHORITY.value: (
        frozenset({"delegations", "revocations", "proofs", "digest"}),
        _authority,
    ),
    MessageType.CHECKPOINT.value: (
        frozenset({"data"}),
        lambda b: Checkpoint(_bytes(b["data"], "data")),
    ),
    MessageType.CLOSE.value: (frozenset({"reason"}), lambda b: Close(_str(b["reason"], "reason"))),
}


def decode_message(frame: bytes, limits: DecodeLimits = MESSAGE_LIMITS) -> Message:
    """Decode one frame from a peer.

    Raises:
        RemoteProtocolError: ``reason="max_frame"``, ``"decode_objects"`` or
            ``"decode_expansion"`` for a frame over its budget (a compressed batch included),
            ``reason="version"`` for another protocol version,
            ``reason="unknown-message"`` for a type this version does not know, and
            ``reason="malformed"`` or ``"schema"`` for anything else that is wrong.
    """
    try:
        obj = decode(frame, limits)
    except TooLargeError as exc:
        raise _fail(f"frame is over its budget: {exc}", exc.reason or "too-large") from exc
    except DecodeError as exc:
        if exc.reason == "size":
            raise _fail(f"frame is over its budget: {exc}", "max_frame") from exc
        raise _fail(f"frame does not decode: {exc}", "malformed") from exc
    if type(obj) is not list or len(obj) != 3:
        raise _fail("a frame is [version, type, body]", "malformed")
    version, kind, body = obj
    if version != PROTOCOL_VERSION or type(version) is not int:
        raise _fail(f"protocol version {version!r} is not supported", "version")
    schema = _SCHEMAS.get(kind) if type(kind) is str else None
    if schema is None:
        raise _fail(f"unknown message type {kind!r}", "unknown-message")
    keys, build = schema
    if type(body) is not dict or set(body) != keys:
        raise _fail(f"{kind} body must have exactly the fields {sorted(keys)}", "schema")
    if kind == MessageType.ENVELOPES.value:
        return _envelopes(body, limits)  # a compressed batch inflates under the frame's limits
    return build(body)
