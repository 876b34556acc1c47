"""Topology files: the packaged default, strict validation with one-line errors, durations."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from souverix_crdt.errors import SouverixError, TopologyError
from souverix_crdt.plane.topology import (
    Direction,
    SyncMode,
    default_topology,
    default_topology_text,
    format_duration,
    load_topology,
    parse_duration,
    parse_topology,
)
from souverix_crdt.scope import Autonomy, Scope, Tier

BASE = default_topology_text()


def test_default_topology_is_the_brief() -> None:
    topology = default_topology()
    assert topology.fleet_id == "souverix-demo"
    assert list(topology.planes) == [
        "global",
        "region-a",
        "edge-a1",
        "edge-a2",
        "region-b",
        "edge-b1",
        "edge-c",
    ]
    levels = {name: plane.level for name, plane in topology.planes.items()}
    assert levels["global"] is Tier.GLOBAL
    assert levels["region-a"] is levels["region-b"] is Tier.REGIONAL
    assert levels["edge-a1"] is levels["edge-a2"] is levels["edge-b1"] is Tier.LOCAL
    assert levels["edge-c"] is Tier.AUTONOMOUS
    assert topology.plane("edge-a1").autonomy.mode is Autonomy.CONDITIONAL
    assert topology.plane("edge-b1").autonomy.mode is Autonomy.FULL
    assert topology.plane("edge-b1").air_gapped
    upstream = topology.plane("region-a").upstream
    assert upstream is not None
    assert (upstream.target, upstream.mode, upstream.frequency) == (
        "global",
        SyncMode.CONTINUOUS,
        "15m",
    )
    assert upstream.retry.backoff().maximum == 300.0
    down = topology.plane("region-a").downstream
    assert [(t.target, t.mode, t.frequency_ms) for t in down] == [
        ("edge-a1", SyncMode.PUSH, 300_000),
        ("edge-a2", SyncMode.PUSH, 300_000),
    ]
    assert topology.conflict_resolution.strategy == "last-write-wins"
    assert topology.conflict_resolution.history_limit == 16


def test_tree_relations() -> None:
    topology = default_topology()
    assert topology.root.name == "global"
    assert topology.issuer_of("global") is None
    assert topology.issuer_of("region-a") == "global"
    assert topology.issuer_of("edge-a2") == "region-a"
    assert topology.issuer_of("edge-c") == "global"
    assert topology.children("global") == ["region-a", "region-b", "edge-c"]
    assert topology.children("edge-a1") == []
    assert topology.master_of("global/region-a/edge-a1").name == "edge-a1"
    assert topology.master_of("global/region-b/rack-9").name == "region-b"
    order = [plane.name for plane in topology.parents_first()]
    for name in topology.planes:
        issuer = topology.issuer_of(name)
        if issuer is not None:
            assert order.index(issuer) < order.index(name)


def test_links_merge_both_ends() -> None:
    links = {link.key: link for link in default_topology().links()}
    assert set(links) == {
        ("global", "region-a"),
        ("region-a", "edge-a1"),
        ("region-a", "edge-a2"),
        ("global", "region-b"),
        ("region-b", "edge-b1"),
        ("global", "edge-c"),
    }
    a1 = links[("region-a", "edge-a1")]
    assert a1.up is not None
    assert a1.up.direction is Direction.UPSTREAM
    assert a1.down is not None
    assert a1.down.mode is SyncMode.PUSH
    assert links[("region-b", "edge-b1")].air_gapped
    assert not links[("global", "edge-c")].air_gapped
    assert links[("global", "region-a")].down is None


def test_to_json_round_trips_through_json() -> None:
    document = default_topology().to_json()
    assert json.loads(json.dumps(document)) == document
    assert document["control_planes"]["edge-c"]["level"] == "autonomous"


def test_load_from_file(tmp_path: Path) -> None:
    path = tmp_path / "fleet.yaml"
    path.write_text(BASE, encoding="utf-8")
    topology = load_topology(path)
    assert topology.source == str(path)
    assert topology.planes.keys() == default_topology().planes.keys()


# --------------------------------------------------------------------------- bad files


def _swap(old: str, new: str, *, count: int = 1) -> str:
    assert old in BASE, old
    return BASE.replace(old, new, count)


BAD = {
    "bad-frequency": (
        _swap("frequency: 15m\n        batch_size", "frequency: 15x\n        batch_size"),
        "control_planes.region-a.sync.upstream.frequency",
        "value",
        "not a duration",
    ),
    "numeric-frequency": (
        _swap("frequency: 15m\n        batch_size", "frequency: 15\n        batch_size"),
        "control_planes.region-a.sync.upstream.frequency",
        "type",
        "must be a duration with a unit such as '15s' or '15m'",
    ),
    "unknown-field": (
        _swap("air_gapped: true", "air_gaped: true"),
        "control_planes.edge-b1.sync.air_gaped",
        "unknown-field",
        "expected one of: air_gapped",
    ),
    "unknown-target": (
        _swap("target: edge-a2", "target: edge-a3"),
        "control_planes.region-a.sync.downstream[1].target",
        "reference",
        "unknown control plane 'edge-a3'",
    ),
    "duplicate-plane": (
        _swap("  edge-a2:\n", "  edge-a1:\n"),
        "control_planes.edge-a1",
        "structure",
        "duplicate key",
    ),
    "syntax": (_swap("fleet: souverix-demo", "fleet: [souverix"), "", "syntax", "YAML syntax"),
    "alias": (_swap("version: 1", "version: &v 1\nextra: *v"), "extra", "syntax", "aliases"),
    "missing-scope": (
        _swap("    scope: global/edge-c\n", ""),
        "control_planes.edge-c.scope",
        "missing",
        "missing required field",
    ),
    "string-bool": (
        _swap("can_deploy_versions: false", "can_deploy_versions: 'no'"),
        "control_planes.edge-a1.authority.autonomy.can_deploy_versions",
        "type",
        "true or false",
    ),
    "bad-level": (
        _swap("level: autonomous", "level: sovereign"),
        "control_planes.edge-c.authority.level",
        "value",
        "not one of: global, regional, local, autonomous",
    ),
    "bad-mode": (
        _swap("mode: push", "mode: pull"),
        "control_planes.region-a.sync.downstream[0].mode",
        "value",
        "'pull' is not one of",
    ),
    "bad-scope": (
        _swap("scope: global/region-b\n", "scope: global//region-b\n"),
        "control_planes.region-b.scope",
        "value",
        "empty segment",
    ),
    "upper-case-scope": (
        _swap("scope: global/edge-c\n", "scope: global/Edge-C\n"),
        "control_planes.edge-c.scope",
        "value",
        "not canonical",
    ),
    "scope-taken": (
        _swap("scope: global/edge-c\n", "scope: global/region-b\n"),
        "control_planes.edge-c.scope",
        "value",
        "already region-b's",
    ),
    "second-global": (
        _swap("level: autonomous", "level: global"),
        "control_planes.edge-c.authority.level",
        "value",
        "level global",
    ),
    "zone-above-region": (
        _swap(
            "scope: global/region-a/edge-a1\n    authority:\n      level: local",
            "scope: global/region-a/edge-a1\n    authority:\n      level: global",
        ),
        "control_planes.edge-a1.authority.level",
        "value",
        "level global",
    ),
    "conditional-parent": (
        _swap(
            "scope: global/region-b\n    authority:\n      level: regional\n      autonomy:\n"
            "        mode: full",
            "scope: global/region-b\n    authority:\n      level: regional\n      autonomy:\n"
            "        mode: conditional",
        ),
        "control_planes.edge-b1.authority.autonomy.mode",
        "value",
        "conditional",
    ),
    "amplified-flag": (
        _swap(
            "level: regional\n      autonomy:\n        mode: full\n"
            "        can_operate_isolated: true\n        can_modify_policies: true\n"
            "        can_deploy_versions: true\n    sync:\n      upstream:\n"
            "        target: global\n        mode: continuous\n        frequency: 15m\n"
            "      downstream:\n        - target: edge-b1",
            "level: regional\n      autonomy:\n        mode: full\n"
            "        can_operate_isolated: true\n        can_modify_policies: true\n"
            "        can_deploy_versions: false\n    sync:\n      upstream:\n"
            "        target: global\n        mode: continuous\n        frequency: 15m\n"
            "      downstream:\n        - target: edge-b1",
        ),
        "control_planes.edge-b1.authority.autonomy.can_deploy_versions",
        "value",
        "its issuer region-b has it false",
    ),
    "upstream-not-above": (
        _swap(
            "target: region-b\n        mode: opportunistic",
            "target: edge-c\n        mode: opportunistic",
        ),
        "control_planes.edge-b1.sync.upstream.target",
        "reference",
        "is not above edge-b1",
    ),
    "downstream-not-below": (
        _swap("- target: edge-a2", "- target: edge-c"),
        "control_planes.region-a.sync.downstream[1].target",
        "reference",
        "is not below region-a",
    ),
    "listed-twice": (
        _swap("- target: edge-a2", "- target: edge-a1"),
        "control_planes.region-a.sync.downstream[1].target",
        "reference",
        "listed twice",
    ),
    "air-gapped-continuous": (
        _swap(
            "target: region-b\n        mode: opportunistic",
            "target: region-b\n        mode: continuous\n        frequency: 1m",
        ),
        "control_planes.edge-b1.sync.upstream.mode",
        "value",
        "air-gapped",
    ),
    "frequency-required": (
        _swap("mode: push\n          frequency: 5m", "mode: push"),
        "control_planes.region-a.sync.downstream[0].frequency",
        "missing",
        "required for push sync",
    ),
    "unlinked-plane": (
        _swap(
            "    sync:\n      upstream:\n        target: global\n        mode: opportunistic\n"
            "        retry:\n          initial: 30s\n          maximum: 30m\n",
            "",
        ),
        "control_planes.edge-c.sync",
        "structure",
        "no sync relationship",
    ),
    "batch-size": (
        _swap("batch_size: 100", "batch_size: 0"),
        "control_planes.region-a.sync.upstream.batch_size",
        "value",
        "between 1 and",
    ),
    "retry-jitter": (
        _swap("jitter: 0.2", "jitter: 2"),
        "control_planes.region-a.sync.upstream.retry.jitter",
        "value",
        "between 0.0 and 1.0",
    ),
    "retry-order": (
        _swap("maximum: 30m", "maximum: 10s"),
        "control_planes.edge-c.sync.upstream.retry.maximum",
        "value",
        "not be shorter",
    ),
    "retry-strategy": (
        _swap("strategy: exponential-backoff", "strategy: linear"),
        "control_planes.region-a.sync.upstream.retry.strategy",
        "value",
        "exponential-backoff",
    ),
    "strategy": (
        _swap("strategy: last-write-wins", "strategy: first-write-wins"),
        "conflict_resolution.strategy",
        "value",
        "not supported",
    ),
    "audit-off": (
        _swap("audit_log: true", "audit_log: false"),
        "conflict_resolution.audit_log",
        "value",
        "cannot be false",
    ),
    "version": (_swap("version: 1", "version: 2"), "version", "value", "unsupported"),
    "fleet": (_swap("fleet: souverix-demo", "fleet: Souverix Demo"), "fleet", "value", "fleet id"),
    "missing-planes": (
        "version: 1\nfleet: x\n",
        "control_planes",
        "missing",
        "missing required field",
    ),
    "no-root": (
        "version: 1\nfleet: x\ncontrol_planes:\n  a:\n    scope: global/a\n    authority:\n"
        "      level: regional\n      autonomy: {mode: full, can_operate_isolated: true,"
        " can_modify_policies: true, can_deploy_versions: true}\n",
        "control_planes",
        "structure",
        "no plane has scope 'global'",
    ),
    "bad-name": (
        _swap("  edge-c:\n", "  Edge_C:\n"),
        "control_planes.Edge_C",
        "value",
        "plane name",
    ),
    "planes-list": (
        "version: 1\nfleet: x\ncontrol_planes: [global]\n",
        "control_planes",
        "type",
        "non-empty mapping",
    ),
    "empty": ("", "", "structure", "empty"),
    "not-a-mapping": ("- a\n- b\n", "", "type", "the document must be a mapping"),
    "python-tag": ("!!python/object:os.system {}\n", "", "syntax", "YAML"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_files_fail_on_one_line_naming_file_and_field(case: str, tmp_path: Path) -> None:
    text, field, reason, fragment = BAD[case]
    path = tmp_path / "topology.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(TopologyError) as caught:
        load_topology(path)
    error = caught.value
    message = str(error)
    assert "\n" not in message
    assert message.startswith(str(path))
    assert error.file == str(path)
    assert error.field == field
    assert error.reason == reason
    assert fragment in error.detail, message
    if field:
        assert f": {field}: " in message
    assert isinstance(error, ValueError)
    assert isinstance(error, SouverixError)


def test_errors_name_the_line() -> None:
    text = _swap("frequency: 15m\n        batch_size", "frequency: 15x\n        batch_size")
    with pytest.raises(TopologyError) as caught:
        parse_topology(text, file="fleet.yaml")
    line = next(n for n, row in enumerate(text.splitlines(), 1) if "15x" in row)
    assert caught.value.line == line
    assert str(caught.value).startswith(f"fleet.yaml:{line}: ")


def test_unreadable_and_oversized_files(tmp_path: Path) -> None:
    with pytest.raises(TopologyError) as caught:
        load_topology(tmp_path / "absent.yaml")
    assert caught.value.reason == "io"
    big = tmp_path / "big.yaml"
    big.write_bytes(b"#" * (1024 * 1024 + 1))
    with pytest.raises(TopologyError) as caught:
        load_topology(big)
    assert caught.value.reason == "size"
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"version: 1\n\xff\xfe")
    with pytest.raises(TopologyError) as caught:
        load_topology(binary)
    assert caught.value.reason == "syntax"


# --------------------------------------------------------------------------- durations


@pytest.mark.parametrize(
    ("text", "ms"),
    [
        ("15m", 900_000),
        ("5m", 300_000),
        ("1h30m", 5_400_000),
        ("30s", 30_000),
        ("250ms", 250),
        ("2d", 172_800_000),
        ("1h0m5s", 3_605_000),
    ],
)
def test_parse_duration(text: str, ms: int) -> None:
    assert parse_duration(text) == ms


@pytest.mark.parametrize("text", ["", "15", "m", "15x", "0m", "1m1h", "-5m", "1.5h", " 5m"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


@pytest.mark.parametrize(
    ("ms", "text"),
    [
        (0, "0s"),
        (999, "0s"),
        (42_000, "42s"),
        (720_000, "12m"),
        (750_000, "12m 30s"),
        (13_500_000, "3h 45m"),
        (3_600_000, "1h"),
        (97_200_000, "1d 3h"),
        (86_400_000, "1d"),
    ],
)
def test_format_duration(ms: int, text: str) -> None:
    assert format_duration(ms) == text


@given(st.integers(min_value=1, max_value=10**6))
def test_minutes_round_trip(minutes: int) -> None:
    assert parse_duration(f"{minutes}m") == minutes * 60_000
    assert format_duration(minutes * 60_000).split()[0][-1] in "dhm"


def test_scope_type_is_canonical() -> None:
    assert default_topology().plane("edge-a1").scope == Scope.parse("global/region-a/edge-a1")
