"""Signed envelopes: seal and open rates, and the cost of signing on the apply path."""

from __future__ import annotations

from souverix_crdt.document import ScopeState, WriteOp
from souverix_crdt.envelope import open_envelope, seal
from souverix_crdt.hlc import Timestamp
from souverix_crdt.scope import Scope
from souverix_crdt.testing.fleet import NOW, make_fleet

from .bench_lww import keys_and_values
from .runner import Context, benchmark, rate_figure, timed_pair

FLEET = make_fleet()
MEMBER = FLEET["region-a"]
AUTHORITY = FLEET.authority()
SCOPE = Scope.parse("global/region-a")
CHAIN = f"{MEMBER.key_id}~0"


def updates(n_envelopes: int, per_envelope: int) -> list[tuple[bytes, bytes]]:
    """(pycrdt update, state vector) of a writer's consecutive transactions."""
    state = ScopeState(SCOPE)
    items = keys_and_values(n_envelopes * per_envelope)
    out = []
    for i in range(n_envelopes):
        batch = items[i * per_envelope : (i + 1) * per_envelope]
        result = state.write(CHAIN, Timestamp(NOW, i), [WriteOp("nodes", k, v) for k, v in batch])
        out.append((result.update, state.document(CHAIN).state_vector()))
    return out


def sealed(payloads: list[tuple[bytes, bytes]]) -> list[bytes]:
    frames, prev = [], b""
    for seq, (update, vector) in enumerate(payloads, start=1):
        envelope = seal(
            MEMBER.key,
            fleet_id=FLEET.anchors.fleet_id,
            scope=SCOPE,
            seq=seq,
            prev=prev,
            hlc=Timestamp(NOW, seq),
            state_vector=vector,
            delegation_digest=MEMBER.digest,
            payload=update,
        )
        frames.append(envelope.data)
        prev = envelope.id
    return frames


@benchmark("seal_open")
def seal_open(ctx: Context) -> None:
    """Envelopes sealed and opened per second, vs raw Ed25519 sign and verify of the same bytes."""
    n = 300 if ctx.quick else 2_000
    payloads = updates(n, 10)
    frames = sealed(payloads)
    messages = [frame[:200] for frame in frames]
    signatures = [MEMBER.key.sign(m) for m in messages]
    public = MEMBER.key.public

    def ours_seal():
        return lambda: sealed(payloads)

    def base_sign():
        return lambda: [MEMBER.key.sign(m) for m in messages]

    our_times, base_times = timed_pair(ours_seal, base_sign, ctx.repeats)
    ctx.add(
        rate_figure(
            "seal_per_s",
            n,
            our_times,
            base_times,
            unit="envelopes/s",
            note="seal (canonical header, domain-separated Ed25519) of 10-write envelopes; "
            "baseline: raw Ed25519 sign",
        )
    )

    def ours_open():
        def run() -> None:
            for frame in frames:
                open_envelope(frame, AUTHORITY, physical_now=NOW + n, max_offset=500)

        return run

    def base_verify():
        def run() -> None:
            for m, s in zip(messages, signatures, strict=True):
                public.verify(s, m)

        return run

    our_times, base_times = timed_pair(ours_open, base_verify, ctx.repeats)
    ctx.add(
        rate_figure(
            "open_per_s",
            n,
            our_times,
            base_times,
            unit="envelopes/s",
            note="open_envelope (decode, chain, revocation, signature); "
            "baseline: raw Ed25519 verify",
        )
    )


@benchmark("signed_apply")
def signed_apply(ctx: Context) -> None:
    """Writes/s applied through sealed+opened envelopes vs the unsigned apply path."""
    total = 3_000 if ctx.quick else 20_000
    for per_envelope, bar in ((1, None), (10, None), (100, 0.6)):
        n_envelopes = total // per_envelope
        payloads = updates(n_envelopes, per_envelope)
        frames = sealed(payloads)

        def ours(frames: list[bytes] = frames, n_envelopes: int = n_envelopes):
            state = ScopeState(SCOPE)

            def run() -> None:
                for seq, frame in enumerate(frames, start=1):
                    verified = open_envelope(
                        frame, AUTHORITY, physical_now=NOW + n_envelopes, max_offset=500
                    )
                    state.receive(CHAIN, seq, verified.payload, max_hlc=verified.header.hlc)

            return run

        def base(payloads: list[tuple[bytes, bytes]] = payloads):
            state = ScopeState(SCOPE)

            def run() -> None:
                for seq, (update, _) in enumerate(payloads, start=1):
                    state.receive(CHAIN, seq, update)

            return run

        our_times, base_times = timed_pair(ours, base, ctx.repeats)
        ctx.add(
            rate_figure(
                f"signed_apply_ratio_{per_envelope}",
                total,
                our_times,
                base_times,
                unit="writes/s",
                bar=bar,
                note=f"{per_envelope} writes per envelope: open_envelope + apply; baseline: "
                "the same updates applied unsigned",
            )
        )
