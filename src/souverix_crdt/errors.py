"""The whole exception tree of souverix-crdt.

Every error the library raises on purpose derives from :class:`SouverixError`. Each refines the
builtin it is closest to (``DecodeError`` is also a ``ValueError``), so callers that only know the
builtins still catch them. Errors carry their data as attributes (scope, writer, reason…) so that
code can act on them without parsing messages. Foreign errors (``msgpack``, ``cryptography``,
pycrdt's ``PanicException``) are always wrapped with ``raise … from exc``.

The tree, in short::

    SouverixError
    ├── DecodeError                  untrusted bytes that do not decode under the limits
    │   └── InvalidUpdateError       a pycrdt update that does not decode or apply
    ├── InvalidScopeError            a scope path that is not canonical
    ├── InvalidValueError            a key or value that cannot be stored
    │   └── UnknownCollectionError   a collection name that does not exist (also a KeyError)
    ├── UnknownPlaneError            a plane name a key directory does not hold (also a KeyError)
    ├── TopologyError                a federation topology file that does not validate
    ├── KeyFileError                 a federation key directory that cannot be trusted or read
    ├── ConfigError                  a peer process's config file that does not validate
    ├── ClockError
    │   ├── ClockSkewError           a remote timestamp too far ahead of the local clock
    │   └── ClockOverflowError       the logical counter reached its bound
    ├── AuthorityError               an envelope or delegation that is refused
    │   ├── UntrustedKeyError
    │   │   └── UnknownDelegationError   not known yet: park as pending, retry later
    │   ├── ForeignFleetError        another fleet's data: refused for good
    │   ├── SignatureError, ScopeViolationError, CapabilityViolationError,
    │   ├── ExpiredError, NotYetValidError, RevokedError, RollbackError, EquivocationError,
    │   ├── MalformedEnvelopeError, TooLargeError, UnsupportedVersionError, QuorumError
    │   └── QuarantinedError         far-future envelope: kept aside, not applied, not forwarded
    ├── StoreError                   durable storage failed; nothing was committed
    │   ├── StoreBusyError (ChainLockedError), DiskFullError, CorruptStoreError, SchemaVersionError
    ├── ProtocolError                a sync session rule was broken
    │   ├── LocalProtocolError       by this side (API misuse)
    │   └── RemoteProtocolError      by the peer
    ├── TransportError
    │   ├── TransportClosedError     we closed it
    │   ├── TransportBrokenError     the peer or the network broke it
    │   └── FrameTooLargeError       refused before allocation
    └── BundleError                  an air-gapped bundle or receipt refused whole
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # only for the annotation: envelope.py imports this module
    from .envelope import EnvelopeHeader

__all__ = [
    "AuthorityError",
    "BundleError",
    "CapabilityViolationError",
    "ChainLockedError",
    "ClockError",
    "ClockOverflowError",
    "ClockSkewError",
    "ConfigError",
    "CorruptStoreError",
    "DecodeError",
    "DiskFullError",
    "EquivocationError",
    "ExpiredError",
    "ForeignFleetError",
    "FrameTooLargeError",
    "InvalidScopeError",
    "InvalidUpdateError",
    "InvalidValueError",
    "KeyFileError",
    "LocalProtocolError",
    "MalformedEnvelopeError",
    "NotYetValidError",
    "ProtocolError",
    "QuarantinedError",
    "QuorumError",
    "RemoteProtocolError",
    "RevokedError",
    "RollbackError",
    "SchemaVersionError",
    "ScopeViolationError",
    "SignatureError",
    "SouverixError",
    "StoreBusyError",
    "StoreError",
    "TooLargeError",
    "TopologyError",
    "TransportBrokenError",
    "TransportClosedError",
    "TransportError",
    "UnknownCollectionError",
    "UnknownDelegationError",
    "UnknownNameError",
    "UnknownPlaneError",
    "UnsupportedVersionError",
    "UntrustedKeyError",
]


class SouverixError(Exception):
    """Root of every error souverix-crdt raises on purpose.

    Attributes:
        reason: A short, stable, machine-readable reason (``"depth"``, ``"trailing-bytes"``…).
    """

    def __init__(self, message: str, *, reason: str = "") -> None:
        super().__init__(message)
        self.reason = reason


# --------------------------------------------------------------------------- decoding / values


class DecodeError(SouverixError, ValueError):
    """Untrusted bytes did not decode within the codec's limits and schema."""


