"""The checked-in API reference (``docs/api/``, built by ``docs/build_api.py``) covers the package.

Every public module — every module of ``souverix_crdt`` whose dotted name has no segment
starting with ``_`` — has its page, and the index links to it, so a module added without
rebuilding the reference fails here.
"""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path

import pytest

import souverix_crdt

API = Path(__file__).resolve().parents[1] / "docs" / "api"


def public_modules() -> list[str]:
    names = ["souverix_crdt"]
    for module in pkgutil.walk_packages(souverix_crdt.__path__, prefix="souverix_crdt."):
        if not any(part.startswith("_") for part in module.name.split(".")):
            names.append(module.name)
    return sorted(names)


def test_the_package_walk_finds_the_modules_a_newcomer_needs() -> None:
    modules = public_modules()
    for name in (
        "souverix_crdt.testing",
        "souverix_crdt.transports.memory",
        "souverix_crdt.errors",
    ):
        assert name in modules
    assert "souverix_crdt.federation._carriers" not in modules


@pytest.mark.parametrize("name", public_modules())
def test_every_public_module_has_a_page(name: str) -> None:
    page = API / (name.replace(".", "/") + ".html")
    assert page.is_file(), f"{page} is missing: run python docs/build_api.py"
    assert f"<title>{name} API documentation</title>" in page.read_text("utf-8")
    index = (API / "index.html").read_text("utf-8")
    assert f'href="{name.replace(".", "/")}.html"' in index
    # The index shows the module's summary (its docstring's first line) beside the link.
    assert importlib.import_module(name).__doc__, f"{name} has no docstring"
