"""The spool-directory transport: conformance, a sync session through files, another process.

:class:`FileBundleTransport` moves frames as files (one atomic file per frame), so the frame-level
conformance suite that memory, TCP and NATS pass runs over it unchanged. Air-gapped bundles
themselves (export, import, receipts) are tested in ``test_bundle.py``.
"""

from __future__ import annotations

import asyncio
import sys
import textwrap
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import pytest

from souverix_crdt.errors import FrameTooLargeError, TransportBrokenError
from souverix_crdt.replica import Identity, Replica
from souverix_crdt.store.memory import MemoryStore
from souverix_crdt.sync.driver import StopReason, run_session
from souverix_crdt.sync.session import SyncSession
from souverix_crdt.testing.fleet import NOW, make_fleet
from souverix_crdt.testing.transport_conformance import TransportConformance
from souverix_crdt.transports.base import DEFAULT_MAX_FRAME, Transport
from souverix_crdt.transports.bundle import FileBundleTransport

GUARD = 30.0
FLEET = make_fleet()
EDGE = "global/region-a/edge-a1"
REGION = "global/region-a"


def run(scenario: Coroutine[Any, Any, None]) -> None:
    async def guarded() -> None:
        async with asyncio.timeout(GUARD):
            await scenario

    asyncio.run(guarded())


def make_suite(
    spool: Path, *, max_frame: int = DEFAULT_MAX_FRAME, **options: Any
) -> TransportConformance:
    pairs = 0

    async def make_pair() -> tuple[Transport, Transport]:
        nonlocal pairs
        pairs += 1
        return FileBundleTransport.pair(
            spool / f"connection-{pairs}", max_frame=max_frame, **options
        )

    async def inject_oversized(sender: Transport) -> None:
        # A hostile peer: a frame file announcing one byte more than the limit.
        assert isinstance(sender, FileBundleTransport)
        header = (sender.max_frame + 1).to_bytes(4, "big")
        (sender.outgoing / f"{sender._sent:012d}.frame").write_bytes(header)
        sender._sent += 1

    return TransportConformance(
        make_pair=make_pair,
        inject_oversized=inject_oversized,
        max_frame=max_frame,
        timeout=GUARD / 2,
    )


@pytest.mark.parametrize("name", TransportConformance.check_names(receive_limit=True))
def test_conformance(tmp_path: Path, name: str) -> None:
    run(make_suite(tmp_path).run(name))


def test_conformance_without_fsync(tmp_path: Path) -> None:
    async def scenario() -> None:
        names = await make_suite(tmp_path, fsync=False, max_frame=64 * 1024).run_all()
        assert "check_oversized_frame_refused_at_receive" in names

    run(scenario())


def test_frames_are_whole_files_and_are_consumed(tmp_path: Path) -> None:
    async def scenario() -> None:
        a, b = FileBundleTransport.pair(tmp_path, "edge-a1", "region-a")
        await a.send(b"first")
        await a.send(b"")
        assert sorted(p.name for p in a.outgoing.iterdir()) == [
            "000000000000.frame",
            "000000000001.frame",
        ]
        assert (a.outgoing / "000000000000.frame").read_bytes() == b"\x00\x00\x00\x05first"
        assert await b.receive() == b"first"
        assert await b.receive() == b""
        assert list(a.outgoing.iterdir()) == []
        await a.close()
        assert (a.outgoing / "closed").read_text() == "2"
        with pytest.raises(TransportBrokenError):
            await b.receive()
        await b.close()

    run(scenario())


def test_a_spool_serves_one_connection(tmp_path: Path) -> None:
    async def scenario() -> None:
        a, _ = FileBundleTransport.pair(tmp_path)
        await a.send(b"x")
        with pytest.raises(ValueError, match="earlier connection"):
            FileBundleTransport(tmp_path, local="a", peer="b")

    run(scenario())
    for local, peer in (("a/b", "c"), ("", "c"), ("x", "x"), ("..", "c")):
        with pytest.raises(ValueError):
            FileBundleTransport(tmp_path / "other", local=local, peer=peer)
    with pytest.raises(ValueError, match="max_frame"):
        FileBundleTransport(tmp_path / "other", local="a", peer="b", max_frame=2**32)


