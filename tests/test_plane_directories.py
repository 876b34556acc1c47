"""One directory per plane: each holds one private key, and every plane command runs from it.

The machines here are folders: ``keys init`` runs in a ceremony folder, each plane's directory
is copied alone to its own "machine" folder, and the ceremony folder is then deleted, so no
other private key file exists anywhere the commands could reach. Processes run as real
``peer run`` subprocesses, stopped by PID.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from souverix_crdt.cli import cli
from souverix_crdt.errors import ConfigError, KeyFileError
from souverix_crdt.plane.peer import parse_peer_config
from souverix_crdt.plane.planedir import (
    load_issuer,
    load_plane,
    plane_directory,
    private_key_files,
    record_chain,
)

TOPOLOGY = Path(__file__).resolve().parents[1] / "examples" / "tcp-peers" / "topology.yaml"
SCRIPT = Path(sys.executable).parent / "souverix-crdt"
PLANES = ("global", "region-a", "edge-a1")
EDGE = "global/region-a/edge-a1"
REGION = "global/region-a"
DEADLINE = 30.0


def run(*args: str | Path) -> Result:
    return CliRunner().invoke(cli, [str(a) for a in args])


def ok(*args: str | Path) -> Result:
    result = run(*args)
    assert result.exit_code == 0, result.output
    return result


def ceremony(folder: Path, *extra: str) -> Path:
    out = folder / "ceremony"
    ok("keys", "init", TOPOLOGY, "--out", out, "--seed", "plane-dirs", *extra)
    return out


def machines(tmp_path: Path, *planes: str, tls: bool = False) -> dict[str, Path]:
    """Each plane's directory copied alone to its own machine folder; the ceremony deleted."""
    out = ceremony(tmp_path)
    found = {}
    for plane in planes:
        machine = tmp_path / f"machine-{plane}"
        machine.mkdir()
        shutil.copytree(out / "planes" / plane, machine / "keys")
        lines = [f"plane: {plane}", "keys: keys", f"store: data/{plane}.sqlite3"]
        if tls:
            lines.append("tls: true")
        (machine / "plane.yaml").write_text("\n".join(lines) + "\n")
        found[plane] = machine
    shutil.rmtree(out)
    # Only the copied directories are left: one private signing key on each machine.
    for plane, machine in found.items():
        assert private_key_files(tmp_path / f"machine-{plane}") == [
            machine / "keys" / "planes" / f"{plane}.key"
        ]
    return found


# --------------------------------------------------------------------------- layout


def test_each_plane_directory_holds_exactly_one_private_key(tmp_path: Path) -> None:
    out = ceremony(tmp_path, "--roots", "3", "--quorum", "2")
    offline = out / "offline"
    # k-of-n roots: one file per root key, so three people can each hold one.
    roots = sorted(p.name for p in (offline / "roots").glob("root-*.key"))
    assert roots == ["root-0.key", "root-1.key", "root-2.key"]
    assert (offline / "roots" / "tls-ca.key").is_file()
    assert not (offline / "planes" / "global.key").exists()
    assert not [p for p in private_key_files(offline) if p.parent.name != "roots"]
    for plane in PLANES:
        directory = out / "planes" / plane
        assert private_key_files(directory) == [directory / "planes" / f"{plane}.key"]
        tls_keys = sorted(p.name for p in (directory / "tls").glob("*.key"))
        assert tls_keys == [f"{plane}.key"]  # its own TLS key only, never the CA's
        names = {p.name for p in directory.rglob("*")}
        assert not {n for n in names if n.startswith("root-") or n == "tls-ca.key"}
        # The public material it needs: the anchors, every chain, the CA certificate.
        fleet = json.loads((directory / "fleet.json").read_text())
        assert fleet["plane"] == plane
        assert fleet["quorum"] == 2
        assert len(fleet["roots"]) == 3
        assert {p.stem for p in (directory / "planes").glob("*.json")} == set(PLANES)
        assert (directory / "tls" / "ca.pem").is_file()
        assert load_plane(directory).name == plane


