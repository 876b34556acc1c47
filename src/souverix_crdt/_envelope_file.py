"""A minimal file carrier for air-gapped links: envelopes and frontiers through one file.

The federation manager uses it when the bundle transport (``transports/bundle.py``: a signed
manifest, all-or-nothing import, receipts) is not available. It is safe because nothing in it is
trusted: every envelope inside is signed and verified on import exactly as if it came over a
session, and the authority items are checked the same way. What it lacks is the bundle's own
integrity: a tampered file can drop or repeat envelopes (which the chains detect and repair on
the next exchange), but cannot forge or alter any.

File: msgpack map ``{"format", "fleet", "from", "to", "delegations", "revocations",
"checkpoints", "envelopes", "frontiers"}``; ``frontiers`` is the exporter's ``[scope, chain,
seq]`` for the importer's interest: the receipt that settles the importer's sync debt towards it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Final

import attrs

from .codec import decode, encode
from .envelope import read_header
from .errors import DecodeError
from .replica import Replica
from .scope import Scope

__all__ = ["FileCarrier", "FileExchange"]

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
        interest = [peer_scope]
        acknowledged = replica.store.peer_frontiers(peer)
        envelopes: list[bytes] = []
        checkpoints: list[bytes] = []
        frontiers = []
        for scope, chain, seq, _ in replica.frontiers(interest):
            frontiers.append([scope, chain, seq])
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
                "delegations": replica.delegations(),
                "revocations": replica.revocations(),
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