class InvalidUpdateError(DecodeError):
    """A pycrdt update could not be decoded or applied; the document is unchanged.

    Attributes:
        scope: The scope path of the document, if known.
        writer: The writer id of the document, if known.
    """

    def __init__(
        self, message: str, *, reason: str = "", scope: str = "", writer: str = ""
    ) -> None:
        super().__init__(message, reason=reason)
        self.scope = scope
        self.writer = writer


class InvalidScopeError(SouverixError, ValueError):
    """A scope path is not canonical; it is rejected, never normalised.

    Attributes:
        path: The offending input, as given.
    """

    def __init__(self, message: str, *, path: object, reason: str = "") -> None:
        super().__init__(message, reason=reason)
        self.path = path


class InvalidValueError(SouverixError, ValueError):
    """A key, collection or value cannot be stored in a register.

    Attributes:
        key: The offending key, if the key is the problem.
    """

    def __init__(self, message: str, *, reason: str = "", key: object = None) -> None:
        super().__init__(message, reason=reason)
        self.key = key


def _close_matches(name: str, known: tuple[str, ...]) -> tuple[str, ...]:
    # Compared without case: "EU" is a likelier slip for "eu" than for anything else.
    folded: dict[str, str] = {}
    for candidate in known:
        folded.setdefault(candidate.casefold(), candidate)
    if name.casefold() in folded:
        return (folded[name.casefold()],)
    matches = difflib.get_close_matches(name.casefold(), list(folded), n=3, cutoff=0.6)
    return tuple(folded[match] for match in matches)


class UnknownNameError(SouverixError, KeyError):
    """A name looked up among a fixed set of names is not one of them.

    A ``KeyError`` too, so that ``except KeyError`` and ``mapping[name]`` habits keep working,
    but its message is a sentence (``KeyError`` alone would show only the quoted name) and it
    suggests the closest known names, as the command line does for mistyped commands.

    Attributes:
        name: The name given.
        known: Every valid name, in their usual order.
        suggestions: The known names closest to ``name`` (best first; possibly empty).
    """

    #: What kind of name it is, for the message (``collection``, ``plane``).
    kind = "name"

    def __init__(self, name: object, known: Iterable[str], *, where: str = "") -> None:
        self.name = name
        self.known = tuple(known)
        self.suggestions = _close_matches(str(name), self.known)
        message = f"unknown {self.kind} {name!r}"
        if where:
            message += f" in {where}"
        if self.suggestions:
            message += f"; did you mean {' or '.join(repr(s) for s in self.suggestions)}?"
        message += f" (known: {', '.join(self.known) or 'none'})"
        super().__init__(message, reason=f"unknown-{self.kind}")

    def __str__(self) -> str:
        # KeyError.__str__ would repr() the message, quotes and all.
        return str(self.args[0])


class UnknownCollectionError(UnknownNameError, InvalidValueError):
    """A collection name that is not one of ``policies``, ``versions``, ``nodes``, ``meta``.

    Attributes:
        key: The offending name (as for every :class:`InvalidValueError`).
    """

    kind = "collection"

    def __init__(self, name: object, known: Iterable[str]) -> None:
        UnknownNameError.__init__(self, name, known)
        self.key = name


class UnknownPlaneError(UnknownNameError):
    """A control-plane name that the key directory (or topology) does not hold."""

    kind = "plane"


# --------------------------------------------------------------------------- federation files


class TopologyError(SouverixError, ValueError):
    """A topology file does not validate. The message is one line: ``file: field: detail``.

    Attributes:
        file: The file it came from (``"<string>"`` for text given directly).
        field: The dotted path of the offending field (``control_planes.edge-a1.sync.upstream``),
            or ``""`` when the document as a whole is wrong (a YAML syntax error).
        detail: What was wrong, for humans.
        line: The 1-based line of the field in the file, when known.
        reason: A short, stable code: ``syntax``, ``missing``, ``unknown-field``, ``type``,
            ``value``, ``reference`` or ``structure``.
    """

    def __init__(
        self, *, file: str, field: str, detail: str, reason: str, line: int | None = None
    ) -> None:
        location = file if line is None else f"{file}:{line}"
        if field:
            location = f"{location}: {field}"
        super().__init__(f"{location}: {detail}", reason=reason)
        self.file = file
        self.field = field
        self.detail = detail
        self.line = line


