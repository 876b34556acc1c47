"""The ``souverix-crdt`` command line, driven through click's CliRunner (and once as a process).

Every command runs against real SQLite stores in a temporary folder. User errors must come out
as one line on stderr that names what was wrong, with exit status 1 and no traceback.
"""

from __future__ import annotations

import json
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from souverix_crdt.cli import cli
from souverix_crdt.errors import ConfigError
from souverix_crdt.plane.keyring import load_keys
from souverix_crdt.plane.peer import (
    learn_key_directory,
    load_peer_config,
    open_replica,
    parse_peer_config,
)
from souverix_crdt.plane.planedir import load_plane
from souverix_crdt.transports.tls import check_key_pair, load_certificate

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "tcp-peers"
TOPOLOGY = EXAMPLE / "topology.yaml"
EDGE = "global/region-a/edge-a1"
REGION = "global/region-a"


def run(*args: str | Path) -> Result:
    return CliRunner().invoke(cli, [str(arg) for arg in args], catch_exceptions=False)


def ok(*args: str | Path) -> Result:
    result = run(*args)
    assert result.exit_code == 0, result.output
    return result


def one_line_error(result: Result) -> str:
    """The single stderr line of a user error (exit 1, nothing else on stderr, no traceback)."""
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.output
    assert lines[0].startswith("Error: ")
    return lines[0]


@pytest.fixture
def fleet(tmp_path: Path) -> Path:
    """Keys for the example's three planes and one peer config per plane, no process running."""
    ok("keys", "init", TOPOLOGY, "--out", tmp_path / "keys", "--seed", "cli-tests")
    for plane, upstream, port in (
        ("global", None, 17301),
        ("region-a", "global", 17302),
        ("edge-a1", "region-a", None),
    ):
        lines = [f"plane: {plane}", "keys: keys", f"store: stores/{plane}.sqlite3"]
        if port is not None:
            below = {"global": "region-a", "region-a": "edge-a1"}[plane]
            lines += [f"listen: 127.0.0.1:{port}", f"downstream: [{below}]"]
        if upstream is not None:
            lines.append(f"upstream: {{name: {upstream}, address: 127.0.0.1:1}}")
        (tmp_path / f"{plane}.yaml").write_text("\n".join(lines) + "\n")
    return tmp_path


def write(fleet: Path, plane: str, *args: str) -> Result:
    return run("peer", "write", "--config", fleet / f"{plane}.yaml", *args)


def get(fleet: Path, plane: str, scope: str, collection: str, key: str) -> Result:
    return run("peer", "get", "--config", fleet / f"{plane}.yaml", scope, collection, key)


# --------------------------------------------------------------------------- basics


def test_help_lists_every_command() -> None:
    output = ok("--help").output
    for command in ("demo", "keys", "peer", "view", "bundle", "audit", "status"):
        assert command in output
    assert "0.1.0" in ok("--version").output
    for group, commands in (
        ("keys", ("init", "delegate", "revoke", "rotate")),
        ("peer", ("run", "write", "get")),
        ("bundle", ("export", "import", "receipt")),
    ):
        output = ok(group, "--help").output
        assert all(command in output for command in commands)


def test_demo_runs_and_keeps_its_files(tmp_path: Path) -> None:
    result = ok("demo", "--seed", "7", "--workdir", tmp_path)
    assert "Global Fleet View" in result.output
    assert "Region A View" in result.output
    assert (tmp_path / "federation.json").is_file()
    assert (tmp_path / "keys" / "offline" / "fleet.json").is_file()
    assert (tmp_path / "keys" / "planes" / "global" / "fleet.json").is_file()
    assert "--workdir DIR keeps them" not in result.output
    assert "--workdir DIR keeps them" in ok("demo").output


# --------------------------------------------------------------------------- keys


def test_keys_init_writes_a_key_directory_with_its_topology(fleet: Path) -> None:
    keys = load_keys(fleet / "keys")
    assert list(keys.planes) == ["global", "region-a", "edge-a1"]
    offline = fleet / "keys" / "offline"
    assert (offline / "topology.yaml").read_text() == TOPOLOGY.read_text()
    assert len(list((offline / "roots").glob("root-*.key"))) == 1
    # The TLS material: a CA (its key next to the root keys, offline) and, in each plane's
    # directory, the CA certificate and the plane's own certificate.
    assert stat.S_IMODE((offline / "roots" / "tls-ca.key").stat().st_mode) == 0o600
    assert (offline / "tls" / "ca.pem").is_file()
    for plane in keys.planes:
        tls = fleet / "keys" / "planes" / plane / "tls"
        assert (tls / "ca.pem").read_bytes() == (offline / "tls" / "ca.pem").read_bytes()
        assert (fleet / "keys" / "planes" / plane / "topology.yaml").read_text() == (
            TOPOLOGY.read_text()
        )
        certificate = check_key_pair(tls / f"{plane}.pem", tls / f"{plane}.key")
        assert certificate.subject.rfc4514_string() == f"CN={plane}"
        assert stat.S_IMODE((tls / f"{plane}.key").stat().st_mode) == 0o600


