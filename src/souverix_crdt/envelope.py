"""Signed authority envelopes: :func:`seal` one, :func:`open_envelope` to verify one (pure).

An envelope carries one local transaction of one writer in one scope: a header and a payload
(the pycrdt update, opaque here), signed with the writer's Ed25519 key.

Wire format (one msgpack array, canonical: decoding then re-encoding gives the received bytes,
so a relay cannot re-spell an envelope under a new id)::

    [version (int), algorithm (str), header (bin), payload (bin), signature (bin, 64 bytes)]

The header is a canonical msgpack map with exactly these keys (see :class:`EnvelopeHeader`):
``v``, ``fleet``, ``scope``, ``writer``, ``seq``, ``prev``, ``hlc``, ``sv``, ``delegation``.

Signed message (a domain prefix no delegation or revocation uses, then length-prefixed fields,
so no byte can move from one field to another)::

    ENVELOPE_DOMAIN + lp(algorithm) + lp(fleet id) + lp(header) + lp(payload)

where ``lp(x)`` is ``x``'s length as 8 big-endian bytes followed by ``x``. The fleet id in the
message is the *receiver's*, so an envelope of another fleet never verifies even if its header
were edited. The envelope id is SHA-256 of the full envelope bytes as received.

:func:`open_envelope` checks, in this order, and raises the first failure:

1. size (``TooLargeError``), outer array (``MalformedEnvelopeError``), version and algorithm
   (``UnsupportedVersionError``), canonical encoding, header schema;
2. fleet id (``ForeignFleetError``, final: never pending);
3. the caller's ``admit`` check on the header (a budget that refuses before any signature is
   verified, so a refusal stays cheap);
4. the leaf delegation the header names must be known and be for the header's writer
   (``UntrustedKeyError``). When it is not known, the signature is still verified if the
   writer's public key is (another delegation of the key that counts, or the named leaf waiting
   in the parking area), and only then ``UnknownDelegationError`` is raised: the caller may
   hold the envelope until the delegation arrives, within its budget;
5. the signature over the exact received header and payload bytes (``SignatureError``), before
   anything reads the payload;
6. the chain, judged at the envelope's HLC (see :meth:`Authority.grant_for`);
7. the scope lies in the granted subtree (``ScopeViolationError``);
8. revocation cuts (``RevokedError``);
9. the HLC is at most ``physical_now + max_offset`` (``QuarantinedError`` carrying the header).
   Last, so that only an envelope whose signature, chain, scope and revocation status all
   verified is ever quarantined: validity is judged at the envelope's own HLC, so the verdict
   it earns now is the one it would earn when its time comes.

Capabilities per collection are left to the apply path (:meth:`Grant.allows_collection`), and so
are sequence gaps, the ``prev`` chain and equivocation, which need the writer's log.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any, Final, NoReturn

import attrs

from .authority import (
    ALGORITHM,
    DIGEST_SIZE,
    MAX_SERIAL,
    SIGNATURE_SIZE,
    Authority,
    Grant,
    SigningKey,
    check_fleet_id,
    check_key_id,
)
from .codec import DEFAULT_LIMITS, DecodeLimits, decode, encode, encode_canonical
from .errors import (
    DecodeError,
    ForeignFleetError,
    InvalidScopeError,
    MalformedEnvelopeError,
    QuarantinedError,
    TooLargeError,
    UnknownDelegationError,
    UnsupportedVersionError,
    UntrustedKeyError,
)
from .hlc import Timestamp, remote_logical_error
from .limits import DEFAULT_LIMITS as BUDGETS
from .scope import Scope

__all__ = [
    "ENVELOPE_DOMAIN",
    "ENVELOPE_VERSION",
    "MAX_EPOCH",
    "MAX_SEQ",
    "EnvelopeHeader",
    "SealedEnvelope",
    "VerifiedEnvelope",
    "chain_id",
    "chain_writer",
    "envelope_id",
    "open_envelope",
    "read_header",
    "seal",
    "signed_message",
    "verify_signed",
]

#: Format version of envelopes.
ENVELOPE_VERSION: Final = 1
#: Prefix of an envelope's signed message.
ENVELOPE_DOMAIN: Final = b"souverix-crdt/envelope/v1\x00"
#: Largest sequence number.
MAX_SEQ: Final = MAX_SERIAL
#: Largest writer epoch.
MAX_EPOCH: Final = 2**63 - 1


def chain_id(writer: str, epoch: int) -> str:
    """The id of one writer incarnation's chain: ``"<key id>~<epoch in hex>"``.

    Sequence numbers, previous-envelope hashes and the Yjs writer document all belong to a
    chain, so two incarnations of one key never collide.
    """
    return f"{writer}~{epoch:x}"


def chain_writer(chain: str) -> str:
    """The key id part of a chain id."""
    return chain.partition("~")[0]


_HEADER_KEYS: Final = frozenset(
    {"v", "fleet", "scope", "writer", "epoch", "seq", "prev", "hlc", "sv", "delegation"}
)


def _malformed(message: str, reason: str) -> MalformedEnvelopeError:
    return MalformedEnvelopeError(message, reason=reason)


def _as_malformed(exc: DecodeError | InvalidScopeError) -> NoReturn:
    if isinstance(exc, TooLargeError):
        raise exc  # over a budget: the caller sees the budget's name, not a shape error
    raise MalformedEnvelopeError(str(exc), reason=exc.reason or "malformed") from exc


@attrs.frozen
class EnvelopeHeader:
    """The signed header of an envelope.

    Attributes:
        fleet_id: The fleet.
        scope: The scope written.
        writer: The writer's key id.
        seq: Sequence number of this envelope among the writer's envelopes in ``scope``, from 1.
        prev: Id of the writer's previous envelope in ``scope``; ``b""`` when ``seq`` is 1.
        hlc: The transaction's hybrid logical timestamp.
        state_vector: The writer document's state vector after this update.
        delegation: Digest of the writer's leaf delegation (names its one chain).
        epoch: The writer process's incarnation: a process that restarts (perhaps from an old
            copy of its database) starts a new chain, so it can never reuse a sequence number
            or a Yjs client clock it already published.
        version: The envelope format version.
    """

    fleet_id: str
    scope: Scope
    writer: str
    seq: int
    prev: bytes
    hlc: Timestamp
    state_vector: bytes
    delegation: bytes
    epoch: int = 0
    version: int = ENVELOPE_VERSION

    @property
    def chain(self) -> str:
        """The id of the writer's chain this envelope extends (see :func:`chain_id`)."""
        return chain_id(self.writer, self.epoch)

    def __attrs_post_init__(self) -> None:
        check_fleet_id(self.fleet_id)
        if not isinstance(self.scope, Scope):
            raise _malformed("scope must be a Scope", "scope")
        check_key_id(self.writer)
        if type(self.seq) is not int or not 1 <= self.seq <= MAX_SEQ:
            raise _malformed(f"seq must be an integer in [1, {MAX_SEQ}]", "seq")
        if type(self.prev) is not bytes:
            raise _malformed("prev must be bytes", "prev")
        if self.seq == 1 and self.prev:
            raise _malformed("the first envelope has no previous one", "prev")
        if self.seq > 1 and len(self.prev) != DIGEST_SIZE:
            raise _malformed(f"prev must be a {DIGEST_SIZE}-byte envelope id", "prev")
        if not isinstance(self.hlc, Timestamp):
            raise _malformed("hlc must be a Timestamp", "hlc")
        if type(self.state_vector) is not bytes:
            raise _malformed("state_vector must be bytes", "state-vector")
        if type(self.epoch) is not int or not 0 <= self.epoch <= MAX_EPOCH:
            raise _malformed(f"epoch must be an integer in [0, {MAX_EPOCH}]", "epoch")
        if type(self.delegation) is not bytes or len(self.delegation) != DIGEST_SIZE:
            raise _malformed(f"delegation must be a {DIGEST_SIZE}-byte digest", "delegation")
        if self.version != ENVELOPE_VERSION or type(self.version) is not int:
            raise UnsupportedVersionError(
                f"unsupported envelope version {self.version!r}", reason="version"
            )

    def to_map(self) -> dict[str, Any]:
        """The header as the plain map that is encoded."""
        return {
            "v": self.version,
            "fleet": self.fleet_id,
            "scope": str(self.scope),
            "writer": self.writer,
            "epoch": self.epoch,
            "seq": self.seq,
            "prev": self.prev,
            "hlc": self.hlc.to_list(),
            "sv": self.state_vector,
            "delegation": self.delegation,
        }

    def encode(self) -> bytes:
        """The canonical encoding (the bytes that are signed)."""
        return encode_canonical(self.to_map())

    @classmethod
    def decode(cls, data: bytes, limits: DecodeLimits = DEFAULT_LIMITS) -> EnvelopeHeader:
        """Decode header bytes strictly: exact keys, exact types, canonical encoding.

        Raises:
            MalformedEnvelopeError: if they do not match the schema.
            UnsupportedVersionError: an unknown header version.
            TooLargeError: over ``limits.max_size``.
        """
        if type(data) is not bytes:
            raise _malformed("header must be bytes", "header")
        try:
            obj = decode(data, limits)
        except DecodeError as exc:
            if exc.reason == "size":
                raise TooLargeError(str(exc), reason="size") from exc
            _as_malformed(exc)
        if type(obj) is not dict:
            raise _malformed("header must be a map", "header")
        if obj.keys() != _HEADER_KEYS:
            extra = sorted(set(obj) - _HEADER_KEYS)
            missing = sorted(_HEADER_KEYS - set(obj))
            raise _malformed(f"header keys differ: extra {extra}, missing {missing}", "header")
        version = obj["v"]
        if type(version) is not int:
            raise _malformed("header version must be an integer", "version")
        hlc = obj["hlc"]
        if type(hlc) is not list or len(hlc) != 2:
            raise _malformed("hlc must be [wall, logical]", "hlc")
        try:
            header = cls(
                fleet_id=obj["fleet"],
                scope=Scope.parse(obj["scope"]),
                writer=obj["writer"],
                epoch=obj["epoch"],
                seq=obj["seq"],
                prev=obj["prev"],
                hlc=Timestamp(hlc[0], hlc[1]),
                state_vector=obj["sv"],
                delegation=obj["delegation"],
                version=version,
            )
        except (MalformedEnvelopeError, UnsupportedVersionError):
            raise
        except (DecodeError, InvalidScopeError) as exc:
            _as_malformed(exc)
        if header.encode() != data:
            raise _malformed("header is not canonically encoded", "non-canonical")
        return header


