"""Reading topology YAML: safe composition, field paths with lines, and strict validation.

Private to :mod:`souverix_crdt.plane.topology`, which re-exports the entry points. Every failure is
one :class:`~souverix_crdt.errors.TopologyError` carrying the file, the dotted field path, the line
and what was wrong.
"""

from __future__ import annotations

import enum
import types
from typing import Any, NoReturn

import yaml

from souverix_crdt.authority import check_fleet_id
from souverix_crdt.errors import InvalidScopeError, MalformedEnvelopeError, TopologyError
from souverix_crdt.scope import Autonomy, Scope, Tier

from .topology import (
    FORMAT_VERSION,
    MAX_BATCH_SIZE,
    AutonomyFlags,
    ConflictResolution,
    ControlPlaneSpec,
    Direction,
    RetryPolicy,
    SyncMode,
    SyncTarget,
    Topology,
    parse_duration,
)

__all__ = ["read_topology"]


def read_topology(text: str, file: str) -> Topology:
    """Compose, then validate, topology YAML text."""
    document, lines = _compose(text, file)
    return _Reader(file, lines).topology(document)


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def _compose(text: str, file: str) -> tuple[Any, dict[str, int]]:
    """Parse YAML safely, refusing duplicate keys and aliases; map field paths to lines."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            raise TopologyError(file=file, field="", detail="the file is empty", reason="structure")
        lines: dict[str, int] = {}
        _walk(node, "", lines, set(), file)
        document = loader.construct_document(node)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = _one_line(exc.problem or exc.context or "invalid YAML")
        raise TopologyError(
            file=file,
            field="",
            detail=f"YAML syntax: {problem}",
            reason="syntax",
            line=None if mark is None else mark.line + 1,
        ) from exc
    except yaml.YAMLError as exc:
        raise TopologyError(
            file=file, field="", detail=f"YAML: {_one_line(exc)}", reason="syntax"
        ) from exc
    finally:
        loader.dispose()
    return document, lines


def _walk(node: yaml.Node, path: str, lines: dict[str, int], seen: set[int], file: str) -> None:
    # Aliases make one node appear in several places; a topology never needs them, and refusing
    # them rules out exponential "billion laughs" documents.
    if id(node) in seen:
        raise TopologyError(
            file=file,
            field=path,
            detail="YAML aliases (*name) are not allowed in topology files",
            reason="syntax",
            line=node.start_mark.line + 1,
        )
    seen.add(id(node))
    lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        keys: set[str] = set()
        for key_node, value_node in node.value:
            key = str(key_node.value)
            child = f"{path}.{key}" if path else key
            if key in keys:
                raise TopologyError(
                    file=file,
                    field=child,
                    detail=f"duplicate key {key!r}",
                    reason="structure",
                    line=key_node.start_mark.line + 1,
                )
            keys.add(key)
            _walk(value_node, child, lines, seen, file)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _walk(item, f"{path}[{index}]", lines, seen, file)


# --------------------------------------------------------------------------- validation


class _Reader:
    """Reads the composed document field by field; every failure is one TopologyError."""

    def __init__(self, file: str, lines: dict[str, int]) -> None:
        self.file = file
        self.lines = lines

    def error(self, field: str, detail: str, reason: str = "value") -> TopologyError:
        line = self.lines.get(field)
        probe = field
        while line is None and probe:
            probe = probe.rpartition(".")[0] if "." in probe else ""
            line = self.lines.get(probe)
        return TopologyError(file=self.file, field=field, detail=detail, reason=reason, line=line)

    def fail(self, field: str, detail: str, reason: str = "value") -> NoReturn:
        raise self.error(field, detail, reason)

    # ------------------------------------------------------------------ typed fields

    def mapping(
        self, value: Any, field: str, *, required: frozenset[str], optional: frozenset[str]
    ) -> dict[str, Any]:
        if not isinstance(value, dict):
            what = "must be a mapping" if field else "the document must be a mapping"
            self.fail(field, f"{what}, got {_kind(value)}", "type")
        for key in value:
            if not isinstance(key, str):
                self.fail(field, f"keys must be strings, got {key!r}", "type")
        unknown = sorted(set(value) - required - optional)
        if unknown:
            allowed = ", ".join(sorted(required | optional))
            self.fail(
                f"{field}.{unknown[0]}" if field else unknown[0],
                f"unknown field; expected one of: {allowed}",
                "unknown-field",
            )
        for key in sorted(required):
            if key not in value:
                self.fail(f"{field}.{key}" if field else key, "missing required field", "missing")
        return value

    def string(self, value: Any, field: str) -> str:
        if not isinstance(value, str):
            self.fail(field, f"must be a string, got {_kind(value)}", "type")
        return value

    def boolean(self, value: Any, field: str) -> bool:
        if not isinstance(value, bool):
            self.fail(field, f"must be true or false, got {_kind(value)}", "type")
        return value

    def integer(self, value: Any, field: str, *, low: int, high: int) -> int:
        if type(value) is not int:
            self.fail(field, f"must be an integer, got {_kind(value)}", "type")
        if not low <= value <= high:
            self.fail(field, f"must be between {low} and {high}, got {value}")
        return value

    def number(self, value: Any, field: str, *, low: float, high: float) -> float:
        if type(value) not in (int, float):
            self.fail(field, f"must be a number, got {_kind(value)}", "type")
        if not low <= value <= high:
            self.fail(field, f"must be between {low} and {high}, got {value}")
        return float(value)

    def duration(self, value: Any, field: str) -> int:
        if type(value) in (int, float):
            # YAML reads ``frequency: 15`` as a number: say which unit was probably meant.
            self.fail(
                field,
                f"must be a duration with a unit such as '{value:g}s' or '{value:g}m', got {value}",
                "type",
            )
        text = self.string(value, field)
        try:
            return parse_duration(text)
        except ValueError as exc:
            self.fail(field, str(exc))

    def choice(self, value: Any, field: str, kind: type[enum.Enum]) -> Any:
        text = self.string(value, field)
        for member in kind:
            if member.value == text:
                return member
        allowed = ", ".join(str(member.value) for member in kind)
        raise self.error(field, f"{text!r} is not one of: {allowed}")

    # ------------------------------------------------------------------ blocks

    def topology(self, document: Any) -> Topology:
        top = self.mapping(
            document,
            "",
            required=frozenset({"version", "fleet", "control_planes"}),
            optional=frozenset({"conflict_resolution"}),
        )
        version = self.integer(top["version"], "version", low=0, high=1 << 31)
        if version != FORMAT_VERSION:
            self.fail("version", f"unsupported topology version {version}; expected 1")
        fleet = self.string(top["fleet"], "fleet")
        try:
            check_fleet_id(fleet)
        except MalformedEnvelopeError:
            self.fail(
                "fleet",
                f"{fleet!r} is not a fleet id (1-64 lower-case letters, digits, '.', '_', '-')",
            )
        conflicts = self.conflict_resolution(top.get("conflict_resolution", {}))
        raw_planes = top["control_planes"]
        if not isinstance(raw_planes, dict) or not raw_planes:
            self.fail(
                "control_planes", "must be a non-empty mapping of plane name to plane", "type"
            )
        planes: dict[str, ControlPlaneSpec] = {}
        for name, raw in raw_planes.items():
            planes[str(name)] = self.plane(name, raw)
        # Read-only: a validated topology must not change under the manager that uses it.
        topology = Topology(fleet, types.MappingProxyType(planes), conflicts, self.file)
        self.check_structure(topology)
        return topology

    def conflict_resolution(self, value: Any) -> ConflictResolution:
        field = "conflict_resolution"
        block = self.mapping(
            value,
            field,
            required=frozenset(),
            optional=frozenset({"strategy", "versioning", "history", "audit_log"}),
        )
        strategy = self.string(block.get("strategy", "last-write-wins"), f"{field}.strategy")
        if strategy != "last-write-wins":
            self.fail(
                f"{field}.strategy",
                f"{strategy!r} is not supported; expected 'last-write-wins' (conditional "
                "autonomy adds authority precedence through the delegation)",
            )
        audit = self.boolean(block.get("audit_log", True), f"{field}.audit_log")
        if not audit:
            self.fail(
                f"{field}.audit_log",
                "cannot be false: every replica records settled conflicts so that they agree",
            )
        return ConflictResolution(
            strategy=strategy,
            versioning=self.boolean(block.get("versioning", True), f"{field}.versioning"),
            history=self.integer(block.get("history", 16), f"{field}.history", low=1, high=1024),
            audit_log=audit,
        )

    def plane(self, name: Any, value: Any) -> ControlPlaneSpec:
        field = f"control_planes.{name}"
        if not isinstance(name, str) or not _is_segment(name):
            self.fail(
                field,
                f"plane name {name!r} must be lower-case letters, digits and inner hyphens",
            )
        block = self.mapping(
            value,
            field,
            required=frozenset({"scope", "authority"}),
            optional=frozenset({"sync"}),
        )
        scope_text = self.string(block["scope"], f"{field}.scope")
        try:
            scope = Scope.parse(scope_text)
        except InvalidScopeError as exc:
            self.fail(f"{field}.scope", _one_line(exc))
        authority = self.mapping(
            block["authority"],
            f"{field}.authority",
            required=frozenset({"level", "autonomy"}),
            optional=frozenset(),
        )
        level = self.choice(authority["level"], f"{field}.authority.level", Tier)
        autonomy = self.autonomy(authority["autonomy"], f"{field}.authority.autonomy")
        sync = self.mapping(
            block.get("sync", {}),
            f"{field}.sync",
            required=frozenset(),
            optional=frozenset({"upstream", "downstream", "air_gapped"}),
        )
        upstream = None
        if "upstream" in sync:
            upstream = self.target(sync["upstream"], f"{field}.sync.upstream", Direction.UPSTREAM)
        raw_down = sync.get("downstream", [])
        if not isinstance(raw_down, list):
            self.fail(f"{field}.sync.downstream", f"must be a list, got {_kind(raw_down)}", "type")
        downstream = tuple(
            self.target(item, f"{field}.sync.downstream[{index}]", Direction.DOWNSTREAM)
            for index, item in enumerate(raw_down)
        )
        return ControlPlaneSpec(
            name=name,
            scope=scope,
            level=level,
            autonomy=autonomy,
            upstream=upstream,
            downstream=downstream,
            air_gapped=self.boolean(sync.get("air_gapped", False), f"{field}.sync.air_gapped"),
        )

    def autonomy(self, value: Any, field: str) -> AutonomyFlags:
        flags = ("can_operate_isolated", "can_modify_policies", "can_deploy_versions")
        block = self.mapping(
            value, field, required=frozenset({"mode", *flags}), optional=frozenset()
        )
        return AutonomyFlags(
            mode=self.choice(block["mode"], f"{field}.mode", Autonomy),
            can_operate_isolated=self.boolean(block[flags[0]], f"{field}.{flags[0]}"),
            can_modify_policies=self.boolean(block[flags[1]], f"{field}.{flags[1]}"),
            can_deploy_versions=self.boolean(block[flags[2]], f"{field}.{flags[2]}"),
        )

    def target(self, value: Any, field: str, direction: Direction) -> SyncTarget:
        block = self.mapping(
            value,
            field,
            required=frozenset({"target", "mode"}),
            optional=frozenset({"frequency", "batch_size", "retry"}),
        )
        mode = self.choice(block["mode"], f"{field}.mode", SyncMode)
        frequency = None
        if "frequency" in block:
            frequency = self.duration(block["frequency"], f"{field}.frequency")
        elif mode is not SyncMode.OPPORTUNISTIC:
            self.fail(f"{field}.frequency", f"required for {mode.value} sync", "missing")
        return SyncTarget(
            target=self.string(block["target"], f"{field}.target"),
            direction=direction,
            mode=mode,
            frequency_ms=frequency,
            batch_size=self.integer(
                block.get("batch_size", 100), f"{field}.batch_size", low=1, high=MAX_BATCH_SIZE
            ),
            retry=self.retry(block.get("retry", {}), f"{field}.retry"),
        )

    def retry(self, value: Any, field: str) -> RetryPolicy:
        block = self.mapping(
            value,
            field,
            required=frozenset(),
            optional=frozenset(
                {"strategy", "initial", "maximum", "multiplier", "jitter", "max_attempts"}
            ),
        )
        strategy = self.string(block.get("strategy", "exponential-backoff"), f"{field}.strategy")
        if strategy != "exponential-backoff":
            self.fail(f"{field}.strategy", f"{strategy!r} is not one of: exponential-backoff")
        initial = self.duration(block.get("initial", "1s"), f"{field}.initial")
        maximum = self.duration(block.get("maximum", "5m"), f"{field}.maximum")
        if maximum < initial:
            self.fail(f"{field}.maximum", "must not be shorter than retry.initial")
        return RetryPolicy(
            strategy=strategy,
            initial_ms=initial,
            maximum_ms=maximum,
            multiplier=self.number(
                block.get("multiplier", 2.0), f"{field}.multiplier", low=1.0, high=100.0
            ),
            jitter=self.number(block.get("jitter", 0.2), f"{field}.jitter", low=0.0, high=1.0),
            max_attempts=self.integer(
                block.get("max_attempts", 0), f"{field}.max_attempts", low=0, high=1_000_000
            ),
        )

    # ------------------------------------------------------------------ the whole tree

    def check_structure(self, topology: Topology) -> None:
        planes = topology.planes
        seen_scopes: dict[Scope, str] = {}
        for plane in planes.values():
            field = f"control_planes.{plane.name}"
            other = seen_scopes.setdefault(plane.scope, plane.name)
            if other != plane.name:
                self.fail(f"{field}.scope", f"scope {plane.scope} is already {other}'s")
            is_root = plane.scope == Scope.root()
            if (plane.level is Tier.GLOBAL) != is_root:
                self.fail(
                    f"{field}.authority.level",
                    "the plane at scope 'global' has level global, and no other plane does",
                )
        if Scope.root() not in seen_scopes:
            self.fail("control_planes", "no plane has scope 'global' (the root)", "structure")
        for plane in planes.values():
            self.check_authority(topology, plane)
            self.check_sync(topology, plane)
        linked = {name for link in topology.links() for name in link.key}
        for plane in planes.values():
            if plane.scope != Scope.root() and plane.name not in linked:
                self.fail(
                    f"control_planes.{plane.name}.sync",
                    "no sync relationship: declare sync.upstream here or list this plane in "
                    "another plane's sync.downstream",
                    "structure",
                )

    def check_authority(self, topology: Topology, plane: ControlPlaneSpec) -> None:
        issuer_name = topology.issuer_of(plane.name)
        if issuer_name is None:
            return
        issuer = topology.planes[issuer_name]
        field = f"control_planes.{plane.name}.authority"
        if plane.level.rank > issuer.level.rank:
            self.fail(
                f"{field}.level",
                f"{plane.level.value} ranks above its issuer {issuer.name} "
                f"({issuer.level.value}); a delegation can only narrow authority",
            )
        if issuer.autonomy.mode is Autonomy.CONDITIONAL and plane.autonomy.mode is Autonomy.FULL:
            self.fail(
                f"{field}.autonomy.mode",
                f"full autonomy under {issuer.name}, whose autonomy is conditional",
            )
        for flag in ("can_operate_isolated", "can_modify_policies", "can_deploy_versions"):
            if getattr(plane.autonomy, flag) and not getattr(issuer.autonomy, flag):
                self.fail(
                    f"{field}.autonomy.{flag}",
                    f"true, but its issuer {issuer.name} has it false; a delegation can only "
                    "narrow capabilities",
                )

    def check_sync(self, topology: Topology, plane: ControlPlaneSpec) -> None:
        field = f"control_planes.{plane.name}.sync"
        declared: list[tuple[str, SyncTarget]] = []
        if plane.upstream is not None:
            declared.append((f"{field}.upstream", plane.upstream))
        declared += [(f"{field}.downstream[{i}]", t) for i, t in enumerate(plane.downstream)]
        targets: set[str] = set()
        for where, target in declared:
            other = topology.planes.get(target.target)
            if other is None:
                known = ", ".join(topology.planes)
                self.fail(
                    f"{where}.target",
                    f"unknown control plane {target.target!r}; known: {known}",
                    "reference",
                )
            if target.target in targets:
                self.fail(f"{where}.target", f"{target.target} is listed twice", "reference")
            targets.add(target.target)
            if target.direction is Direction.UPSTREAM and not other.scope.is_ancestor_of(
                plane.scope
            ):
                self.fail(
                    f"{where}.target",
                    f"{other.name} ({other.scope}) is not above {plane.name} ({plane.scope})",
                    "reference",
                )
            if target.direction is Direction.DOWNSTREAM and not plane.scope.is_ancestor_of(
                other.scope
            ):
                self.fail(
                    f"{where}.target",
                    f"{other.name} ({other.scope}) is not below {plane.name} ({plane.scope})",
                    "reference",
                )
            gapped = plane.air_gapped or other.air_gapped
            if gapped and target.mode in (SyncMode.CONTINUOUS, SyncMode.PUSH):
                which = plane.name if plane.air_gapped else other.name
                self.fail(
                    f"{where}.mode",
                    f"{which} is air-gapped: only opportunistic or scheduled sync (by bundle "
                    f"file) reaches it, not {target.mode.value}",
                )


def _kind(value: object) -> str:
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return f"{type(value).__name__} {value!r}"


def _is_segment(name: str) -> bool:
    try:
        Scope.root().child(name)
    except InvalidScopeError:
        return False
    return True
