"""Prometheus metrics and a health endpoint for a running plane.

``metrics: 127.0.0.1:9464`` in the peer config serves, on the event loop of ``peer run``
(never from another thread: the replica and its store belong to the loop):

- ``GET /metrics``: the Prometheus text format, every figure computed when scraped from the
  replica's :meth:`~souverix_crdt.replica.Replica.status` and the process's link counters, so
  the figures are those ``status`` shows at that moment;
- ``GET /health``: ``200`` with ``{"status": "ok", ...}`` while the replica is open, ``503``
  once it is closing.

The metric names are listed in docs/operations.md and in :data:`METRIC_NAMES`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any, Final

import attrs
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from souverix_crdt.errors import ConfigError
from souverix_crdt.replica import Replica

__all__ = ["METRIC_NAMES", "LinkTraffic", "MetricsServer", "PlaneCollector"]

#: Every metric family this module exports (``_total`` is added to counters on exposition).
METRIC_NAMES: Final = (
    "souverix_link_envelopes",
    "souverix_link_bytes",
    "souverix_sync_debt_envelopes",
    "souverix_sync_debt_bytes",
    "souverix_sync_debt_oldest_age_seconds",
    "souverix_last_sync_age_seconds",
    "souverix_link_connected",
    "souverix_pending",
    "souverix_quarantined",
    "souverix_conflicts",
    "souverix_chains",
    "souverix_handshake_failures",
)
# The longest request head the endpoint reads; anything longer is answered 431 and closed.
_MAX_HEAD: Final = 8192


@attrs.define
class LinkTraffic:
    """Envelopes and bytes moved per link, and sessions refused before they authenticated.

    Sessions in flight are read live when scraped: :meth:`track` a session while it runs and
    :meth:`finish` it when it ends (its figures then move to the totals).
    """

    totals: dict[tuple[str, str], list[int]] = attrs.field(factory=dict)
    handshake_failures: Counter[str] = attrs.field(factory=Counter)
    _live: dict[int, tuple[Callable[[], str | None], Callable[[], tuple[int, int, int, int]]]] = (
        attrs.field(factory=dict)
    )

    def track(
        self, key: int, peer: Callable[[], str | None], figures: Callable[[], tuple[int, ...]]
    ) -> None:
        """Read a running session's figures at each scrape.

        Args:
            key: The session's identity (``id(session)``).
            peer: Its authenticated peer name, once known.
            figures: ``(envelopes in, envelopes out, bytes in, bytes out)`` so far.
        """
        self._live[key] = (peer, lambda: _four(figures()))

    def finish(self, key: int) -> None:
        """Move a finished session's figures to the totals."""
        entry = self._live.pop(key, None)
        if entry is None:
            return
        name = entry[0]()
        if name is not None:
            self._add(name, entry[1]())

    def handshake_failed(self, reason: str) -> None:
        """Count a session that did not authenticate, by why it ended."""
        self.handshake_failures[reason or "unknown"] += 1

    def _add(self, peer: str, figures: tuple[int, int, int, int]) -> None:
        envelopes_in, envelopes_out, bytes_in, bytes_out = figures
        for (direction, unit), value in (
            (("in", "envelopes"), envelopes_in),
            (("out", "envelopes"), envelopes_out),
            (("in", "bytes"), bytes_in),
            (("out", "bytes"), bytes_out),
        ):
            self.totals.setdefault((peer, unit), [0, 0])[direction == "out"] += value

    def figures(self) -> dict[tuple[str, str], list[int]]:
        """``(peer, "envelopes"|"bytes")`` → ``[in, out]``, live sessions included."""
        snapshot = LinkTraffic(totals={k: list(v) for k, v in self.totals.items()})
        for peer, figures in self._live.values():
            name = peer()
            if name is not None:
                snapshot._add(name, figures())
        return snapshot.totals


def _four(values: tuple[int, ...]) -> tuple[int, int, int, int]:
    return (values[0], values[1], values[2], values[3])


