"""Three control planes write one scope concurrently, then sync over a lossy network.

global, region-a and edge-a1 each open a :class:`~souverix_crdt.replica.Replica` over its own
SQLite store, with keys bootstrapped from the brief's topology. While nothing is connected, all
three write the same policy key of edge-a1's scope at the same millisecond (so the register
layer must settle it), plus a key of their own. Then the tree's two links come up over a seeded
in-memory network that drops, duplicates and reorders frames; the sessions re-send what is lost.
Every replica ends with the same state and the same audit log: edge-a1 is conditionally
autonomous, so the highest authority's write wins there.

Run: ``python examples/three_writers.py [--seed N]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
from pathlib import Path

from souverix_crdt.plane.keyring import bootstrap_keys
from souverix_crdt.plane.topology import default_topology
from souverix_crdt.replica import Replica
from souverix_crdt.store.sqlite import SqliteStore
from souverix_crdt.sync.driver import run_session
from souverix_crdt.sync.session import SyncSession
from souverix_crdt.transports.memory import MemoryNetwork

SCOPE = "global/region-a/edge-a1"
PLANES = ("global", "region-a", "edge-a1")
LINKS = (("global", "region-a"), ("region-a", "edge-a1"))
#: Every replica reads this wall clock (ms): the three writes happen in the same millisecond.
NOW = 1_767_225_600_000
#: Pump rounds before giving up (a hang guard; a few dozen are enough at these fault rates).
MAX_ROUNDS = 2000


async def sync(replicas: dict[str, Replica], seed: int) -> None:
    """Run a session at each end of every link until the network has nothing left in flight."""
    network = MemoryNetwork(seed=seed)
    network.set_faults(drop=0.2, duplicate=0.2, reorder=0.3)
    ends, tasks = [], []
    for upper, lower in LINKS:
        for replica, transport in zip(
            (replicas[upper], replicas[lower]), network.connect(upper, lower), strict=True
        ):
            # A short tick: a session whose frames were lost re-sends its hello soon.
            session = SyncSession(replica, batch_size=10)
            tasks.append(asyncio.create_task(run_session(session, transport, tick_interval=0.01)))
            ends.append(transport)
    for _ in range(MAX_ROUNDS):
        if len({replica.digest() for replica in replicas.values()}) == 1:
            break
        await network.pump()  # frames move only when pumped
        await asyncio.sleep(0.02)  # let the sessions' ticks re-send what was dropped
    else:
        raise SystemExit(f"not converged after {MAX_ROUNDS} rounds")
    network.clear_faults()
    for transport in ends:
        await transport.close()
    await asyncio.gather(*tasks)


def main() -> None:
    """Write, sync and print the converged state and the settled conflicts."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    keys = bootstrap_keys(default_topology(), seed=args.seed, wall_clock=lambda: NOW)

    with tempfile.TemporaryDirectory() as folder:
        replicas = {
            name: Replica(
                keys.identity(name),
                keys.anchors,
                SqliteStore.open(Path(folder) / f"{name}.sqlite3"),
                name=name,
                wall_clock=lambda: NOW,
                epoch=index + 1,  # fixed epochs: the same output on every run
            )
            for index, name in enumerate(PLANES)
        }
        for name, replica in replicas.items():
            with replica.transaction(SCOPE) as tx:
                tx.policies.set("maintenance-window", f"{name} says sun 02:00")
                tx.meta.set(f"note-from-{name}", "written while offline")

        asyncio.run(sync(replicas, args.seed))

        edge = replicas["edge-a1"]
        print(json.dumps(edge.snapshot(), indent=2, sort_keys=True))
        print(f"converged: {len({r.digest() for r in replicas.values()}) == 1}")
        for record in edge.conflicts():
            print(f"conflict: {record}")
        for replica in replicas.values():
            assert [str(r) for r in replica.conflicts()] == [str(r) for r in edge.conflicts()]
            replica.close()


if __name__ == "__main__":
    main()
