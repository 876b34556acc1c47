"""The dashboard page in a real headless browser: Debian's chromium driven by Playwright.

Playwright's own browser download does not work here, so the system's ``chromium`` is launched
(``SOUVERIX_CHROMIUM`` names another binary). Without one these tests skip, saying why, unless
``SOUVERIX_REQUIRE_BROWSER=1`` (set by ``.ci/run``), where a missing browser is a failure.

Every wait is one of Playwright's, bounded by a timeout: nothing sleeps.
"""

from __future__ import annotations

import io
import os
import shutil
from collections.abc import Iterator
from typing import Any

import pytest

from souverix_crdt.dashboard import DashboardServer, serve
from souverix_crdt.federation.demo import DemoResult, run_demo
from souverix_crdt.federation.manager import FederationManager
from souverix_crdt.federation.views import fleet_view

pytestmark = pytest.mark.browser

#: What each authority level is drawn in (style.css), as the browser computes it.
LEVEL_RGB = {
    "global": "rgb(142, 36, 170)",
    "regional": "rgb(0, 131, 143)",
    "local": "rgb(46, 125, 50)",
    "autonomous": "rgb(249, 168, 37)",
}
#: Chromium flags for this machine's closed network (see the machine notes): no background
#: connections, no sandbox as root, no GPU.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
WAIT_MS = 5_000


def _chromium() -> str | None:
    return os.environ.get("SOUVERIX_CHROMIUM") or shutil.which("chromium")


def _unavailable(reason: str) -> None:
    if os.environ.get("SOUVERIX_REQUIRE_BROWSER") == "1":
        pytest.fail(f"{reason}, and SOUVERIX_REQUIRE_BROWSER=1 requires the browser tests")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    try:
        from playwright.sync_api import sync_playwright  # noqa: PLC0415
    except ImportError:
        _unavailable("the playwright package is not installed (pip install -e '.[test]')")
    executable = _chromium()
    if executable is None:
        _unavailable("chromium is not installed (apt-get install chromium)")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def demo() -> DemoResult:
    return run_demo(out=io.StringIO())


@pytest.fixture(scope="module")
def server(demo: DemoResult) -> Iterator[DashboardServer]:
    with serve(demo.manager) as handle:
        yield handle


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1500, "height": 1000})
    opened = context.new_page()
    opened.set_default_timeout(WAIT_MS)
    errors: list[str] = []
    opened.on("pageerror", lambda error: errors.append(str(error)))
    opened.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    yield opened
    context.close()
    assert not errors, f"the page logged errors: {errors}"


def open_dashboard(page: Any, handle: DashboardServer, manager: FederationManager) -> None:
    from playwright.sync_api import expect  # noqa: PLC0415

    page.goto(handle.url)
    # Locator assertions, not wait_for_function: the page's CSP forbids evaluating strings.
    expect(page.locator("#tree li[data-scope]")).to_have_count(len(manager.topology.planes))
    expect(page.locator("#conn")).to_have_class("conn conn-live")


def row(page: Any, scope: str) -> Any:
    return page.locator(f"#tree li[data-scope='{scope}']")


def own_row(page: Any, scope: str) -> Any:
    return page.locator(f"#tree li[data-scope='{scope}'] > .row")


def test_every_scope_is_shown_with_its_authority_colour_and_figures(
    page: Any, demo: DemoResult, server: DashboardServer
) -> None:
    from playwright.sync_api import expect  # noqa: PLC0415

    manager = demo.manager
    open_dashboard(page, server, manager)
    with server.lock:
        view = fleet_view(manager.replica("global"), manager.topology, manager.link_statuses())
    rows = list(view.rows())
    assert len(rows) == len(manager.topology.planes)
    for _, expected in rows:
        line = own_row(page, expected.scope)
        expect(row(page, expected.scope)).to_have_class(f"scope level-{expected.level.value}")
        colour = line.evaluate("el => getComputedStyle(el).borderLeftColor")
        assert colour == LEVEL_RGB[expected.level.value], expected.name
        expect(line.locator(".name")).to_have_text(expected.name)
        expect(line.locator(".level-tag")).to_have_text(expected.level.value)
        expect(line.locator(".nodes")).to_have_text(f"{expected.nodes.total} nodes")
        expect(line.locator(".status")).to_have_text(expected.status)
        expect(line.locator(".drift")).to_have_text(f"drift {expected.nodes.drifted}")
        badges = line.locator(".badge")
        wanted = [
            text
            for text, shown in (
                ("conditional", expected.autonomy.value == "conditional"),
                ("air-gapped", expected.air_gapped),
                ("AUTONOMOUS", expected.isolated),
            )
            if shown
        ]
        expect(badges).to_have_text(wanted)
    # The same figures the terminal view prints, e.g. region-a's delayed nodes.
    expect(own_row(page, "global/region-a").locator(".status")).to_have_text(
        "Live (48/50), Delayed (2/50)"
    )
    # The sync graph draws every plane in its level's colour and every link.
    for plane in manager.topology.planes.values():
        node = page.locator(f"#graph g.node[data-plane='{plane.name}']")
        expect(node).to_have_class(f"node level-{plane.level.value}")
        stroke = node.locator("rect").evaluate("el => getComputedStyle(el).stroke")
        assert stroke == LEVEL_RGB[plane.level.value]
    expect(page.locator("#graph path.edge")).to_have_count(len(manager.links))
    expect(page.locator("#graph path.edge-airgapped")).to_have_count(1)
    # The audit log: region-a won the concurrent edit by authority rank.
    audit = page.locator("#audit tbody tr")
    expect(audit).to_have_count(1)
    expect(audit.locator(".winner")).to_have_text("sat 02:00-04:00")
    expect(audit).to_contain_text("authority-rank")