def test_keys_init_is_deterministic_with_a_seed(tmp_path: Path) -> None:
    first = ok("keys", "init", TOPOLOGY, "--out", tmp_path / "a", "--seed", "s").output
    second = ok("keys", "init", TOPOLOGY, "--out", tmp_path / "b", "--seed", "s").output
    assert first.replace(str(tmp_path / "a"), "") == second.replace(str(tmp_path / "b"), "")


def test_keys_init_without_a_file_uses_the_packaged_topology(tmp_path: Path) -> None:
    result = ok("keys", "init", "--out", tmp_path / "keys", "--no-root-keys")
    assert "edge-b1" in result.output
    assert "not written" in result.output
    assert not list((tmp_path / "keys" / "offline" / "roots").glob("*.key"))
    # The CA key is forgotten like the root keys, after it signed every plane's certificate.
    assert (tmp_path / "keys" / "offline" / "tls" / "ca.pem").is_file()
    assert (tmp_path / "keys" / "planes" / "edge-b1" / "tls" / "edge-b1.pem").is_file()


def test_keys_init_refuses_to_overwrite(fleet: Path) -> None:
    line = one_line_error(run("keys", "init", TOPOLOGY, "--out", fleet / "keys"))
    assert "already holds keys" in line
    assert "--force" in line
    ok("keys", "init", TOPOLOGY, "--out", fleet / "keys", "--force")


def test_a_bad_topology_file_is_one_line_naming_file_and_field(tmp_path: Path) -> None:
    bad = tmp_path / "bad-topology.yaml"
    bad.write_text(TOPOLOGY.read_text().replace("level: local", "level: planetary"))
    line = one_line_error(run("keys", "init", bad, "--out", tmp_path / "keys"))
    assert str(bad) in line
    assert "control_planes.edge-a1.authority.level" in line
    assert not (tmp_path / "keys").exists()


def test_a_topology_that_is_not_yaml_is_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "broken.yaml"
    bad.write_text("control_planes: [unclosed\n")
    line = one_line_error(run("keys", "init", bad, "--out", tmp_path / "keys"))
    assert str(bad) in line


def test_a_missing_topology_file_is_a_usage_error(tmp_path: Path) -> None:
    result = run("keys", "init", tmp_path / "nope.yaml", "--out", tmp_path / "keys")
    assert result.exit_code != 0
    assert "Traceback" not in result.output


def test_keys_delegate_adds_a_plane_that_can_write(fleet: Path) -> None:
    result = ok(
        "keys",
        "delegate",
        "--keys",
        fleet / "keys",
        "--issuer",
        "region-a",
        "--scope",
        "global/region-a/edge-a3",
        "--capability",
        "report_status",
        "--capability",
        "modify_policies",
        "edge-a3",
    )
    assert "edge-a3" in result.output
    assert "edge-a3" in load_keys(fleet / "keys").planes
    store = fleet / "stores" / "edge-a3.sqlite3"
    source = ("--keys", fleet / "keys", "--plane", "edge-a3", "--store", store)
    ok("peer", "write", *source, "global/region-a/edge-a3", "policies", "window", "sat")
    assert (
        json.loads(
            ok("peer", "get", *source, "global/region-a/edge-a3", "policies", "window").output
        )
        == "sat"
    )


def test_keys_delegate_issues_a_tls_certificate_when_the_ca_key_is_here(fleet: Path) -> None:
    tls = fleet / "keys" / "planes" / "edge-a3" / "tls"
    args = ("keys", "delegate", "--keys", fleet / "keys", "--issuer", "region-a", "--scope")
    result = ok(*args, "global/region-a/edge-a3", "edge-a3")
    assert f"TLS certificate for edge-a3: {tls / 'edge-a3.pem'}" in result.output
    certificate = check_key_pair(tls / "edge-a3.pem", tls / "edge-a3.key")
    issuer = load_certificate(tls / "ca.pem")
    assert certificate.issuer == issuer.subject
    # Where the CA key is kept offline, the plane gets none, and the command says so.
    (fleet / "keys" / "offline" / "roots" / "tls-ca.key").unlink()
    result = ok(*args, "global/region-a/edge-a4", "edge-a4")
    assert "no TLS certificate for edge-a4" in result.output
    assert not (fleet / "keys" / "planes" / "edge-a4" / "tls" / "edge-a4.pem").exists()
    assert (fleet / "keys" / "planes" / "edge-a4" / "tls" / "ca.pem").is_file()