def signed_message(
    algorithm: str,
    fleet_id: str,
    header: bytes,
    payload: bytes,
    *,
    domain: bytes = ENVELOPE_DOMAIN,
) -> bytes:
    """The exact bytes an envelope's signature covers (see the module docstring).

    ``domain`` separates kinds of signed objects built on the envelope format (checkpoints use
    their own), so one kind's signature never verifies as another's.
    """
    parts = [domain]
    for field in (algorithm.encode(), fleet_id.encode(), header, payload):
        parts.append(len(field).to_bytes(8, "big"))
        parts.append(field)
    return b"".join(parts)


def envelope_id(data: bytes) -> bytes:
    """The id of an envelope: SHA-256 of its full encoded bytes."""
    return hashlib.sha256(data).digest()


@attrs.frozen
class SealedEnvelope:
    """An envelope this process signed, ready to store and send.

    Attributes:
        id: The envelope id (SHA-256 of ``data``).
        data: The encoded envelope.
        header: Its header.
        payload: Its payload.
    """

    id: bytes
    data: bytes = attrs.field(repr=False)
    header: EnvelopeHeader
    payload: bytes = attrs.field(repr=False)


def seal(
    signing_key: SigningKey,
    *,
    fleet_id: str,
    scope: Scope | str,
    seq: int,
    prev: bytes,
    hlc: Timestamp,
    state_vector: bytes,
    delegation_digest: bytes,
    payload: bytes,
    epoch: int = 0,
    domain: bytes = ENVELOPE_DOMAIN,
) -> SealedEnvelope:
    """Sign one transaction of ``signing_key``'s writer into an envelope.

    Nothing is checked against authority here: the receiver decides (and so does the sender,
    if it opens its own envelope before storing it).

    Raises:
        MalformedEnvelopeError: if a header field is invalid.
        InvalidScopeError: if ``scope`` is a non-canonical path.
    """
    if type(payload) is not bytes:
        raise _malformed("payload must be bytes", "payload")
    header = EnvelopeHeader(
        fleet_id=fleet_id,
        scope=Scope.parse(scope),
        writer=signing_key.key_id,
        seq=seq,
        prev=prev,
        hlc=hlc,
        state_vector=state_vector,
        delegation=delegation_digest,
        epoch=epoch,
    )
    header_bytes = header.encode()
    signature = signing_key.sign(
        signed_message(ALGORITHM, fleet_id, header_bytes, payload, domain=domain)
    )
    data = encode([ENVELOPE_VERSION, ALGORITHM, header_bytes, payload, signature])
    return SealedEnvelope(id=envelope_id(data), data=data, header=header, payload=payload)


