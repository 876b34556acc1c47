"""The dashboard of a running plane, in headless chromium: a ``peer write`` shows up live.

global and region-a run as ``souverix-crdt peer run`` processes, ``souverix-crdt dashboard``
follows region-a from a process of its own, and the page must show a policy written through
``peer write`` (and region-a's control socket) without reloading.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.test_dashboard_browser import browser, page
from tests.test_example_peers import SCRIPT, Peers, cli_ok, eventually, peers
from tests.test_operations import REGION, _configure

__all__ = ["browser", "page", "peers"]  # fixtures shared with the other tests

pytestmark = pytest.mark.browser


@pytest.fixture
def dashboard_process(tmp_path: Path, peers: Peers) -> Iterator[tuple[Peers, str]]:
    _configure(tmp_path)
    peers.start("global")
    peers.start("region-a")
    peers.wait_ready("global")
    peers.wait_ready("region-a")
    ready = tmp_path / "dashboard.ready"
    log = (tmp_path / "dashboard.log").open("ab")
    process = subprocess.Popen(
        [SCRIPT, "dashboard", "--config", "region-a.yaml", "--port", "0", "--ready-file", ready],
        cwd=tmp_path,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    try:
        eventually(ready.exists, "the dashboard to serve", peers)
        yield peers, json.loads(ready.read_text())["url"]
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
        log.close()


def test_a_peer_write_shows_on_the_running_planes_dashboard(
    tmp_path: Path, dashboard_process: tuple[Peers, str], page: Any
) -> None:
    from playwright.sync_api import expect  # noqa: PLC0415

    _, url = dashboard_process
    page.goto(url)
    expect(page.locator("#conn")).to_have_class("conn conn-live")
    expect(page.locator(f"#tree li[data-scope='{REGION}']")).to_have_count(1)
    page.evaluate("window.__sameDocument = true")
    policies = page.locator("#policies")
    expect(policies.locator("thead th", has_text="drain-timeout")).to_have_count(0)

    output = cli_ok(
        "peer", "write", "--config", tmp_path / "region-a.yaml", REGION, "policies",
        "drain-timeout", "90s",
    )  # fmt: skip
    assert "through its running process" in output
    expect(policies.locator("thead th", has_text="drain-timeout")).to_have_count(1)
    set_here = policies.locator(f"tr[data-scope='{REGION}'] td[data-key='drain-timeout']")
    expect(set_here).to_have_text("● 90s")
    assert page.evaluate("window.__sameDocument") is True
