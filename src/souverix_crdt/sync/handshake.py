"""The session handshake's proof: possession of a plane key, bound to one fresh transcript.

Each side of a session sends a :class:`~souverix_crdt.sync.messages.Hello` with its chain and
a fresh nonce, then a :class:`~souverix_crdt.sync.messages.Proof`: an Ed25519 signature, by the
key its chain names, over

    SHA-256( HANDSHAKE_DOMAIN || u32 protocol version || lp(fleet id)
             || lp(signer's hello frame) || lp(verifier's hello frame) )

where ``lp`` is a 4-byte big-endian length prefix and a hello frame is the exact bytes sent.

Why this shape:

* Both nonces are in the signed bytes, so a proof is good for one session only: a recorded
  handshake (or a captured hello) cannot be replayed, because the replayer cannot sign a
  transcript holding the other side's fresh nonce.
* The signer's own hello comes first, so a proof cannot be reflected back at its signer as if
  the peer had made it (the two orders give different transcripts); a session with one's own
  key is refused outright as well.
* The domain prefix keeps a proof from being valid as any other signed object of the library
  (envelopes, delegations, revocations, bundles), and those from being valid as a proof.
* Signing exact frames, not re-encoded fields, means both sides hash the same bytes whatever
  either decoder accepts.

The proof authenticates the handshake, not the bytes after it: on a network an attacker can
see or alter, run sessions over TLS (mutual TLS ties the connection to a plane certificate).
Envelopes stay safe either way — each is signed by its writer — but frontiers and acks are not.
"""

from __future__ import annotations

import hashlib
from typing import Final

from souverix_crdt.authority import PublicKey, SigningKey

from .messages import PROTOCOL_VERSION

__all__ = ["HANDSHAKE_DOMAIN", "sign_proof", "transcript_hash", "verify_proof"]

#: Prefix of every signed handshake transcript: a proof is valid for nothing else.
HANDSHAKE_DOMAIN: Final = b"souverix-crdt/session-proof/v2\x00"


def _lp(data: bytes) -> bytes:
    return len(data).to_bytes(4, "big") + data


def transcript_hash(fleet_id: str, signer_hello: bytes, verifier_hello: bytes) -> bytes:
    """The digest a proof signs: this fleet, this protocol version, both hellos in order."""
    return hashlib.sha256(
        HANDSHAKE_DOMAIN
        + PROTOCOL_VERSION.to_bytes(4, "big")
        + _lp(fleet_id.encode())
        + _lp(signer_hello)
        + _lp(verifier_hello)
    ).digest()


def sign_proof(key: SigningKey, fleet_id: str, own_hello: bytes, peer_hello: bytes) -> bytes:
    """Our proof for a session whose hellos are ``own_hello`` (ours) and ``peer_hello``."""
    return key.sign(transcript_hash(fleet_id, own_hello, peer_hello))


def verify_proof(
    key: PublicKey, signature: bytes, fleet_id: str, peer_hello: bytes, own_hello: bytes
) -> None:
    """Check the peer's proof; return ``None`` or raise.

    Raises:
        SignatureError: the signature is not ``key``'s over this session's transcript.
    """
    key.verify(signature, transcript_hash(fleet_id, peer_hello, own_hello))
