"""The register layer against raw pycrdt: local writes and merging a delta."""

from __future__ import annotations

import hashlib

import msgpack
import pycrdt

from souverix_crdt.document import ScopeState, WriteOp
from souverix_crdt.hlc import Timestamp
from souverix_crdt.scope import Scope

from .runner import Context, benchmark, cost_figure, rate_figure, timed_pair

SCOPE = Scope.parse("global/region-a/edge-a1")
WRITER = "bench-writer"
BATCH = 100


def node_value(i: int, generation: int = 0) -> dict[str, object]:
    """A realistic node record: small, mixed types, with a serial that does not compress."""
    return {
        "status": "healthy",
        "version": f"1.{generation}.{i % 7}",
        "cpu": i % 100,
        "ready": True,
        "serial": hashlib.sha256(f"{i}/{generation}".encode()).hexdigest()[:16],
    }


def keys_and_values(n: int, generation: int = 0) -> list[tuple[str, dict[str, object]]]:
    return [(f"node-{i:06d}", node_value(i, generation)) for i in range(n)]


@benchmark("lww_write")
def lww_write(ctx: Context) -> None:
    """LWW writes, 100 per transaction, vs raw pycrdt Map sets of the same msgpack values."""
    n = 10_000 if ctx.quick else 100_000
    items = keys_and_values(n)
    encoded = [(k, msgpack.packb(v)) for k, v in items]
    batches = [
        [WriteOp("nodes", k, v) for k, v in items[i : i + BATCH]] for i in range(0, n, BATCH)
    ]

    def ours():
        state = ScopeState(SCOPE)

        def run():
            for number, ops in enumerate(batches, start=1):
                state.write(WRITER, Timestamp(1_000_000 + number), ops)

        return run

    def base():
        doc: pycrdt.Doc = pycrdt.Doc()
        nodes = doc.get("nodes", type=pycrdt.Map)

        def run():
            with doc.transaction():
                for key, value in encoded:
                    nodes[key] = value

        return run

    our_times, base_times = timed_pair(ours, base, ctx.repeats)
    ctx.add(
        rate_figure(
            "lww_write_ratio",
            n,
            our_times,
            base_times,
            unit="writes/s",
            bar=0.5,
            note=f"{n} keys; ours: registers encoded and indexed, {BATCH} per transaction; "
            "baseline: pre-encoded msgpack bytes set in one transaction",
        )
    )


@benchmark("merge")
def merge(ctx: Context) -> None:
    """Merging a 1% delta into a scope of n keys vs raw pycrdt apply_update of the same delta."""
    n = 10_000 if ctx.quick else 100_000
    source = ScopeState(SCOPE)
    updates = []
    items = keys_and_values(n)
    for number, start in enumerate(range(0, n, 1000), start=1):
        result = source.write(
            WRITER,
            Timestamp(1_000_000 + number),
            [WriteOp("nodes", k, v) for k, v in items[start : start + 1000]],
        )
        updates.append(result.update)
    changed = keys_and_values(n // 100, generation=1)
    delta = source.write(
        WRITER, Timestamp(2_000_000), [WriteOp("nodes", k, v) for k, v in changed]
    ).update
    full_state = pycrdt.merge_updates(*updates)

    def ours():
        state = ScopeState(SCOPE)
        for seq, update in enumerate(updates, start=1):
            state.receive(WRITER, seq, update)
        seq_delta = len(updates) + 1

        def run():
            state.receive(WRITER, seq_delta, delta)

        return run

    def base():
        doc: pycrdt.Doc = pycrdt.Doc()
        doc.get("nodes", type=pycrdt.Map)
        doc.apply_update(full_state)

        def run():
            doc.apply_update(delta)

        return run

    our_times, base_times = timed_pair(ours, base, ctx.repeats)
    ctx.add(
        cost_figure(
            "merge_ratio",
            our_times,
            base_times,
            unit="s",
            note=f"1% delta ({n // 100} keys) into {n} keys; ours includes decoding registers, "
            "updating the index, history and conflict chains",
        )
    )
