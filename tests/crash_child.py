"""Child process of the crash test: commit numbered batches forever, print each number after commit.

Run as ``python -m tests.crash_child PATH``. It resumes after the last batch the store holds, so
the parent can kill it (SIGKILL) and start it again on the same file as often as it likes.
"""

from __future__ import annotations

import sys

from souverix_crdt.hlc import Timestamp
from souverix_crdt.store.base import Batch, OutboxEntry, StoredEnvelope
from souverix_crdt.store.sqlite import SqliteStore

SCOPE = "global/region-a"
WRITER = "w-crash"
PEER = "upstream"
PARTS = 3
# Big enough that a commit writes several pages, so a kill can land in the middle of one.
PAYLOAD = 3000


def envelope_id(n: int, part: int) -> bytes:
    return f"batch {n} part {part}".encode().ljust(32, b".")


def crash_batch(n: int) -> Batch:
    """Batch ``n``: three envelopes, their outbox entries, two meta values and the HLC."""
    envelopes = [
        StoredEnvelope(
            id=envelope_id(n, part),
            scope=SCOPE,
            writer=WRITER,
            seq=PARTS * n + part + 1,
            hlc=Timestamp(1_000 + n, part),
            data=bytes([n % 256, part]) * (PAYLOAD // 2),
        )
        for part in range(PARTS)
    ]
    return Batch(
        envelopes=envelopes,
        outbox=[OutboxEntry(PEER, e.id, len(e.data), 1_000 + n) for e in envelopes],
        meta={f"batch-{n}": b"done", "last": n.to_bytes(8, "big")},
        hlc=Timestamp(1_000 + n, PARTS),
    )


def main(path: str) -> None:
    store = SqliteStore.open(path)
    last = store.meta("last")
    n = 0 if last is None else int.from_bytes(last, "big") + 1
    while True:
        store.commit(crash_batch(n))
        # Only after commit returned: a printed number is a receipt the parent may rely on.
        sys.stdout.write(f"{n}\n")
        sys.stdout.flush()
        n += 1


if __name__ == "__main__":
    main(sys.argv[1])