def test_a_plane_directory_is_read_without_any_other_key(tmp_path: Path) -> None:
    found = machines(tmp_path, "edge-a1")
    keys = load_plane(found["edge-a1"] / "keys")
    assert keys.name == "edge-a1"
    assert set(keys.chains) == set(PLANES)
    assert keys.identity.scope == keys.chains["edge-a1"][-1].scope
    # Another plane's name against this directory is refused, not silently served.
    with pytest.raises(KeyFileError) as caught:
        load_plane(found["edge-a1"] / "keys", "region-a")
    assert caught.value.reason == "plane"


# --------------------------------------------------------------------------- commands


def test_every_plane_command_runs_from_its_directory_alone(tmp_path: Path) -> None:
    found = machines(tmp_path, "region-a", "edge-a1")
    edge = ("--config", found["edge-a1"] / "plane.yaml")
    region = ("--config", found["region-a"] / "plane.yaml")
    ok("peer", "write", *edge, EDGE, "nodes", "n1", '{"state": "running"}', "--json")
    assert json.loads(ok("peer", "get", *edge, EDGE, "nodes", "n1").output) == {"state": "running"}
    status = json.loads(ok("status", *edge, "--format", "json").output)
    assert status["plane"] == "edge-a1"
    assert "no conflicts recorded at edge-a1" in ok("audit", *edge).output
    # The air-gapped procedure between the two machines: bundle, import, receipt back.
    carried = tmp_path / "usb"
    carried.mkdir()
    ok("bundle", "export", *edge, "--peer", "region-a", "--out", carried / "e.bundle")
    receipt = carried / "e.receipt"
    ok("bundle", "import", *region, carried / "e.bundle", "--receipt-out", receipt)
    ok("bundle", "import", *edge, receipt)
    assert json.loads(ok("peer", "get", *region, EDGE, "nodes", "n1").output) == {
        "state": "running"
    }
    debt = json.loads(ok("status", *edge, "--format", "json").output)["sync_debt"]
    assert debt["region-a"]["envelopes"] == 0
    # And back: a policy written at region-a reaches the zone by bundle.
    ok("peer", "write", *region, REGION, "policies", "window", "sat")
    ok("bundle", "export", *region, "--peer", "edge-a1", "--out", carried / "r.bundle")
    ok("bundle", "import", *edge, carried / "r.bundle")
    assert json.loads(ok("peer", "get", *edge, REGION, "policies", "window").output) == "sat"
    view = json.loads(ok("view", *region, "--region", "region-a", "--format", "json").output)
    assert view
    # The explicit options name the same directory.
    keys = found["edge-a1"] / "keys"
    store = found["edge-a1"] / "data" / "edge-a1.sqlite3"
    options = ("--keys", keys, "--plane", "edge-a1", "--store", store)
    assert json.loads(ok("peer", "get", *options, EDGE, "nodes", "n1").output)


def test_keys_are_changed_at_the_issuer_with_its_directory_alone(tmp_path: Path) -> None:
    found = machines(tmp_path, "region-a", "edge-a1")
    region_keys = found["region-a"] / "keys"
    new = tmp_path / "machine-edge-a3" / "keys"
    result = ok(
        "keys", "delegate", "--keys", region_keys, "--scope", "global/region-a/edge-a3",
        "--capability", "modify_policies", "--out", new, "edge-a3",
    )  # fmt: skip
    assert "no TLS certificate for edge-a3" in result.output  # the CA key stays offline
    assert private_key_files(new.parent) == [new / "planes" / "edge-a3.key"]
    assert (region_keys / "planes" / "edge-a3.json").is_file()  # the issuer knows its child
    source = ("--keys", new, "--plane", "edge-a3", "--store", new.parent / "s.sqlite3")
    ok("peer", "write", *source, "global/region-a/edge-a3", "policies", "w", "1")
    # Rotation of the zone, at its issuer: a new directory, the old key revoked.
    rotated = tmp_path / "rotated-edge-a1"
    ok("keys", "rotate", "--keys", region_keys, "edge-a1", "--out", rotated)
    assert private_key_files(rotated) == [rotated / "planes" / "edge-a1.key"]
    assert len(list((region_keys / "revocations").glob("*.rev"))) == 1
    assert len(list((rotated / "revocations").glob("*.rev"))) == 1
    assert load_plane(rotated).identity.key_id != load_plane(found["edge-a1"] / "keys").name
    # Revocation of the new zone, at its issuer.
    ok("keys", "revoke", "--keys", region_keys, "edge-a3")
    assert len(list((region_keys / "revocations").glob("*.rev"))) == 2
    # What the directory's key did not issue is refused, naming who did.
    result = run("keys", "revoke", "--keys", region_keys, "global")
    assert result.exit_code == 1
    assert "delegated by the root keys" in result.output
    result = run("keys", "revoke", "--keys", found["edge-a1"] / "keys", "region-a")
    assert result.exit_code == 1
    assert "run this with global's directory" in result.output


