"""Bundle carriers for air-gapped links: how the federation manager moves files across them.

:func:`default_carrier` picks the signed bundle transport (``transports/bundle.py``: a signed
manifest, all-or-nothing import, signed receipts) when it is installed, through
:class:`SignedBundleCarrier`; otherwise :class:`FileCarrier`, a minimal stand-in that moves
envelopes and frontiers through one file.

:class:`FileCarrier` is safe because nothing in its files is trusted: every envelope inside is
signed and verified on import exactly as if it came over a session, and the authority items are
checked the same way. What it lacks is the bundle's own integrity: a tampered file can drop or
repeat envelopes (which the chains detect and repair on the next exchange), but cannot forge or
alter any.

File: msgpack map ``{"format", "fleet", "from", "to", "delegations", "revocations",
"checkpoints", "envelopes", "frontiers"}``; ``frontiers`` is the exporter's ``[scope, chain,
seq]`` for the importer's interest: the receipt that settles the importer's sync debt towards it.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any, Final

import attrs

from .codec import decode, encode
from .envelope import read_header
from .errors import DecodeError
from .replica import Replica
from .scope import Scope

__all__ = ["FileCarrier", "FileExchange", "SignedBundleCarrier", "default_carrier"]

_FORMAT: Final = "souverix-envelope-file/1"
_KEYS: Final = frozenset(
    {
        "format",
        "fleet",
        "from",
        "to",
        "delegations",
        "revocations",
        "checkpoints",
        "envelopes",
        "frontiers",
    }
)


@attrs.frozen
class FileExchange:
    """What one file carried.

    Attributes:
        path: The file.
        envelopes: Envelopes in it (exported) or newly applied from it (imported).
        bytes: The file's size.
    """

    path: Path
    envelopes: int
    bytes: int


class FileCarrier:
    """Exports what a peer lacks to a file and imports such files (see the module docstring)."""

    def export_bundle(
        self, replica: Replica, path: Path, *, peer: str, peer_scope: Scope
    ) -> FileExchange:
        """Write everything ``peer`` (whose grant is ``peer_scope``) has not acknowledged."""
        return self._export(replica, path, peer=peer, interest=[peer_scope], receipt=False)

    def export_receipt(self, replica: Replica, path: Path, *, peer: str) -> FileExchange:
        """Write only this replica's frontiers, acknowledging what ``peer`` sent."""
        return self._export(replica, path, peer=peer, interest=None, receipt=True)

    def import_receipt(self, replica: Replica, path: Path) -> FileExchange:
        """Apply a receipt (the same format, without envelopes)."""
        return self.import_bundle(replica, path)

    def _export(
        self,
        replica: Replica,
        path: Path,
        *,
        peer: str,
        interest: list[Scope] | None,
        receipt: bool,
    ) -> FileExchange:
        acknowledged = replica.store.peer_frontiers(peer)
        envelopes: list[bytes] = []
        checkpoints: list[bytes] = []
        frontiers = []
        for scope, chain, seq, _ in replica.frontiers(interest):
            frontiers.append([scope, chain, seq])
            if receipt:
                continue
            have = acknowledged.get((scope, chain), 0)
            while have < seq:
                checkpoint, batch = replica.catch_up(scope, chain, have, 1000)
                if checkpoint is not None:
                    checkpoints.append(checkpoint)
                    have = read_header(checkpoint).seq
                    continue
                if not batch:
                    break
                envelopes.extend(batch)
                have += len(batch)
        data = encode(
            {
                "format": _FORMAT,
                "fleet": replica.fleet_id,
                "from": replica.name,
                "to": peer,
                "delegations": [] if receipt else replica.delegations(),
                "revocations": [] if receipt else replica.revocations(),
                "checkpoints": checkpoints,
                "envelopes": envelopes,
                "frontiers": frontiers,
            }
        )
        temporary = path.with_name(path.name + ".partial")
        temporary.write_bytes(data)
        os.replace(temporary, path)  # a reader never sees half a file
        return FileExchange(path, len(envelopes), len(data))

    def import_bundle(self, replica: Replica, path: Path) -> FileExchange:
        """Verify and apply a file written by :meth:`export_bundle`; settle the debt it acks.

        Raises:
            DecodeError: the file is not such a file, or is another fleet's.
        """
        data = path.read_bytes()
        document: Any = decode(data)
        if not isinstance(document, dict) or document.keys() != _KEYS:
            raise DecodeError("not an envelope file", reason="malformed")
        if document["format"] != _FORMAT or document["fleet"] != replica.fleet_id:
            raise DecodeError("an envelope file of another format or fleet", reason="foreign")
        source = str(document["from"])
        replica.add_delegations(document["delegations"])
        replica.add_revocations(document["revocations"])
        for checkpoint in document["checkpoints"]:
            replica.ingest_checkpoint(checkpoint, source=source)
        results = replica.ingest_many(document["envelopes"], source=source)
        applied = sum(1 for r in results if r.outcome.value == "applied")
        replica.acknowledge(source, [(str(s), str(c), int(q)) for s, c, q in document["frontiers"]])
        return FileExchange(path, applied, len(data))


class SignedBundleCarrier:
    """Carries signed bundles and receipts of :mod:`souverix_crdt.transports.bundle`.

    Args:
        module: The bundle transport module (passed in so that this adapter does not import it
            at module load; see :func:`default_carrier`).
    """

    def __init__(self, module: Any) -> None:
        self._bundle = module

    def export_bundle(self, replica: Replica, path: Path, *, peer: str, peer_scope: Scope) -> Any:
        """Write a signed bundle of what ``peer`` lacks."""
        return self._bundle.export_bundle(replica, path, peer=peer, peer_scope=peer_scope)

    def import_bundle(self, replica: Replica, path: Path) -> Any:
        """Verify a whole bundle, then apply it."""
        return self._bundle.import_bundle(replica, path)

    def export_receipt(self, replica: Replica, path: Path, *, peer: str) -> Any:
        """Write a signed receipt of this replica's frontiers for ``peer``."""
        return self._bundle.export_receipt(replica, path, for_peer=peer)

    def import_receipt(self, replica: Replica, path: Path) -> Any:
        """Verify a receipt and settle the sync debt towards its source."""
        return self._bundle.import_receipt(replica, path)


def default_carrier() -> FileCarrier | SignedBundleCarrier:
    """Signed bundles when the bundle transport is installed, else :class:`FileCarrier`."""
    try:
        # Imported by name so that this module loads (and type-checks) with or without it.
        module = importlib.import_module("souverix_crdt.transports.bundle")
    except ImportError:
        return FileCarrier()
    return SignedBundleCarrier(module)
