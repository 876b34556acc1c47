"""One control plane as a long-running process: its replica, its store and its peers.

``souverix-crdt peer run --config FILE`` runs a :class:`PeerProcess`. The config file is YAML;
relative paths are read from the file's own folder::

    plane: region-a                     # the control plane this process runs (its key)
    keys: keys/planes/region-a          # the plane's own directory (souverix-crdt keys init)
    store: data/region-a.sqlite3        # the replica's SQLite store (created if missing)
    transport: tcp                      # tcp (the default) or nats
    listen: 127.0.0.1:7302              # tcp: where downstream planes connect (host: loopback)
    nats: nats://127.0.0.1:4222         # nats: the server (or leaf node) this plane uses;
                                        # or {url: ..., user: region-a, password_file: PATH}
    upstream: {name: global, address: 127.0.0.1:7301}   # address: tcp only
    downstream: [edge-a1]               # tcp: they connect here; nats: a session to each
                                        # a link entry may set mode, frequency, batch_size,
                                        # retry (see :mod:`~.schedule`)
    topology: keys/topology.yaml        # the links' policies (default: the key directory's)
    tls: true                           # tcp: mutual TLS with the key directory's certificates
    control: data/region-a.sock         # the control socket (default: <store>.sock; false: none)
    metrics: 127.0.0.1:9464             # Prometheus /metrics and /health (default: off)
    sync:                               # all optional
      batch_size: 100
      tick: 5s                          # silence after which a session re-sends its hello
      retry: {initial: 200ms, maximum: 5s}
      watch: 250ms                      # how often the store is checked for outside writes
      link_timeout: 15s                 # unheard for this long: the link is not shown connected
    limits:                             # all optional: any field of souverix_crdt.limits.Limits
      max_connections: 512              # connections served at once, in all
      max_connections_per_address: 64   # ... and from one remote address
      handshake_timeout: 10s            # to authenticate a session (and finish TLS)
      idle_timeout: 5m                  # silence after which a connection is closed
      max_frame: 16777216               # bytes

Keys
    ``keys:`` names the plane's own directory (:mod:`~.plane.planedir`): its one private key,
    the fleet's anchors and the public chains. Nothing else is read, so the machine holds no
    other plane's key. Naming the whole output of ``keys init`` instead reads
    ``planes/<plane>/`` in it. The plane's name must be a valid plane name (no ``/``, no
    ``..``): it becomes a path.

Limits
    ``limits:`` overrides the budgets of :class:`~.limits.Limits` for this process, by their
    field names; durations (``handshake_timeout``, ``idle_timeout``) are written like
    ``sync.tick`` (``10s``, ``250ms``), every other budget is a positive integer. An unknown
    name is refused, naming the field and the closest known one. The replica gets the whole
    value (``Replica(limits=...)``). The TCP server sheds load by it: a connection over
    ``max_connections`` or over ``max_connections_per_address`` is reset at once, before any
    TLS handshake, and never evicts a held one (refusals are logged once per 10 s with their
    count); a session whose peer has not authenticated within ``handshake_timeout`` is closed
    with a close message saying so; a connection, served or dialled, that sends no whole frame
    for ``idle_timeout`` is aborted. ``idle_timeout`` must exceed ``sync.tick``, since a quiet
    session sends something once per tick. Connections dropped before they authenticated are
    reported together, once per 10 s. The process raises its own open-file limit (up to the
    hard limit) to hold ``max_connections``, and says so when it cannot.

TLS (TCP only)
    ``tls: true`` runs every connection inside TLS 1.3 with the plane directory's material
    (``tls/ca.pem``, ``tls/<plane>.pem`` and ``.key`` in it, made by ``keys init``), mutual:
    the server requires a client certificate from the fleet CA and the dialler checks that
    the server's certificate names the upstream plane. Other files, or one-way TLS::

        tls: {ca: tls/ca.pem, cert: tls/region-a.pem, key: tls/region-a.key, mutual: true}

    With mutual TLS a server also checks that the plane a client's certificate names is the
    plane its session authenticates as, and refuses the session otherwise.

Link policies
    Each link syncs by the mode, frequency, batch size and retry policy the topology declares,
    overridden by its entry here (:mod:`~.schedule` resolves them). Continuous links run the
    session loop below; push, scheduled and opportunistic links this plane opens are run by a
    :class:`~.coordinator.SyncCoordinator`, whose sessions close once caught up. An air-gapped
    plane, or a link to one, is refused as a network link: bundle files carry it.
    :meth:`PeerProcess.set_link_state` is the connectivity hook.

Sessions
    Over TCP the lower plane dials its upstream (:func:`~.transports.tcp.connect_with_backoff`)
    and the upper plane serves (:class:`~.transports.tcp.TcpServer`). Over NATS there is no
    dialling: each plane opens a :class:`~.transports.nats.NatsTransport` to every configured
    peer, and the two sessions meet on the fleet's subjects, across leaf nodes too. Every
    session is a :class:`~.sync.session.SyncSession` pumped by
    :func:`~.sync.driver.run_session`; when one ends, a new one starts after a backoff delay, and
    its hello resumes from the frontiers both sides hold. One log line is written each time a
    session has settled (both sides hold what the other could send) after moving envelopes.

NATS logins
    ``nats:`` as a mapping logs in to nats-server's own authorization: ``user`` and the file
    holding its password (relative to the config's folder; ``souverix-crdt nats credentials``
    writes one per plane). The plane then uses reply subjects under ``_INBOX.<user>`` only,
    as its server permissions require (:mod:`~.transports.nats_auth`). A refused login stops
    the process with a :class:`~.errors.TransportError` (reason ``"unauthorized"``): retrying
    cannot fix a wrong password. A refused publish or subscription is logged once per subject.

Writes from other processes
    The store is the plane's durable state, and other processes may write to it (``souverix-crdt
    peer write``, a bundle import, a revocation applied by an operator). SQLite's
    ``data_version`` tells when someone committed; the process then takes in, through the
    ordinary verified ingest path, every envelope, delegation and revocation the store holds
    that its replica does not, and its sessions push them to the peers like its own writes.

Operating it
    The control socket (:mod:`.control`), the metrics endpoint (:mod:`.metrics`) and the
    writer chain the store keeps across clean restarts (:mod:`.chains`) are described in
    docs/operations.md, section 8.
Link records
    Each sync is also recorded in the store (named value ``peer-link:<peer>``: connected or
    not, the time of the last settled sync, and when the link was last confirmed with the
    timeout past which the record is stale), so the views and ``status`` commands, which read
    stores, show how fresh each link is; :func:`~.schedule.link_state` judges a record, and
    :func:`record_bundle_exchange` records bundle files.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import random
import sqlite3
import time
from collections.abc import Awaitable, Callable, Mapping
from functools import partial
from pathlib import Path
from ssl import SSLContext, SSLError
from typing import Any, Final

import attrs
import yaml

from souverix_crdt.authority import Grant
from souverix_crdt.errors import (
    ConfigError,
    KeyFileError,
    SouverixError,
    TopologyError,
    TransportError,
    UnknownPlaneError,
    _close_matches,
)
from souverix_crdt.limits import DEFAULT_LIMITS, Limits
from souverix_crdt.replica import Replica
from souverix_crdt.scope import Scope
from souverix_crdt.store.base import Batch
from souverix_crdt.store.sqlite import SqliteStore
from souverix_crdt.sync.driver import SessionStats, run_session
from souverix_crdt.sync.session import DEFAULT_BATCH_SIZE, SessionState, SyncSession
from souverix_crdt.transports.base import Transport
from souverix_crdt.transports.tcp import (
    MAX_FRAME_LIMIT,
    TcpServer,
    TcpTransport,
    ThrottledReport,
    connect_with_backoff,
)
from souverix_crdt.transports.tcp import connect as connect_tcp
from souverix_crdt.transports.tls import client_context, key_directory_files, server_context

from .backoff import Backoff
from .chains import ChainLease
from .control import ControlServer, status_document
from .coordinator import DEFAULT_OPPORTUNISTIC_FREQUENCY, LinkConfig, SyncCoordinator
from .intake import StoreIntake
from .keydir import TOPOLOGY_FILE, load_revocations
from .keyring import FederationKeys
from .metrics import LinkTraffic, MetricsServer, PlaneCollector
from .planedir import PlaneKeys, load_plane, plane_directory
from .schedule import LINK_POLICY_FIELDS, LinkPolicy, resolve_policy
from .topology import Direction, SyncMode, Topology, load_topology, parse_duration

__all__ = [
    "DEFAULT_RETRY",
    "LINK_META_PREFIX",
    "PeerConfig",
    "PeerLink",
    "PeerProcess",
    "PeerTls",
    "describe_peers",
    "learn_key_directory",
    "link_record",
    "load_peer_config",
    "load_plane_keys",
    "open_replica",
    "parse_peer_config",
    "record_bundle_exchange",
    "tls_contexts",
]

logger = logging.getLogger(__name__)

#: The reconnect schedule of a config that gives none: quick first retries, capped at 5 s.
DEFAULT_RETRY: Final = Backoff(initial=0.2, maximum=5.0)
#: Named values in the store that record each link's last sync (``peer-link:<peer>``).
LINK_META_PREFIX: Final = "peer-link:"
#: The address a TCP peer listens on when its config gives only a port.
DEFAULT_HOST: Final = "127.0.0.1"
_TOP_FIELDS: Final = frozenset(
    {
        "plane",
        "keys",
        "store",
        "transport",
        "listen",
        "nats",
        "upstream",
        "downstream",
        "sync",
        "tls",
        "limits",
        "topology",
        "control",
        "metrics",
    }
)
_SYNC_FIELDS: Final = frozenset({"batch_size", "tick", "retry", "watch", "link_timeout"})
_RETRY_FIELDS: Final = frozenset({"initial", "maximum"})
_LINK_FIELDS: Final = frozenset({"name", "address"}) | LINK_POLICY_FIELDS
_TLS_FIELDS: Final = frozenset({"ca", "cert", "key", "mutual"})
_NATS_FIELDS: Final = frozenset({"url", "user", "password_file"})
_TRANSPORTS: Final = ("tcp", "nats")
# Descriptors a peer process needs besides its connections: the store, its watcher, the
# listening socket, the upstream link, NATS, logs.
_SPARE_FILES: Final = 64
_DEFAULT_TICK_S: Final = 5.0


@attrs.frozen(kw_only=True)
class PeerLink:
    """A configured peer plane.

    Attributes:
        name: The peer's plane name (as it names itself in its hello).
        host: Where to dial it (TCP only: this plane opens the link's sessions).
        port: Its port (TCP only).
        policy: How the link syncs (mode, frequency, batch size, retry), resolved from the
            config and the topology (:mod:`~.schedule`).
    """

    name: str
    host: str | None = None
    port: int | None = None
    policy: LinkPolicy | None = None

    @property
    def address(self) -> str:
        """``host:port``, or ``""`` when it is not dialled."""
        return "" if self.host is None else f"{self.host}:{self.port}"


@attrs.frozen(kw_only=True)
class PeerTls:
    """How a TCP peer runs its connections inside TLS.

    Attributes:
        ca: The fleet CA certificate: servers and clients are verified against it alone.
        cert: This plane's certificate, presented when serving and (mutual) when dialling.
        key: Its private key.
        mutual: Servers require a client certificate; diallers present theirs.
        shorthand: Given as ``tls: true`` (the files are the key directory's): errors then
            name the field ``tls`` rather than ``tls.ca``...
    """

    ca: Path
    cert: Path | None = None
    key: Path | None = None
    mutual: bool = True
    shorthand: bool = False

    def field_of(self, path: str) -> str:
        """The config field that names file ``path``."""
        if not self.shorthand:
            for field in ("ca", "cert", "key"):
                if str(getattr(self, field)) == path:
                    return f"tls.{field}"
        return "tls"


@attrs.frozen(kw_only=True)
class PeerConfig:
    """A validated peer config (see the module documentation for the file).

    Attributes:
        plane: The control plane this process runs.
        keys: The key directory.
        store: The SQLite store.
        transport: ``tcp`` or ``nats``.
        listen_host: Where a TCP peer listens (loopback by default).
        listen_port: The TCP port, or ``None`` when nothing dials in.
        nats_url: The NATS server, for ``transport: nats``.
        nats_user: The NATS user this plane logs in as (``None``: no login).
        nats_password_file: The file holding that user's password (first line).
        upstream: The plane above, if any.
        downstream: The planes below that sync with this one.
        batch_size: Envelopes per batch.
        tick_s: Seconds of silence after which a session re-sends its hello.
        retry: The reconnect schedule.
        watch_s: Seconds between looks at the store for writes of other processes.
        link_timeout_s: Seconds without hearing from a peer after which its link record no
            longer shows it connected (``stale``).
        topology: The topology the links' policies were resolved from, if any.
        tls: TLS for TCP connections, or ``None`` for plain TCP.
        limits: The budgets of the replica and the process (the ``limits:`` mapping).
        control: The control socket's path (``Path("")``: beside the store, the default;
            ``None``: none, ``control: false``); see :attr:`control_socket`.
        metrics_host: Where the metrics endpoint listens (loopback by default).
        metrics_port: Its port, or ``None`` when metrics are off (the default).
        source: The file it was read from.
    """

    plane: str
    keys: Path
    store: Path
    transport: str = "tcp"
    listen_host: str = DEFAULT_HOST
    listen_port: int | None = None
    nats_url: str | None = None
    nats_user: str | None = None
    nats_password_file: Path | None = None
    upstream: PeerLink | None = None
    downstream: tuple[PeerLink, ...] = ()
    batch_size: int = DEFAULT_BATCH_SIZE
    tick_s: float = _DEFAULT_TICK_S
    retry: Backoff = DEFAULT_RETRY
    watch_s: float = 0.25
    link_timeout_s: float = 3 * _DEFAULT_TICK_S
    topology: Topology | None = attrs.field(default=None, eq=False, repr=False)
    tls: PeerTls | None = None
    limits: Limits = DEFAULT_LIMITS
    control: Path | None = Path()
    metrics_host: str = DEFAULT_HOST
    metrics_port: int | None = None
    source: str = "<string>"

    @property
    def control_socket(self) -> Path | None:
        """The control socket of the running process (``None``: none is served)."""
        if self.control is None:
            return None
        if self.control.name:
            return self.control
        return self.store.with_name(self.store.name + ".sock")

    @property
    def peers(self) -> tuple[PeerLink, ...]:
        """Every configured peer, upstream first."""
        return ((self.upstream,) if self.upstream else ()) + self.downstream


# --------------------------------------------------------------------------- config


class _Reader:
    """Typed field access that names the file and field in every error."""

    def __init__(self, file: str) -> None:
        self.file = file

    def fail(self, field: str, detail: str, reason: str = "value") -> ConfigError:
        return ConfigError(file=self.file, field=field, detail=detail, reason=reason)

    def mapping(self, value: object, field: str, allowed: frozenset[str]) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(field, f"expected a mapping, got {type(value).__name__}", "type")
        for key in value:
            if key not in allowed:
                where = f"{field}.{key}" if field else str(key)
                raise self.fail(
                    where,
                    f"unknown field (expected one of: {', '.join(sorted(allowed))})",
                    "unknown-field",
                )
        return value

    def text(self, value: object, field: str) -> str:
        if not isinstance(value, str) or not value.strip():
            raise self.fail(field, f"expected a non-empty string, got {value!r}", "type")
        return value

    def duration_s(self, value: object, field: str) -> float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            # YAML reads ``tick: 5`` as a number: say which unit was probably meant.
            raise self.fail(
                field,
                f"expected a duration with a unit such as '{value:g}s', got {value!r}",
                "type",
            )
        text = self.text(value, field)
        try:
            return parse_duration(text) / 1000
        except ValueError as exc:
            raise self.fail(field, str(exc)) from exc

    def address(self, value: object, field: str, *, allow_zero: bool) -> tuple[str, int]:
        if isinstance(value, int) and not isinstance(value, bool):
            host, port_text = DEFAULT_HOST, str(value)
        elif isinstance(value, str):
            host, _, port_text = value.rpartition(":")
            host = host or DEFAULT_HOST
        else:
            raise self.fail(field, f"expected HOST:PORT or a port, got {value!r}", "type")
        if not port_text.isdigit() or not (0 if allow_zero else 1) <= int(port_text) <= 65535:
            raise self.fail(field, f"expected HOST:PORT with a port number, got {value!r}")
        return host, int(port_text)

    def link(self, value: object, field: str, *, dialled: bool) -> tuple[PeerLink, dict[str, Any]]:
        if isinstance(value, str):
            value = {"name": value}
        item = self.mapping(value, field, _LINK_FIELDS)
        if "name" not in item:
            raise self.fail(f"{field}.name", "missing", "missing")
        name = self.text(item["name"], f"{field}.name")
        if "address" not in item:
            return PeerLink(name=name), item
        if not dialled:
            raise self.fail(
                f"{field}.address", "only for transport: tcp (NATS peers meet on subjects)"
            )
        host, port = self.address(item["address"], f"{field}.address", allow_zero=False)
        return PeerLink(name=name, host=host, port=port), item


def _links(read: _Reader, top: dict[str, Any], plane: str, *, dialled: bool) -> dict[str, Any]:
    options: dict[str, Any] = {}
    entries: dict[str, tuple[str, dict[str, Any]]] = {}
    if top.get("upstream") is not None:
        link, item = read.link(top["upstream"], "upstream", dialled=dialled)
        options["upstream"] = link
        entries[link.name] = ("upstream", item)
    downstream = top.get("downstream") or []
    if not isinstance(downstream, list):
        raise read.fail("downstream", "expected a list of plane names", "type")
    below = []
    seen: set[str] = set(entries)
    for index, value in enumerate(downstream):
        field = f"downstream[{index}]"
        link, item = read.link(value, field, dialled=dialled)
        if link.name in seen:
            raise read.fail(f"{field}.name", f"{link.name!r} is listed twice")
        seen.add(link.name)
        below.append(link)
        entries[link.name] = (field, item)
    options["downstream"] = tuple(below)
    for link_name, (field, _) in entries.items():
        if link_name == plane:
            raise read.fail(f"{field}.name", "a plane does not sync with itself")
    options["_entries"] = entries
    return options


def _topology_of(read: _Reader, top: dict[str, Any], folder: Path, keys: Path) -> Topology | None:
    """The topology named by ``topology:``, else the key directory's, else none."""
    if "topology" in top:
        path = folder / read.text(top["topology"], "topology")
    else:
        path = keys / TOPOLOGY_FILE
        if not path.is_file():
            return None
    try:
        return load_topology(path)
    except (TopologyError, OSError) as exc:
        raise read.fail("topology", f"cannot use {path}: {exc}", "reference") from exc


def _check_reach(
    read: _Reader, top: dict[str, Any], *, field: str, link: PeerLink, policy: LinkPolicy
) -> None:
    """The link's mode can run: someone opens its sessions, over a transport that can."""
    transport = top.get("transport", "tcp")
    direction = policy.direction
    declared = "" if policy.origin == "config" else " (declared in the topology)"
    if transport == "nats" and policy.mode is not SyncMode.CONTINUOUS:
        raise read.fail(
            f"{field}.mode",
            f"{policy.mode.value}{declared}: over transport: nats only continuous links "
            "run (give mode: continuous, or use transport: tcp)",
        )
    if transport == "tcp" and direction is Direction.UPSTREAM and link.host is None:
        if policy.mode is not SyncMode.PUSH:
            raise read.fail(
                f"{field}.address",
                f"missing (HOST:PORT of the upstream plane: a {policy.mode.value} "
                "link is dialled by the lower plane)",
                "missing",
            )
        if "listen" not in top:
            raise read.fail(
                "listen",
                f"missing: {link.name} opens the push link, so this plane listens",
                "missing",
            )


def _policies(
    read: _Reader,
    *,
    top: dict[str, Any],
    plane: str,
    options: dict[str, Any],
    topology: Topology | None,
    sync: dict[str, Any],
) -> dict[str, Any]:
    """Each link with its :class:`~.schedule.LinkPolicy`, and who opens its sessions."""
    entries: dict[str, tuple[str, dict[str, Any]]] = options.pop("_entries")
    transport = top.get("transport", "tcp")
    gapped_plane = (
        topology is not None and plane in topology.planes and topology.plane(plane).air_gapped
    )
    if gapped_plane:
        # Bundles only: nothing dials out, nothing may dial in.
        for field in ("listen", "nats"):
            if field in top:
                raise read.fail(
                    field,
                    f"{plane} is air-gapped in the topology: it syncs by bundle files "
                    "(souverix-crdt bundle export/import), and has no network link",
                    "air-gapped",
                )
    resolved: dict[str, PeerLink] = {}
    for link in (options.get("upstream"), *options["downstream"]):
        if link is None:
            continue
        field, item = entries[link.name]
        gapped_peer = (
            topology is not None
            and link.name in topology.planes
            and topology.plane(link.name).air_gapped
        )
        if gapped_plane or gapped_peer:
            which = plane if gapped_plane else link.name
            raise read.fail(
                field,
                f"{which} is air-gapped in the topology: the link between {plane} and "
                f"{link.name} moves by bundle files (souverix-crdt bundle export/import), "
                f"not over {transport}",
                "air-gapped",
            )
        direction = Direction.UPSTREAM if field == "upstream" else Direction.DOWNSTREAM
        policy = resolve_policy(
            plane=plane,
            peer=link.name,
            direction=direction,
            entry={k: v for k, v in item.items() if k in LINK_POLICY_FIELDS},
            topology=topology,
            field=field,
            file=read.file,
        )
        if policy.retry is None or (policy.live and "retry" not in item):
            # A live link reconnects on the process-wide schedule (quick: it is meant to be
            # up); the topology's retry policy paces scheduled rounds.
            policy = attrs.evolve(policy, retry=sync.get("retry", DEFAULT_RETRY))
        if policy.batch_size is None or ("batch_size" in sync and "batch_size" not in item):
            policy = attrs.evolve(policy, batch_size=sync.get("batch_size", DEFAULT_BATCH_SIZE))
        _check_reach(read, top, field=field, link=link, policy=policy)
        resolved[link.name] = attrs.evolve(link, policy=policy)
    if options.get("upstream") is not None:
        options["upstream"] = resolved[options["upstream"].name]
    options["downstream"] = tuple(resolved[link.name] for link in options["downstream"])
    return options


def _nats(read: _Reader, value: object, folder: Path) -> dict[str, Any]:
    # A URL alone (no login), or {url, user, password_file} (nats-server's own authorization).
    if isinstance(value, dict):
        item = read.mapping(value, "nats", _NATS_FIELDS)
        if "url" not in item:
            raise read.fail("nats.url", "missing (the NATS server URL)", "missing")
        url_field, url_value = "nats.url", item["url"]
    else:
        item, url_field, url_value = {}, "nats", value
    url = read.text(url_value, url_field)
    if not url.startswith(("nats://", "tls://")):
        raise read.fail(url_field, f"expected a nats:// URL, got {url!r}")
    if "@" in url.partition("://")[2].partition("/")[0]:
        raise read.fail(url_field, "no credentials in the URL: give user and password_file")
    options: dict[str, Any] = {"nats_url": url}
    if "user" not in item and "password_file" not in item:
        return options
    if "password_file" not in item:
        raise read.fail(
            "nats.password_file", "missing (the file with the user's password)", "missing"
        )
    if "user" not in item:
        raise read.fail("nats.user", "missing (the NATS user this plane logs in as)", "missing")
    options["nats_user"] = read.text(item["user"], "nats.user")
    options["nats_password_file"] = folder / read.text(item["password_file"], "nats.password_file")
    return options


def _transport(
    read: _Reader, top: dict[str, Any], folder: Path, *, has_downstream: bool
) -> dict[str, Any]:
    transport = top.get("transport", "tcp")
    if transport not in _TRANSPORTS:
        raise read.fail("transport", f"expected tcp or nats, got {transport!r}")
    options: dict[str, Any] = {"transport": transport}
    if transport == "tcp":
        if "nats" in top:
            raise read.fail("nats", "only for transport: nats")
        if "listen" in top:
            host, port = read.address(top["listen"], "listen", allow_zero=True)
            options["listen_host"], options["listen_port"] = host, port
        elif has_downstream:
            raise read.fail("listen", "missing: downstream planes need an address", "missing")
        return options
    if "listen" in top:
        raise read.fail("listen", "only for transport: tcp (NATS peers do not listen)")
    if "nats" not in top:
        raise read.fail("nats", "missing (the NATS server URL: nats://127.0.0.1:4222)", "missing")
    options.update(_nats(read, top["nats"], folder))
    return options


def _sync(read: _Reader, value: object) -> dict[str, Any]:
    sync = read.mapping(value or {}, "sync", _SYNC_FIELDS)
    options: dict[str, Any] = {}
    if "batch_size" in sync:
        size = sync["batch_size"]
        if not isinstance(size, int) or isinstance(size, bool) or not 1 <= size <= 10_000:
            raise read.fail("sync.batch_size", f"expected an integer in 1..10000, got {size!r}")
        options["batch_size"] = size
    if "tick" in sync:
        options["tick_s"] = read.duration_s(sync["tick"], "sync.tick")
    if "watch" in sync:
        options["watch_s"] = read.duration_s(sync["watch"], "sync.watch")
    tick = options.get("tick_s", _DEFAULT_TICK_S)
    if "link_timeout" in sync:
        options["link_timeout_s"] = read.duration_s(sync["link_timeout"], "sync.link_timeout")
        if not options["link_timeout_s"] > tick:
            raise read.fail(
                "sync.link_timeout",
                f"must exceed sync.tick ({tick:g} s): a quiet session is heard from once per tick",
            )
    else:
        options["link_timeout_s"] = 3 * tick
    if "retry" in sync:
        retry = read.mapping(sync["retry"], "sync.retry", _RETRY_FIELDS)
        initial = read.duration_s(retry.get("initial", "200ms"), "sync.retry.initial")
        maximum = read.duration_s(retry.get("maximum", "5s"), "sync.retry.maximum")
        if maximum < initial:
            raise read.fail("sync.retry.maximum", "must be at least sync.retry.initial")
        options["retry"] = Backoff(initial=initial, maximum=maximum)
    return options


def _limits(read: _Reader, value: object, tick_s: float) -> dict[str, Any]:
    if value is None:
        value = {}
    if not isinstance(value, dict):
        raise read.fail("limits", f"expected a mapping, got {type(value).__name__}", "type")
    names = Limits.field_names()
    changes: dict[str, float] = {}
    for key, item in value.items():
        name = str(key)
        field = f"limits.{name}"
        if name not in names:
            close = _close_matches(name, names)
            hint = (
                f"did you mean {' or '.join(map(repr, close))}?"
                if close
                else f"expected one of: {', '.join(names)}"
            )
            raise read.fail(field, f"unknown limit ({hint})", "unknown-field")
        if isinstance(getattr(DEFAULT_LIMITS, name), float):
            changes[name] = read.duration_s(item, field)
        elif isinstance(item, int) and not isinstance(item, bool) and item > 0:
            changes[name] = item
        else:
            raise read.fail(field, f"expected a positive integer, got {item!r}", "type")
    if changes.get("max_frame", 0) > MAX_FRAME_LIMIT:
        raise read.fail("limits.max_frame", f"at most {MAX_FRAME_LIMIT} (a 4-byte frame header)")
    limits = DEFAULT_LIMITS.evolve(**changes)
    if not limits.idle_timeout > tick_s:
        given = "" if "idle_timeout" in changes else " (the default)"
        raise read.fail(
            "limits.idle_timeout",
            f"{limits.idle_timeout:g} s{given} must exceed sync.tick ({tick_s:g} s): a quiet "
            "session sends something only once per tick, and would be closed as idle",
        )
    return {"limits": limits}


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """One line: where and what, without PyYAML's ``in "<unicode string>"`` stream names."""
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or exc.context or "invalid YAML"
        if exc.context and exc.problem:
            problem = f"{exc.problem} ({exc.context})"
        where = "" if mark is None else f"line {mark.line + 1}, column {mark.column + 1}: "
        return " ".join(f"{where}{problem}".split())
    return " ".join(str(exc).split())


def _tls(
    read: _Reader, top: dict[str, Any], folder: Path, keys: Path, plane: str
) -> dict[str, Any]:
    value = top.get("tls")
    if value is None or value is False:
        return {}
    if top.get("transport", "tcp") != "tcp":
        raise read.fail("tls", "only for transport: tcp")
    if value is True:
        # The key directory's material for this plane, as keys init writes it.
        files = key_directory_files(keys, plane)
        tls = PeerTls(ca=files.ca, cert=files.cert, key=files.key, mutual=True, shorthand=True)
        return {"tls": tls}
    if not isinstance(value, dict):
        raise read.fail(
            "tls", f"expected true, false or a mapping of {{ca, cert, key, mutual}}, got {value!r}"
        )
    item = read.mapping(value, "tls", _TLS_FIELDS)
    if "ca" not in item:
        raise read.fail("tls.ca", "missing (the fleet CA certificate)", "missing")
    mutual = item.get("mutual", True)
    if not isinstance(mutual, bool):
        raise read.fail("tls.mutual", f"expected true or false, got {mutual!r}", "type")
    paths = {
        field: folder / read.text(item[field], f"tls.{field}")
        for field in ("ca", "cert", "key")
        if field in item
    }
    for field, other in (("cert", "key"), ("key", "cert")):
        if field in paths and other not in paths:
            raise read.fail(f"tls.{other}", f"missing (tls.{field} needs it)", "missing")
    if "cert" not in paths:
        if "listen" in top:
            raise read.fail("tls.cert", "missing: a plane that listens presents one", "missing")
        if mutual:
            raise read.fail("tls.cert", "missing: mutual TLS presents one", "missing")
    tls = PeerTls(ca=paths["ca"], cert=paths.get("cert"), key=paths.get("key"), mutual=mutual)
    return {"tls": tls}


def tls_contexts(config: PeerConfig) -> tuple[SSLContext | None, SSLContext | None]:
    """The ``(server, client)`` TLS contexts of a peer config; ``(None, None)`` without TLS.

    Raises:
        ConfigError: a TLS file is missing, unreadable or readable by others, or a key does
            not match its certificate; the error names the config field.
    """
    tls = config.tls
    if tls is None:
        return None, None
    try:
        server = None
        if tls.cert is not None and tls.key is not None:
            server = server_context(cert=tls.cert, key=tls.key, ca=tls.ca if tls.mutual else None)
        client = client_context(
            ca=tls.ca,
            cert=tls.cert if tls.mutual else None,
            key=tls.key if tls.mutual else None,
        )
    except KeyFileError as exc:
        detail = str(exc)
        if tls.shorthand and exc.reason == "missing":
            detail += " (issue it where the offline directory is: souverix-crdt keys tls --keys "
            detail += f"OFFLINE_DIR --plane-dir {config.keys})"
        raise ConfigError(
            file=config.source, field=tls.field_of(exc.path), detail=detail, reason=exc.reason
        ) from exc
    except (SSLError, OSError) as exc:
        raise ConfigError(
            file=config.source, field="tls", detail=f"unusable TLS material: {exc}"
        ) from exc
    return server, client


def parse_peer_config(text: str, *, file: str = "<string>", base: Path | None = None) -> PeerConfig:
    """Validate a peer config given as YAML text; relative paths are taken from ``base``.

    Raises:
        ConfigError: it does not validate; the message names ``file`` and the field.
    """
    read = _Reader(file)
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise read.fail("", f"not valid YAML: {_yaml_problem(exc)}", "syntax") from exc
    top = read.mapping(document, "", _TOP_FIELDS)
    for required in ("plane", "keys", "store"):
        if required not in top:
            raise read.fail(required, "missing", "missing")
    folder = Path() if base is None else base
    plane = read.text(top["plane"], "plane")
    links = _links(read, top, plane, dialled=top.get("transport", "tcp") == "tcp")
    try:
        # The plane's own directory; the whole output of keys init resolves to the plane's
        # folder in it. The name becomes a path: "../x" is refused here.
        keys = plane_directory(folder / read.text(top["keys"], "keys"), plane)
    except UnknownPlaneError as exc:
        raise read.fail("plane", str(exc), "reference") from exc
    except KeyFileError as exc:
        raise read.fail("plane", str(exc), "value") from exc
    sync = _sync(read, top.get("sync"))
    topology = _topology_of(read, top, folder, keys)
    links = _policies(read, top=top, plane=plane, options=links, topology=topology, sync=sync)
    return PeerConfig(
        plane=plane,
        keys=keys,
        store=folder / read.text(top["store"], "store"),
        source=file,
        topology=topology,
        **links,
        **_transport(
            read,
            top,
            folder,
            has_downstream=any(link.host is None for link in links["downstream"]),
        ),
        **sync,
        **_tls(read, top, folder, keys, plane),
        **_limits(read, top.get("limits"), sync.get("tick_s", _DEFAULT_TICK_S)),
        **_operations(read, top, folder),
    )


def _operations(read: _Reader, top: dict[str, Any], folder: Path) -> dict[str, Any]:
    """The control socket and the metrics endpoint (docs/operations.md)."""
    options: dict[str, Any] = {"control": Path()}
    control = top.get("control", True)
    if control is False:
        options["control"] = None
    elif control is not True:
        options["control"] = folder / read.text(control, "control")
    metrics = top.get("metrics", False)
    if metrics is not False:
        host, port = read.address(metrics, "metrics", allow_zero=True)
        options["metrics_host"], options["metrics_port"] = host, port
    return options


def load_peer_config(path: str | Path) -> PeerConfig:
    """Read and validate a peer config file.

    Raises:
        ConfigError: it cannot be read or does not validate.
    """
    file = Path(path)
    try:
        text = file.read_text("utf-8")
    except OSError as exc:
        raise ConfigError(
            file=str(file), field="", detail=exc.strerror or str(exc), reason="missing"
        ) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(
            file=str(file), field="", detail="not UTF-8 text", reason="syntax"
        ) from exc
    return parse_peer_config(text, file=str(file), base=file.parent)


# --------------------------------------------------------------------------- replicas


def load_plane_keys(config: PeerConfig) -> PlaneKeys:
    """Read the plane directory a peer config names: its one private key and public chains.

    Raises:
        ConfigError: the directory is another plane's, or the plane's name is not valid.
        KeyFileError: the directory cannot be read or trusted.
    """
    try:
        return load_plane(config.keys, config.plane)
    except KeyFileError as exc:
        if exc.reason not in ("plane", "name"):
            raise
        raise ConfigError(
            file=config.source, field="plane", detail=str(exc), reason="reference"
        ) from exc


def open_replica(
    config: PeerConfig,
    *,
    keys: PlaneKeys | FederationKeys | None = None,
    create: bool = True,
    epoch: int | None = None,
) -> Replica:
    """Open the plane's replica over its SQLite store, writing as the plane's key.

    Args:
        config: The peer config.
        keys: The plane directory, if already loaded (or a whole fleet's keys, in tests).
        create: Create the store (and its folder) when missing; else a missing store is an
            error, so that a typo does not silently show an empty replica.
        epoch: The chain to write under (a :class:`~.chains.ChainLease`'s); by default a new
            one, which is right only for a replica that does not write.

    Raises:
        ConfigError: the plane has no key in the key directory, or the store is missing.
        KeyFileError: the key directory cannot be read or trusted.
        StoreError: the store cannot be opened.
    """
    if isinstance(keys, FederationKeys):
        if config.plane not in keys.planes:
            unknown = UnknownPlaneError(
                config.plane, keys.planes, where=f"the key directory {config.keys}"
            )
            raise ConfigError(
                file=config.source, field="plane", detail=str(unknown), reason="reference"
            )
        keys = PlaneKeys.of(keys, config.plane, config.keys)
    plane_keys = load_plane_keys(config) if keys is None else keys
    if plane_keys.name != config.plane:
        raise ConfigError(
            file=config.source,
            field="plane",
            detail=f"{plane_keys.directory} is {plane_keys.name}'s directory, not {config.plane}'s",
            reason="reference",
        )
    if create:
        config.store.parent.mkdir(parents=True, exist_ok=True)
    elif not config.store.is_file():
        raise ConfigError(
            file=config.source,
            field="store",
            detail=f"{config.store} does not exist (has the peer run yet?)",
            reason="missing",
        )
    store = SqliteStore.open(config.store)
    try:
        return Replica(
            plane_keys.identity,
            plane_keys.anchors,
            store,
            name=config.plane,
            limits=config.limits,
            epoch=epoch,
        )
    except BaseException:
        store.close()
        raise


def open_writing_replica(
    config: PeerConfig, *, keys: PlaneKeys | FederationKeys | None = None, create: bool = True
) -> tuple[Replica, ChainLease]:
    """Open the plane's replica to write under the store's lasting chain (see :mod:`.chains`).

    Close it with ``lease.close(replica.store)`` and then ``replica.close()``: that order marks
    the clean close that lets the next open keep the chain.

    Raises:
        ChainLockedError: another process writes under this store's chain.
        ConfigError, KeyFileError, StoreError: as :func:`open_replica`.
    """
    if isinstance(keys, FederationKeys) or keys is None or not (create or config.store.is_file()):
        # Resolves the plane's own keys (and raises the typed errors) exactly as open_replica.
        probe = open_replica(config, keys=keys, create=create)
        key_id = probe.identity.key_id
        probe.close()
    else:
        key_id = keys.identity.key_id
    lease = ChainLease.acquire(config.store, key_id)
    try:
        replica = open_replica(config, keys=keys, create=create, epoch=lease.epoch)
    except BaseException:
        lease.close(None)
        raise
    return replica, lease


def learn_key_directory(
    replica: Replica, keys: PlaneKeys | FederationKeys, directory: str | Path
) -> int:
    """Teach ``replica`` every delegation and revocation of a key directory; return how many new.

    Peers would learn them from each other's hellos anyway; learning them at start means no
    envelope of a known plane ever waits for its delegation, and a revocation an operator
    dropped into the directory takes effect even before any session runs.
    """
    chains = (
        [c.chain for c in keys.planes.values()]
        if isinstance(keys, FederationKeys)
        else list(keys.chains.values())
    )
    delegations = {link.digest: link.encode() for chain in chains for link in chain}
    learned = replica.add_delegations(delegations.values())
    return learned + replica.add_revocations(load_revocations(directory))


def link_record(replica: Replica, peer: str) -> dict[str, Any] | None:
    """The last sync with ``peer`` that a peer process recorded in ``replica``'s store."""
    raw = replica.store.meta(LINK_META_PREFIX + peer)
    if raw is None:
        return None
    try:
        value = json.loads(raw)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def record_bundle_exchange(replica: Replica, peer: str, *, kind: str) -> dict[str, Any]:
    """Record in the store that a bundle file moved between this plane and ``peer``.

    ``kind`` is ``"export"`` (a bundle written for ``peer``: nothing is confirmed yet),
    ``"import"`` (``peer``'s bundle applied here) or ``"receipt"`` (``peer`` confirmed what it
    holds). An import or a receipt is a sync of the link: its ``last_sync_ms`` moves. A bundle
    link is never shown connected. Returns the new record.

    Raises:
        ValueError: ``kind`` is none of those.
    """
    if kind not in ("export", "import", "receipt"):
        raise ValueError(f"kind must be export, import or receipt, got {kind!r}")
    previous = link_record(replica, peer) or {}
    now = replica.clock.physical()
    record = {
        **previous,
        "connected": False,
        "transport": "bundle",
        f"bundle_{kind}_ms": now,
        "updated_ms": now,
    }
    if kind != "export":
        record["last_sync_ms"] = now
    replica.store.commit(Batch(meta={LINK_META_PREFIX + peer: json.dumps(record).encode()}))
    return record


# --------------------------------------------------------------------------- the process


@attrs.define
class _SessionLog:
    """What one session last reported, and the plane its TLS certificate names."""

    expected: str | None
    logged: tuple[int, int] | None = None
    settled: bool = False
    certificate_required: bool = False
    certificate: str | None = None
    authenticated: bool = False


class _Observed(Transport):
    """A transport that lets the peer process look at its session whenever it goes quiet.

    ``observe`` runs before each receive (see :meth:`PeerProcess._observe`).
    """

    def __init__(self, inner: Transport, observe: Callable[[], None]) -> None:
        self.inner = inner
        self.peer = inner.peer
        self._observe = observe
        self.bytes_sent = 0
        self.bytes_received = 0

    async def send(self, frame: bytes) -> None:
        await self.inner.send(frame)
        self.bytes_sent += len(frame)

    async def receive(self) -> bytes:
        self._observe()
        frame = await self.inner.receive()
        self.bytes_received += len(frame)
        return frame

    async def close(self) -> None:
        await self.inner.close()

    @property
    def closed(self) -> bool:
        return self.inner.closed


class PeerProcess:
    """One control plane's replica, served and synced over TCP or NATS until stopped.

    Args:
        config: The validated config.
        log: Where the one-line progress reports go (default: this module's logger).
        rng: Jitter of the reconnect delays.
    """

    def __init__(
        self,
        config: PeerConfig,
        *,
        log: Callable[[str], None] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.config = config
        self._log = log or logger.info
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not secrets
        self.replica: Replica | None = None
        self.server: TcpServer | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._sessions: set[asyncio.Task[SessionStats]] = set()
        self._nats: Any = None
        self._intake = StoreIntake()
        self._server_tls: SSLContext | None = None
        self._client_tls: SSLContext | None = None
        # Connections dropped before they authenticated (handshake timeouts, idle or garbage
        # clients, refused keys): a flood of them is one line per interval, not one per client.
        self._unauthenticated = ThrottledReport(self._report_unauthenticated)
        # The scheduled (push, scheduled, opportunistic) links this plane opens.
        self.coordinator: SyncCoordinator | None = None
        self._session_logs: dict[int, _SessionLog] = {}
        # Links the connectivity hook said are down, and when each peer was last heard from.
        self._down: set[str] = set()
        self._up_changed = asyncio.Event()
        self._heard: dict[str, float] = {}
        self._connected: set[str] = set()
        self.lease: ChainLease | None = None
        self.control: ControlServer | None = None
        self.metrics: MetricsServer | None = None
        #: Envelopes and bytes per link, and sessions refused before they authenticated.
        self.traffic = LinkTraffic()

    @property
    def port(self) -> int | None:
        """The TCP port this plane listens on, once started."""
        return None if self.server is None else self.server.port

    def say(self, message: str) -> None:
        """Write one progress line, prefixed with the plane's name."""
        self._log(f"{self.config.plane}: {message}")

    def _report_unauthenticated(self, count: int, latest: str) -> None:
        several = "connection" if count == 1 else f"{count} connections"
        self.say(f"dropped {several} that did not authenticate (latest: {latest})")

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Open the replica, start listening and start every session loop.

        Raises:
            ConfigError, KeyFileError, StoreError: the config, keys or store are unusable.
            ConfigError: also when the ``listen`` address cannot be bound (``field="listen"``).
            TransportError: the NATS server cannot be reached, or refused the login (reason
                ``"unauthorized"``).
        """
        config = self.config
        # TLS files are checked first: a bad one names its field before the store is touched.
        self._server_tls, self._client_tls = tls_contexts(config)
        keys = load_plane_keys(config)
        replica, self.lease = open_writing_replica(config, keys=keys)
        self.replica = replica
        try:
            if not self.lease.resumed:
                self.say(f"writing under a new chain ({self.lease.reason})")
            await self._start_operations()
            learned = learn_key_directory(replica, keys, config.keys)
            chains = len(replica.frontiers())
            self.say(
                f"replica open: store {config.store}, key {replica.identity.key_id[:12]}, "
                f"{chains} chains held, {learned} authority items learned from {config.keys}"
            )
            for link in config.peers:
                # Sync debt towards every configured peer is kept from now on, not only once
                # its first session says hello.
                if link.name in keys.chains:
                    replica.register_peer(link.name, [keys.chains[link.name][-1].scope])
            if config.transport == "tcp":
                await self._start_tcp()
            else:
                await self._start_nats(keys.fleet_id)
            self._tasks.append(asyncio.ensure_future(self._watch_store()))
            self._tasks.append(asyncio.ensure_future(self._confirm_links()))
            self._register_bundle_peers(replica)
        except BaseException:
            await self.stop()
            raise

    async def _start_tcp(self) -> None:
        config = self.config
        if config.listen_port is not None:
            address = f"{config.listen_host}:{config.listen_port}"
            self._fit_open_files()
            try:
                self.server = await TcpServer.start(
                    config.listen_host,
                    config.listen_port,
                    handler=self._serve,
                    ssl=self._server_tls,
                    limits=config.limits,
                )
            except OSError as exc:
                # Name the field to change: the bare socket error says neither file nor field.
                cause = exc.strerror or str(exc)
                if exc.errno == errno.EADDRINUSE:
                    cause = "address already in use (another process listens there)"
                raise ConfigError(
                    file=config.source,
                    field="listen",
                    detail=f"cannot listen on {address}: {cause}",
                    reason="listen",
                ) from exc
            secured = ""
            if config.tls is not None:
                secured = " (mutual TLS)" if config.tls.mutual else " (TLS)"
            self.say(f"listening on {config.listen_host}:{self.server.port}{secured}")
        self._start_links()

    def _start_links(self) -> None:
        """Open the links this plane dials: live ones loop, scheduled ones go to the coordinator."""
        config = self.config
        links: list[LinkConfig] = []
        for link in config.peers:
            if link.host is None:
                continue  # it dials in: served by the server above
            policy = link.policy
            if policy is None or policy.mode is SyncMode.CONTINUOUS:
                self._tasks.append(asyncio.ensure_future(self._dial_loop(link)))
            else:
                links.append(self._scheduled_link(link, policy))
            if policy is not None:
                self.say(f"link to {link.name}: {policy.describe()}")
        for link in config.peers:
            policy = link.policy
            if link.host is None and policy is not None and not policy.live:
                # The side that holds the address opens the sessions, under its own mode.
                self.say(
                    f"link to {link.name}: {policy.describe()} cannot be kept from here "
                    f"(no address to open it): {link.name} dials in, and its sessions "
                    "follow its own mode"
                )
        if links:
            replica = self.replica
            assert replica is not None
            self.coordinator = SyncCoordinator(
                replica,
                links,
                rng=self._rng,
                session_factory=self._scheduled_session,
                handshake_timeout=config.limits.handshake_timeout,
                on_observe=self._observe_scheduled,
                on_session_end=self._scheduled_session_ended,
            )
            for item in links:
                # peer run assumes connectivity until a connectivity hook says otherwise.
                self.coordinator.set_link_state(item.peer, item.peer not in self._down)
            self._tasks.append(asyncio.ensure_future(self.coordinator.run()))

    def _fit_open_files(self) -> None:
        """Raise the soft open-file limit (up to the hard one) to hold ``max_connections``.

        Past the limit the kernel refuses ``accept`` itself, and asyncio then stops accepting
        for a second: every peer, honest or not, would be turned away, where the connection
        cap turns away only the newcomers over it.
        """
        try:
            import resource  # noqa: PLC0415 - POSIX only
        except ImportError:  # pragma: no cover - Windows has no such limit to raise
            return
        needed = self.config.limits.max_connections + _SPARE_FILES
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft == resource.RLIM_INFINITY or soft >= needed:
            return
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        if soft < needed:
            self.say(
                f"the open-file limit ({soft}) is below limits.max_connections "
                f"({self.config.limits.max_connections}) + {_SPARE_FILES}: connections past "
                f"about {max(0, soft - _SPARE_FILES)} will fail; raise ulimit -n or lower "
                "limits.max_connections"
            )

    def _nats_password(self) -> str | None:
        config = self.config
        path = config.nats_password_file
        if path is None:
            return None
        try:
            password = path.read_text("utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(
                file=config.source,
                field="nats.password_file",
                detail=f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}",
                reason="missing",
            ) from exc
        if not password:
            raise ConfigError(
                file=config.source, field="nats.password_file", detail=f"{path} is empty"
            )
        return password

    async def _start_nats(self, fleet_id: str) -> None:
        # nats-py is the optional ``nats`` extra: imported only by planes configured for it.
        import nats  # noqa: PLC0415
        from nats.aio.client import Client  # noqa: PLC0415

        from souverix_crdt.transports.nats import NatsTransport, Subjects  # noqa: PLC0415
        from souverix_crdt.transports.nats_auth import inbox_prefix  # noqa: PLC0415

        url = self.config.nats_url
        assert url is not None
        user = self.config.nats_user
        login: dict[str, Any] = {}
        if user is not None:
            # Replies only under _INBOX.<user>: the server lets this user subscribe to no other.
            login = {
                "user": user,
                "password": self._nats_password(),
                "inbox_prefix": inbox_prefix(user),
            }
        refusals: set[str] = set()
        unauthorized: asyncio.Future[Exception] = asyncio.get_running_loop().create_future()

        async def on_error(error: Exception) -> None:
            text = str(error)
            if isinstance(error, nats.errors.AuthorizationError) or (
                "authorization violation" in text.lower()
            ):
                # Retrying cannot help: the user or its password is wrong (or was rotated).
                if not unauthorized.done():
                    unauthorized.set_result(error)
                return
            # A refusal (a permissions violation keeps the connection open) is said once per
            # subject, loudly, instead of letting sessions time out without a word; so is each
            # kind of connection error while (re)connecting.
            if text not in refusals and len(refusals) < 100:
                refusals.add(text)
                refused = "violation" in text.lower()
                self.say(f"NATS server {url} {'refused' if refused else 'error'}: {text}")

        async def on_closed() -> None:
            if self._nats is not None:
                last = getattr(self._nats, "last_error", None)
                self.say(f"NATS connection to {url} closed for good (last error: {last!r})")

        client = Client()
        # nats-py retries the first connection itself, forever (max_reconnect_attempts=-1),
        # reporting each failure to error_cb; a refused login ends the wait instead.
        connecting = asyncio.ensure_future(
            client.connect(
                servers=[url],
                name=self.config.plane,
                connect_timeout=2,
                max_reconnect_attempts=-1,
                reconnect_time_wait=0.25,  # type: ignore[arg-type]  # a float works
                error_cb=on_error,
                closed_cb=on_closed,
                **login,
            )
        )
        try:
            waits: list[asyncio.Future[Any]] = [connecting, unauthorized]
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not connecting.done():
                connecting.cancel()
                await asyncio.wait([connecting])
        if unauthorized.done() or connecting.cancelled():
            with contextlib.suppress(Exception):
                await client.close()
            error = unauthorized.result() if unauthorized.done() else None
            raise TransportError(
                f"NATS server {url} refused the login of user {user!r} "
                f"(password from {self.config.nats_password_file}): {error}",
                reason="unauthorized",
            ) from error
        connecting.result()  # nothing else ends it: it raises only what is a bug
        self._nats = client
        self.say(f"connected to NATS at {url}" + (f" as {user}" if user else ""))
        subjects = Subjects(fleet_id)
        connection = self._nats

        for link in self.config.peers:

            def opener(name: str = link.name) -> Callable[[], Awaitable[Transport]]:
                async def open_transport() -> Transport:
                    return await NatsTransport.open(
                        connection, subjects, local=self.config.plane, peer=name
                    )

                return open_transport

            self._tasks.append(asyncio.ensure_future(self._session_loop(link.name, opener())))

    def status(self) -> dict[str, Any]:
        """The plane's status document (``status --format json``, metrics, control socket)."""
        replica = self.replica
        assert replica is not None
        document = status_document(
            replica, {link.name: link for link in self.config.peers}, partial(link_record, replica)
        )
        document["plane"] = self.config.plane
        document["store"] = str(self.config.store)
        return document

    async def _start_operations(self) -> None:
        """The control socket and the metrics endpoint (docs/operations.md)."""
        config, replica = self.config, self.replica
        assert replica is not None
        socket_path = config.control_socket
        if socket_path is not None:
            control = ControlServer(
                socket_path,
                replica,
                self.status,
                source=config.source,
                on_link=self.set_link_state,
            )
            try:
                await control.start()
            except ConfigError as exc:
                if config.control != Path():
                    raise
                # The default path beside a deeply nested store may not fit a Unix socket:
                # the plane runs without one (CLI writes then meet the chain's lock).
                self.say(f"no control socket: {exc.detail}; set control: PATH in the config")
            else:
                self.control = control
        if config.metrics_port is not None:
            collector = PlaneCollector(
                lambda: self.replica, self.status, self.traffic, replica.clock.physical
            )
            self.metrics = MetricsServer(
                config.metrics_host,
                config.metrics_port,
                collector,
                self._health,
                source=config.source,
            )
            await self.metrics.start()
            self.say(f"metrics on http://{config.metrics_host}:{self.metrics.port}/metrics")

    def _health(self) -> dict[str, Any] | None:
        replica = self.replica
        if replica is None:
            return None
        return {"status": "ok", "plane": self.config.plane, "chain": replica.chain}

    async def stop(self) -> None:
        """Stop every session, the server and the NATS connection; close the store. Idempotent."""
        if self.coordinator is not None:
            await self.coordinator.stop()
        for endpoint in (self.control, self.metrics):
            if endpoint is not None:
                await endpoint.close()
        tasks, self._tasks = self._tasks, []
        for task in (*tasks, *self._sessions):
            task.cancel()
        if tasks or self._sessions:
            await asyncio.wait([*tasks, *self._sessions])
        if self.server is not None:
            await self.server.close()
        self._unauthenticated.flush()
        if self._nats is not None:
            connection, self._nats = self._nats, None
            with contextlib.suppress(Exception):
                await connection.close()
        if self.replica is not None:
            replica, self.replica = self.replica, None
            if self.lease is not None:
                # After the last commit: marks the clean close that keeps the chain.
                self.lease.close(replica.store)
            replica.close()
        elif self.lease is not None:
            self.lease.close(None)

    # ------------------------------------------------------------------ sessions

    async def _dial_loop(self, link: PeerLink) -> None:
        assert link.host is not None
        assert link.port is not None
        host, port = link.host, link.port
        announced = False

        async def sleep(delay: float) -> None:
            # connect_with_backoff retries quietly; say so once per outage, not once per try.
            nonlocal announced
            if not announced:
                self.say(f"{link.name} at {host}:{port} unreachable; retrying with backoff")
                announced = True
            await asyncio.sleep(delay)

        async def dial() -> Transport:
            nonlocal announced
            # With TLS the upstream's certificate must name the plane we mean to reach.
            tls = self._client_tls
            transport = await connect_with_backoff(
                host,
                port,
                backoff=self.config.retry,
                sleep=sleep,
                peer=link.name,
                ssl=tls,
                server_hostname=link.name if tls is not None else None,
                max_frame=self.config.limits.max_frame,
                read_timeout=self.config.limits.idle_timeout,
            )
            announced = False
            return transport

        await self._session_loop(link.name, dial)

    async def _session_loop(
        self, peer: str, open_transport: Callable[[], Awaitable[Transport]]
    ) -> None:
        failures = 0
        while True:
            while peer in self._down:
                self._up_changed.clear()
                await self._up_changed.wait()
            try:
                transport = await open_transport()
            except TransportError as exc:
                if failures == 0:
                    self.say(f"no transport to {peer} ({exc}); retrying")
                await asyncio.sleep(self.config.retry.delay(failures, self._rng))
                failures += 1
                continue
            failures = 0
            stats = await self._session(transport, expected=peer)
            detail = f"{stats.reason.value}" + (f": {stats.error}" if stats.error else "")
            self.say(f"session with {peer} ended ({detail}); reconnecting")
            # A peer that accepts and drops every session must not be hammered.
            await asyncio.sleep(self.config.retry.delay(0, self._rng))

    async def _serve(self, transport: Transport) -> None:
        state = _SessionLog(None)
        if self.config.tls is not None and self.config.tls.mutual:
            # Verified by the handshake; the session must then authenticate as that plane.
            state.certificate_required = True
            if isinstance(transport, TcpTransport):
                state.certificate = transport.peer_certificate_name
        stats = await self._session(transport, expected=None, state=state)
        if not state.authenticated:
            why = str(stats.error) if stats.error is not None else stats.close_reason
            self._unauthenticated.add(f"{transport.peer}: {why or stats.reason.value}")
            self.traffic.handshake_failed(stats.close_reason or stats.reason.value)
            return
        detail = f"{stats.reason.value}" + (f": {stats.error}" if stats.error else "")
        self.say(f"session from {transport.peer} ended ({detail})")

    async def _session(
        self, transport: Transport, *, expected: str | None, state: _SessionLog | None = None
    ) -> SessionStats:
        state = _SessionLog(expected) if state is None else state
        session = self._new_session(state, batch_size=self.config.batch_size)
        observed = _Observed(transport, lambda: self._observe(session, state))
        task = asyncio.ensure_future(
            run_session(
                session,
                observed,
                tick_interval=self.config.tick_s,
                handshake_timeout=self.config.limits.handshake_timeout,
            )
        )
        self._sessions.add(task)
        self.traffic.track(
            id(session),
            lambda: session.peer_name,
            lambda: (
                session.envelopes_received,
                session.envelopes_sent,
                observed.bytes_received,
                observed.bytes_sent,
            ),
        )
        try:
            return await task
        finally:
            self.traffic.finish(id(session))
            self._sessions.discard(task)
            state.authenticated = session.peer_name is not None
            with contextlib.suppress(TransportError, OSError):
                await transport.close()
            if session.peer_name and self.replica is not None:
                self._record(session.peer_name, connected=False)

    def _new_session(self, state: _SessionLog, *, batch_size: int) -> SyncSession:
        replica = self.replica
        assert replica is not None
        allowed = {link.name for link in self.config.peers}
        expected = state.expected

        def accept(grant: Grant) -> bool:
            # Judged on the peer's verified chain during the handshake, before any frontier,
            # authority item or envelope moves: a dialled link must reach the plane it dialled,
            # a served one must be a configured peer, and over mutual TLS the session's plane
            # must be the one its certificate names.
            name = grant.plane
            if name not in allowed or (expected is not None and name != expected):
                self.say(f"refusing a session with {name!r}: not a configured peer here")
                return False
            if name in self._down:
                self.say(f"refusing a session with {name!r}: the link is down")
                return False
            if state.certificate_required and name != state.certificate:
                self.say(
                    f"refusing a session with {name!r}: "
                    f"its TLS certificate names {state.certificate!r}"
                )
                return False
            return True

        return SyncSession(replica, batch_size=batch_size, accept=accept)

    def _observe(self, session: SyncSession, state: _SessionLog) -> None:
        peer = session.peer_name
        if peer is None or session.state is not SessionState.OPEN:
            return
        if peer in self._down:
            session.close("the link is down")
            return
        self._heard[peer] = time.monotonic()
        if not self._settled(session, peer):
            state.settled = False
            return
        counts = (session.envelopes_received, session.envelopes_sent)
        if state.settled and counts == state.logged:
            return
        state.settled = True
        previous = state.logged or (0, 0)
        state.logged = counts
        replica = self.replica
        assert replica is not None
        debt = replica.sync_debt(peer)
        self.say(
            f"synced with {peer}: {counts[0] - previous[0]} envelopes in, "
            f"{counts[1] - previous[1]} out; {len(replica.frontiers())} chains held, "
            f"debt to {peer} {debt.envelopes}"
        )
        self._record(peer, connected=True)

    def _settled(self, session: SyncSession, peer: str) -> bool:
        """Both directions done: the peer acknowledged what we can send, and we hold its share."""
        replica = self.replica
        assert replica is not None
        if not session.caught_up:
            return False
        home = [replica.identity.scope]
        for (scope, chain), seq in replica.store.peer_frontiers(peer).items():
            if seq > replica.chain_seq(scope, chain) and replica.interested(
                home, Scope.parse(scope)
            ):
                return False
        return True

    def _record(self, peer: str, *, connected: bool, synced: bool = True) -> None:
        replica = self.replica
        assert replica is not None
        previous = link_record(replica, peer) or {}
        now = replica.clock.physical()
        if connected:
            self._connected.add(peer)
        else:
            self._connected.discard(peer)
        record = {
            **previous,
            "connected": connected,
            "transport": self.config.transport,
            "last_sync_ms": now if connected and synced else previous.get("last_sync_ms"),
            "updated_ms": now,
            "confirmed_ms": now,
            "timeout_ms": round(self.config.link_timeout_s * 1000),
        }
        with contextlib.suppress(SouverixError):  # bookkeeping only: never stop a sync for it
            replica.store.commit(Batch(meta={LINK_META_PREFIX + peer: json.dumps(record).encode()}))

    # ------------------------------------------------------------------ scheduled links

    def _scheduled_link(self, link: PeerLink, policy: LinkPolicy) -> LinkConfig:
        """The coordinator's link for a push, scheduled or opportunistic link this plane opens."""
        assert link.host is not None
        assert link.port is not None
        host, port, name = link.host, link.port, link.name
        unreachable = False

        async def connect() -> Transport:
            nonlocal unreachable
            tls = self._client_tls
            try:
                transport = await connect_tcp(
                    host,
                    port,
                    peer=name,
                    ssl=tls,
                    server_hostname=name if tls is not None else None,
                    max_frame=self.config.limits.max_frame,
                    read_timeout=self.config.limits.idle_timeout,
                )
            except (TransportError, OSError):
                if not unreachable:  # once per outage, not once per try
                    self.say(f"{name} at {host}:{port} unreachable; retrying with backoff")
                    unreachable = True
                raise
            unreachable = False
            return transport

        frequency = policy.frequency_s or DEFAULT_OPPORTUNISTIC_FREQUENCY
        keys = self.config.topology
        scope = None
        if keys is not None and name in keys.planes:
            scope = keys.plane(name).scope
        return LinkConfig(
            peer=name,
            connect=connect,
            direction=policy.direction,
            mode=policy.mode,
            frequency=frequency,
            batch_size=policy.batch_size or self.config.batch_size,
            retry=policy.retry or self.config.retry,
            max_attempts=policy.max_attempts,
            peer_scope=scope,
            tick_interval=self.config.tick_s,
            wake_on_write=False,
        )

    def _scheduled_session(self, link: LinkConfig) -> SyncSession:
        state = _SessionLog(link.peer)
        session = self._new_session(state, batch_size=link.batch_size)
        self._session_logs[id(session)] = state
        return session

    def _observe_scheduled(self, peer: str, session: SyncSession) -> None:
        state = self._session_logs.get(id(session))
        if state is not None:
            self._observe(session, state)

    def _scheduled_session_ended(self, peer: str, session: SyncSession) -> None:
        self._session_logs.pop(id(session), None)
        if session.peer_name and self.replica is not None:
            self._record(session.peer_name, connected=False)

    # ------------------------------------------------------------------ connectivity

    def set_link_state(self, peer: str, up: bool) -> None:
        """The connectivity hook: the link to ``peer`` is up or down.

        Down: no session is opened to ``peer`` and none it opens is accepted; a session in
        progress is closed (a scheduled one at once, a live one the next time it goes quiet,
        within one ``sync.tick``). Up: a scheduled link syncs at once, a live one reconnects.
        Callable before :meth:`start` (the link then starts down). From outside the process:
        ``souverix-crdt peer link --config FILE PEER down|up`` (the control socket's ``link``
        request).

        Raises:
            UnknownPlaneError: ``peer`` is not a configured peer.
        """
        names = [link.name for link in self.config.peers]
        if peer not in names:
            raise UnknownPlaneError(peer, names, where=f"the links of {self.config.plane}")
        if up == (peer not in self._down):
            return
        if up:
            self._down.discard(peer)
        else:
            self._down.add(peer)
        self.say(f"link to {peer} is {'up' if up else 'down'} (connectivity)")
        if self.coordinator is not None and peer in self.coordinator.links:
            self.coordinator.set_link_state(peer, up)
        self._up_changed.set()

    def link_up(self, peer: str) -> bool:
        """What the connectivity hook last said about ``peer`` (``True`` until told otherwise)."""
        return peer not in self._down

    async def _confirm_links(self) -> None:
        # A link record says "connected" only while it is confirmed: rewritten here while the
        # peer is heard from, so a record left by a process that stopped turns stale.
        period = self.config.link_timeout_s / 3
        while True:
            await asyncio.sleep(period)
            now = time.monotonic()
            for peer in sorted(self._connected):
                heard = self._heard.get(peer)
                if heard is not None and now - heard <= self.config.link_timeout_s:
                    self._record(peer, connected=True, synced=False)

    def _register_bundle_peers(self, replica: Replica) -> None:
        """Track the debt of the links that move by bundle files, from the start."""
        topology = self.config.topology
        if topology is None or self.config.plane not in topology.planes:
            return
        for spec in topology.links():
            if not spec.air_gapped or self.config.plane not in spec.key:
                continue
            other = spec.lower if spec.upper == self.config.plane else spec.upper
            if other in topology.planes:
                replica.register_peer(other, [topology.plane(other).scope])

    # ------------------------------------------------------------------ outside writes

    async def _watch_store(self) -> None:
        # A connection of our own: data_version moves when any *other* connection commits,
        # and from here the replica's own connection is another one too.
        uri = self.config.store.resolve().as_uri() + "?mode=ro"
        watcher = sqlite3.connect(uri, uri=True)
        try:
            seen = None
            while True:
                version = watcher.execute("PRAGMA data_version").fetchone()[0]
                if version != seen:
                    seen = version
                    picked = self.take_in_outside_writes()
                    if picked:
                        self.say(f"took in {picked} envelopes written to the store by others")
                await asyncio.sleep(self.config.watch_s)
        finally:
            watcher.close()

    def take_in_outside_writes(self) -> int:
        """Ingest what other processes committed to the store; return the envelopes applied."""
        replica = self.replica
        assert replica is not None
        return self._intake.take_in(replica, replica.store)


def describe_peers(config: PeerConfig) -> Mapping[str, str]:
    """Each configured peer and how it is reached, for logs and ``status``."""
    reached: dict[str, str] = {}
    for link in config.peers:
        if config.transport == "nats":
            reached[link.name] = f"nats {config.nats_url}"
        elif link.host is not None:
            reached[link.name] = f"dials {link.address}"
        else:
            reached[link.name] = f"dials in to {config.listen_host}:{config.listen_port}"
        if config.transport == "tcp" and config.tls is not None:
            reached[link.name] += " over mutual TLS" if config.tls.mutual else " over TLS"
    return reached
