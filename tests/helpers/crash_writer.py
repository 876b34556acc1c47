"""Child process for the crash test: write transactions forever, print each receipt.

Usage: ``python -m tests.helpers.crash_writer DB START`` — opens the replica in ``DB`` and writes
transaction ``START``, ``START + 1``… each setting three keys to the same value, printing
``<n> <envelope id hex>`` only after the receipt (so only after the commit is durable).
"""

from __future__ import annotations

import sys
from pathlib import Path

from souverix_crdt.replica import Identity, Replica
from souverix_crdt.store.sqlite import SqliteStore
from souverix_crdt.testing.fleet import make_fleet


def main() -> None:
    path, start = Path(sys.argv[1]), int(sys.argv[2])
    fleet = make_fleet()
    member = fleet["region-a"]
    replica = Replica(
        Identity(member.key, member.chain), fleet.anchors, SqliteStore.open(path), name="child"
    )
    replica.register_peer("global", ["global"])
    n = start
    while True:
        with replica.transaction("global/region-a") as tx:
            for part in "abc":
                tx.nodes.set(f"{part}{n}", n)
        assert tx.receipt is not None
        sys.stdout.write(f"{n} {tx.receipt.envelope_id.hex()}\n")
        sys.stdout.flush()
        n += 1


if __name__ == "__main__":
    main()
