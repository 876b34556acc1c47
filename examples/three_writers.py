"""Three writers of one scope write concurrently, then exchange updates in a shuffled order.

Each writer has its own replica state and its own hybrid logical clock. They write the same
policy key at the same moment (so the register layer must settle it), plus keys of their own and
a delete. Every update is then delivered to every replica in a random order, each one twice.
The replicas converge to the same state and record the same conflicts.

Run: ``python examples/three_writers.py [--seed N]``
"""

from __future__ import annotations

import argparse
import json
import random

from souverix_crdt.document import FleetState, WriteOp
from souverix_crdt.hlc import Clock

SCOPE = "global/region-a"
WRITERS = ("region-a-cp", "edge-a1-cp", "edge-a2-cp")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    rng = random.Random(args.seed)

    # A shared fake wall clock: every writer reads the same millisecond, so the concurrent
    # writes tie on wall time and the logical counters and writer ids decide.
    wall = [1_764_000_000_000]
    replicas = {name: FleetState() for name in WRITERS}
    clocks = {name: Clock(lambda: wall[0]) for name in WRITERS}
    updates: list[tuple[str, str, int, bytes]] = []

    for round_number in range(3):
        for name in WRITERS:
            ops = [WriteOp("nodes", f"{name}-node-{round_number}", {"status": "healthy"})]
            # Everyone sets the policy in round 0; edge-a1 changes it again in round 2,
            # still without having seen the others' values.
            if round_number == 0 or (round_number == 2 and name == WRITERS[1]):
                ops.append(
                    WriteOp("policies", "max-unavailable", f"{10 + round_number}% by {name}")
                )
            if round_number == 2 and name == WRITERS[0]:
                ops.append(WriteOp("nodes", f"{name}-node-0", deleted=True))
            result = replicas[name].write(SCOPE, name, clocks[name].now(), ops)
            updates.append((SCOPE, name, result.seq, result.update))
        wall[0] += 5

    for name, replica in replicas.items():
        deliveries = [u for u in updates if u[1] != name] * 2  # every update twice
        rng.shuffle(deliveries)
        for scope, writer, seq, update in deliveries:
            replica.receive(scope, writer, seq, update)

    snapshots = [replica.snapshot() for replica in replicas.values()]
    conflict_logs = [replica.conflicts.records() for replica in replicas.values()]
    converged = all(s == snapshots[0] for s in snapshots)
    same_conflicts = all(c == conflict_logs[0] for c in conflict_logs)

    print(f"delivered {len(updates)} updates to 3 replicas, shuffled, each twice")
    print(f"converged: {converged}; identical conflict records: {same_conflicts}")
    print("state:")
    print(json.dumps(snapshots[0][SCOPE], indent=2, sort_keys=True))
    print(f"conflicts ({len(conflict_logs[0])}):")
    for record in conflict_logs[0]:
        print(
            f"  {record.collection}/{record.key}: {record.winner.writer}@{record.winner.hlc} "
            f"beat {record.loser.writer}@{record.loser.hlc} ({record.strategy}, {record.reason})"
        )
    if not (converged and same_conflicts):
        raise SystemExit("replicas diverged")


if __name__ == "__main__":
    main()
