"""Running the dashboard: uvicorn on a background thread, and the demo behind it.

:func:`serve` binds the socket itself (so port 0 gives a free port known before it returns),
runs uvicorn's server on a thread of its own with its own event loop, and returns once the page
can be fetched. The caller's thread keeps owning the federation; see
:mod:`souverix_crdt.dashboard.live` for how reads and writes share it.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Final, TextIO

import uvicorn

from souverix_crdt.federation.manager import FederationManager
from souverix_crdt.plane.topology import Topology
from souverix_crdt.replica import Replica

from .app import create_app
from .live import Dashboard

__all__ = ["DEFAULT_DEMO_PORT", "DashboardServer", "run_demo_dashboard", "serve"]

#: The port :func:`run_demo_dashboard` listens on unless told otherwise.
DEFAULT_DEMO_PORT: Final = 8765
#: How long :func:`serve` waits for the server to come up, and :meth:`~DashboardServer.stop`
#: for it to go down (seconds).
STARTUP_TIMEOUT_S: Final = 10.0
_log = logging.getLogger(__name__)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _allowed_hosts(host: str) -> tuple[str, ...]:
    if host in ("", "0.0.0.0", "::"):  # noqa: S104  (recognising the wildcard, not binding it)
        return ("*",)
    if _is_loopback(host):
        return ("127.0.0.1", "localhost", host)
    return (host,)


class DashboardServer:
    """A running dashboard: where it listens, and how to stop it. Use as a context manager.

    Attributes:
        dashboard: What it serves (its :attr:`~Dashboard.lock` guards the federation).
        host: The address it is bound to.
        port: The port it is bound to (the actual one when 0 was asked for).
    """

    def __init__(
        self,
        dashboard: Dashboard,
        server: uvicorn.Server,
        thread: threading.Thread,
        host: str,
        port: int,
    ) -> None:
        self.dashboard = dashboard
        self.host = host
        self.port = port
        self._server = server
        self._thread = thread

    @property
    def url(self) -> str:
        """The page's address."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    @property
    def lock(self) -> threading.RLock:
        """Hold this while mutating the federation from another thread than the server's."""
        return self.dashboard.lock

    @property
    def running(self) -> bool:
        """True until the server has stopped."""
        return self._thread.is_alive()

    def stop(self, timeout: float = STARTUP_TIMEOUT_S) -> None:
        """Close the event streams, shut the server down and wait for its thread (idempotent).

        Raises:
            TimeoutError: the server did not stop within ``timeout`` seconds.
        """
        # Streams first: uvicorn waits for open responses before it finishes shutting down.
        self.dashboard.close()
        self._server.should_exit = True
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise TimeoutError(f"dashboard on port {self.port} still running after {timeout}s")

    def __enter__(self) -> DashboardServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


def _bind(host: str, port: int) -> socket.socket:
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    return sock


def serve(
    target: FederationManager | Replica,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    topology: Topology | None = None,
    poll_interval: float = 1.0,
    allowed_hosts: Sequence[str] | None = None,
) -> DashboardServer:
    """Serve a live dashboard of ``target`` on a background thread; return once it is up.

    Args:
        target: A federation manager, or a single replica.
        host: The address to bind (loopback by default: the dashboard has no authentication).
        port: The port to bind; 0 picks a free one (read it from the returned handle).
        topology: For a single replica, its federation's topology (optional).
        poll_interval: Seconds between polls of link state and sync debt.
        allowed_hosts: ``Host`` header values accepted (default: derived from ``host``).

    Raises:
        OSError: the address cannot be bound.
        RuntimeError: the server did not come up.
    """
    if not _is_loopback(host):
        _log.warning("dashboard bound to %s: anyone who can reach it can read the fleet", host)
    dashboard = Dashboard(target, topology=topology, poll_interval=poll_interval)
    sock = _bind(host, port)
    bound_port = int(sock.getsockname()[1])
    app = create_app(
        dashboard, allowed_hosts=_allowed_hosts(host) if allowed_hosts is None else allowed_hosts
    )
    config = uvicorn.Config(
        app,
        log_config=None,  # leave the embedding process's logging alone
        log_level="warning",
        access_log=False,
        lifespan="on",
        http="h11",
        ws="none",
        proxy_headers=False,
        server_header=False,
        timeout_graceful_shutdown=2,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(
        target=server.run,
        kwargs={"sockets": [sock]},
        name=f"souverix-dashboard-{bound_port}",
        daemon=True,  # a forgotten handle must not keep the process alive
    )
    thread.start()
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    # uvicorn offers no startup callback; its ``started`` flag is the documented signal.
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            dashboard.close()
            sock.close()
            raise RuntimeError(f"the dashboard did not start on {host}:{bound_port}")
        time.sleep(0.01)
    return DashboardServer(dashboard, server, thread, host, bound_port)


def run_demo_dashboard(
    host: str = "127.0.0.1",
    port: int = DEFAULT_DEMO_PORT,
    *,
    seed: int = 7,
    workdir: Path | None = None,
    out: TextIO | None = None,
    stop: threading.Event | None = None,
) -> None:
    """Run the demo, then serve a live dashboard of its federation until interrupted.

    What ``souverix-crdt demo --dashboard`` does: the demo prints as usual, then the dashboard's
    address is printed and the process serves it until Ctrl+C (or until ``stop`` is set).

    Args:
        host: The address to bind (loopback by default).
        port: The port to bind (0 picks a free one, printed with the address).
        seed: The demo's seed (see :func:`~souverix_crdt.federation.demo.run_demo`).
        workdir: Where the demo keeps keys, bundles and graph files (default: a temporary
            folder).
        out: Where the demo and the address are printed (default: standard output).
        stop: Set it to stop serving (for embedding and tests); default: wait for Ctrl+C.
    """
    from souverix_crdt.federation.demo import run_demo  # noqa: PLC0415  (the demo is only needed here)

    stream = sys.stdout if out is None else out
    result = run_demo(out=out, workdir=workdir, seed=seed)
    manager = result.manager
    handle = serve(manager, host, port)
    stream.write(f"\nDashboard of the demo federation: {handle.url}  (read-only; Ctrl+C to stop)\n")
    stream.flush()
    try:
        if stop is None:
            # Event.wait() with no timeout cannot be interrupted by Ctrl+C on every platform.
            while handle.running:
                time.sleep(0.5)
        else:
            stop.wait()
    except KeyboardInterrupt:
        stream.write("stopping the dashboard\n")
    finally:
        handle.stop()
        manager.close()
