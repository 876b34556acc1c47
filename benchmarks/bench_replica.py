"""The replica against raw pycrdt and naive sync: durable writes, ingest, catch-up bytes."""

from __future__ import annotations

import tempfile
from pathlib import Path

import msgpack
import pycrdt

from souverix_crdt.authority import verify_chain
from souverix_crdt.document import WriteOp
from souverix_crdt.envelope import open_envelope
from souverix_crdt.hlc import Timestamp
from souverix_crdt.replica import Identity, Replica
from souverix_crdt.store.memory import MemoryStore
from souverix_crdt.store.sqlite import SqliteStore
from souverix_crdt.sync.session import SyncSession
from souverix_crdt.testing.cluster import Cluster
from souverix_crdt.testing.fleet import NOW, make_fleet

from .bench_lww import keys_and_values
from .runner import Context, Figure, benchmark, cost_figure, rate_figure, timed_pair

FLEET = make_fleet()
SCOPE = "global/region-a"
BATCH = 100


def make_replica(name: str, store: object) -> Replica:
    member = FLEET[name]
    return Replica(
        Identity(member.key, member.chain),
        FLEET.anchors,
        store,  # type: ignore[arg-type]
        name=name,
        wall_clock=lambda: NOW,
        epoch=1,
    )


def raw_set(encoded: list[tuple[str, bytes]]):
    doc: pycrdt.Doc = pycrdt.Doc()
    nodes = doc.get("nodes", type=pycrdt.Map)

    def run() -> None:
        with doc.transaction():
            for key, value in encoded:
                nodes[key] = value

    return run


@benchmark("durable_write")
def durable_write(ctx: Context) -> None:
    """Signed, durable writes (100 per transaction, SQLite synchronous=FULL) vs raw pycrdt."""
    n = 5_000 if ctx.quick else 20_000
    items = keys_and_values(n)
    encoded = [(k, msgpack.packb(v)) for k, v in items]
    batches = [
        [WriteOp("nodes", k, v) for k, v in items[i : i + BATCH]] for i in range(0, n, BATCH)
    ]
    directory = Path(tempfile.mkdtemp(prefix="souverix-bench-"))
    counter = [0]
    for synchronous, name, bar in (
        ("FULL", "durable_write_ratio", 0.3),
        ("NORMAL", "durable_write_ratio_normal", None),
    ):

        def ours(synchronous: str = synchronous):
            counter[0] += 1
            path = directory / f"w{counter[0]}.sqlite3"
            replica = make_replica("region-a", SqliteStore.open(path, synchronous=synchronous))

            def run() -> None:
                for ops in batches:
                    replica.write(SCOPE, ops)

            return run

        our_times, base_times = timed_pair(ours, lambda: raw_set(encoded), ctx.repeats)
        ctx.add(
            rate_figure(
                name,
                n,
                our_times,
                base_times,
                unit="writes/s",
                bar=bar,
                note=f"{n} writes, {BATCH} per transaction: register layer, Ed25519 envelope, "
                f"SQLite WAL commit with synchronous={synchronous}"
                + (" (opt-in, not power-loss safe: shows the cost of fsync)" if bar is None else "")
                + "; baseline: pycrdt Map set of the same pre-encoded values in one transaction",
            )
        )


def raw_apply(payloads: list[bytes]):
    """The ingest baseline: a fresh pycrdt ``Doc`` applying the same updates."""
    doc: pycrdt.Doc = pycrdt.Doc()
    doc.get("nodes", type=pycrdt.Map)

    def run() -> None:
        for payload in payloads:
            doc.apply_update(payload)

    return run


def envelopes_from(n: int, per_envelope: int) -> tuple[Replica, list[bytes], list[bytes]]:
    """A writer's envelopes for n keys, and the raw pycrdt updates they carry."""
    writer = make_replica("region-a", MemoryStore())
    items = keys_and_values(n)
    for i in range(0, n, per_envelope):
        writer.write(SCOPE, [WriteOp("nodes", k, v) for k, v in items[i : i + per_envelope]])
    frames = writer.envelopes_after(SCOPE, writer.chain, 0, n)
    authority = writer.authority
    payloads = [
        open_envelope(f, authority, physical_now=NOW, max_offset=500).payload for f in frames
    ]
    return writer, frames, payloads


@benchmark("ingest")
def ingest(ctx: Context) -> None:
    """Remote ingest (verify + order + apply + durable commit) vs raw pycrdt apply_update."""
    n = 5_000 if ctx.quick else 20_000
    writer, frames, payloads = envelopes_from(n, BATCH)
    directory = Path(tempfile.mkdtemp(prefix="souverix-bench-"))
    counter = [0]

    def ours():
        counter[0] += 1
        receiver = make_replica("global", SqliteStore.open(directory / f"r{counter[0]}.sqlite3"))
        receiver.add_delegations(writer.delegations())

        def run() -> None:
            # As a sync session does: one durable commit per received batch of 100 envelopes.
            for i in range(0, len(frames), 100):
                receiver.ingest_many(frames[i : i + 100])

        return run

    our_times, base_times = timed_pair(ours, lambda: raw_apply(payloads), ctx.repeats)
    ctx.add(
        rate_figure(
            "ingest_ratio",
            n,
            our_times,
            base_times,
            unit="writes/s",
            bar=0.2,
            note=f"{len(frames)} envelopes of {BATCH} writes, ingested 100 per commit into "
            "SQLite (FULL); baseline: pycrdt apply_update of the same updates",
        )
    )


