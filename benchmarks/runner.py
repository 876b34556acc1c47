"""The benchmark runner: registry, repeated timing with medians, machine notes, JSON output.

Every figure compares the library with a baseline measured in the same process and the same run
(raw pycrdt, plain msgpack, a naive full-state sync), so the ratio survives a noisy machine
better than an absolute number. Each side is timed ``repeats`` times; figures quote the median
with min and max.
"""

from __future__ import annotations

import gc
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pycrdt


@dataclass
class Figure:
    """One reported figure: our value, the baseline's, and their ratio (medians)."""

    name: str
    value: float
    unit: str
    baseline: float | None
    ratio: float | None
    better: str  # "higher" or "lower": which direction of the ratio is good
    bar: float | None = None
    samples: dict[str, list[float]] = field(default_factory=dict)
    note: str = ""

    def passes(self) -> bool | None:
        if self.bar is None or self.ratio is None:
            return None
        return self.ratio >= self.bar if self.better == "higher" else self.ratio <= self.bar

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "value": self.value,
            "unit": self.unit,
            "baseline": self.baseline,
            "ratio": self.ratio,
            "better": self.better,
        }
        if self.bar is not None:
            out["bar"] = self.bar
            out["passes"] = self.passes()
        for side, values in self.samples.items():
            out[f"{side}_min"] = min(values)
            out[f"{side}_max"] = max(values)
            out[f"{side}_runs"] = len(values)
        if self.note:
            out["note"] = self.note
        return out


@dataclass
class Context:
    """What a benchmark function receives: the size mode and a place to put figures."""

    quick: bool
    repeats: int
    figures: list[Figure] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)

    def add(self, figure: Figure) -> None:
        self.figures.append(figure)

    def skip(self, name: str, reason: str) -> None:
        """Record that figure ``name`` could not be measured here, and why (JSON ``skipped``)."""
        self.skipped[name] = reason


BenchFn = Callable[[Context], None]
REGISTRY: list[tuple[str, BenchFn]] = []


def benchmark(name: str) -> Callable[[BenchFn], BenchFn]:
    """Register a benchmark function under ``name``."""

    def register(fn: BenchFn) -> BenchFn:
        REGISTRY.append((name, fn))
        return fn

    return register


def time_once(fn: Callable[[], Any]) -> float:
    """Seconds one call of ``fn`` takes, with the garbage collector paused."""
    gc.collect()
    gc.disable()
    try:
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start
    finally:
        gc.enable()


def timed_pair(
    ours: Callable[[], Callable[[], Any]],
    base: Callable[[], Callable[[], Any]],
    repeats: int,
) -> tuple[list[float], list[float]]:
    """Time ``ours`` and ``base`` alternately ``repeats`` times each.

    Each argument is a setup function returning the callable to time, so state is fresh for
    every run and setup is never inside the timing. Alternating the two sides spreads the
    machine's noise over both.
    """
    our_times: list[float] = []
    base_times: list[float] = []
    for _ in range(repeats):
        base_times.append(time_once(base()))
        our_times.append(time_once(ours()))
    return our_times, base_times


def rate_figure(
    name: str,
    operations: int,
    our_times: list[float],
    base_times: list[float],
    *,
    unit: str,
    bar: float | None = None,
    note: str = "",
) -> Figure:
    """A throughput figure: operations/s, ratio = ours ÷ baseline (higher is better)."""
    ours = [operations / t for t in our_times]
    base = [operations / t for t in base_times]
    value, baseline = statistics.median(ours), statistics.median(base)
    return Figure(
        name=name,
        value=value,
        unit=unit,
        baseline=baseline,
        ratio=value / baseline,
        better="higher",
        bar=bar,
        samples={"value": ours, "baseline": base},
        note=note,
    )


def cost_figure(
    name: str,
    our_values: list[float],
    base_values: list[float],
    *,
    unit: str,
    bar: float | None = None,
    note: str = "",
) -> Figure:
    """A cost figure (seconds, bytes): ratio = ours ÷ baseline (lower is better)."""
    value, baseline = statistics.median(our_values), statistics.median(base_values)
    return Figure(
        name=name,
        value=value,
        unit=unit,
        baseline=baseline,
        ratio=value / baseline if baseline else None,
        better="lower",
        bar=bar,
        samples={"value": our_values, "baseline": base_values},
        note=note,
    )


def machine() -> dict[str, Any]:
    """A note of the machine the figures came from."""
    return {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "pycrdt": getattr(pycrdt, "__version__", "unknown"),
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