_TOKEN: Final = object()


class VerifiedEnvelope:
    """An envelope whose signature, authority and revocation status were verified.

    Only :func:`open_envelope` builds one; the apply path accepts nothing else. Immutable.

    Attributes:
        id: The envelope id.
        data: The envelope bytes as received (what relays forward, unchanged).
        header: The verified header.
        payload: The payload (a pycrdt update), not yet applied.
        grant: The writer's rights through the chain its header names, at its HLC.
    """

    __slots__ = ("_data", "_grant", "_header", "_id", "_payload")

    _id: bytes
    _data: bytes
    _header: EnvelopeHeader
    _payload: bytes
    _grant: Grant

    def __init__(
        self,
        token: object,
        *,
        id: bytes,
        data: bytes,
        header: EnvelopeHeader,
        payload: bytes,
        grant: Grant,
    ) -> None:
        if token is not _TOKEN:
            raise TypeError("a VerifiedEnvelope is only built by open_envelope()")
        object.__setattr__(self, "_id", id)
        object.__setattr__(self, "_data", data)
        object.__setattr__(self, "_header", header)
        object.__setattr__(self, "_payload", payload)
        object.__setattr__(self, "_grant", grant)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("VerifiedEnvelope is immutable")

    def __delattr__(self, name: str) -> None:
        raise AttributeError("VerifiedEnvelope is immutable")

    def __reduce__(self) -> NoReturn:
        # Pickling would be a way to build one without open_envelope(); store ``data`` instead.
        raise TypeError("VerifiedEnvelope cannot be pickled or copied; keep .data and reopen it")

    @property
    def id(self) -> bytes:
        """The envelope id (SHA-256 of :attr:`data`)."""
        return self._id

    @property
    def data(self) -> bytes:
        """The envelope bytes as received."""
        return self._data

    @property
    def header(self) -> EnvelopeHeader:
        """The verified header."""
        return self._header

    @property
    def payload(self) -> bytes:
        """The payload (a pycrdt update)."""
        return self._payload

    @property
    def grant(self) -> Grant:
        """The writer's rights through the chain the header names."""
        return self._grant

    @property
    def scope(self) -> Scope:
        """Shortcut for ``header.scope``."""
        return self._header.scope

    @property
    def writer(self) -> str:
        """Shortcut for ``header.writer``."""
        return self._header.writer

    @property
    def seq(self) -> int:
        """Shortcut for ``header.seq``."""
        return self._header.seq

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, VerifiedEnvelope):
            return NotImplemented
        return self._data == other._data

    def __hash__(self) -> int:
        return hash(self._id)

    def __repr__(self) -> str:
        return (
            f"VerifiedEnvelope(id={self._id.hex()[:16]!r}…, scope={str(self.scope)!r}, "
            f"writer={self.writer!r}, seq={self.seq})"
        )


