"""Take docs/dashboard.png: the demo's federation in the dashboard, in headless chromium.

    .venv/bin/python examples/dashboard_screenshot.py [output.png]

Runs the demo, then cuts edge-c off again and lets it decide a policy on its own (so the picture
shows a zone operating autonomously with sync debt), serves the dashboard on a free loopback
port, opens edge-a2's details (its delayed and drifted nodes) and saves a full-page screenshot.
Needs the system's chromium (``apt-get install chromium``) and the ``test`` extra (Playwright).
"""

from __future__ import annotations

import io
import shutil
import sys
from pathlib import Path

from playwright.sync_api import expect, sync_playwright

from souverix_crdt.dashboard import serve
from souverix_crdt.federation.demo import run_demo

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


def main() -> None:
    target = Path(sys.argv[1] if len(sys.argv) > 1 else "docs/dashboard.png")
    chromium = shutil.which("chromium")
    if chromium is None:
        sys.exit("chromium is not installed (apt-get install chromium)")
    manager = run_demo(out=io.StringIO()).manager
    manager.set_link_state("edge-c", "global", up=False)
    manager.replica("edge-c").scope("global/edge-c").policies.set("scale-out", "aggressive")
    with serve(manager) as dashboard, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1500, "height": 1000})
        page.goto(dashboard.url)
        expect(page.locator("#tree li[data-scope]")).to_have_count(len(manager.topology.planes))
        expect(page.locator("#conn")).to_have_class("conn conn-live")
        edge = page.locator("#tree li[data-scope='global/region-a/edge-a2']")
        edge.locator("> .row .details-toggle").click()
        expect(edge.locator(".details")).to_contain_text("Effective policies")
        target.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(target), full_page=True)
        browser.close()
    manager.close()
    print(f"wrote {target}")


if __name__ == "__main__":
    main()
