"""Shared test configuration: Hypothesis profiles and the ``slow`` marker gate.

Profiles (choose with ``HYPOTHESIS_PROFILE``; default ``ci`` when ``CI`` is set, else ``dev``):

* ``dev``  — quick local runs.
* ``ci``   — derandomised, so a red build replays; prints the blob to reproduce a failure.
* ``soak`` — many examples, for long runs next to ``SOUVERIX_SLOW=1``.

Tests marked ``slow`` are skipped unless ``SOUVERIX_SLOW=1`` or ``-m`` names them.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import settings

settings.register_profile("dev", max_examples=50, deadline=500)
settings.register_profile(
    "ci",
    derandomize=True,
    max_examples=100,
    deadline=None,  # shared runners stall; a deadline there only measures the neighbours
    print_blob=True,
)
settings.register_profile("soak", max_examples=2000, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # ``-m slow`` (or any expression naming it) is an explicit request: honour it.
    if os.environ.get("SOUVERIX_SLOW") == "1" or "slow" in config.getoption("markexpr", ""):
        return
    skip_slow = pytest.mark.skip(reason="slow test: set SOUVERIX_SLOW=1 to run it")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip_slow)