class KeyFileError(SouverixError, ValueError):
    """A federation key directory is missing a file, holds a bad one, or exposes a private key.

    Attributes:
        path: The offending file or directory.
    """

    def __init__(self, message: str, *, path: str, reason: str = "") -> None:
        super().__init__(f"{path}: {message}", reason=reason)
        self.path = path


class ConfigError(SouverixError, ValueError):
    """A peer process's config file does not validate. One line: ``file: field: detail``.

    Attributes:
        file: The config file.
        field: The dotted path of the offending field (``upstream.address``), or ``""`` when
            the file as a whole is wrong (YAML syntax, not a mapping).
        detail: What was wrong, for humans.
    """

    def __init__(self, *, file: str, field: str, detail: str, reason: str = "value") -> None:
        location = f"{file}: {field}" if field else file
        super().__init__(f"{location}: {detail}", reason=reason)
        self.file = file
        self.field = field
        self.detail = detail


# --------------------------------------------------------------------------- clock


class ClockError(SouverixError):
    """The hybrid logical clock refused an operation; it did not move."""


class ClockSkewError(ClockError):
    """A remote timestamp is further ahead of the local physical clock than ``max_offset``.

    Attributes:
        remote_wall: The remote wall time, in milliseconds.
        local_wall: The local physical time when it was judged, in milliseconds.
        max_offset: The configured bound, in milliseconds.
    """

    def __init__(self, *, remote_wall: int, local_wall: int, max_offset: int) -> None:
        super().__init__(
            f"remote timestamp {remote_wall} ms is {remote_wall - local_wall} ms ahead of the "
            f"local clock; more than max_offset={max_offset} ms",
            reason="clock-skew",
        )
        self.remote_wall = remote_wall
        self.local_wall = local_wall
        self.max_offset = max_offset


class ClockOverflowError(ClockError):
    """The logical counter is at its bound for this wall time; it never wraps."""


# --------------------------------------------------------------------------- authority


class AuthorityError(SouverixError):
    """An envelope, delegation or revocation is refused.

    Attributes:
        scope: The scope the refused act was about, if known.
        writer: The key id of the writer or issuer, if known.
        plane: The plane name the writer's verified delegation gives it, if known.
    """

    def __init__(
        self, message: str, *, reason: str = "", scope: str = "", writer: str = "", plane: str = ""
    ) -> None:
        super().__init__(message, reason=reason)
        self.scope = scope
        self.writer = writer
        self.plane = plane


class SignatureError(AuthorityError):
    """A signature does not verify over the exact bytes received."""


class UntrustedKeyError(AuthorityError):
    """A key does not chain to a pinned root of the fleet."""


class UnknownDelegationError(UntrustedKeyError):
    """A delegation, or the writer key it names, is not known yet: the act may become valid.

    This is the one refusal that is not final: the caller parks the envelope (or revocation) in
    its pending area and re-evaluates it when what it lacks arrives.

    Attributes:
        missing: The digest (``bytes``) of the missing delegation, or the key id (``str``) of the
            issuer whose delegation is missing.
    """

    def __init__(
        self,
        message: str,
        *,
        missing: bytes | str,
        reason: str = "unknown-delegation",
        scope: str = "",
        writer: str = "",
    ) -> None:
        super().__init__(message, reason=reason, scope=scope, writer=writer)
        self.missing = missing


class ForeignFleetError(AuthorityError):
    """An envelope, delegation or revocation belongs to another fleet; refused for good.

    Deliberately not an :class:`UntrustedKeyError`: nothing that arrives later can make it valid,
    so it must never be parked as pending.

    Attributes:
        fleet_id: The fleet id the refused object claimed.
    """

    def __init__(self, message: str, *, fleet_id: str, reason: str = "foreign-fleet") -> None:
        super().__init__(message, reason=reason)
        self.fleet_id = fleet_id


class ScopeViolationError(AuthorityError):
    """A key acted outside the scope subtree it was delegated."""


class CapabilityViolationError(AuthorityError):
    """A key used, or a delegation granted, a capability it does not hold."""


class ExpiredError(AuthorityError):
    """A delegation's validity window ended before the act's timestamp."""