def test_a_cut_frame_file_breaks_the_transport(tmp_path: Path) -> None:
    async def scenario() -> None:
        a, b = FileBundleTransport.pair(tmp_path)
        (a.outgoing / "000000000000.frame").write_bytes(b"\x00\x00\x00\x09short")
        with pytest.raises(TransportBrokenError) as caught:
            await b.receive()
        assert caught.value.reason == "truncated"
        assert b.closed

    run(scenario())


def make_replica(name: str) -> Replica:
    member = FLEET[name]
    return Replica(
        Identity(member.key, member.chain),
        FLEET.anchors,
        MemoryStore(),
        name=name,
        wall_clock=lambda: NOW,
        epoch=1,
    )


def test_a_sync_session_runs_through_the_spool(tmp_path: Path) -> None:
    async def scenario() -> None:
        edge, region = make_replica("edge-a1"), make_replica("region-a")
        for index in range(30):
            edge.scope(EDGE).nodes.set(f"n{index}", index)
            region.scope(REGION).policies.set(f"p{index}", index)
        edge_end, region_end = FileBundleTransport.pair(tmp_path, "edge-a1", "region-a")
        edge_session = SyncSession(edge, batch_size=8)
        region_session = SyncSession(region, batch_size=8)
        region_task = asyncio.ensure_future(run_session(region_session, region_end))
        edge_task = asyncio.ensure_future(run_session(edge_session, edge_end))
        for _ in range(10_000):
            if edge_session.caught_up and region_session.caught_up:
                break
            await asyncio.sleep(0)
        assert edge.digest() == region.digest()
        edge_session.close("done")
        edge_stats = await edge_task
        region_stats = await region_task
        assert edge_stats.reason is StopReason.SESSION_CLOSED
        assert region_stats.reason is StopReason.SESSION_CLOSED
        assert edge_stats.envelopes_sent == 30
        assert region_stats.envelopes_sent == 30
        await edge_end.close()
        await region_end.close()

    run(scenario())


def test_frames_from_another_process_arrive_by_polling(tmp_path: Path) -> None:
    # No in-process wake-up reaches this receiver: it finds the other process's files when it
    # looks again, every poll_interval.
    child = textwrap.dedent(
        f"""
        import asyncio
        from souverix_crdt.transports.bundle import FileBundleTransport

        async def main():
            end = FileBundleTransport({str(tmp_path)!r}, local="writer", peer="reader")
            for index in range(5):
                await end.send(b"frame-%d" % index)
            await end.close()

        asyncio.run(main())
        """
    )

    async def scenario() -> None:
        reader = FileBundleTransport(tmp_path, local="reader", peer="writer", poll_interval=0.01)
        process = await asyncio.create_subprocess_exec(sys.executable, "-c", child)
        received = []

        async def receive_all() -> None:
            while True:
                received.append(await reader.receive())

        with pytest.raises(TransportBrokenError):
            await receive_all()
        assert await process.wait() == 0
        assert received == [b"frame-%d" % index for index in range(5)]
        await reader.close()

    run(scenario())


def test_an_oversized_frame_file_is_refused_before_its_body_is_read(tmp_path: Path) -> None:
    async def scenario() -> None:
        a, b = FileBundleTransport.pair(tmp_path, max_frame=1024)
        (a.outgoing / "000000000000.frame").write_bytes((2**31).to_bytes(4, "big"))
        a._sent = 1
        with pytest.raises(FrameTooLargeError) as caught:
            await b.receive()
        assert (caught.value.size, caught.value.limit) == (2**31, 1024)
        await a.send(b"next")
        assert await b.receive() == b"next"

    run(scenario())
