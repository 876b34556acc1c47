"""The dashboard's web application: a static page, a read-only JSON API, server-sent events.

Routes
    ``GET /``                  the page (plain HTML, CSS and JavaScript from package data)
    ``GET /static/...``        its assets
    ``GET /api/federation``    everything the page shows: ``describe()``, the views, the sync
                               graph, sync status per level, trust domains, effective policies
                               and versions per scope, the audit log
    ``GET /api/audit``         the audit log of settled conflicts
    ``GET /api/scope/{path}``  one scope: own and effective values, nodes, writers, history
    ``GET /api/events``        ``text/event-stream``: a ``change`` event carrying the revision
                               each time the federation changes

There is no route that writes: the dashboard is read-only. Responses carry a strict Content
Security Policy (the page runs only its own script, and builds its DOM with ``textContent``,
never ``innerHTML``, because replicated values are written by other planes), and a host check
refuses requests whose ``Host`` is not the one bound to, which is what stops a DNS-rebinding
page from reading a loopback dashboard.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Sequence
from importlib import resources
from typing import Any, Final

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from souverix_crdt.errors import InvalidScopeError

from .live import Dashboard
from .model import ScopeNotFoundError, Source

__all__ = ["create_app", "static_directory"]

#: Seconds between keep-alive comments on an idle event stream (proxies drop silent ones).
KEEPALIVE_S: Final = 15.0
#: How soon a browser reconnects a dropped event stream, in milliseconds.
RETRY_MS: Final = 2000

_CSP: Final = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
_HEADERS: Final = {
    "Content-Security-Policy": _CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def static_directory() -> str:
    """Where the page's files are (package data)."""
    return str(resources.files("souverix_crdt.dashboard").joinpath("static"))


class _SecurityHeaders:
    """Adds the security headers to every response (pure ASGI: streams pass through)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Any) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                for name, value in _HEADERS.items():
                    if name.lower().encode() not in present:
                        headers.append((name.lower().encode(), value.encode()))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _json(data: Any, status_code: int = 200) -> Response:
    # Replicated values were already made JSON-safe by the model; a NaN written by a plane
    # would still break strict parsers, so it is refused here rather than sent.
    body = json.dumps(data, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    return Response(body, status_code=status_code, media_type="application/json")


def create_app(dashboard: Dashboard, *, allowed_hosts: Sequence[str] = ("*",)) -> Starlette:
    """The ASGI application serving ``dashboard``.

    Args:
        dashboard: What to serve.
        allowed_hosts: ``Host`` header values accepted (``"*"`` for any).
    """
    static = static_directory()

    def index(request: Request) -> Response:
        del request
        return FileResponse(f"{static}/index.html", media_type="text/html")

    # Plain (sync) endpoints: Starlette runs them in its thread pool, so waiting for the lock
    # while the owner mutates the federation never blocks the event loop and its streams.
    def federation(request: Request) -> Response:
        del request
        return _json(dashboard.snapshot())

    def audit(request: Request) -> Response:
        del request
        entries = dashboard.read(Source.audit)
        return _json({"revision": dashboard.revision, "audit": entries})

    def scope(request: Request) -> Response:
        path = request.path_params["path"]
        try:
            detail = dashboard.read(lambda source: source.scope_detail(path))
        except InvalidScopeError as exc:
            return _json({"error": "invalid-scope", "detail": str(exc)}, 400)
        except ScopeNotFoundError as exc:
            return _json({"error": "unknown-scope", "scope": exc.scope}, 404)
        return _json({"revision": dashboard.revision, **detail})

    async def events(request: Request) -> Response:
        del request

        # StreamingResponse cancels this generator when the client disconnects.
        async def stream() -> AsyncIterator[str]:
            yield f"retry: {RETRY_MS}\n\n"
            sent = -1
            while not dashboard.closing:
                revision = dashboard.revision
                if revision != sent:
                    sent = revision
                    yield f"event: change\ndata: {json.dumps({'revision': revision})}\n\n"
                    continue
                if await dashboard.wait_for_revision(sent, KEEPALIVE_S) == sent:
                    yield ": keep-alive\n\n"

        return StreamingResponse(
            stream(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        del app
        notifier = asyncio.create_task(dashboard.run_notifier())
        try:
            yield
        finally:
            dashboard.close()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(notifier, timeout=5)

    return Starlette(
        routes=[
            Route("/", index, methods=["GET"]),
            Route("/api/federation", federation, methods=["GET"]),
            Route("/api/audit", audit, methods=["GET"]),
            Route("/api/scope/{path:path}", scope, methods=["GET"]),
            Route("/api/events", events, methods=["GET"]),
            Mount("/static", StaticFiles(directory=static), name="static"),
        ],
        middleware=[
            Middleware(_SecurityHeaders),
            Middleware(TrustedHostMiddleware, allowed_hosts=list(allowed_hosts)),
        ],
        lifespan=lifespan,
    )