def test_a_region_collapses_and_expands(
    page: Any, demo: DemoResult, server: DashboardServer
) -> None:
    from playwright.sync_api import expect  # noqa: PLC0415

    open_dashboard(page, server, demo.manager)
    toggle = own_row(page, "global/region-a").locator("button.toggle")
    zone = own_row(page, "global/region-a/edge-a1")
    expect(zone).to_be_visible()
    expect(toggle).to_have_attribute("aria-expanded", "true")

    toggle.click()
    expect(row(page, "global/region-a")).to_have_class("scope level-regional collapsed")
    expect(zone).to_be_hidden()
    expect(own_row(page, "global/region-a/edge-a2")).to_be_hidden()
    expect(own_row(page, "global/region-b")).to_be_visible()  # a sibling region stays open
    expect(toggle).to_have_attribute("aria-expanded", "false")

    own_row(page, "global/region-a").locator("button.toggle").click()
    expect(zone).to_be_visible()
    expect(own_row(page, "global/region-a").locator("button.toggle")).to_have_attribute(
        "aria-expanded", "true"
    )


def test_a_zone_expands_to_its_effective_policy_and_nodes(
    page: Any, demo: DemoResult, server: DashboardServer
) -> None:
    from playwright.sync_api import expect  # noqa: PLC0415

    open_dashboard(page, server, demo.manager)
    own_row(page, "global/region-a/edge-a1").locator("button.details-toggle").click()
    details = row(page, "global/region-a/edge-a1").locator(".details")
    expect(details).to_contain_text("maintenance-window")
    expect(details).to_contain_text("sat 02:00-04:00")
    expect(details).to_contain_text("● set here")
    expect(details).to_contain_text("↑ from global")  # max-unavailable, inherited
    expect(details).to_contain_text("edge-a1 (local)")


def test_the_trust_overlay_marks_the_scopes_a_key_may_write(
    page: Any, demo: DemoResult, server: DashboardServer
) -> None:
    from playwright.sync_api import expect  # noqa: PLC0415

    open_dashboard(page, server, demo.manager)
    page.locator("#trust tbody tr[data-plane='region-a']").click()
    expect(page.locator("#tree")).to_have_class("tree overlay-key")
    for scope in ("global/region-a", "global/region-a/edge-a1", "global/region-a/edge-a2"):
        expect(row(page, scope)).to_have_class(f"scope level-{_level(demo, scope)} in-domain")
    for scope in ("global", "global/region-b", "global/edge-c"):
        expect(row(page, scope)).to_have_class(f"scope level-{_level(demo, scope)} out-domain")


def _level(demo: DemoResult, scope: str) -> str:
    return demo.manager.topology.master_of(scope).level.value


def test_a_new_policy_and_a_cut_off_zone_show_up_live(page: Any) -> None:
    from playwright.sync_api import expect  # noqa: PLC0415

    manager = run_demo(out=io.StringIO()).manager
    with serve(manager, poll_interval=0.2) as handle:
        open_dashboard(page, handle, manager)
        # A marker on the window proves the page updated in place rather than reloading.
        page.evaluate("window.__sameDocument = true")
        policies = page.locator("#policies")
        expect(policies.locator("th")).not_to_contain_text(["drain-timeout"])

        with handle.lock:
            manager.publish_policy("global/region-a", "drain-timeout", "90s")
            manager.settle()
        expect(policies.locator("thead th", has_text="drain-timeout")).to_have_count(1)
        cell = policies.locator(
            "tr[data-scope='global/region-a/edge-a2'] td[data-key='drain-timeout']"
        )
        expect(cell).to_contain_text("↑ 90s")
        expect(cell).to_contain_text("from global/region-a")
        set_here = policies.locator("tr[data-scope='global/region-a'] td[data-key='drain-timeout']")
        expect(set_here).to_have_text("● 90s")

        edge_c = own_row(page, "global/edge-c")
        expect(edge_c.locator(".badge-autonomous")).to_have_count(0)
        with handle.lock:
            manager.set_link_state("edge-c", "global", up=False)
        expect(edge_c.locator(".badge-autonomous")).to_have_text("AUTONOMOUS")
        expect(edge_c.locator(".status")).to_have_text("Autonomous")
        expect(edge_c.locator(".link")).to_have_text("link down")
        expect(page.locator("#graph g.node[data-plane='edge-c']")).to_have_class(
            "node level-autonomous isolated"
        )
        assert page.evaluate("window.__sameDocument") is True
    manager.close()