class NotYetValidError(AuthorityError):
    """A delegation's validity window starts after the act's timestamp."""


class RevokedError(AuthorityError):
    """The key was revoked and the act lies past the revocation's causal cut."""


class RollbackError(AuthorityError):
    """A sequence number or timestamp went backwards for one writer."""


class EquivocationError(AuthorityError):
    """One writer signed two different envelopes with the same sequence number."""


class MalformedEnvelopeError(AuthorityError, DecodeError):
    """An envelope or delegation does not match its schema."""


class TooLargeError(AuthorityError, DecodeError):
    """An envelope, payload or chain exceeds a configured size limit."""


class UnsupportedVersionError(AuthorityError):
    """An unknown format version or algorithm."""


class QuorumError(AuthorityError):
    """A root-level act lacks the required number of distinct root signatures."""


class QuarantinedError(AuthorityError):
    """An envelope dated too far in the future was set aside: not applied, not forwarded.

    Attributes:
        header: The envelope's header (its signature verified), so the caller can count
            quarantined envelopes per writer; ``None`` when raised without one.
        envelope_id: The envelope id, or ``b""`` when raised without one.
    """

    def __init__(
        self,
        message: str,
        *,
        reason: str = "future",
        scope: str = "",
        writer: str = "",
        header: EnvelopeHeader | None = None,
        envelope_id: bytes = b"",
    ) -> None:
        super().__init__(message, reason=reason, scope=scope, writer=writer)
        self.header = header
        self.envelope_id = envelope_id


# --------------------------------------------------------------------------- storage


class StoreError(SouverixError):
    """Durable storage failed; the operation was not committed and no receipt was given."""


class StoreBusyError(StoreError):
    """The store stayed locked by another connection beyond the busy timeout."""


class DiskFullError(StoreError):
    """The disk is full; nothing was committed."""


class CorruptStoreError(StoreError):
    """The store failed its integrity check or holds data that does not decode."""


class SchemaVersionError(StoreError):
    """The store was written by an unknown schema version."""


# --------------------------------------------------------------------------- sync protocol


class ProtocolError(SouverixError):
    """A sync session's rules were broken."""


class LocalProtocolError(ProtocolError):
    """This side misused the session (a bug in the caller)."""


class RemoteProtocolError(ProtocolError):
    """The peer sent something the protocol does not allow."""


# --------------------------------------------------------------------------- transports


class TransportError(SouverixError, ConnectionError):
    """A transport could not move a frame."""


class TransportClosedError(TransportError):
    """The transport was closed by this side."""


class TransportBrokenError(TransportError):
    """The peer or the network broke the transport."""


class FrameTooLargeError(TransportError):
    """A frame's length header exceeds the limit; refused before allocating it.

    Attributes:
        size: The announced size in bytes.
        limit: The configured maximum.
    """

    def __init__(self, *, size: int, limit: int) -> None:
        super().__init__(f"frame of {size} bytes exceeds the {limit}-byte limit", reason="frame")
        self.size = size
        self.limit = limit


# --------------------------------------------------------------------------- bundles


class BundleError(SouverixError, ValueError):
    """An air-gapped bundle or receipt file was refused as a whole; nothing of it was applied.

    Attributes:
        reason: What was wrong: ``magic``, ``truncated``, ``too-large``, ``malformed``,
            ``foreign-fleet``, ``untrusted``, ``revoked``, ``signature``, ``wrong-peer``,
            ``kind-mismatch``, ``hash-mismatch``, ``range``, ``missing-records``,
            ``extra-records`` or ``changed`` (the file changed while it was being imported).
        record: Index of the offending record (the manifest is record 0), when one is to blame.
        offset: Byte offset in the file where the problem was found, when known.
    """

    def __init__(
        self, message: str, *, reason: str, record: int | None = None, offset: int | None = None
    ) -> None:
        super().__init__(message, reason=reason)
        self.record = record
        self.offset = offset


class ChainLockedError(StoreBusyError):
    """Another process writes under this store's chain: two writers would fork it.

    Attributes:
        path: The lock file.
        holder: What the lock file says about its holder (``"pid 1234"``), or ``""``.
    """

    def __init__(self, path: str, holder: str = "") -> None:
        detail = f" (held by {holder})" if holder else ""
        super().__init__(f"{path} is locked by another writer{detail}")
        self.path = path
        self.holder = holder
