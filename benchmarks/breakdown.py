"""Where a durable write and a remote ingest spend their time, stage by stage, per record.

``python -m benchmarks.breakdown [--quick] [--repeats N]``

The two throughput figures whose bars are hardest to meet (``durable_write_ratio`` and
``ingest_ratio``) are made of stages that can each be timed alone on the same data: this runs
every stage separately, ``repeats`` times in turn (median), and prints microseconds per node
record.
Without a profiler, so nothing is inflated by instrumentation; the stages of one path overlap
(each later line includes the earlier ones it builds on), which is how the table reads.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from collections.abc import Callable
from pathlib import Path

import msgpack
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from souverix_crdt.document import ScopeState, WriteOp, WriterDocument, entry_bytes
from souverix_crdt.envelope import open_envelope, seal
from souverix_crdt.hlc import Timestamp
from souverix_crdt.lww import register_stamp
from souverix_crdt.scope import Scope
from souverix_crdt.store.memory import MemoryStore
from souverix_crdt.store.sqlite import SqliteStore
from souverix_crdt.testing.fleet import NOW

from .bench_lww import keys_and_values
from .bench_replica import BATCH, SCOPE, envelopes_from, make_replica, raw_apply, raw_set
from .runner import time_once

Setup = Callable[[], Callable[[], object]]


def medians_us(stages: list[tuple[str, Setup]], records: int, repeats: int) -> list[float]:
    """Median microseconds per record of ``repeats`` fresh runs of each stage.

    The stages take turns (one run of each, then again), so a slow spell of a noisy machine
    spreads over all of them instead of landing on one.
    """
    times: list[list[float]] = [[] for _ in stages]
    for _ in range(repeats):
        for samples, (_, setup) in zip(times, stages, strict=True):
            samples.append(time_once(setup()))
    return [statistics.median(samples) / records * 1e6 for samples in times]


def durable_write_stages(n: int) -> list[tuple[str, Setup]]:
    """The stages of ``Replica.write`` (100 records per transaction) and their baseline."""
    items = keys_and_values(n)
    encoded = [(k, msgpack.packb(v)) for k, v in items]
    batches = [
        [WriteOp("nodes", k, v) for k, v in items[i : i + BATCH]] for i in range(0, n, BATCH)
    ]
    scope = Scope.parse(SCOPE)
    directory = Path(tempfile.mkdtemp(prefix="souverix-breakdown-"))
    counter = [0]

    def register_layer() -> Callable[[], object]:
        state = ScopeState(scope)

        def run() -> None:
            for i, ops in enumerate(batches):
                state.write("w", Timestamp(NOW, i), ops)

        return run

    def signing() -> Callable[[], object]:
        state = ScopeState(scope)
        updates = [state.write("w", Timestamp(NOW, i), ops).update for i, ops in enumerate(batches)]
        key = make_replica("region-a", MemoryStore()).identity.signing_key

        def run() -> None:
            for i, update in enumerate(updates, start=1):
                seal(
                    key,
                    fleet_id="bench",
                    scope=scope,
                    seq=i,
                    prev=b"" if i == 1 else b"\x01" * 32,
                    hlc=Timestamp(NOW, i),
                    state_vector=b"",
                    delegation_digest=b"\x02" * 32,
                    payload=update,
                )

        return run

    def replica(synchronous: str | None) -> Setup:
        def setup() -> Callable[[], object]:
            counter[0] += 1
            store = (
                MemoryStore()
                if synchronous is None
                else SqliteStore.open(directory / f"w{counter[0]}.db", synchronous=synchronous)
            )
            writer = make_replica("region-a", store)

            def run() -> None:
                for ops in batches:
                    writer.write(SCOPE, ops)

            return run

        return setup

    return [
        ("baseline: pycrdt Map set (one transaction)", lambda: raw_set(encoded)),
        ("register layer: ScopeState.write", register_layer),
        ("Ed25519 seal of each transaction's update", signing),
        ("Replica.write, MemoryStore", replica(None)),
        ("Replica.write, SQLite synchronous=OFF", replica("OFF")),
        ("Replica.write, SQLite synchronous=NORMAL", replica("NORMAL")),
        ("Replica.write, SQLite synchronous=FULL (the figure)", replica("FULL")),
    ]


def ingest_stages(n: int) -> list[tuple[str, Setup]]:
    """The stages of ``Replica.ingest_many`` (envelopes of 100 records) and their baseline."""
    writer, frames, payloads = envelopes_from(n, BATCH)
    scope = Scope.parse(SCOPE)
    directory = Path(tempfile.mkdtemp(prefix="souverix-breakdown-"))
    counter = [0]
    values: list[bytes | bytearray] = []
    document = WriterDocument(scope, writer.chain)
    for payload in payloads:
        for _, changes in document.apply(payload):
            values.extend(entry_bytes(change)[0] or b"" for change in changes.values())
    raw_key = Ed25519PrivateKey.generate()
    signatures = [raw_key.sign(frame) for frame in frames]

    def raw_verify() -> Callable[[], object]:
        public = raw_key.public_key()

        def run() -> None:
            for frame, signature in zip(frames, signatures, strict=True):
                public.verify(signature, frame)

        return run

    def opening() -> Callable[[], object]:
        def run() -> None:
            for frame in frames:
                open_envelope(frame, writer.authority, physical_now=NOW, max_offset=500)

        return run

    def document_apply() -> Callable[[], object]:
        target = WriterDocument(scope, writer.chain)

        def run() -> None:
            for payload in payloads:
                target.apply(payload)

        return run

    def validation() -> Callable[[], object]:
        def run() -> None:
            for value in values:
                register_stamp(value)

        return run

    def scope_receive() -> Callable[[], object]:
        state = ScopeState(scope)

        def run() -> None:
            for seq, payload in enumerate(payloads, start=1):
                state.receive(writer.chain, seq, payload)

        return run

    def replica(sqlite: bool) -> Setup:
        def setup() -> Callable[[], object]:
            counter[0] += 1
            store = SqliteStore.open(directory / f"r{counter[0]}.db") if sqlite else MemoryStore()
            receiver = make_replica("global", store)
            receiver.add_delegations(writer.delegations())

            def run() -> None:
                for i in range(0, len(frames), 100):
                    receiver.ingest_many(frames[i : i + 100])

            return run

        return setup

    return [
        ("baseline: pycrdt apply_update", lambda: raw_apply(payloads)),
        ("raw Ed25519 verify of each envelope", raw_verify),
        ("open_envelope (signature, chain, header)", opening),
        ("WriterDocument.apply (pycrdt apply + map events)", document_apply),
        ("register validation (register_stamp)", validation),
        ("ScopeState.receive (apply + validation + index)", scope_receive),
        ("Replica.ingest_many, MemoryStore", replica(False)),
        ("Replica.ingest_many, SQLite FULL (the figure)", replica(True)),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.breakdown", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="2,000 records instead of 20,000")
    parser.add_argument("--repeats", type=int, default=7, help="timed runs per stage")
    args = parser.parse_args(argv)
    n = 2_000 if args.quick else 20_000
    for title, stages in (
        ("durable write", durable_write_stages(n)),
        ("remote ingest", ingest_stages(n)),
    ):
        print(f"{title} ({n} records, {BATCH} per transaction), median of {args.repeats}:")
        for (name, _), median in zip(stages, medians_us(stages, n, args.repeats), strict=True):
            print(f"  {median:7.2f} us/record  {name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
