"""The peer process in-process: writes from other processes, a TCP pair."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

from click.testing import CliRunner

from souverix_crdt.cli import cli
from souverix_crdt.plane.peer import (
    PeerConfig,
    PeerLink,
    PeerProcess,
    link_record,
    open_replica,
)

TOPOLOGY = Path(__file__).resolve().parents[1] / "examples" / "tcp-peers" / "topology.yaml"
EDGE = "global/region-a/edge-a1"


def make_keys(directory: Path) -> Path:
    keys = directory / "keys"
    result = CliRunner().invoke(
        cli, ["keys", "init", str(TOPOLOGY), "--out", str(keys), "--seed", "p"]
    )
    assert result.exit_code == 0, result.output
    return keys


def test_writes_of_other_processes_are_taken_in_once(tmp_path: Path) -> None:
    keys = make_keys(tmp_path)
    config = PeerConfig(plane="region-a", keys=keys, store=tmp_path / "r.sqlite3")
    process = PeerProcess(config, log=lambda _line: None)

    async def scenario() -> None:
        await process.start()
        try:
            assert process.replica is not None
            other = open_replica(config)  # another writer of the same store, as peer write is
            try:
                other.scope("global/region-a").policies.set("a", 1)
                other.scope(EDGE).policies.set("b", 2)
            finally:
                other.close()
            assert process.take_in_outside_writes() == 2
            assert process.replica.get(EDGE, "policies", "b") == 2
            assert process.take_in_outside_writes() == 0
        finally:
            await process.stop()

    asyncio.run(scenario())


async def wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 20
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        await asyncio.sleep(0.02)


def test_a_tcp_pair_syncs_logs_and_records_its_link(tmp_path: Path) -> None:
    keys = make_keys(tmp_path)
    lines: list[str] = []
    upper = PeerConfig(
        plane="global",
        keys=keys,
        store=tmp_path / "g.sqlite3",
        listen_port=0,
        downstream=(PeerLink(name="region-a"),),
        tick_s=0.5,
        watch_s=0.02,
    )

    async def scenario() -> None:
        global_process = PeerProcess(upper, log=lines.append)
        await global_process.start()
        assert global_process.port
        lower = PeerConfig(
            plane="region-a",
            keys=keys,
            store=tmp_path / "r.sqlite3",
            upstream=PeerLink(name="global", host="127.0.0.1", port=global_process.port),
            tick_s=0.5,
            watch_s=0.02,
        )
        region_process = PeerProcess(lower, log=lines.append)
        await region_process.start()
        try:
            writer = open_replica(lower)
            try:
                writer.scope("global/region-a").policies.set("window", "sat")
            finally:
                writer.close()
            replica = global_process.replica
            assert replica is not None
            await wait_for(
                lambda: replica.get("global/region-a", "policies", "window") == "sat", "sync"
            )
            await wait_for(
                lambda: any("global: synced with region-a: 1 envelopes in" in x for x in lines),
                "the sync's log line",
            )
            record = link_record(replica, "region-a")
            assert record is not None
            assert record["connected"] is True
            assert record["transport"] == "tcp"
        finally:
            await region_process.stop()
            await global_process.stop()

    asyncio.run(scenario())
    assert any(line.startswith("global: listening on 127.0.0.1:") for line in lines)
    assert any("region-a: took in 1 envelopes written to the store by others" in x for x in lines)
