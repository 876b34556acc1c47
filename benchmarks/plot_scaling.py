"""Plot how the scale scenario's cost grows with the fleet: ``docs/performance-scaling.png``.

Runs :func:`benchmarks.bench_scale.run_scale` at several fleet sizes (10 zones per region, a
small number of node records per zone) and draws time and bytes against the number of zones,
on log-log axes with a line of slope 1 for reference::

    .venv/bin/pip install -e '.[bench]'
    .venv/bin/python -m benchmarks.plot_scaling                    # 10, 100, 1000 zones
    .venv/bin/python -m benchmarks.plot_scaling --zones 10 100 --nodes 20 --out /tmp/p.png

The measurements also go to ``benchmarks/results/scaling.json`` (git-ignored).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .bench_scale import ROOT, ScaleResult, run_scale, scale_to_json
from .runner import machine

ZONES_PER_REGION = 10


def measure(zone_counts: list[int], nodes: int) -> list[ScaleResult]:
    results = []
    for zones in zone_counts:
        regions = max(1, zones // ZONES_PER_REGION)
        print(f"{zones} zones ({regions} regions), {nodes} nodes each...", file=sys.stderr)
        result = run_scale(regions, min(zones, ZONES_PER_REGION), nodes)
        print(
            f"  total {result.total_s:.2f} s, converge {result.converge_s:.2f} s, "
            f"link {result.link_s:.2f} s, {result.bytes:,} bytes",
            file=sys.stderr,
        )
        results.append(result)
    return results


def plot(results: list[ScaleResult], nodes: int, out: Path) -> None:
    import matplotlib as mpl  # noqa: PLC0415  (the bench extra)

    mpl.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    zones = [r.zones for r in results]
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4), dpi=100)
    series = (
        ("open sessions", [r.link_s for r in results], "o:"),
        ("round + partition + converge", [r.total_s for r in results], "o-"),
        ("converge after heal", [r.converge_s for r in results], "s--"),
    )
    for label, values, style in series:
        left.plot(zones, values, style, label=label)
    _slope_one(left, zones, results[0].total_s)
    left.set_title("time")
    left.set_ylabel("seconds")
    right.plot(zones, [r.bytes for r in results], "o-", label="bytes on the network")
    right.plot(zones, [r.payload_bytes for r in results], "s--", label="payload x receivers")
    _slope_one(right, zones, results[0].bytes)
    right.set_title("bytes (first write to convergence)")
    right.set_ylabel("bytes")
    for axes in (left, right):
        axes.set_xscale("log")
        axes.set_yscale("log")
        axes.set_xlabel(f"zones (10 per region, {nodes} node records each)")
        axes.grid(visible=True, which="both", alpha=0.3)
        axes.legend(fontsize="small")
    figure.suptitle("souverix-crdt: cost against fleet size (one process, in-memory network)")
    figure.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out)


def _slope_one(axes: object, zones: list[int], start: float) -> None:
    """A dotted line through the first point growing linearly with the number of zones."""
    line = [start * z / zones[0] for z in zones]
    axes.plot(zones, line, color="grey", linestyle=":", label="linear")  # type: ignore[attr-defined]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.plot_scaling", description=__doc__)
    parser.add_argument("--zones", type=int, nargs="+", default=[10, 100, 1000])
    parser.add_argument("--nodes", type=int, default=20, help="node records per zone")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "performance-scaling.png")
    parser.add_argument(
        "--json", type=Path, default=ROOT / "benchmarks" / "results" / "scaling.json"
    )
    args = parser.parse_args(argv)
    results = measure(args.zones, args.nodes)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "machine": machine(),
        "nodes_per_zone": args.nodes,
        "zones_per_region": ZONES_PER_REGION,
        "runs": [scale_to_json(r) for r in results],
    }
    args.json.write_text(json.dumps(payload, indent=2) + "\n")
    plot(results, args.nodes, args.out)
    print(f"wrote {args.out} and {args.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