def wire_bytes(cluster: Cluster) -> int:
    return cluster.network.totals.bytes_delivered


def catchup_case(n: int, k: int) -> tuple[int, int, int]:
    """Bytes to catch up after k changed keys (reconnect included), payload, full state."""
    cluster = Cluster(FLEET, ["region-a", "global"], batch_size=100)
    writer = cluster["region-a"]
    items = keys_and_values(n)
    for i in range(0, n, 1000):
        writer.write(SCOPE, [WriteOp("nodes", key, v) for key, v in items[i : i + 1000]])
    link = cluster.link("region-a", "global")
    cluster.settle()
    for session, end in link.sessions():
        session.close("benchmark")
        end.close_nowait()
    cluster.pump()
    changed = keys_and_values(k, generation=1)
    for i in range(0, k, BATCH):
        writer.write(SCOPE, [WriteOp("nodes", key, v) for key, v in changed[i : i + BATCH]])
    before = wire_bytes(cluster)
    cluster.relink("region-a", "global")
    cluster.settle()
    assert cluster["global"].digest() == writer.digest()
    sent = wire_bytes(cluster) - before
    payload = sum(len(key.encode()) + len(msgpack.packb(v)) for key, v in changed)
    full = len(writer.fleet.scope(SCOPE).document(writer.chain).encode_state())
    return sent, payload, full


@benchmark("catchup")
def catchup(ctx: Context) -> None:
    """Bytes on the wire to catch up k changed keys, vs the payload and vs full-state sync."""
    n = 10_000 if ctx.quick else 100_000
    for k in (1, 100, 10_000):
        if k > n:
            continue
        runs = [catchup_case(n, k) for _ in range(1 if ctx.quick else 3)]
        sent = [r[0] for r in runs]
        payload = [r[1] for r in runs]
        full = [r[2] for r in runs]
        ctx.add(
            cost_figure(
                f"catchup_bytes_ratio_k{k}",
                [float(x) for x in sent],
                [float(x) for x in payload],
                unit="bytes",
                bar=1.3 if k == 100 else None,
                note=f"reconnect after {k} changed keys of {n} (hello, acks included); "
                "baseline: the changed keys plus their msgpack-encoded values",
            )
        )
        ctx.add(
            cost_figure(
                f"catchup_vs_full_state_k{k}",
                [float(x) for x in sent],
                [float(x) for x in full],
                unit="bytes",
                note=f"same bytes ÷ the writer document's full pycrdt state ({n} keys)",
            )
        )


def handshake_bytes(n: int) -> int:
    cluster = Cluster(FLEET, ["region-a", "global"], batch_size=100)
    writer = cluster["region-a"]
    items = keys_and_values(n)
    for i in range(0, n, 1000):
        writer.write(SCOPE, [WriteOp("nodes", key, v) for key, v in items[i : i + 1000]])
    cluster.link("region-a", "global")
    cluster.settle()
    before = wire_bytes(cluster)
    cluster.relink("region-a", "global")
    cluster.settle()
    return wire_bytes(cluster) - before


@benchmark("handshake")
def handshake(ctx: Context) -> None:
    """Bytes for two replicas already in sync to open a session (must not grow with state)."""
    small = handshake_bytes(1_000)
    large = handshake_bytes(10_000 if ctx.quick else 100_000)
    ctx.add(
        Figure(
            name="insync_handshake_bytes",
            value=float(large),
            unit="bytes",
            baseline=float(small),
            ratio=large / small,
            better="lower",
            note=f"value: in-sync handshake at {10_000 if ctx.quick else 100_000} keys; "
            "baseline: at 1,000 keys; ratio 1.0 means it does not grow with state",
        )
    )


@benchmark("session_open")
def session_open(ctx: Context) -> None:
    """Sessions opened per second between two in-sync replicas, vs the signatures they need.

    Opening is the handshake (hello, proof, frontiers both ways). Its baseline is the raw
    cryptography a mutual handshake cannot avoid, done in the same process: each side verifies
    the other's delegation chain and signs and verifies one proof.
    """
    n = 50 if ctx.quick else 300
    upper = make_replica("global", MemoryStore())
    lower = make_replica("region-a", MemoryStore())
    at = Timestamp(NOW)
    chains = [FLEET["global"].chain, FLEET["region-a"].chain]
    keys = [FLEET["global"].key, FLEET["region-a"].key]
    transcript = b"\x00" * 32

    def ours():
        def run() -> None:
            for _ in range(n):
                a, b = SyncSession(upper, live=False), SyncSession(lower, live=False)
                a.start()
                b.start()
                while not (a.authenticated and b.authenticated):
                    for frame in a.data_to_send():
                        b.receive(frame)
                    for frame in b.data_to_send():
                        a.receive(frame)
                a.close()
                b.close()

        return run

    def base():
        def run() -> None:
            for _ in range(n):
                for chain, key in zip(chains, keys, strict=True):
                    verify_chain(FLEET.anchors, chain, at=at)
                    key.public.verify(key.sign(transcript), transcript)

        return run

    our_times, base_times = timed_pair(ours, base, ctx.repeats)
    ctx.add(
        rate_figure(
            "session_open_per_s",
            n,
            our_times,
            base_times,
            unit="sessions/s",
            note="in-sync global and region-a open a session (both handshakes and frontiers); "
            "baseline: two chain verifications and two proof signs and verifies",
        )
    )
