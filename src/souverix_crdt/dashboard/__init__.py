"""A live web dashboard of a federation: ``serve(manager)`` and open the printed address.

The page shows the federation tree with authority colours (global, regional, local,
autonomous), autonomy badges, node counts, status, drift and sync debt per plane and per level;
the sync relationship graph; which scopes each key may write; the effective policies and
versions per scope, set there or inherited; and the audit log of settled conflicts. It
refreshes itself over server-sent events whenever a replica changes, a conflict is settled or a
link changes state.

Built on Starlette and uvicorn (``pip install 'souverix-crdt[dashboard]'``); the page is plain
HTML, CSS and JavaScript shipped as package data, with no build step. It binds 127.0.0.1 by
default, has no route that writes, and never shows key material.

::

    from souverix_crdt.dashboard import serve

    with serve(manager) as dashboard:          # port 0: a free port
        print(dashboard.url)
        with dashboard.lock:                   # mutate the federation under the lock
            manager.publish_policy("global", "max-unavailable", "5%")
            manager.settle()

``souverix-crdt demo --dashboard`` runs :func:`run_demo_dashboard`.
"""

from .live import Dashboard as Dashboard
from .model import Source as Source
from .server import DashboardServer as DashboardServer
from .server import run_demo_dashboard as run_demo_dashboard
from .server import serve as serve

__all__ = ["Dashboard", "DashboardServer", "Source", "run_demo_dashboard", "serve"]