def test_keys_tls_renews_certificates_and_makes_a_new_ca(fleet: Path) -> None:
    planes = fleet / "keys" / "planes"

    def pem(plane: str, name: str) -> Path:
        return planes / plane / "tls" / f"{name}.pem"

    ca = load_certificate(pem("global", "ca"))
    before = {plane: load_certificate(pem(plane, plane)) for plane in ("global", "edge-a1")}
    result = ok("keys", "tls", "--keys", fleet / "keys", "--renew", "edge-a1")
    assert "certificates issued" in result.output
    assert "edge-a1" in result.output
    assert load_certificate(pem("edge-a1", "edge-a1")) != before["edge-a1"]
    assert load_certificate(pem("global", "global")) == before["global"]
    result = ok("keys", "tls", "--keys", fleet / "keys", "--new-ca", "--tls-host", "127.0.0.1")
    assert "a new TLS CA" in result.output
    assert load_certificate(pem("global", "ca")) != ca
    renewed = load_certificate(pem("global", "global"))
    assert renewed.issuer == load_certificate(pem("global", "ca")).subject
    assert load_certificate(pem("edge-a1", "ca")) == load_certificate(pem("global", "ca"))
    line = one_line_error(run("keys", "tls", "--keys", fleet / "keys", "--renew", "nope"))
    assert "no such plane: nope" in line
    (fleet / "keys" / "offline" / "roots" / "tls-ca.key").unlink()
    line = one_line_error(run("keys", "tls", "--keys", fleet / "keys", "--renew", "global"))
    assert "no certificate for global" in line


def test_keys_delegate_beyond_the_issuers_authority_is_refused(fleet: Path) -> None:
    line = one_line_error(
        run(
            "keys",
            "delegate",
            "--keys",
            fleet / "keys",
            "--issuer",
            "edge-a1",
            "--scope",
            "global/region-b",
            "edge-b9",
        )
    )
    assert "refused: edge-a1 cannot delegate global/region-b to edge-b9" in line
    assert "does not hold delegate" in line
    line = one_line_error(
        run(
            "keys",
            "delegate",
            "--keys",
            fleet / "keys",
            "--issuer",
            "region-a",
            "--scope",
            "global/region-b",
            "edge-b9",
        )
    )
    assert "refused: region-a cannot delegate global/region-b" in line
    assert "edge-b9" not in load_keys(fleet / "keys").planes


def test_keys_revoke_stops_the_key_writing(fleet: Path) -> None:
    ok("peer", "write", "--config", fleet / "edge-a1.yaml", EDGE, "policies", "a", "1")
    result = ok(
        "keys",
        "revoke",
        "--keys",
        fleet / "keys",
        "edge-a1",
        "--apply",
        fleet / "region-a.yaml",
    )
    assert "cut none" in result.output
    assert "applied to region-a" in result.output
    # Written at the issuer (region-a's directory), and kept offline too.
    assert len(list((fleet / "keys" / "planes" / "region-a" / "revocations").glob("*.rev"))) == 1
    assert len(list((fleet / "keys" / "offline" / "revocations").glob("*.rev"))) == 1
    line = one_line_error(write(fleet, "edge-a1", EDGE, "policies", "b", "2"))
    assert "refused: edge-a1" in line
    assert "revoked" in line


def test_keys_rotate_moves_authority_to_a_new_key(fleet: Path) -> None:
    ok("peer", "write", "--config", fleet / "region-a.yaml", REGION, "policies", "a", "1")
    old = load_keys(fleet / "keys")["region-a"].key_id
    tls = fleet / "keys" / "planes" / "region-a" / "tls"
    old_certificate = load_certificate(tls / "region-a.pem")
    result = ok(
        "keys",
        "rotate",
        "--keys",
        fleet / "keys",
        "region-a",
        "--cut-from",
        fleet / "stores" / "region-a.sqlite3",
        "--apply",
        fleet / "global.yaml",
    )
    assert f"cut {REGION}~" in result.output  # the cut names the chain (scope~epoch)
    assert "=1)" in result.output
    keys = load_keys(fleet / "keys")
    assert keys["region-a"].key_id != old
    # Its TLS certificate and key were replaced too (the old ones lived on the same machine).
    assert load_certificate(tls / "region-a.pem") != old_certificate
    assert "TLS certificate for region-a" in result.output
    # The new key writes; what the old one wrote before the cut still counts; the zone below
    # keeps writing through the kept delegation.
    ok("peer", "write", "--config", fleet / "region-a.yaml", REGION, "policies", "b", "2")
    assert get(fleet, "region-a", REGION, "policies", "a").output.strip() == '"1"'
    ok("peer", "write", "--config", fleet / "edge-a1.yaml", EDGE, "policies", "c", "3")


