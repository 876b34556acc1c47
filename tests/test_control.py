"""The control socket's protocol: typed refusals that change nothing, bounded lines, 0600."""

from __future__ import annotations

import asyncio
import json
import socket
import stat
from pathlib import Path
from typing import Any

import pytest

from souverix_crdt.errors import ConfigError
from souverix_crdt.plane.control import (
    MAX_LINE,
    ControlError,
    ControlServer,
    handle_request,
    request,
)
from souverix_crdt.plane.keyring import FederationKeys, bootstrap_keys
from souverix_crdt.plane.topology import default_topology
from souverix_crdt.replica import Replica
from souverix_crdt.store.memory import MemoryStore

REGION = "global/region-a"


@pytest.fixture(scope="module")
def federation() -> FederationKeys:
    return bootstrap_keys(default_topology(), seed="control")


@pytest.fixture
def replica(federation: FederationKeys) -> Replica:
    return Replica(federation.identity("region-a"), federation.anchors, MemoryStore(), epoch=1)


def status() -> dict[str, Any]:
    return {"plane": "region-a"}


def test_a_write_and_a_read(replica: Replica) -> None:
    reply = handle_request(
        replica,
        {"op": "write", "scope": REGION, "collection": "policies", "key": "k", "value": [1]},
        status,
    )
    assert reply["ok"] is True
    assert reply["receipt"]["chain"] == replica.chain
    assert reply["receipt"]["seq"] == 1
    read = {"op": "get", "scope": REGION, "collection": "policies", "key": "k"}
    assert handle_request(replica, read, status) == {"ok": True, "found": True, "value": [1]}
    missing = {**read, "key": "other"}
    assert handle_request(replica, missing, status) == {"ok": True, "found": False}
    assert handle_request(replica, {"op": "status"}, status) == {"ok": True, "status": status()}


@pytest.mark.parametrize(
    ("request_", "error", "reason"),
    [
        (
            {"op": "write", "scope": "global", "collection": "policies", "key": "k", "value": 1},
            "ScopeViolationError",
            "",
        ),
        ({"op": "write", "scope": REGION, "collection": "bogus", "key": "k"}, None, None),
        ({"op": "write", "scope": REGION, "collection": "policies", "key": 5}, "ControlError", ""),
        ({"op": "drop-everything"}, "ControlError", "bad-request"),
        (["op", "write"], "ControlError", "bad-request"),
        (None, "ControlError", "bad-request"),
        ({"op": "get", "scope": "not a scope!", "collection": "policies", "key": "k"}, None, None),
    ],
)
def test_a_refused_request_is_typed_and_changes_nothing(
    replica: Replica, request_: object, error: str | None, reason: str | None
) -> None:
    before = replica.digest()
    reply = handle_request(replica, request_, status)
    assert reply["ok"] is False
    assert isinstance(reply["error"], str)
    assert reply["error"]
    if error is not None:
        assert reply["error"] == error
    if reason:
        assert reply["reason"] == reason
    assert replica.digest() == before
    assert not replica.frontiers()


def test_the_socket_is_owner_only_and_refuses_an_overlong_line(
    replica: Replica, tmp_path: Path
) -> None:
    path = tmp_path / "c.sock"

    async def scenario() -> tuple[int, dict[str, Any], dict[str, Any]]:
        server = ControlServer(path, replica, status)
        await server.start()
        try:
            mode = stat.S_IMODE(path.stat().st_mode)
            loop = asyncio.get_running_loop()
            # The attack: one endless line, to make the plane buffer it all.
            reader, writer = await asyncio.open_unix_connection(str(path))
            writer.write(b"{" + b" " * (MAX_LINE + 10))
            await writer.drain()
            refused = json.loads(await asyncio.wait_for(reader.readline(), 10))
            writer.close()
            ok = await loop.run_in_executor(None, request, path, {"op": "status"})
            return mode, refused, ok
        finally:
            await server.close()

    mode, refused, ok = asyncio.run(scenario())
    assert mode == 0o600
    assert refused["reason"] == "too-large"
    assert ok["status"] == status()
    assert not path.exists()


def test_the_client_raises_the_planes_refusal(replica: Replica, tmp_path: Path) -> None:
    path = tmp_path / "c.sock"

    async def scenario() -> ControlError:
        server = ControlServer(path, replica, status)
        await server.start()
        try:
            loop = asyncio.get_running_loop()
            message = {"op": "write", "scope": "global", "collection": "policies", "key": "k"}
            with pytest.raises(ControlError) as caught:
                await loop.run_in_executor(None, request, path, message)
            return caught.value
        finally:
            await server.close()

    refusal = asyncio.run(scenario())
    assert refusal.error == "ScopeViolationError"


def test_no_plane_means_connection_refused(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        request(tmp_path / "none.sock", {"op": "status"})
    stale = tmp_path / "stale.sock"
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(stale))
    listener.close()  # a socket file nobody serves: what a killed process leaves
    with pytest.raises(ConnectionRefusedError):
        request(stale, {"op": "status"})


def test_a_path_too_long_for_a_socket_is_a_config_error(replica: Replica, tmp_path: Path) -> None:
    path = tmp_path / ("x" * 120) / "c.sock"
    with pytest.raises(ConfigError) as caught:
        asyncio.run(ControlServer(path, replica, status).start())
    assert caught.value.field == "control"


def test_a_link_request_reaches_the_connectivity_hook(replica: Replica) -> None:
    told: list[tuple[str, bool]] = []
    hook = lambda peer, up: told.append((peer, up))  # noqa: E731
    down = {"op": "link", "peer": "global", "up": False}
    assert handle_request(replica, down, status, hook) == {"ok": True}
    assert told == [("global", False)]
    for bad in ({"op": "link", "peer": "global", "up": "no"}, {"op": "link", "up": True}):
        reply = handle_request(replica, bad, status, hook)
        assert reply["ok"] is False
        assert reply["reason"] == "bad-request"
    # A plane that takes no link changes says so.
    assert handle_request(replica, down, status)["ok"] is False
    assert told == [("global", False)]