def test_the_roots_act_from_the_offline_directory(tmp_path: Path) -> None:
    out = ceremony(tmp_path, "--roots", "3", "--quorum", "2")
    offline = tmp_path / "offline"
    shutil.copytree(out / "offline", offline)
    issuer = load_issuer(offline, target="global")
    assert issuer.plane is None
    assert len(issuer.signers("global")) == 2
    ok("keys", "revoke", "--keys", offline, "global", "--cut", "global=5")
    assert len(list((offline / "revocations").glob("*.rev"))) == 1
    # With one root key file only (the others held elsewhere), the quorum is not met.
    for name in ("root-1.key", "root-2.key"):
        (offline / "roots" / name).unlink()
    result = run("keys", "revoke", "--keys", offline, "global")
    assert result.exit_code == 1
    assert "at least 2 of them" in result.output


# --------------------------------------------------------------------------- names


@pytest.mark.parametrize("name", ["../../escaped", "../x", "a/b", "..", ".hidden", "x\\y"])
def test_path_traversing_plane_names_are_refused(tmp_path: Path, name: str) -> None:
    found = machines(tmp_path, "region-a")
    region = found["region-a"]
    before = sorted(p for p in tmp_path.rglob("*"))
    result = run(
        "keys", "delegate", "--keys", region / "keys", "--scope", "global/region-a/x",
        "--out", region / "new", name,
    )  # fmt: skip
    assert result.exit_code != 0
    assert "Traceback" not in result.output
    assert sorted(p for p in tmp_path.rglob("*")) == before  # nothing written anywhere
    # A name given to a plane command, in a config or an option, never becomes a path.
    with pytest.raises(ConfigError) as caught:
        parse_peer_config(f"plane: {json.dumps(name)}\nkeys: keys\nstore: s.sqlite3\n")
    assert caught.value.field == "plane"
    result = run("status", "--keys", region / "keys", "--plane", name, "--store", "s.sqlite3")
    assert result.exit_code != 0
    assert "Traceback" not in result.output
    with pytest.raises(KeyFileError):
        plane_directory(tmp_path, name)
    for verb in ("revoke", "rotate"):
        result = run("keys", verb, "--keys", region / "keys", name)
        assert result.exit_code == 1, result.output
        assert "plane name" in result.output
    with pytest.raises(KeyFileError):
        record_chain(region / "keys", name, load_plane(region / "keys").credentials.chain)
    assert sorted(p for p in tmp_path.rglob("*")) == before


def test_a_directory_naming_a_traversing_plane_is_refused(tmp_path: Path) -> None:
    """A tampered fleet.json must not make the loader read ``../<x>.key`` or ``.json``."""
    found = machines(tmp_path, "region-a")
    keys = found["region-a"] / "keys"
    fleet = json.loads((keys / "fleet.json").read_text())
    outside = tmp_path / "outside"
    outside.mkdir()
    shutil.copy(keys / "planes" / "region-a.json", outside / "stolen.json")
    fleet["planes"] = [*fleet["planes"], "../../outside/stolen"]
    (keys / "fleet.json").write_text(json.dumps(fleet))
    with pytest.raises(KeyFileError) as caught:
        load_plane(keys)
    assert caught.value.reason == "name"
    fleet["planes"] = fleet["planes"][:-1]
    fleet["plane"] = "../../outside/region-a"
    shutil.copy(keys / "planes" / "region-a.key", outside / "region-a.key")
    (keys / "fleet.json").write_text(json.dumps(fleet))
    with pytest.raises(KeyFileError) as caught:
        load_plane(keys)
    assert caught.value.reason == "name"