def _decode_outer(data: object, limits: DecodeLimits) -> tuple[bytes, bytes, bytes, bytes]:
    """Size, outer array, version, algorithm, canonical form; return the four byte fields.

    Returns:
        ``(data, header bytes, payload, signature)``, ``data`` as ``bytes``.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise _malformed(f"expected bytes, got {type(data).__name__}", "type")
    raw = bytes(data)
    if len(raw) > limits.max_size:
        raise TooLargeError(
            f"envelope of {len(raw)} bytes exceeds the {limits.max_size}-byte limit",
            reason="size",
        )
    try:
        obj = decode(raw, limits)
    except DecodeError as exc:
        _as_malformed(exc)
    if type(obj) is not list or len(obj) != 5:
        raise _malformed("an envelope is an array of 5 items", "outer")
    version, algorithm, header, payload, signature = obj
    if type(version) is not int:
        raise _malformed("version must be an integer", "version")
    if version != ENVELOPE_VERSION:
        raise UnsupportedVersionError(f"unsupported envelope version {version}", reason="version")
    if type(algorithm) is not str:
        raise _malformed("algorithm must be a string", "algorithm")
    if algorithm != ALGORITHM:
        raise UnsupportedVersionError(
            f"unsupported signature algorithm {algorithm!r}", reason="algorithm"
        )
    if type(header) is not bytes or type(payload) is not bytes:
        raise _malformed("header and payload must be bytes", "outer")
    if type(signature) is not bytes or len(signature) != SIGNATURE_SIZE:
        raise _malformed(f"signature must be {SIGNATURE_SIZE} bytes", "signature")
    if encode(obj) != raw:
        raise _malformed("envelope is not canonically encoded", "non-canonical")
    return raw, header, payload, signature


def read_header(
    data: bytes | bytearray | memoryview, *, limits: DecodeLimits = DEFAULT_LIMITS
) -> EnvelopeHeader:
    """Decode an envelope's header WITHOUT verifying anything but its shape.

    For routing and pending-area bookkeeping only (which delegation it waits for, which writer
    and sequence it claims); never a basis for applying or trusting it.

    Raises:
        MalformedEnvelopeError, TooLargeError, UnsupportedVersionError: as :func:`open_envelope`.
    """
    _, header_bytes, _, _ = _decode_outer(data, limits)
    return EnvelopeHeader.decode(header_bytes, limits)


def open_envelope(
    data: bytes | bytearray | memoryview,
    authority: Authority,
    *,
    physical_now: int,
    max_offset: int,
    limits: DecodeLimits = DEFAULT_LIMITS,
    admit: Callable[[EnvelopeHeader], None] | None = None,
    max_logical: int = BUDGETS.max_remote_logical,
) -> VerifiedEnvelope:
    """Verify an envelope received from anyone; the only way to get a :class:`VerifiedEnvelope`.

    Args:
        data: The envelope bytes as received.
        authority: The replica's trust anchors, delegations and revocations.
        physical_now: The local physical time in milliseconds (read by the caller's clock).
        max_offset: How far, in milliseconds, the envelope's HLC may lead ``physical_now``.
        limits: Decoding limits; ``limits.max_size`` bounds the whole envelope.
        admit: Called with the decoded header before any signature is verified; raises to
            refuse it (a receiver's budgets: a full one refuses without paying for a
            verification).
        max_logical: Highest logical counter the envelope's HLC may carry
            (:attr:`~souverix_crdt.limits.Limits.max_remote_logical`); above it the envelope is
            refused with ``TooLargeError(reason="max_remote_logical")``.

    Raises:
        TooLargeError: over the size limit (or raised by ``admit``).
        MalformedEnvelopeError: does not match the schema or is not canonically encoded.
        UnsupportedVersionError: unknown version or algorithm.
        ForeignFleetError: another fleet's envelope.
        UnknownDelegationError: its delegation (or a link of its chain) is not known yet; the
            caller parks it in the pending area and retries when the delegation arrives. The
            signature was verified first whenever the writer's public key is known.
        UntrustedKeyError: the delegation is not the writer's, or the chain is not rooted in
            the fleet's anchors.
        SignatureError: the signature does not verify over the bytes received.
        QuarantinedError: the HLC is more than ``max_offset`` ahead of ``physical_now``; the
            error carries the (signature-verified) header. Not applied, not forwarded.
        ScopeViolationError: the scope lies outside the writer's grant.
        CapabilityViolationError, ExpiredError, NotYetValidError, QuorumError: the chain is
            invalid at the envelope's HLC (see :func:`~souverix_crdt.authority.verify_chain`).
        RevokedError: the writer (or a key above it) is revoked and this write is past the cut.
    """
    raw, header, payload, identifier, grant = verify_signed(
        data,
        authority,
        physical_now=physical_now,
        max_offset=max_offset,
        limits=limits,
        admit=admit,
        max_logical=max_logical,
    )
    return VerifiedEnvelope(
        _TOKEN, id=identifier, data=raw, header=header, payload=payload, grant=grant
    )


def verify_signed(
    data: bytes | bytearray | memoryview,
    authority: Authority,
    *,
    physical_now: int,
    max_offset: int,
    limits: DecodeLimits = DEFAULT_LIMITS,
    domain: bytes = ENVELOPE_DOMAIN,
    admit: Callable[[EnvelopeHeader], None] | None = None,
    max_logical: int = BUDGETS.max_remote_logical,
) -> tuple[bytes, EnvelopeHeader, bytes, bytes, Grant]:
    """Every check of :func:`open_envelope`, for any object in the envelope format.

    Returns:
        ``(raw bytes, header, payload, id, grant)``.

    Raises:
        The errors of :func:`open_envelope`.
    """
    raw, header_bytes, payload, signature = _decode_outer(data, limits)
    header = EnvelopeHeader.decode(header_bytes, limits)
    fleet_id = authority.anchors.fleet_id
    if header.fleet_id != fleet_id:
        raise ForeignFleetError(
            f"envelope of fleet {header.fleet_id!r} received by fleet {fleet_id!r}",
            fleet_id=header.fleet_id,
        )
    if admit is not None:
        admit(header)
    scope = str(header.scope)
    message = signed_message(ALGORITHM, fleet_id, header_bytes, payload, domain=domain)
    leaf = authority.delegation(header.delegation)
    if leaf is None:
        # Nothing unverified is held: when the writer's key is known at all, the signature must
        # verify before the caller may hold the envelope for its delegation.
        known = authority.public_key(header.writer)
        if known is None:
            parked = authority.parked_delegation(header.delegation)
            if parked is not None and parked.subject.key_id == header.writer:
                known = parked.subject
        if known is not None:
            known.verify(signature, message)
        raise UnknownDelegationError(
            f"delegation {header.delegation.hex()} is not known yet",
            missing=header.delegation,
            scope=scope,
            writer=header.writer,
        )
    if leaf.subject.key_id != header.writer:
        raise UntrustedKeyError(
            f"delegation {header.delegation.hex()} is not the writer's",
            reason="writer-mismatch",
            scope=scope,
            writer=header.writer,
        )
    # Verify over the exact bytes received (never a re-encoding), and before the payload is used.
    leaf.subject.verify(signature, message)
    identifier = envelope_id(raw)
    # A logical counter no honest clock issues (they tick their wall instead) would leave the
    # receiver's clock no room to count: refused for good, not quarantined, since waiting never
    # makes it valid. Checked here, before anything of the envelope is applied or held.
    if header.hlc.logical > max_logical:
        raise remote_logical_error(header.hlc, max_logical, scope=scope, writer=header.writer)
    # Validity is judged at the envelope's own HLC, so every replica reaches the same verdict
    # whenever it receives the envelope, and a far-future one is judged before it is quarantined.
    grant = authority.grant_for(header.writer, header.delegation, at=header.hlc)
    grant.check_scope(header.scope)
    authority.check_not_revoked(grant, header.scope, header.seq, epoch=header.epoch)
    if header.hlc.wall - physical_now > max_offset:
        raise QuarantinedError(
            f"envelope HLC {header.hlc} is more than {max_offset} ms ahead of {physical_now}",
            reason="future",
            scope=scope,
            writer=header.writer,
            header=header,
            envelope_id=identifier,
        )
    return raw, header, payload, identifier, grant
