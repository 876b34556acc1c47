"""Run the benchmarks: ``python -m benchmarks [--quick] [--json FILE] [--only NAME ...]``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from . import (  # noqa: F401  (they register benchmarks)
    bench_authority,
    bench_lww,
    bench_replica,
    bench_scale,
    bench_transports,
)
from .runner import REGISTRY, Context, machine


def number(value: float) -> str:
    """A table cell: one decimal for large values, four significant digits for small ones."""
    return f"{value:14.1f}" if abs(value) >= 100 else f"{value:14.4g}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="reduced sizes, under a minute")
    parser.add_argument("--json", type=Path, help="write figures and machine notes here")
    parser.add_argument("--only", nargs="*", default=None, help="run only these benchmarks")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per side")
    args = parser.parse_args(argv)

    context = Context(quick=args.quick, repeats=args.repeats or (3 if args.quick else 7))
    for name, fn in REGISTRY:
        if args.only and name not in args.only:
            continue
        print(f"running {name}...", file=sys.stderr, flush=True)
        fn(context)

    failed = []
    print(f"{'figure':34} {'value':>14} {'unit':14} {'baseline':>14} {'ratio':>8}  bar")
    for figure in context.figures:
        ratio = "" if figure.ratio is None else f"{figure.ratio:8.3f}"
        baseline = "" if figure.baseline is None else number(figure.baseline)
        verdict = ""
        if figure.bar is not None:
            op = ">=" if figure.better == "higher" else "<="
            ok = figure.passes()
            verdict = f"{op} {figure.bar} {'ok' if ok else 'MISSED'}"
            if not ok:
                failed.append(figure.name)
        print(
            f"{figure.name:34} {number(figure.value)} {figure.unit:14} {baseline:14} {ratio:8}  "
            f"{verdict}"
        )
    for name, reason in context.skipped.items():
        print(f"{name:34} skipped: {reason}")
    if args.json:
        payload = {
            "figures": {f.name: f.to_json() for f in context.figures},
            "machine": machine(),
            "mode": "quick" if args.quick else "full",
            "skipped": context.skipped,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
    if failed:
        print(f"bars missed: {', '.join(failed)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
