"""Crash safety: SIGKILL a writing replica at random points; no receipt is ever lost.

A child process writes transactions of three keys and prints each receipt once it has it. The
parent kills it with SIGKILL after a random number of receipts (seeded), reopens the SQLite file
in this process and checks that every receipted transaction is there, whole, and that no
transaction is half-written. Then the next child continues in the same file.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
from pathlib import Path

from souverix_crdt.replica import Identity, Replica
from souverix_crdt.store.sqlite import SqliteStore
from souverix_crdt.testing.fleet import make_fleet

ROOT = Path(__file__).resolve().parent.parent
ITERATIONS = 12


def reopen(path: Path) -> Replica:
    fleet = make_fleet()
    member = fleet["region-a"]
    return Replica(
        Identity(member.key, member.chain), fleet.anchors, SqliteStore.open(path), name="parent"
    )


def test_sigkill_never_loses_a_receipted_write(tmp_path: Path) -> None:
    rng = random.Random(20261127)
    path = tmp_path / "replica.sqlite3"
    receipts: dict[int, str] = {}
    next_n = 0
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for _ in range(ITERATIONS):
        child = subprocess.Popen(
            [sys.executable, "-m", "tests.helpers.crash_writer", str(path), str(next_n)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert child.stdout is not None
        for _ in range(rng.randint(1, 40)):
            line = child.stdout.readline()
            if not line:
                break
            n, envelope_id = line.split()
            receipts[int(n)] = envelope_id
        child.send_signal(signal.SIGKILL)
        child.wait()
        child.stdout.close()
        replica = reopen(path)
        nodes = replica.snapshot().get("global/region-a", {}).get("nodes", {})
        for n, envelope_id in receipts.items():
            assert replica.store.envelope(bytes.fromhex(envelope_id)) is not None, n
            assert all(nodes.get(f"{part}{n}") == n for part in "abc"), n
        written = {int(key[1:]) for key in nodes}
        for n in written:  # whole or absent: never one key of a transaction without the others
            assert all(nodes.get(f"{part}{n}") == n for part in "abc"), n
        next_n = max(written, default=-1) + 1
        replica.close()
    assert len(receipts) >= ITERATIONS
