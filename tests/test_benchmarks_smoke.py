"""The benchmark runner works end to end in its quick mode and writes the documented JSON."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_quick_benchmarks_write_every_figure(tmp_path: Path) -> None:
    out = tmp_path / "figures.json"
    subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--repeats", "1", "--json", str(out)],
        cwd=ROOT,
        check=True,
        capture_output=True,
        timeout=300,
    )
    payload = json.loads(out.read_text())
    assert payload["mode"] == "quick"
    assert payload["machine"]["cpus"] >= 1
    figures = payload["figures"]
    expected = (
        "lww_write_ratio",
        "merge_ratio",
        "seal_per_s",
        "open_per_s",
        "signed_apply_ratio_1",
        "signed_apply_ratio_10",
        "signed_apply_ratio_100",
        "durable_write_ratio",
        "ingest_ratio",
        "catchup_bytes_ratio_k100",
        "catchup_vs_full_state_k100",
        "insync_handshake_bytes",
        "session_open_per_s",
        "memory_ratio",
        "cold_open_ratio",
        "cold_open_ratio_log",
        "scale_converge_s",
        "scale_total_s",
        "scale_bytes",
        "dup_transmission_ratio",
        "tcp_envelopes_per_s",
        "tcp_ratio",
        "nats_envelopes_per_s",
        "nats_ratio",
    )
    skipped = payload["skipped"]
    # NATS figures may be skipped (no nats-server here), but only with a reason in the JSON.
    assert set(skipped) <= {"nats_envelopes_per_s", "nats_ratio"}
    assert all(skipped.values())
    for name in expected:
        if name in skipped:
            continue
        figure = figures[name]
        assert figure["value"] > 0
        assert figure["baseline"] > 0
        assert figure["ratio"] > 0
        assert {"unit", "better"} <= set(figure)


def test_the_stage_breakdown_runs_in_quick_mode() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.breakdown", "--quick", "--repeats", "1"],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
        timeout=300,
    )
    lines = result.stdout.splitlines()
    assert lines[0].startswith("durable write (2000 records")
    assert any(line.startswith("remote ingest (2000 records") for line in lines)
    stages = [line for line in lines if "us/record" in line]
    assert len(stages) == 15
    assert all(float(line.split()[0]) > 0 for line in stages)