def test_revoking_global_needs_the_root_keys(tmp_path: Path) -> None:
    ok("keys", "init", TOPOLOGY, "--out", tmp_path / "keys", "--no-root-keys")
    line = one_line_error(run("keys", "revoke", "--keys", tmp_path / "keys", "global"))
    assert "root keys" in line


# --------------------------------------------------------------------------- writes


def test_write_then_read_through_a_store(fleet: Path) -> None:
    result = write(fleet, "edge-a1", EDGE, "nodes", "n1", '{"heartbeat_ms": 5}', "--json")
    assert "wrote nodes.n1" in result.output
    assert json.loads(get(fleet, "edge-a1", EDGE, "nodes", "n1").output) == {"heartbeat_ms": 5}
    ok("peer", "write", "--config", fleet / "region-a.yaml", REGION, "policies", "p", "10%")
    effective = ok(
        "peer", "get", "--config", fleet / "region-a.yaml", "--effective", EDGE, "policies", "p"
    )
    assert json.loads(effective.output) == "10%"


def test_a_write_outside_the_keys_scope_is_refused(fleet: Path) -> None:
    line = one_line_error(write(fleet, "edge-a1", "global", "policies", "max-unavailable", "50%"))
    assert "refused: edge-a1" in line
    assert "may not write policies at global" in line
    assert "not global" in line
    assert get(fleet, "edge-a1", "global", "policies", "max-unavailable").exit_code == 1


def test_a_write_without_the_capability_is_refused(fleet: Path) -> None:
    line = one_line_error(write(fleet, "edge-a1", EDGE, "versions", "agent", "9.9.9"))
    assert "lacks deploy_versions" in line


def test_a_bad_json_value_is_a_usage_error(fleet: Path) -> None:
    result = write(fleet, "edge-a1", EDGE, "nodes", "n1", "{not json", "--json")
    assert result.exit_code == 2
    assert "not JSON" in result.stderr


def test_reading_a_store_that_does_not_exist_is_one_line(fleet: Path) -> None:
    line = one_line_error(run("status", "--config", fleet / "global.yaml"))
    assert "global.sqlite3 does not exist" in line


def test_replica_options_are_config_or_all_three(fleet: Path) -> None:
    result = run("status", "--keys", fleet / "keys")
    assert result.exit_code == 2
    assert "--plane" in result.stderr


# --------------------------------------------------------------------------- peer configs