class PlaneCollector(Collector):
    """Computes every metric from the plane's state when scraped.

    Args:
        replica: The plane's replica (``None`` once closed: nothing is exported).
        status: The plane's status document (what ``status --format json`` shows).
        traffic: The process's link counters.
        now_ms: The wall clock, in milliseconds.
    """

    def __init__(
        self,
        replica: Callable[[], Replica | None],
        status: Callable[[], dict[str, Any]],
        traffic: LinkTraffic,
        now_ms: Callable[[], int],
    ) -> None:
        self._replica = replica
        self._status = status
        self._traffic = traffic
        self._now_ms = now_ms

    def collect(self) -> Iterator[Metric]:
        """Yield the metric families (Prometheus' collector protocol)."""
        if self._replica() is None:
            return
        status = self._status()
        plane = str(status.get("plane", ""))
        envelopes = CounterMetricFamily(
            "souverix_link_envelopes", "Envelopes moved per link.", labels=["peer", "direction"]
        )
        sizes = CounterMetricFamily(
            "souverix_link_bytes", "Frame bytes moved per link.", labels=["peer", "direction"]
        )
        for (peer, unit), (inbound, outbound) in sorted(self._traffic.figures().items()):
            family = envelopes if unit == "envelopes" else sizes
            family.add_metric([peer, "in"], inbound)
            family.add_metric([peer, "out"], outbound)
        yield envelopes
        yield sizes
        debt_envelopes = GaugeMetricFamily(
            "souverix_sync_debt_envelopes",
            "Envelopes a peer has not acknowledged.",
            labels=["peer"],
        )
        debt_bytes = GaugeMetricFamily(
            "souverix_sync_debt_bytes", "Bytes of those envelopes.", labels=["peer"]
        )
        debt_age = GaugeMetricFamily(
            "souverix_sync_debt_oldest_age_seconds",
            "Age of the oldest envelope a peer has not acknowledged.",
            labels=["peer"],
        )
        for peer, debt in sorted(status["sync_debt"].items()):
            debt_envelopes.add_metric([peer], debt["envelopes"])
            debt_bytes.add_metric([peer], debt["bytes"])
            debt_age.add_metric([peer], debt["oldest_age_ms"] / 1000)
        yield debt_envelopes
        yield debt_bytes
        yield debt_age
        last_sync = GaugeMetricFamily(
            "souverix_last_sync_age_seconds",
            "Seconds since the last settled sync with a peer (absent: never).",
            labels=["peer"],
        )
        connected = GaugeMetricFamily(
            "souverix_link_connected", "1 while a session with the peer is up.", labels=["peer"]
        )
        now = self._now_ms()
        for peer, found in sorted(status["links"].items()):
            record = found or {}
            connected.add_metric([peer], 1 if record.get("connected") else 0)
            last = record.get("last_sync_ms")
            if isinstance(last, int):
                last_sync.add_metric([peer], max(0, now - last) / 1000)
        yield last_sync
        yield connected
        for name, text, value in (
            ("souverix_pending", "Items waiting in the pending area.", status["pending"]),
            (
                "souverix_quarantined",
                "Quarantined envelopes.",
                sum(status["quarantined"].values()),
            ),
            ("souverix_conflicts", "Conflict records in the audit log.", status["conflicts"]),
            ("souverix_chains", "Writer chains held.", status["chains"]),
        ):
            gauge = GaugeMetricFamily(name, text, labels=["plane"])
            gauge.add_metric([plane], value)
            yield gauge
        failures = CounterMetricFamily(
            "souverix_handshake_failures",
            "Sessions that ended before they authenticated, by reason.",
            labels=["reason"],
        )
        for reason, count in sorted(self._traffic.handshake_failures.items()):
            failures.add_metric([reason], count)
        yield failures


class MetricsServer:
    """``/metrics`` and ``/health`` over HTTP/1.1 on the event loop (one request a connection).

    Args:
        host: Where to listen (loopback by default in the config).
        port: The port (0: any free one; see :attr:`port`).
        collector: The plane's collector.
        healthy: Whether the plane is up.
        source: The config file, for errors.
    """

    def __init__(
        self,
        host: str,
        port: int,
        collector: PlaneCollector,
        healthy: Callable[[], dict[str, Any] | None],
        *,
        source: str = "<string>",
    ) -> None:
        self.host = host
        self._port = port
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(collector)
        self._healthy = healthy
        self._source = source
        self._server: asyncio.Server | None = None

    @property
    def port(self) -> int | None:
        """The bound port, once started."""
        if self._server is None or not self._server.sockets:
            return None
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        """Listen.

        Raises:
            ConfigError: the address cannot be bound (``field="metrics"``).
        """
        try:
            self._server = await asyncio.start_server(self._serve, self.host, self._port)
        except OSError as exc:
            raise ConfigError(
                file=self._source,
                field="metrics",
                detail=f"cannot listen on {self.host}:{self._port}: {exc.strerror or exc}",
            ) from exc

    async def close(self) -> None:
        """Stop listening. Idempotent."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
            with contextlib.suppress(Exception):
                await server.wait_closed()

    def respond(self, target: str) -> tuple[int, str, bytes]:
        """The status, content type and body for a ``GET`` of ``target`` (sans-IO)."""
        path = target.partition("?")[0]
        if path == "/metrics":
            return 200, CONTENT_TYPE_LATEST, generate_latest(self.registry)
        if path == "/health":
            health = self._healthy()
            document = health if health is not None else {"status": "stopping"}
            code = 200 if health is not None else 503
            return code, "application/json", json.dumps(document, sort_keys=True).encode()
        return 404, "text/plain; charset=utf-8", b"not found: /metrics or /health\n"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.LimitOverrunError:
                head = b""
            except asyncio.IncompleteReadError:
                return
            if len(head) > _MAX_HEAD:
                head = b""
            method, _, rest = head.decode("latin-1").partition(" ")
            target = rest.partition(" ")[0]
            if not head:
                code, kind, body = 431, "text/plain", b"request head too large\n"
            elif method != "GET":
                code, kind, body = 405, "text/plain", b"GET only\n"
            else:
                code, kind, body = self.respond(target)
            reasons = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 503: "Unavailable"}
            writer.write(
                f"HTTP/1.1 {code} {reasons.get(code, 'Error')}\r\n"
                f"Content-Type: {kind}\r\nContent-Length: {len(body)}\r\n"
                "Connection: close\r\n\r\n".encode()
                + body
            )
            await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
