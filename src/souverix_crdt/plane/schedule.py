"""How each link of ``peer run`` syncs, and what its link record says about it.

A peer config names its links (``upstream``, ``downstream``); the topology declares how each
syncs (``sync.upstream`` / ``sync.downstream`` of a plane); a link entry of the peer config
may override any of it::

    upstream: {name: global, address: 127.0.0.1:7301, mode: scheduled, frequency: 30s,
               batch_size: 50, retry: {initial: 1s, maximum: 1m, jitter: 0.2, max_attempts: 5}}

One :class:`LinkPolicy` per link is resolved, field by field, from: the link's own entry in
the peer config; this plane's declaration in the topology; the peer plane's declaration of
the same link; the process-wide ``sync:`` settings; and finally a live (``continuous``) link,
which is what a link declared nowhere has always been.

Who opens sessions
    Over TCP the side that holds the other's address opens sessions, by the link's mode: the
    lower plane dials its upstream (``upstream.address``) and, for a ``push`` link, the upper
    plane dials the lower one (a ``downstream`` entry with an ``address``; the lower plane then
    listens). The other side serves whatever sessions arrive. Over NATS only continuous links
    run (the two sides' sessions meet on the fleet's subjects, so neither can keep a schedule
    alone); another mode there is a config error.

Air gaps
    A link to or from an air-gapped plane (``air_gapped: true`` in the topology) moves by
    bundle files only: naming it as a network link, or making an air-gapped plane listen, is a
    :class:`~souverix_crdt.errors.ConfigError` naming the field.

Link records
    The store holds one named value per link, ``peer-link:<peer>`` (see :func:`link_state`):
    whether a session is open, when the link was last settled, and when it was last
    *confirmed* — the running process rewrites that while it hears from the peer. A record
    whose confirmation is older than its ``timeout_ms`` is ``stale``: the process that wrote it
    stopped (or lost the peer) without saying so, and the link is not shown as connected.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Final

import attrs

from souverix_crdt.errors import ConfigError

from .backoff import Backoff
from .topology import Direction, SyncMode, SyncTarget, Topology, parse_duration

__all__ = [
    "LINK_POLICY_FIELDS",
    "LinkPolicy",
    "LinkState",
    "link_state",
    "resolve_policy",
]

#: The fields of a link entry of the peer config besides ``name`` and ``address``.
LINK_POLICY_FIELDS: Final = frozenset({"mode", "frequency", "batch_size", "retry"})
_RETRY_FIELDS: Final = frozenset({"initial", "maximum", "multiplier", "jitter", "max_attempts"})
_MODES: Final = {mode.value: mode for mode in SyncMode}


class LinkState:
    """What a link record says of the link now (the ``connected`` column of ``status``)."""

    #: A session is open and the peer was heard from within the timeout.
    YES: Final = "yes"
    #: No session is open (or the link only moves by bundles).
    NO: Final = "no"
    #: The record says connected, but it was last confirmed longer ago than its timeout.
    STALE: Final = "stale"


@attrs.frozen(kw_only=True)
class LinkPolicy:
    """How one link of a peer process syncs.

    Attributes:
        peer: The peer plane.
        direction: Upstream (towards the root) or downstream, from this plane.
        mode: How sessions are opened (see :class:`~.topology.SyncMode`).
        frequency_s: Seconds between scheduled sessions (``None``: the mode needs none).
        batch_size: Envelopes per batch (``None``: the process-wide ``sync.batch_size``).
        retry: The backoff of failed attempts (``None``: the process-wide ``sync.retry``).
        max_attempts: Attempts per scheduled round before waiting for the next one.
        origin: Where the mode came from: ``config``, ``topology`` (this plane's
            declaration), ``peer`` (the peer's declaration) or ``default``.
    """

    peer: str
    direction: Direction
    mode: SyncMode = SyncMode.CONTINUOUS
    frequency_s: float | None = None
    batch_size: int | None = None
    retry: Backoff | None = None
    max_attempts: int | None = None
    origin: str = "default"

    @property
    def live(self) -> bool:
        """True when the link keeps a session open (continuous, opportunistic)."""
        return self.mode in (SyncMode.CONTINUOUS, SyncMode.OPPORTUNISTIC)

    def describe(self) -> str:
        """``push every 2s`` and the like, for logs."""
        every = "" if self.frequency_s is None else f" every {self.frequency_s:g}s"
        return f"{self.mode.value}{every} ({self.origin})"


def _declared(topology: Topology | None, plane: str, peer: str) -> SyncTarget | None:
    """``plane``'s own topology declaration of its link to ``peer``."""
    if topology is None or plane not in topology.planes:
        return None
    spec = topology.plane(plane)
    targets = ([spec.upstream] if spec.upstream is not None else []) + list(spec.downstream)
    return next((target for target in targets if target.target == peer), None)


def _fail(file: str, field: str, detail: str, reason: str = "value") -> ConfigError:
    return ConfigError(file=file, field=field, detail=detail, reason=reason)


def _duration_s(file: str, field: str, value: object) -> float:
    if not isinstance(value, str) or not value.strip():
        raise _fail(
            file, field, f"expected a duration such as '30s' or '5m', got {value!r}", "type"
        )
    try:
        seconds = parse_duration(value) / 1000
    except ValueError as exc:
        raise _fail(file, field, str(exc)) from exc
    if seconds <= 0:
        raise _fail(file, field, f"must be longer than 0, got {value!r}")
    return seconds


def _retry(file: str, field: str, value: object) -> tuple[Backoff, int | None]:
    if not isinstance(value, dict):
        raise _fail(file, field, f"expected a mapping, got {type(value).__name__}", "type")
    for key in value:
        if key not in _RETRY_FIELDS:
            raise _fail(
                file,
                f"{field}.{key}",
                f"unknown field (expected one of: {', '.join(sorted(_RETRY_FIELDS))})",
                "unknown-field",
            )
    initial = _duration_s(file, f"{field}.initial", value.get("initial", "1s"))
    maximum = _duration_s(file, f"{field}.maximum", value.get("maximum", "5m"))
    numbers: dict[str, float] = {}
    for name, default, low, high in (("multiplier", 2.0, 1.0, 100.0), ("jitter", 0.2, 0.0, 1.0)):
        number = value.get(name, default)
        if (
            isinstance(number, bool)
            or not isinstance(number, int | float)
            or not (math.isfinite(number) and low <= number <= high)
        ):
            raise _fail(file, f"{field}.{name}", f"expected a number in {low:g}..{high:g}")
        numbers[name] = float(number)
    if maximum < initial:
        raise _fail(file, f"{field}.maximum", f"must be at least {field}.initial")
    attempts = value.get("max_attempts")
    if attempts is not None and (type(attempts) is not int or attempts < 1):
        raise _fail(file, f"{field}.max_attempts", f"expected an integer >= 1, got {attempts!r}")
    return Backoff(initial=initial, maximum=maximum, **numbers), attempts


def resolve_policy(
    *,
    plane: str,
    peer: str,
    direction: Direction,
    entry: Mapping[str, Any],
    topology: Topology | None,
    field: str,
    file: str,
) -> LinkPolicy:
    """The policy of ``plane``'s link to ``peer`` (see the module documentation for the order).

    Args:
        plane: This plane.
        peer: The peer plane.
        direction: The link's direction from this plane.
        entry: The link's entry in the peer config (``mode``, ``frequency``...; may be empty).
        topology: The fleet's topology, if one is known.
        field: The entry's field path (``upstream``, ``downstream[0]``), for errors.
        file: The config file, for errors.

    Raises:
        ConfigError: a field of the entry is invalid, or the resolved mode needs a frequency
            that nothing gives.
    """
    own = _declared(topology, plane, peer)
    theirs = _declared(topology, peer, plane)
    declared = own or theirs
    origin = "default" if declared is None else ("topology" if own is not None else "peer")
    mode = SyncMode.CONTINUOUS if declared is None else declared.mode
    if "mode" in entry:
        text = entry["mode"]
        if text not in _MODES:
            raise _fail(
                file,
                f"{field}.mode",
                f"expected one of: {', '.join(_MODES)}, got {text!r}",
            )
        mode, origin = _MODES[text], "config"
    frequency: float | None = None
    if declared is not None and declared.frequency_ms is not None:
        frequency = declared.frequency_ms / 1000
    if "frequency" in entry:
        frequency = _duration_s(file, f"{field}.frequency", entry["frequency"])
    if mode in (SyncMode.PUSH, SyncMode.SCHEDULED) and frequency is None:
        raise _fail(
            file, f"{field}.frequency", f"missing: a {mode.value} link needs one", "missing"
        )
    batch: int | None = None if declared is None else declared.batch_size
    if "batch_size" in entry:
        batch = entry["batch_size"]
        if type(batch) is not int or not 1 <= batch <= 10_000:
            raise _fail(
                file, f"{field}.batch_size", f"expected an integer in 1..10000, got {batch!r}"
            )
    retry: Backoff | None = None
    attempts: int | None = None
    if declared is not None and origin != "default":
        retry, attempts = declared.retry.backoff(), declared.retry.max_attempts or None
    if "retry" in entry:
        retry, attempts = _retry(file, f"{field}.retry", entry["retry"])
    return LinkPolicy(
        peer=peer,
        direction=direction,
        mode=mode,
        frequency_s=frequency,
        batch_size=batch,
        retry=retry,
        max_attempts=attempts,
        origin=origin,
    )


def link_state(record: Mapping[str, Any] | None, now_ms: int) -> str:
    """What ``record`` (a ``peer-link:`` value) says now: a :class:`LinkState` value, or ``-``.

    A record that says connected counts only while its last confirmation is within its
    ``timeout_ms``; records written before confirmations existed fall back to when they were
    written (``updated_ms``).
    """
    if not record:
        return "-"
    if not record.get("connected"):
        return LinkState.NO
    confirmed = record.get("confirmed_ms", record.get("updated_ms"))
    timeout = record.get("timeout_ms")
    if not isinstance(confirmed, int) or not isinstance(timeout, int):
        return LinkState.STALE  # nothing says it is current: do not claim it is
    return LinkState.YES if now_ms - confirmed <= timeout else LinkState.STALE
