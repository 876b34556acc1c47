"""Hostile input against a real replica: a clock no peer can stop, decode bombs.

The attacker is a compromised zone: a real key with a valid chain, signing real envelopes whose
HLC it chooses. Its envelopes are delivered through real sync sessions (:class:`Cluster`).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from souverix_crdt.document import WriteOp
from souverix_crdt.errors import TooLargeError
from souverix_crdt.hlc import MAX_LOGICAL, Timestamp
from souverix_crdt.limits import DEFAULT_LIMITS
from souverix_crdt.replica import IngestOutcome, Replica
from souverix_crdt.testing.cluster import Cluster
from souverix_crdt.testing.fleet import make_fleet

ZONE = "edge-a1"
REGION = "region-a"
ZONE_SCOPE = "global/region-a/edge-a1"
REGION_SCOPE = "global/region-a"


def _hostile_write(zone: Replica, stamp: Timestamp) -> bytes:
    """A real, validly signed write of ``zone`` carrying ``stamp`` as its HLC.

    The zone's clock is the attacker's: bound lifted and set just below ``stamp``, so its next
    write is issued at exactly ``stamp``.
    """
    zone.clock.max_logical = MAX_LOGICAL
    zone.clock.observe(Timestamp(stamp.wall, stamp.logical - 1))
    receipt = zone.write(ZONE_SCOPE, [WriteOp("nodes", "n1", {"state": "frozen?"})])
    assert receipt.hlc == stamp
    (data,) = zone.envelopes_after(ZONE_SCOPE, receipt.chain, receipt.seq - 1, 1)
    return data


@pytest.mark.parametrize(
    "logical",
    [MAX_LOGICAL, DEFAULT_LIMITS.max_remote_logical + 1, DEFAULT_LIMITS.max_remote_logical],
    ids=["overflow", "just-above-bound", "at-bound"],
)
def test_a_signed_envelope_inside_max_offset_cannot_stop_the_receivers_clock(
    logical: int,
) -> None:
    cluster = Cluster(make_fleet(), [ZONE, REGION])
    zone, region = cluster[ZONE], cluster[REGION]
    stamp = Timestamp(cluster.now + 400, logical)  # inside max_offset (500 ms)
    data = _hostile_write(zone, stamp)
    region.add_delegations([link.encode() for link in zone.identity.chain])
    before = region.clock.last

    result = region.ingest(data, source=ZONE)

    if logical > DEFAULT_LIMITS.max_remote_logical:
        # Refused like a far-future envelope: typed, and nothing of it held or applied.
        assert result.outcome is IngestOutcome.REJECTED
        assert isinstance(result.error, TooLargeError)
        assert result.error.reason == "max_remote_logical"
        assert region.clock.last == before
        assert region.get(ZONE_SCOPE, "nodes", "n1") is None
        assert region.status().pending == 0
    else:
        assert result.outcome is IngestOutcome.APPLIED
    # Whatever arrived, local writes keep working and keep increasing, again and again.
    stamps = [region.write(REGION_SCOPE, [WriteOp("nodes", f"r{i}", i)]).hlc for i in range(5)]
    assert stamps == sorted(set(stamps))
    assert stamps[0] > max(before, stamp if result.outcome is IngestOutcome.APPLIED else before)


def test_the_freeze_envelope_sent_through_a_session_leaves_region_writing() -> None:
    cluster = Cluster(make_fleet(), [ZONE, REGION])
    zone, region = cluster[ZONE], cluster[REGION]
    _hostile_write(zone, Timestamp(cluster.now + 400, MAX_LOGICAL))
    cluster.link(ZONE, REGION)
    # Offered again and again over the session: the region refuses it each time and writes on.
    for i in range(3):
        cluster.pump()
        cluster.tick()
        receipt = region.write(REGION_SCOPE, [WriteOp("nodes", f"after-{i}", i)])
        assert receipt.hlc.logical <= DEFAULT_LIMITS.max_remote_logical
    assert region.get(ZONE_SCOPE, "nodes", "n1") is None


# --------------------------------------------------------------------------- decode bombs

MIB = 1024 * 1024
ROOT = Path(__file__).resolve().parents[1]
#: The acceptance bounds: peak resident growth per input byte, CPU seconds per MiB.
MEMORY_FACTOR = 8
CPU_PER_MIB = 1.0
SLACK = 256 * 1024
BOMBS = ["nested-arrays", "tiny-maps", "small-strings", "deep-nesting"]


def _measure(shape: str, size: int, entry: str) -> dict[str, Any]:
    """Decode one bomb in a fresh child process: its peak memory growth and CPU time."""
    done = subprocess.run(
        [sys.executable, "-m", "tests.helpers.decode_bomb", shape, str(size), entry],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return json.loads(done.stdout)  # type: ignore[no-any-return]


def _assert_within_budget(report: dict[str, Any]) -> None:
    size = report["size"]
    assert report["error"] is not None, report  # refused, with a typed error
    # The slack is the child's own granularity (pages, allocator arenas), not the decoder's.
    assert report["peak"] <= MEMORY_FACTOR * size + SLACK, report
    assert report["cpu"] <= CPU_PER_MIB * max(1.0, size / MIB), report


@pytest.mark.parametrize("size", [MIB, 16 * MIB], ids=["1MiB", "16MiB"])
@pytest.mark.parametrize("shape", [*BOMBS, "deflate-bomb", "deflate-mixed"])
def test_a_sync_frame_bomb_costs_a_bounded_multiple_of_its_size(shape: str, size: int) -> None:
    report = _measure(shape, size, "frame")
    _assert_within_budget(report)
    assert report["error"] in {
        "RemoteProtocolError:decode_objects",
        "RemoteProtocolError:decode_expansion",
        "RemoteProtocolError:max_frame",  # a batch inflating past a frame
    }, report


@pytest.mark.parametrize("entry", ["envelope", "manifest"])
@pytest.mark.parametrize("shape", BOMBS)
def test_an_envelope_or_manifest_bomb_is_refused_before_it_is_built(shape: str, entry: str) -> None:
    report = _measure(shape, 4 * MIB, entry)
    _assert_within_budget(report)
    refusals = {"TooLargeError:decode_objects", "TooLargeError:decode_expansion"}
    if entry == "manifest" and "nest" in shape:  # a bundle body nests 4 deep: refused at once
        refusals.add("DecodeError:depth")
    assert report["error"] in refusals, report
