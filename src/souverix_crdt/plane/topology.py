"""Federation topology: which control planes exist, their authority, and how they sync.

A topology file is YAML in the shape of the product brief's ``Authority`` and ``SyncStrategy``
blocks, one entry per control plane, keyed by the plane's name::

    version: 1
    fleet: souverix-demo
    conflict_resolution: {strategy: last-write-wins, versioning: true, history: 16,
                          audit_log: true}
    control_planes:
      region-a:
        scope: global/region-a
        authority:
          level: regional                    # global | regional | local | autonomous
          autonomy: {mode: full, can_operate_isolated: true,
                     can_modify_policies: true, can_deploy_versions: true}
        sync:
          upstream: {target: global, mode: continuous, frequency: 15m, batch_size: 100,
                     retry: {strategy: exponential-backoff, initial: 1s, maximum: 5m}}
          downstream:
            - {target: edge-a1, mode: push, frequency: 5m}
          air_gapped: false

Validation is strict and total: unknown fields, wrong types, bad durations, dangling targets,
duplicate keys, YAML aliases and authority that a delegation chain could not carry (a zone
granted more than its issuer holds) are each refused with one
:class:`~souverix_crdt.errors.TopologyError` whose single-line message names the file, the line,
the field path and what was wrong. Nothing is normalised or guessed.

The plane that *issues* a plane's delegation is the plane at the nearest strict ancestor scope
(``global`` for regions and ``edge-c``, the region for its zones); a link joins two planes when
either declares the other as ``upstream`` or ``downstream`` target.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any, Final

import attrs

from souverix_crdt.errors import TopologyError
from souverix_crdt.scope import Autonomy, Scope, Tier

from .backoff import Backoff

__all__ = [
    "DEFAULT_TOPOLOGY_RESOURCE",
    "AutonomyFlags",
    "ConflictResolution",
    "ControlPlaneSpec",
    "Direction",
    "LinkSpec",
    "RetryPolicy",
    "SyncMode",
    "SyncTarget",
    "Topology",
    "default_topology",
    "default_topology_text",
    "format_duration",
    "load_topology",
    "parse_duration",
    "parse_topology",
]

#: The packaged topology of the product brief (``souverix_crdt/data/...``).
DEFAULT_TOPOLOGY_RESOURCE: Final = "data/default-topology.yaml"
#: The only topology format version.
FORMAT_VERSION: Final = 1
#: Largest topology file read (a fleet description, not a data set).
MAX_FILE_SIZE: Final = 1024 * 1024
#: Bounds on a link's batch size.
MAX_BATCH_SIZE: Final = 10_000

_DURATION: Final = re.compile(
    r"(?:(?P<d>\d+)d)?(?:(?P<h>\d+)h)?(?:(?P<m>\d+)m(?!s))?(?:(?P<s>\d+)s)?(?:(?P<ms>\d+)ms)?",
    re.ASCII,
)
_UNIT_MS: Final = {"d": 86_400_000, "h": 3_600_000, "m": 60_000, "s": 1_000, "ms": 1}


class SyncMode(enum.Enum):
    """How a link moves data.

    ``CONTINUOUS``: a live session pushes every change as it is made. ``PUSH``: the upper side
    pushes at ``frequency``. ``SCHEDULED``: both sides exchange at ``frequency``.
    ``OPPORTUNISTIC``: whenever connectivity allows (or by bundle, for air-gapped planes).
    """

    CONTINUOUS = "continuous"
    PUSH = "push"
    SCHEDULED = "scheduled"
    OPPORTUNISTIC = "opportunistic"


class Direction(enum.Enum):
    """Which way a declared sync relationship points, seen from the plane that declares it."""

    UPSTREAM = "upstream"
    DOWNSTREAM = "downstream"


def parse_duration(text: str) -> int:
    """Parse ``"15m"``, ``"1h30m"``, ``"30s"``, ``"250ms"`` or ``"2d"`` into milliseconds.

    Raises:
        ValueError: if ``text`` is not such a duration, or is zero.
    """
    match = _DURATION.fullmatch(text)
    if not text or match is None:
        raise ValueError(f"{text!r} is not a duration like '15m', '1h30m', '30s' or '250ms'")
    total = sum(int(value) * _UNIT_MS[unit] for unit, value in match.groupdict().items() if value)
    if total <= 0:
        raise ValueError(f"{text!r} is zero; a duration must be positive")
    return total


def format_duration(milliseconds: int) -> str:
    """A compact human duration: ``"3h 45m"``, ``"12m"``, ``"42s"``, ``"2d 3h"``, ``"0s"``.

    Seconds are dropped once the duration reaches an hour, minutes once it reaches a day: the
    views show how far behind something is, not a stopwatch.
    """
    seconds = max(0, milliseconds) // 1000
    days, rest = divmod(seconds, 86_400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        parts = [f"{days}d", f"{hours}h" if hours else ""]
    elif hours:
        parts = [f"{hours}h", f"{minutes}m" if minutes else ""]
    elif minutes:
        parts = [f"{minutes}m", f"{secs}s" if secs else ""]
    else:
        parts = [f"{secs}s"]
    return " ".join(part for part in parts if part)


@attrs.frozen(kw_only=True)
class RetryPolicy:
    """Retries of a failed sync: exponential backoff with downward jitter.

    Attributes:
        strategy: Always ``exponential-backoff``.
        initial_ms: Delay before the first retry.
        maximum_ms: Cap on any delay.
        multiplier: Growth per retry (at least 1).
        jitter: Fraction of a delay that jitter may remove, in ``[0, 1]``.
        max_attempts: Retries before giving up until the next scheduled sync; 0 is unbounded.
    """

    strategy: str = "exponential-backoff"
    initial_ms: int = 1_000
    maximum_ms: int = 300_000
    multiplier: float = 2.0
    jitter: float = 0.2
    max_attempts: int = 0

    def backoff(self) -> Backoff:
        """The :class:`~souverix_crdt.plane.backoff.Backoff` schedule (seconds) of this policy."""
        return Backoff(
            initial=self.initial_ms / 1000,
            multiplier=self.multiplier,
            maximum=self.maximum_ms / 1000,
            jitter=self.jitter,
        )

    def to_json(self) -> dict[str, Any]:
        """A JSON-serialisable form."""
        return {
            "strategy": self.strategy,
            "initial_ms": self.initial_ms,
            "maximum_ms": self.maximum_ms,
            "multiplier": self.multiplier,
            "jitter": self.jitter,
            "max_attempts": self.max_attempts,
        }


@attrs.frozen(kw_only=True)
class SyncTarget:
    """One declared sync relationship of a plane (its ``upstream`` or one ``downstream`` entry).

    Attributes:
        target: The plane at the other end.
        direction: Upstream (towards the root) or downstream, from the declaring plane.
        mode: How data moves.
        frequency_ms: The period, or ``None`` for opportunistic sync without one.
        batch_size: Envelopes per batch.
        retry: What to do when a sync fails.
    """

    target: str
    direction: Direction
    mode: SyncMode
    frequency_ms: int | None
    batch_size: int = 100
    retry: RetryPolicy = RetryPolicy()

    @property
    def frequency(self) -> str | None:
        """The period as text (``"15m"``), or ``None``."""
        return None if self.frequency_ms is None else format_duration(self.frequency_ms)

    def to_json(self) -> dict[str, Any]:
        """A JSON-serialisable form."""
        return {
            "target": self.target,
            "direction": self.direction.value,
            "mode": self.mode.value,
            "frequency": self.frequency,
            "frequency_ms": self.frequency_ms,
            "batch_size": self.batch_size,
            "retry": self.retry.to_json(),
        }


@attrs.frozen(kw_only=True)
class AutonomyFlags:
    """A plane's autonomy: its mode and what it may do on its own.

    Attributes:
        mode: ``full`` or ``conditional`` (see :class:`~souverix_crdt.scope.Autonomy`).
        can_operate_isolated: Keeps running its scope while cut off.
        can_modify_policies: May write policies.
        can_deploy_versions: May write desired versions.
    """

    mode: Autonomy
    can_operate_isolated: bool
    can_modify_policies: bool
    can_deploy_versions: bool

    def to_json(self) -> dict[str, Any]:
        """A JSON-serialisable form."""
        return {
            "mode": self.mode.value,
            "can_operate_isolated": self.can_operate_isolated,
            "can_modify_policies": self.can_modify_policies,
            "can_deploy_versions": self.can_deploy_versions,
        }


@attrs.frozen(kw_only=True)
class ControlPlaneSpec:
    """One control plane of the topology.

    Attributes:
        name: Its name (unique in the topology).
        scope: The scope it is master of record for.
        level: Its authority tier.
        autonomy: Its autonomy mode and flags.
        upstream: Its declared upstream sync, if any.
        downstream: Its declared downstream syncs.
        air_gapped: True when it is reachable only by bundle files.
    """

    name: str
    scope: Scope
    level: Tier
    autonomy: AutonomyFlags
    upstream: SyncTarget | None
    downstream: tuple[SyncTarget, ...]
    air_gapped: bool

    def to_json(self) -> dict[str, Any]:
        """A JSON-serialisable form."""
        return {
            "name": self.name,
            "scope": str(self.scope),
            "level": self.level.value,
            "autonomy": self.autonomy.to_json(),
            "upstream": None if self.upstream is None else self.upstream.to_json(),
            "downstream": [target.to_json() for target in self.downstream],
            "air_gapped": self.air_gapped,
        }


@attrs.frozen(kw_only=True)
class ConflictResolution:
    """How concurrent writes are settled (the brief's conflict resolution block).

    Attributes:
        strategy: ``last-write-wins``; scopes delegated with conditional autonomy add authority
            precedence through their signed delegation, not through this file.
        versioning: Keep a bounded history of every key.
        history: Registers kept per key when versioning (1 without it).
        audit_log: Record every settled conflict (always on: replicas must agree on it).
    """

    strategy: str = "last-write-wins"
    versioning: bool = True
    history: int = 16
    audit_log: bool = True

    @property
    def history_limit(self) -> int:
        """What a replica keeps per key."""
        return self.history if self.versioning else 1

    def to_json(self) -> dict[str, Any]:
        """A JSON-serialisable form."""
        return {
            "strategy": self.strategy,
            "versioning": self.versioning,
            "history": self.history,
            "audit_log": self.audit_log,
        }


@attrs.frozen(kw_only=True)
class LinkSpec:
    """A sync relationship between two planes, merged from both ends' declarations.

    Attributes:
        upper: The plane nearer the root.
        lower: The plane below it.
        up: The lower plane's ``upstream`` declaration, if it made one.
        down: The upper plane's ``downstream`` declaration, if it made one.
        air_gapped: True when either end is air-gapped: only bundle files cross it.
    """

    upper: str
    lower: str
    up: SyncTarget | None
    down: SyncTarget | None
    air_gapped: bool

    @property
    def key(self) -> tuple[str, str]:
        """``(upper, lower)``."""
        return (self.upper, self.lower)

    @property
    def batch_size(self) -> int:
        """The smaller batch size the two ends declared."""
        sizes = [t.batch_size for t in (self.up, self.down) if t is not None]
        return min(sizes)

    def to_json(self) -> dict[str, Any]:
        """A JSON-serialisable form (an edge of the federation graph)."""
        return {
            "upstream": self.upper,
            "downstream": self.lower,
            "air_gapped": self.air_gapped,
            "upstream_sync": None if self.up is None else self.up.to_json(),
            "downstream_sync": None if self.down is None else self.down.to_json(),
        }


@attrs.frozen
class Topology:
    """A validated federation topology. Build with :func:`load_topology` or :func:`parse_topology`.

    Attributes:
        fleet_id: The fleet id every delegation names.
        planes: The control planes by name, in file order.
        conflict_resolution: The conflict resolution settings.
        source: Where it was read from.
    """

    fleet_id: str
    planes: Mapping[str, ControlPlaneSpec]
    conflict_resolution: ConflictResolution
    source: str = "<string>"

    def plane(self, name: str) -> ControlPlaneSpec:
        """The plane called ``name``.

        Raises:
            KeyError: if there is none.
        """
        return self.planes[name]

    @property
    def root(self) -> ControlPlaneSpec:
        """The plane at scope ``global``."""
        return next(p for p in self.planes.values() if p.scope == Scope.root())

    def issuer_of(self, name: str) -> str | None:
        """The plane whose key delegates to ``name``: the one at the nearest ancestor scope."""
        by_scope = {plane.scope: plane.name for plane in self.planes.values()}
        for ancestor in self.planes[name].scope.ancestors():
            if ancestor in by_scope:
                return by_scope[ancestor]
        return None

    def parents_first(self) -> list[ControlPlaneSpec]:
        """The planes ordered so that a plane's issuer always comes before it."""
        return sorted(self.planes.values(), key=lambda plane: plane.scope.depth)

    def children(self, name: str) -> list[str]:
        """The planes ``name`` issues delegations to, in file order."""
        return [p for p in self.planes if self.issuer_of(p) == name]

    def master_of(self, scope: Scope | str) -> ControlPlaneSpec:
        """The master of record of ``scope``: the plane at it or at its nearest ancestor."""
        target = Scope.parse(scope)
        by_scope = {plane.scope: plane for plane in self.planes.values()}
        for candidate in target.lineage():
            if candidate in by_scope:
                return by_scope[candidate]
        raise KeyError(str(target))  # pragma: no cover - the root plane covers every scope

    def links(self) -> tuple[LinkSpec, ...]:
        """Every sync relationship, in file order of the lower plane."""
        found: dict[tuple[str, str], dict[str, SyncTarget]] = {}
        for plane in self.planes.values():
            if plane.upstream is not None:
                found.setdefault((plane.upstream.target, plane.name), {})["up"] = plane.upstream
            for target in plane.downstream:
                found.setdefault((plane.name, target.target), {})["down"] = target
        order = list(self.planes)
        links = []
        for (upper, lower), ends in sorted(found.items(), key=lambda kv: order.index(kv[0][1])):
            links.append(
                LinkSpec(
                    upper=upper,
                    lower=lower,
                    up=ends.get("up"),
                    down=ends.get("down"),
                    air_gapped=self.planes[upper].air_gapped or self.planes[lower].air_gapped,
                )
            )
        return tuple(links)

    def to_json(self) -> dict[str, Any]:
        """A JSON-serialisable form."""
        return {
            "fleet_id": self.fleet_id,
            "source": self.source,
            "conflict_resolution": self.conflict_resolution.to_json(),
            "control_planes": {name: plane.to_json() for name, plane in self.planes.items()},
            "links": [link.to_json() for link in self.links()],
        }


# --------------------------------------------------------------------------- loading


def load_topology(path: str | Path) -> Topology:
    """Read and validate a topology file.

    Raises:
        TopologyError: the file cannot be read or does not validate (one line, naming the
            file, the field and what was wrong).
    """
    file = str(path)
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise TopologyError(
            file=file, field="", detail=f"cannot read: {exc.strerror or exc}", reason="io"
        ) from exc
    if len(data) > MAX_FILE_SIZE:
        raise TopologyError(
            file=file, field="", detail=f"larger than {MAX_FILE_SIZE} bytes", reason="size"
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise TopologyError(
            file=file, field="", detail=f"not UTF-8 text (byte {exc.start})", reason="syntax"
        ) from exc
    return parse_topology(text, file=file)


def parse_topology(text: str, *, file: str = "<string>") -> Topology:
    """Validate topology YAML given as text (``file`` names it in errors).

    Raises:
        TopologyError: it does not validate.
    """
    if len(text) > MAX_FILE_SIZE:
        raise TopologyError(
            file=file, field="", detail=f"larger than {MAX_FILE_SIZE} bytes", reason="size"
        )
    # The reader builds this module's classes, so it is imported here rather than at the top.
    from ._topology_reader import read_topology  # noqa: PLC0415

    return read_topology(text, file)


def default_topology_text() -> str:
    """The packaged default topology (the product brief's federation), as YAML text."""
    return resources.files("souverix_crdt").joinpath(DEFAULT_TOPOLOGY_RESOURCE).read_text("utf-8")


def default_topology() -> Topology:
    """The packaged default topology, validated."""
    return parse_topology(
        default_topology_text(), file=f"souverix_crdt/{DEFAULT_TOPOLOGY_RESOURCE}"
    )