# --------------------------------------------------------------------------- processes


class Processes:
    def __init__(self) -> None:
        self.running: dict[str, subprocess.Popen[bytes]] = {}
        self.logs: dict[str, Path] = {}

    def start(self, plane: str, machine: Path) -> dict[str, object]:
        ready = machine / "ready.json"
        self.logs[plane] = machine / "peer.log"
        with self.logs[plane].open("ab") as log:
            self.running[plane] = subprocess.Popen(
                [SCRIPT, "peer", "run", "--config", "plane.yaml", "--ready-file", ready.name],
                cwd=machine,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        self.wait(ready.exists, f"{plane} to be ready")
        document: dict[str, object] = json.loads(ready.read_text())
        return document

    def wait(self, condition: object, what: str) -> None:
        assert callable(condition)
        deadline = time.monotonic() + DEADLINE
        while not condition():
            for plane, process in self.running.items():
                if process.poll() is not None:
                    pytest.fail(f"{plane} exited:\n{self.logs[plane].read_text()}")
            if time.monotonic() > deadline:
                logs = "\n".join(p.read_text(errors="replace") for p in self.logs.values())
                pytest.fail(f"gave up waiting for {what}\n{logs}")
            time.sleep(0.05)

    def stop_all(self) -> None:
        for process in self.running.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(timeout=10)


@pytest.fixture
def processes() -> Iterator[Processes]:
    started = Processes()
    try:
        yield started
    finally:
        started.stop_all()


def test_two_planes_sync_over_tls_from_their_directories_alone(
    tmp_path: Path, processes: Processes
) -> None:
    found = machines(tmp_path, "global", "region-a", tls=True)
    upper, lower = found["global"] / "plane.yaml", found["region-a"] / "plane.yaml"
    upper.write_text(
        upper.read_text() + "listen: 127.0.0.1:0\ndownstream: [region-a]\nsync: {watch: 50ms}\n"
    )
    port = processes.start("global", found["global"])["port"]
    lower.write_text(
        lower.read_text()
        + f"upstream: {{name: global, address: 127.0.0.1:{port}}}\nsync: {{watch: 50ms}}\n"
    )
    processes.start("region-a", found["region-a"])
    ok("peer", "write", "--config", lower, REGION, "policies", "window", "sat")
    ok("peer", "write", "--config", upper, "global", "policies", "max", "10%")

    def synced() -> bool:
        # Read through the CLI, as an operator would, each from its own machine.
        at_upper = run("peer", "get", "--config", upper, REGION, "policies", "window")
        at_lower = run("peer", "get", "--config", lower, "global", "policies", "max")
        return at_upper.exit_code == 0 and at_lower.exit_code == 0

    processes.wait(synced, "the two writes to cross over TLS")
    status = json.loads(ok("status", "--config", lower, "--format", "json").output)
    assert status["links"]["global"] is not None


def test_a_certificate_is_issued_into_a_plane_directory_where_the_ca_key_is(
    tmp_path: Path,
) -> None:
    out = ceremony(tmp_path)
    region = tmp_path / "region-a"
    shutil.copytree(out / "planes" / "region-a", region)
    new = tmp_path / "edge-a3"
    ok("keys", "delegate", "--keys", region, "--scope", "global/region-a/edge-a3", "--out", new,
       "edge-a3")  # fmt: skip
    assert not (new / "tls" / "edge-a3.pem").exists()
    result = ok("keys", "tls", "--keys", out / "offline", "--plane-dir", new)
    assert "edge-a3" in result.output
    assert (new / "tls" / "edge-a3.pem").is_file()
    assert private_key_files(new) == [new / "planes" / "edge-a3.key"]
    # With the offline directory at hand, delegate issues it at once.
    newer = tmp_path / "edge-a4"
    ok("keys", "delegate", "--keys", region, "--offline", out / "offline", "--scope",
       "global/region-a/edge-a4", "--out", newer, "edge-a4")  # fmt: skip
    assert (newer / "tls" / "edge-a4.pem").is_file()
    assert (out / "offline" / "planes" / "edge-a4.json").is_file()
