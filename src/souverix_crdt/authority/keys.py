"""Ed25519 keys: public keys with locally derived ids, signing keys, signature sets."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import attrs
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

from souverix_crdt.errors import (
    DecodeError,
    QuorumError,
    SignatureError,
    TooLargeError,
)

from ._wire import (
    KEY_ID_DOMAIN,
    MAX_SIGNERS,
    SIGNATURE_SIZE,
    _check_public_key,
    _malformed,
    check_key_id,
)


def _decode_signatures(value: object) -> tuple[tuple[PublicKey, bytes], ...]:
    if type(value) is not list:
        raise _malformed("signatures must be an array", "signatures")
    if len(value) > MAX_SIGNERS:
        raise TooLargeError(f"more than {MAX_SIGNERS} signatures", reason="signatures")
    result = []
    for item in value:
        if type(item) is not list or len(item) != 2:
            raise _malformed("a signature is [public key, signature]", "signatures")
        raw, signature = item
        if type(signature) is not bytes or len(signature) != SIGNATURE_SIZE:
            raise _malformed(f"a signature is {SIGNATURE_SIZE} bytes", "signatures")
        result.append((PublicKey(_check_public_key(raw)), signature))
    return tuple(result)


def _check_signatures(signatures: object, issuers: object) -> tuple[tuple[PublicKey, bytes], ...]:
    """Shape of ``signatures`` and ``issuers``; the signers must be exactly the issuers.

    Distinctness is by public key: one key twice (a copied signature) is a ``QuorumError``
    whatever the quorum, so a signature can never count twice.
    """
    if type(issuers) is not tuple or not issuers:
        raise _malformed("at least one issuer", "issuers")
    if len(issuers) > MAX_SIGNERS:
        raise TooLargeError(f"more than {MAX_SIGNERS} issuers", reason="issuers")
    for issuer in issuers:
        check_key_id(issuer)
    if len(set(issuers)) != len(issuers):
        raise QuorumError("an issuer is listed twice", reason="duplicate-signer")
    if list(issuers) != sorted(issuers):
        raise _malformed("issuers must be sorted", "issuers-order")
    if type(signatures) is not tuple or not signatures:
        raise _malformed("at least one signature", "signatures")
    if len(signatures) > MAX_SIGNERS:
        raise TooLargeError(f"more than {MAX_SIGNERS} signatures", reason="signatures")
    for pair in signatures:
        if (
            type(pair) is not tuple
            or len(pair) != 2
            or not isinstance(pair[0], PublicKey)
            or type(pair[1]) is not bytes
            or len(pair[1]) != SIGNATURE_SIZE
        ):
            raise _malformed("a signature is (PublicKey, 64 bytes)", "signatures")
    raws = [pair[0].raw for pair in signatures]
    if len(set(raws)) != len(raws):
        raise QuorumError("one key signed twice", reason="duplicate-signer")
    if raws != sorted(raws):
        raise _malformed("signatures must be sorted by public key", "signatures-order")
    signer_ids = sorted(pair[0].key_id for pair in signatures)
    if signer_ids != list(issuers):
        raise SignatureError(
            "the keys that signed are not exactly the listed issuers", reason="signers"
        )
    return signatures


def _verify_signatures(
    signatures: Sequence[tuple[PublicKey, bytes]], message: bytes, *, writer: str = ""
) -> None:
    for public, signature in signatures:
        try:
            public.verify(signature, message)
        except SignatureError as exc:
            exc.writer = exc.writer or writer or public.key_id
            raise


def _sign_all(keys: Sequence[SigningKey], message: bytes) -> tuple[tuple[PublicKey, bytes], ...]:
    ordered = sorted(keys, key=lambda key: key.public.raw)
    return tuple((key.public, key.sign(message)) for key in ordered)


def _as_keys(keys: SigningKey | Sequence[SigningKey]) -> list[SigningKey]:
    result = [keys] if isinstance(keys, SigningKey) else list(keys)
    if not result:
        raise ValueError("at least one signing key is needed")
    raws = [key.public.raw for key in result]
    if len(set(raws)) != len(raws):
        raise QuorumError("one key given twice", reason="duplicate-signer")
    return result


# --------------------------------------------------------------------------- keys


@attrs.frozen(repr=False)
class PublicKey:
    """An Ed25519 public key: 32 raw bytes, canonical, on the curve, not of small order.

    Attributes:
        raw: The 32-byte encoding.
    """

    raw: bytes

    def __attrs_post_init__(self) -> None:
        _check_public_key(self.raw)

    @property
    def key_id(self) -> str:
        """The key id, derived here from the public key bytes (never taken from a message)."""
        return hashlib.sha256(KEY_ID_DOMAIN + self.raw).digest()[:16].hex()

    def verify(self, signature: bytes, data: bytes) -> None:
        """Verify ``signature`` over ``data``; return ``None`` or raise.

        Raises:
            SignatureError: if the signature does not verify.
        """
        if type(signature) is not bytes or len(signature) != SIGNATURE_SIZE:
            raise SignatureError(
                f"a signature is {SIGNATURE_SIZE} bytes", reason="signature", writer=self.key_id
            )
        try:
            Ed25519PublicKey.from_public_bytes(self.raw).verify(signature, bytes(data))
        except InvalidSignature as exc:
            raise SignatureError(
                "signature does not verify", reason="signature", writer=self.key_id
            ) from exc
        except ValueError as exc:  # cryptography refusing the key itself
            raise SignatureError(
                f"key refused by the Ed25519 backend: {exc}", reason="signature", writer=self.key_id
            ) from exc

    def __repr__(self) -> str:
        return f"PublicKey(key_id={self.key_id!r})"


def _public_of(self: SigningKey) -> PublicKey:
    return PublicKey(self._key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw))


@attrs.frozen(eq=False)
class SigningKey:
    """An Ed25519 private key. The private material never appears in ``repr``.

    Build with :meth:`generate` or :meth:`from_private_bytes`.

    Attributes:
        public: The matching public key.
    """

    _key: Ed25519PrivateKey = attrs.field(repr=False, alias="key")
    public: PublicKey = attrs.field(init=False, default=attrs.Factory(_public_of, takes_self=True))

    @classmethod
    def generate(cls) -> SigningKey:
        """A new random key (from the operating system's CSPRNG)."""
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_private_bytes(cls, data: bytes) -> SigningKey:
        """Load a key from its 32-byte seed (deterministic: tests and vectors use fixed seeds).

        Raises:
            DecodeError: if ``data`` is not 32 bytes.
        """
        if not isinstance(data, bytes | bytearray) or len(data) != 32:
            raise DecodeError("an Ed25519 private key is 32 bytes", reason="private-key")
        return cls(Ed25519PrivateKey.from_private_bytes(bytes(data)))

    def private_bytes(self) -> bytes:
        """The 32-byte seed. Handle with care: it is the whole key."""
        return self._key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())

    @property
    def key_id(self) -> str:
        """The key id of :attr:`public`."""
        return self.public.key_id

    def sign(self, data: bytes) -> bytes:
        """Sign ``data`` (Ed25519 is deterministic: the same bytes give the same signature)."""
        return self._key.sign(bytes(data))
