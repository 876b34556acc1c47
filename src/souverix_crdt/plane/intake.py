"""Taking in what a store holds that a replica does not: one plane's writes made elsewhere.

``peer run`` takes in what other processes commit to its own store (a ``peer write`` with no
process to talk to, a bundle import, an operator's revocation), and the dashboard of a running
plane follows that store from a process of its own. Both do it the same way, through the
ordinary verified ingest path, never by trusting the rows.
"""

from __future__ import annotations

from typing import Final

from souverix_crdt.replica import IngestOutcome, Replica
from souverix_crdt.store.base import Store

__all__ = ["StoreIntake"]

# Envelopes read from the store per ingest call.
_PAGE: Final = 256


class StoreIntake:
    """Takes in a store's delegations, revocations and envelopes into a replica.

    Chains are compared with the store's frontiers. A chain whose stored envelopes the replica
    refused (revoked, equivocating) is tried once per new stored sequence number, not on every
    look.
    """

    def __init__(self) -> None:
        self._authority = (-1, -1)
        self._tried: dict[tuple[str, str], int] = {}

    def take_in(self, replica: Replica, store: Store) -> int:
        """Ingest what ``store`` holds that ``replica`` does not; return envelopes applied."""
        authority = (len(store.delegations()), len(store.revocations()))
        if authority != self._authority:
            self._authority = authority
            replica.add_delegations(item.data for item in store.delegations())
            replica.add_revocations(item.data for item in store.revocations())
        applied = 0
        for (scope, chain), (seq, _) in sorted(store.frontiers().items()):
            held = replica.chain_seq(scope, chain)
            if seq <= held or self._tried.get((scope, chain), 0) >= seq:
                continue
            self._tried[(scope, chain)] = seq
            while held < seq:
                rows = store.envelopes_after(scope, chain, held, _PAGE)
                if not rows:
                    break
                results = replica.ingest_many([row.data for row in rows])
                applied += sum(r.outcome is IngestOutcome.APPLIED for r in results)
                now_held = replica.chain_seq(scope, chain)
                if now_held <= held:
                    break  # refused (revoked, cut): looked at again when the store grows
                held = now_held
        return applied