@pytest.mark.parametrize(
    ("text", "field", "detail"),
    [
        ("keys: k\nstore: s\n", "plane", "missing"),
        ("plane: p\nkeys: k\nstore: s\ncolour: blue\n", "colour", "unknown field"),
        ("plane: p\nkeys: k\nstore: s\ntransport: pigeon\n", "transport", "expected tcp or nats"),
        ("plane: p\nkeys: k\nstore: s\nlisten: nowhere\n", "listen", "HOST:PORT"),
        ("plane: p\nkeys: k\nstore: s\nupstream: {name: q}\n", "upstream.address", "missing"),
        ("plane: p\nkeys: k\nstore: s\ndownstream: [q]\n", "listen", "missing"),
        ("plane: p\nkeys: k\nstore: s\ntransport: nats\n", "nats", "missing"),
        ("plane: p\nkeys: k\nstore: s\nsync: {tick: soon}\n", "sync.tick", "not a duration"),
        ("plane: p\nkeys: k\nstore: s\nsync: {batch_size: 0}\n", "sync.batch_size", "1..10000"),
        (
            "plane: p\nkeys: k\nstore: s\nupstream: {name: p, address: 1}\n",
            "upstream.name",
            "itself",
        ),
        ("- just\n- a list\n", "", "expected a mapping"),
    ],
)
def test_peer_config_errors_name_the_field(text: str, field: str, detail: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_peer_config(text, file="peer.yaml")
    assert caught.value.field == field
    assert detail in str(caught.value)
    assert str(caught.value).startswith("peer.yaml: ")
    assert "\n" not in str(caught.value)


def test_a_bad_peer_config_is_one_line_naming_file_and_field(fleet: Path) -> None:
    bad = fleet / "bad.yaml"
    bad.write_text("plane: edge-a1\nkeys: keys\nstore: s.sqlite3\nupstream: {name: region-a}\n")
    line = one_line_error(run("peer", "run", "--config", bad))
    assert f"{bad}: upstream.address: missing" in line
    line = one_line_error(run("status", "--config", fleet / "absent.yaml"))
    assert "absent.yaml" in line


def test_peer_config_paths_are_relative_to_the_file(fleet: Path) -> None:
    config = load_peer_config(fleet / "region-a.yaml")
    assert config.keys == fleet / "keys" / "planes" / "region-a"  # the plane's own directory
    assert config.store == fleet / "stores" / "region-a.sqlite3"
    assert (config.listen_host, config.listen_port) == ("127.0.0.1", 17302)
    assert config.upstream is not None
    assert (config.upstream.name, config.upstream.port) == ("global", 1)


def test_a_plane_missing_from_the_keys_is_one_line(fleet: Path) -> None:
    config = fleet / "stranger.yaml"
    config.write_text("plane: stranger\nkeys: keys\nstore: s.sqlite3\n")
    line = one_line_error(run("peer", "write", "--config", config, "global", "meta", "k", "v"))
    assert f"{config}: plane: unknown plane 'stranger' in the key directory" in line


def test_a_mistyped_plane_suggests_the_close_match(fleet: Path) -> None:
    config = fleet / "typo.yaml"
    config.write_text("plane: regiona\nkeys: keys\nstore: s.sqlite3\n")
    line = one_line_error(run("peer", "write", "--config", config, "global", "meta", "k", "v"))
    assert f"{config}: plane: unknown plane 'regiona'" in line
    assert "did you mean 'region-a'?" in line


# --------------------------------------------------------------------------- exact messages


def test_a_duration_without_a_unit_names_the_field_once_and_suggests_one(fleet: Path) -> None:
    bad = fleet / "badtick.yaml"
    bad.write_text("plane: global\nkeys: keys\nstore: s.sqlite3\nsync: {tick: 5}\n")
    line = one_line_error(run("status", "--config", bad))
    assert line == (f"Error: {bad}: sync.tick: expected a duration with a unit such as '5s', got 5")


def test_yaml_errors_say_line_and_column_without_the_stream_name(fleet: Path) -> None:
    bad = fleet / "bad.yaml"
    bad.write_text("plane: [a\n")
    line = one_line_error(run("status", "--config", bad))
    assert line == (
        f"Error: {bad}: not valid YAML: line 2, column 1: expected ',' or ']', but got "
        "'<stream end>' (while parsing a flow sequence)"
    )
    assert "unicode string" not in line


def test_a_mistyped_store_option_is_reported_as_store(fleet: Path) -> None:
    keys, absent = fleet / "keys", fleet / "stores" / "globl.sqlite3"
    line = one_line_error(run("status", "--keys", keys, "--plane", "global", "--store", absent))
    assert line == f"Error: --store: {absent} does not exist (has the peer run yet?)"


def test_a_mistyped_plane_option_is_reported_as_plane(fleet: Path) -> None:
    keys, store = fleet / "keys", fleet / "stores" / "global.sqlite3"
    line = one_line_error(run("status", "--keys", keys, "--plane", "globl", "--store", store))
    assert line.startswith("Error: --plane: unknown plane 'globl' in the key directory")
    assert "did you mean 'global'?" in line


def test_an_address_in_use_names_the_listen_field(fleet: Path) -> None:
    holder = socket.socket()
    try:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        config = fleet / "busy.yaml"
        config.write_text(
            f"plane: global\nkeys: keys\nstore: s.sqlite3\nlisten: 127.0.0.1:{port}\n"
        )
        result = run("peer", "run", "--config", config)
    finally:
        holder.close()
    # The process logs that it opened its replica, then the error, on its last line.
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    assert result.stderr.strip().splitlines()[-1] == (
        f"Error: {config}: listen: cannot listen on 127.0.0.1:{port}: address already in use "
        "(another process listens there)"
    )


def test_reading_a_scope_outside_the_planes_interest_says_so(fleet: Path) -> None:
    ok("peer", "write", "--config", fleet / "edge-a1.yaml", EDGE, "meta", "k", "v")
    line = one_line_error(get(fleet, "edge-a1", "global/region-b", "meta", "k"))
    assert line == (
        "Error: global/region-b is outside what edge-a1 receives (its subtree "
        "global/region-a/edge-a1 and the scopes above it): read it from a plane above or in "
        "global/region-b"
    )
    # Inside its interest, an unset key is still "not set".
    line = one_line_error(get(fleet, "edge-a1", "global", "meta", "absent"))
    assert line == "Error: meta.absent is not set at global in edge-a1"


def test_a_bundle_is_only_for_a_plane_this_one_syncs_with(fleet: Path) -> None:
    ok("keys", "delegate", "--keys", fleet / "keys", "--issuer", "global",
       "--scope", "global/region-z", "region-z")  # fmt: skip
    out = fleet / "b.bundle"
    region = ("--config", fleet / "region-a.yaml")
    # region-a's directory does not know region-z (it was delegated at global).
    result = run("bundle", "export", *region, "--peer", "region-z", "--out", out)
    assert result.exit_code == 2
    assert "unknown plane 'region-z'" in result.stderr
    result = run("bundle", "export", "--config", fleet / "global.yaml", "--peer", "edge-a1",
                 "--out", out)  # fmt: skip
    assert result.exit_code == 2
    assert (
        "Invalid value for --peer: edge-a1 is not a plane global syncs with: bundles go to "
        "the plane that delegated to it or to the planes it delegated to (region-a, region-z)"
    ) in result.stderr
    result = run("bundle", "export", *region, "--peer", "edge-a", "--out", out)
    assert result.exit_code == 2
    assert "unknown plane 'edge-a'" in result.stderr
    assert "did you mean 'edge-a1'?" in result.stderr
    assert not out.exists()


def test_counts_of_one_are_singular(fleet: Path) -> None:
    ok("peer", "write", "--config", fleet / "region-a.yaml", EDGE, "meta", "k", "v")
    exported = ok(
        "bundle", "export", "--config", fleet / "region-a.yaml", "--peer", "edge-a1",
        "--out", fleet / "one.bundle",
    )  # fmt: skip
    assert ": 1 envelope, 0 checkpoints, " in exported.output


def test_the_keys_init_table_fits_100_columns(tmp_path: Path) -> None:
    result = ok("keys", "init", "--out", tmp_path / "keys", "--seed", "narrow")
    lines = [line for line in result.output.splitlines() if not line.startswith("wrote ")]
    assert max(len(line.rstrip()) for line in lines) <= 100, result.output
    header = next(line for line in lines if line.startswith("plane"))
    assert header.split() == ["plane", "scope", "tier", "autonomy", "key", "id", "capabilities"]
    # Every capability is shown whole, wrapped between names, never cut inside one.
    shown = " ".join(lines).replace(",", " ").split()
    assert {"delegate", "deploy_versions", "modify_policies", "operate_isolated"} <= set(shown)


# --------------------------------------------------------------------------- bundles, audit


def test_air_gapped_round_trip_with_bundles_receipts_and_the_audit_log(fleet: Path) -> None:
    # region-a and its conditional zone write one key concurrently; bundles carry both ways.
    ok("peer", "write", "--config", fleet / "region-a.yaml", EDGE, "policies", "window", "sat")
    ok("peer", "write", "--config", fleet / "edge-a1.yaml", EDGE, "policies", "window", "sun")
    down, up, back = fleet / "down.bundle", fleet / "up.bundle", fleet / "back.receipt"
    region, edge = ("--config", fleet / "region-a.yaml"), ("--config", fleet / "edge-a1.yaml")

    exported = ok("bundle", "export", *region, "--peer", "edge-a1", "--out", down)
    assert "1 envelope," in exported.output
    imported = ok("bundle", "import", *edge, down, "--receipt-out", back)
    assert "1 applied" in imported.output
    assert "wrote the receipt for region-a" in imported.output
    settled = ok("bundle", "import", *region, back)
    assert "debt to edge-a1 now 0 envelopes" in settled.output
    ok("bundle", "export", *edge, "--peer", "region-a", "--out", up)
    ok("bundle", "import", *region, up)
    ok("bundle", "receipt", *region, "--for", "edge-a1", "--out", back)
    ok("bundle", "import", *edge, back)

    # Authority precedence: region-a wins at the conditional zone, on both replicas.
    for plane in ("region-a", "edge-a1"):
        assert get(fleet, plane, EDGE, "policies", "window").output.strip() == '"sat"'
    texts = [ok("audit", "--config", fleet / f"{p}.yaml").output for p in ("region-a", "edge-a1")]
    assert texts[0] == texts[1]
    assert "policies.window: region-a" in texts[0]
    assert "won over edge-a1" in texts[0]
    assert "authority-rank" in texts[0]
    records = json.loads(ok("audit", *edge, "--format", "json").output)
    assert len(records) == 1
    assert (records[0]["winner_plane"], records[0]["loser_plane"]) == ("region-a", "edge-a1")
    assert records[0]["reason"] == "authority-rank"

    again = ok("bundle", "import", *edge, down)
    assert "0 applied, 1 already held" in again.output


def carry(fleet: Path, source: str, target: str) -> None:
    """One bundle from ``source`` to ``target`` and its receipt back."""
    bundle, receipt = fleet / f"{source}.bundle", fleet / f"{source}.receipt"
    ok("bundle", "export", "--config", fleet / f"{source}.yaml", "--peer", target, "--out", bundle)
    ok("bundle", "import", "--config", fleet / f"{target}.yaml", bundle, "--receipt-out", receipt)
    ok("bundle", "import", "--config", fleet / f"{source}.yaml", receipt)


def test_a_zone_write_after_seeing_the_region_value_takes_effect_everywhere(fleet: Path) -> None:
    ok("peer", "write", "--config", fleet / "region-a.yaml", EDGE, "policies", "window", "sat")
    carry(fleet, "region-a", "edge-a1")
    assert get(fleet, "edge-a1", EDGE, "policies", "window").output.strip() == '"sat"'
    written = run(
        "peer", "write", "--config", fleet / "edge-a1.yaml", EDGE, "policies", "window", "sun"
    )
    assert written.exit_code == 0, written.output
    assert written.output.startswith("wrote policies.window")
    assert "not in effect" not in written.output
    carry(fleet, "edge-a1", "region-a")
    for plane in ("region-a", "edge-a1"):
        assert get(fleet, plane, EDGE, "policies", "window").output.strip() == '"sun"'
        # A causal successor is not a conflict.
        assert "no conflicts recorded" in ok("audit", "--config", fleet / f"{plane}.yaml").output


def test_a_write_that_does_not_take_effect_is_reported_and_exits_3(
    fleet: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ok("peer", "write", "--config", fleet / "region-a.yaml", EDGE, "policies", "window", "sat")
    carry(fleet, "region-a", "edge-a1")
    # A merge that ranks before causality (the rule of old): the zone's write, though it had
    # seen the region's value, does not take effect; the command must say so, not succeed.
    import souverix_crdt.document as document  # noqa: PLC0415 - patched for this test only
    from souverix_crdt.lww import order_key  # noqa: PLC0415

    monkeypatch.setattr(
        document,
        "winner",
        lambda regs, strategy, rank_of: max(regs, key=lambda r: order_key(r, strategy, rank_of)),
    )
    result = run(
        "peer", "write", "--config", fleet / "edge-a1.yaml", EDGE, "policies", "window", "sun"
    )
    assert result.exit_code == 3, result.output
    assert result.stdout.startswith("wrote policies.window")  # committed and signed all the same
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("not in effect: policies.window: outranked")
    assert "region-a" in line
    assert get(fleet, "edge-a1", EDGE, "policies", "window").output.strip() == '"sat"'


def test_status_names_what_a_chain_with_a_gap_is_missing(fleet: Path) -> None:
    # One incarnation of the zone writes four times: seq 1 to 4 of one chain.
    edge_config = load_peer_config(fleet / "edge-a1.yaml")
    region_config = load_peer_config(fleet / "region-a.yaml")
    edge = open_replica(edge_config)
    try:
        for n in range(4):
            edge.scope(EDGE).nodes.set(f"n{n}", n)
        chain = edge.chain
        envelopes = edge.envelopes_after(EDGE, chain, 0, 10)
    finally:
        edge.close()
    region = open_replica(region_config)
    try:
        learn_key_directory(region, load_plane(region_config.keys), region_config.keys)
        results = region.ingest_many([envelopes[0], envelopes[2], envelopes[3]])
        assert [r.outcome.value for r in results] == ["applied", "pending", "pending"]
    finally:
        region.close()
    document = json.loads(
        ok("status", "--config", fleet / "region-a.yaml", "--format", "json").output
    )
    (gap,) = document["gaps"].values()
    assert list(document["gaps"]) == [f"{EDGE}|{chain}"]
    assert (gap["missing"], gap["waiting"]) == (2, 2)
    assert gap["since_ms"] > 0
    table = ok("status", "--config", fleet / "region-a.yaml").output
    assert "missing" in table
    row = next(line for line in table.splitlines() if line.strip().startswith(EDGE))
    assert row.split()[2:4] == ["2", "2"], table


def test_a_zone_that_lost_its_store_is_refilled_from_its_receipt(fleet: Path) -> None:
    region, edge = ("--config", fleet / "region-a.yaml"), ("--config", fleet / "edge-a1.yaml")
    ok("peer", "write", *region, EDGE, "policies", "window", "sat")
    first, receipt = fleet / "first.bundle", fleet / "edge.receipt"
    ok("bundle", "export", *region, "--peer", "edge-a1", "--out", first)
    ok("bundle", "import", *edge, first, "--receipt-out", receipt)
    ok("bundle", "import", *region, receipt)
    (fleet / "stores" / "edge-a1.sqlite3").unlink()  # the disk is lost
    for stale in (fleet / "stores").glob("edge-a1.sqlite3-*"):
        stale.unlink()
    # region-a has nothing left to send by what edge-a1 acknowledged; the new, empty store's
    # receipt says where to start instead.
    again = fleet / "again.bundle"
    assert (
        "0 envelopes" in ok("bundle", "export", *region, "--peer", "edge-a1", "--out", again).output
    )
    ok("bundle", "receipt", *edge, "--for", "region-a", "--out", receipt)
    ok("bundle", "export", *region, "--peer", "edge-a1", "--out", again, "--from-receipt", receipt)
    ok("bundle", "import", *edge, again)
    assert get(fleet, "edge-a1", EDGE, "policies", "window").output.strip() == '"sat"'


def test_a_tampered_bundle_is_refused_whole(fleet: Path) -> None:
    ok("peer", "write", "--config", fleet / "region-a.yaml", EDGE, "policies", "w", "1")
    path = fleet / "down.bundle"
    ok("bundle", "export", "--config", fleet / "region-a.yaml", "--peer", "edge-a1", "--out", path)
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF
    path.write_bytes(bytes(data))
    line = one_line_error(run("bundle", "import", "--config", fleet / "edge-a1.yaml", path))
    assert "Error: " in line
    assert get(fleet, "edge-a1", EDGE, "policies", "w").exit_code == 1


def test_audit_with_no_conflicts(fleet: Path) -> None:
    ok("peer", "write", "--config", fleet / "global.yaml", "global", "policies", "p", "1")
    assert (
        "no conflicts recorded at global" in ok("audit", "--config", fleet / "global.yaml").output
    )
    assert (
        json.loads(ok("audit", "--config", fleet / "global.yaml", "--format", "json").output) == []
    )


# --------------------------------------------------------------------------- status, view


def test_status_as_json_and_table(fleet: Path) -> None:
    ok("peer", "write", "--config", fleet / "region-a.yaml", REGION, "policies", "p", "1")
    document = json.loads(
        ok("status", "--config", fleet / "region-a.yaml", "--format", "json").output
    )
    assert document["plane"] == "region-a"
    assert document["chains"] == 1
    assert document["pending"] == 0
    assert set(document["sync_debt"]) == {"global", "edge-a1"}
    assert document["links"] == {"global": None, "edge-a1": None}
    table = ok("status", "--config", fleet / "region-a.yaml").output
    assert "digest" in table
    assert "edge-a1" in table


def test_view_of_the_fleet_and_of_a_region(fleet: Path) -> None:
    report = json.dumps({"heartbeat_ms": 1, "versions": {"agent": "2.4.1"}})
    region = ("--config", fleet / "region-a.yaml")
    ok("peer", "write", *region, REGION, "versions", "agent", "2.5.0")
    ok("peer", "write", *region, REGION, "nodes", "r1", report, "--json")
    ok("peer", "write", "--config", fleet / "global.yaml", "global", "policies", "p", "1")
    stores = ("--stores", fleet / "stores", "--keys", fleet / "keys")
    tree = ok("view", *stores).output
    assert tree.startswith("Global Fleet View")
    assert "region-a" in tree
    document = json.loads(ok("view", *stores, "--format", "json").output)
    assert document["viewer"] == "global"
    # Nothing synced: global's replica has not received region-a's node record yet.
    assert document["root"]["nodes"]["total"] == 0
    regional = json.loads(ok("view", *stores, "--region", "region-a", "--format", "json").output)
    assert regional["title"] == "Region A View"
    assert regional["root"]["nodes"] == {
        "total": 1,
        "live": 0,
        "delayed": 1,
        "autonomous": 0,
        "drifted": 1,
        "label": "Delayed (1/1)",
    }
    drift = regional["root"]["drift"][0]
    assert (drift["node_id"], drift["desired"], drift["reported"]) == ("r1", "2.5.0", "2.4.1")
    by_config = ok("view", "--config", fleet / "region-a.yaml", "--region", "region-a").output
    assert "drift in region-a: r1 versions.agent reports '2.4.1', desired '2.5.0'" in by_config


def test_view_needs_the_viewers_store(fleet: Path) -> None:
    ok("peer", "write", "--config", fleet / "region-a.yaml", REGION, "policies", "p", "1")
    line = one_line_error(run("view", "--config", fleet / "region-a.yaml"))
    assert "no store for global" in line
    result = run("view", "--stores", fleet / "stores", "--keys", fleet / "keys", "--region", "x")
    assert result.exit_code == 2
    assert "no plane 'x'" in result.stderr


# --------------------------------------------------------------------------- the console script


def test_the_console_script_reports_a_bad_topology_in_one_line(tmp_path: Path) -> None:
    script = Path(sys.executable).parent / "souverix-crdt"
    bad = tmp_path / "topology.yaml"
    bad.write_text(TOPOLOGY.read_text().replace("level: regional", "level: 7"))
    done = subprocess.run(
        [script, "keys", "init", bad, "--out", tmp_path / "keys"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert str(bad) in lines[0]
    assert "control_planes.region-a.authority.level" in lines[0]
