"""Write the API reference (HTML) to ``docs/api/`` from the docstrings, with pdoc.

Usage, from the repository root (pdoc comes with the ``dev`` extra)::

    .venv/bin/python docs/build_api.py

Every public module is documented: every module of the package whose name has no segment
starting with ``_`` (``souverix_crdt.testing`` and ``souverix_crdt.transports.memory``
included). Private modules (``_carriers``, ``_topology_reader``...) are left out, and so is
every name a module does not export. The output is deterministic, so it is checked in and a
change shows up as a diff.
"""

from __future__ import annotations

import html
import importlib
import os
import pkgutil
import re
import shutil
import sys
import warnings
from pathlib import Path

import pdoc
import pdoc.render

#: The modules a newcomer reads first, in this order at the top of the index; every other
#: public module follows in name order (:func:`public_modules`).
FIRST = [
    "souverix_crdt",
    "souverix_crdt.errors",
    "souverix_crdt.scope",
    "souverix_crdt.hlc",
    "souverix_crdt.replica",
    "souverix_crdt.authority",
    "souverix_crdt.plane.keyring",
    "souverix_crdt.plane.keydir",
    "souverix_crdt.plane.topology",
    "souverix_crdt.federation.manager",
    "souverix_crdt.federation.views",
    "souverix_crdt.plane.coordinator",
    "souverix_crdt.plane.peer",
    "souverix_crdt.cli",
    "souverix_crdt.sync.session",
    "souverix_crdt.sync.driver",
    "souverix_crdt.store.sqlite",
    "souverix_crdt.transports.tcp",
    "souverix_crdt.transports.tls",
    "souverix_crdt.transports.nats",
    "souverix_crdt.transports.nats_auth",
    "souverix_crdt.transports.bundle",
]
OUTPUT = Path(__file__).resolve().parent / "api"


def public_modules() -> list[str]:
    """Every public module of the package: :data:`FIRST`, then the rest by name."""
    package = importlib.import_module("souverix_crdt")
    found = {"souverix_crdt"}
    for module in pkgutil.walk_packages(package.__path__, prefix="souverix_crdt."):
        if not any(part.startswith("_") for part in module.name.split(".")):
            found.add(module.name)
    return FIRST + sorted(found - set(FIRST))


MODULES = public_modules()


def write_index() -> None:
    """An index of the documented modules with their summaries (pdoc's only redirects)."""
    rows = []
    for name in MODULES:
        module = importlib.import_module(name)
        summary = (module.__doc__ or "").strip().splitlines()[0] if module.__doc__ else ""
        href = name.replace(".", "/") + ".html"
        rows.append(
            f'<li><a href="{href}"><code>{name}</code></a> &mdash; {html.escape(summary)}</li>'
        )
    items = "\n".join(rows)
    (OUTPUT / "index.html").write_text(
        f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>souverix-crdt API reference</title>
<style>body{{font-family:sans-serif;max-width:60rem;margin:2rem auto;line-height:1.5}}</style>
</head><body><h1>souverix-crdt API reference</h1>
<p>Generated from the docstrings by <code>docs/build_api.py</code> (pdoc). The concepts are in
<code>docs/concepts.md</code>, the protocol in <code>docs/sync-protocol.md</code>, operations in
<code>docs/operations.md</code>.</p>
<ul>
{items}
</ul></body></html>
""",
        "utf-8",
    )


def main() -> None:
    """Rebuild ``docs/api/`` from scratch."""
    if os.environ.get("PYTHONHASHSEED") != "0":
        # Set and frozenset values are shown as repr, whose order follows the string hash
        # seed: fix it, so that the same code gives the same pages.
        environment = {**os.environ, "PYTHONHASHSEED": "0"}
        os.execve(sys.executable, [sys.executable, __file__], environment)  # noqa: S606 - ourselves
    shutil.rmtree(OUTPUT, ignore_errors=True)
    pdoc.render.configure(
        docformat="google",
        show_source=False,
        footer_text="souverix-crdt",
        # The search index alone is three times the size of all the pages: left out.
        search=False,
    )
    with warnings.catch_warnings():
        # pdoc cannot resolve annotations that modules import only for type checking; those
        # are shown as written, which is what a reader wants anyway.
        warnings.simplefilter("ignore", UserWarning)
        pdoc.pdoc(*MODULES, output_directory=OUTPUT)
    for page in OUTPUT.rglob("*.html"):
        # A function shown as an annotation (threading.RLock is one) is shown by repr, with its
        # memory address: drop the address, so that the same code gives the same pages.
        text = page.read_text("utf-8")
        page.write_text(re.sub(r" at 0x[0-9a-f]+(&gt;)", r"\1", text), "utf-8")
    write_index()
    pages = sorted(p.relative_to(OUTPUT) for p in OUTPUT.rglob("*.html"))
    print(f"wrote {len(pages)} pages to {OUTPUT}")


if __name__ == "__main__":
    main()
