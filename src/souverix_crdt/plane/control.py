"""The control socket of a running plane: writes, reads and status from the same machine.

A running ``peer run`` serves a Unix socket (``<store>.sock`` by default, owner-only ``0600``)
so that ``souverix-crdt peer write`` / ``peer get`` / ``status`` go through the process: a
write is signed under the plane's one chain and its sessions push it at once, instead of a
second process opening the store under a chain of its own.

Protocol: JSON lines. Each request is one line holding an object with an ``op``; each reply
is one line ``{"ok": true, ...}`` or ``{"ok": false, "error": <class>, "reason": ...,
"message": ...}``. A line is at most :data:`MAX_LINE` bytes. The request handling
(:func:`handle_request`) is sans-IO over a replica; :class:`ControlServer` and
:func:`request` own the socket.

Operations:
    ``{"op": "write", "scope", "collection", "key", "value"}`` → ``receipt``
    ``{"op": "get", "scope", "collection", "key", "effective": bool}`` → ``found``, ``value``
    ``{"op": "status"}`` → ``status`` (the plane's :func:`status_document`)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Final

from souverix_crdt.errors import ConfigError, ProtocolError, SouverixError
from souverix_crdt.replica import Replica
from souverix_crdt.scope import Scope

from .schedule import link_state

__all__ = [
    "MAX_LINE",
    "ControlError",
    "ControlServer",
    "handle_request",
    "request",
    "status_document",
]

#: The longest request or reply line, in bytes.
MAX_LINE: Final = 1 << 20
# The longest path a Unix socket can be bound at (sun_path, Linux).
_MAX_SOCKET_PATH: Final = 107
_MISSING: Final = object()


class ControlError(ProtocolError):
    """A control request was refused or could not be carried.

    Attributes:
        error: The class name of the error the plane raised (``"ScopeViolationError"``...).
        reason: Its ``reason`` (``"bad-request"`` for a request the protocol refuses).
    """

    def __init__(self, message: str, *, error: str = "ControlError", reason: str = "") -> None:
        super().__init__(message, reason=reason)
        self.error = error


def status_document(
    replica: Replica, peers: Iterable[str], links: Callable[[str], Any]
) -> dict[str, Any]:
    """A plane's status as ``status --format json`` shows it.

    Args:
        replica: The plane's replica.
        peers: The names of its configured peers.
        links: The link record of one peer (or ``None``).
    """
    document = replica.status().to_json()
    names = sorted(set(replica.store.peers()) | set(peers))
    document["key_plane"] = document["plane"]
    document["digest"] = replica.digest()
    document["chains"] = len(replica.frontiers())
    document["conflicts"] = len(replica.conflicts())
    document["sync_debt"] = {peer: replica.sync_debt(peer).to_json() for peer in names}
    now_ms = replica.clock.physical()
    document["links"] = {}
    for peer in names:
        record = links(peer)
        # What the record says *now*: "connected" counts only while it is confirmed.
        document["links"][peer] = (
            None if record is None else {**record, "state": link_state(record, now_ms)}
        )
    return document


def _text(request: Mapping[str, Any], field: str) -> str:
    value = request.get(field)
    if not isinstance(value, str):
        raise ControlError(f"{field}: expected a string", reason="bad-request")
    return value


def handle_request(
    replica: Replica,
    request: object,
    status: Callable[[], dict[str, Any]],
    link: Callable[[str, bool], None] | None = None,
) -> dict[str, Any]:
    """Carry out one control request against ``replica``; return the reply (never raises).

    A refused request leaves the replica unchanged; its reply names the error's class and
    reason.

    Args:
        replica: The plane's replica.
        request: The decoded request line.
        status: The plane's status document.
        link: The connectivity hook (``peer``, ``up``), if the plane takes one.
    """
    try:
        return _carry(replica, request, status, link)
    except ControlError as exc:
        return {"ok": False, "error": exc.error, "reason": exc.reason, "message": str(exc)}
    except (SouverixError, ValueError, TypeError, KeyError) as exc:
        return {
            "ok": False,
            "error": type(exc).__name__,
            "reason": str(getattr(exc, "reason", "")),
            "message": str(exc),
        }


def _carry(
    replica: Replica,
    request: object,
    status: Callable[[], dict[str, Any]],
    link: Callable[[str, bool], None] | None,
) -> dict[str, Any]:
    if not isinstance(request, dict):
        raise ControlError("a request is a JSON object", reason="bad-request")
    op = request.get("op")
    if op == "write":
        scope = _text(request, "scope")
        receipt = (
            replica.scope(scope)
            .collection(_text(request, "collection"))
            .set(_text(request, "key"), request.get("value"))
        )
        return {
            "ok": True,
            "receipt": {
                "scope": receipt.scope,
                "chain": receipt.chain,
                "seq": receipt.seq,
                "hlc": str(receipt.hlc),
                # What was committed but did not take effect, and why: never a silent success.
                "not_applied": [
                    f"{item.collection}.{item.key}: {item.reason}" for item in receipt.not_applied
                ],
            },
        }
    if op == "link":
        # The Connectivity Manager's hook: a link is down (or up again).
        if link is None:
            raise ControlError("this plane takes no link changes", reason="bad-request")
        up = request.get("up")
        if not isinstance(up, bool):
            raise ControlError("up: expected true or false", reason="bad-request")
        link(_text(request, "peer"), up)
        return {"ok": True}
    if op == "get":
        read = replica.effective if request.get("effective") else replica.get
        found = read(
            Scope.parse(_text(request, "scope")),
            _text(request, "collection"),
            _text(request, "key"),
            _MISSING,
        )
        if found is _MISSING:
            return {"ok": True, "found": False}
        return {"ok": True, "found": True, "value": found}
    if op == "status":
        return {"ok": True, "status": status()}
    raise ControlError(f"unknown op {op!r}", reason="bad-request")


def _encode(value: object) -> bytes:
    return json.dumps(value, sort_keys=True, default=str).encode() + b"\n"


class ControlServer:
    """The control socket of a running plane.

    Args:
        path: Where to bind the socket (an existing stale socket file there is replaced).
        replica: The plane's replica.
        status: The plane's status document.
        source: The config file, for errors.
        on_write: Called after each write.
        on_link: The connectivity hook, for ``{"op": "link", "peer", "up"}`` requests.
    """

    def __init__(
        self,
        path: Path,
        replica: Replica,
        status: Callable[[], dict[str, Any]],
        *,
        source: str = "<string>",
        on_write: Callable[[], None] | None = None,
        on_link: Callable[[str, bool], None] | None = None,
    ) -> None:
        self.path = path
        self.source = source
        self.replica = replica
        self._status = status
        self._on_write = on_write
        self._on_link = on_link
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        """Bind the socket, owner-only.

        Raises:
            ConfigError: the path is too long for a Unix socket, or cannot be bound
                (``field="control"``).
        """
        if len(os.fsencode(self.path)) > _MAX_SOCKET_PATH:
            raise ConfigError(
                file=self.source,
                field="control",
                detail=f"{self.path} is too long for a Unix socket ({_MAX_SOCKET_PATH} bytes)",
            )
        with contextlib.suppress(FileNotFoundError):
            if self.path.is_socket():
                self.path.unlink()
        # Bound with a umask that leaves no group or other bits: there is never a moment at
        # which another user could connect (a chmod after bind would leave one).
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        previous = os.umask(0o177)
        try:
            listener.bind(str(self.path))
        except OSError as exc:
            listener.close()
            raise ConfigError(
                file=self.source,
                field="control",
                detail=f"cannot bind {self.path}: {exc.strerror or exc}",
            ) from exc
        finally:
            os.umask(previous)
        os.chmod(self.path, 0o600)
        self._server = await asyncio.start_unix_server(self._serve, sock=listener, limit=MAX_LINE)

    async def close(self) -> None:
        """Stop serving and remove the socket file. Idempotent."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        with contextlib.suppress(Exception):
            await server.wait_closed()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    line = await reader.readline()
                except (ValueError, asyncio.LimitOverrunError):
                    writer.write(
                        _encode(
                            {
                                "ok": False,
                                "error": "ControlError",
                                "reason": "too-large",
                                "message": f"a request line is at most {MAX_LINE} bytes",
                            }
                        )
                    )
                    break
                if not line:
                    break
                try:
                    decoded = json.loads(line)
                except ValueError:
                    decoded = None
                reply = handle_request(self.replica, decoded, self._status, self._on_link)
                wrote = isinstance(decoded, dict) and decoded.get("op") == "write"
                if reply.get("ok") and wrote and self._on_write is not None:
                    self._on_write()
                writer.write(_encode(reply))
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


def request(path: Path, message: Mapping[str, Any], *, timeout_s: float = 30.0) -> dict[str, Any]:
    """Send one request to a running plane's control socket; return its reply.

    Raises:
        FileNotFoundError, ConnectionRefusedError: no plane serves that socket (the caller
            falls back to the store).
        ControlError: the reply is not a reply (reason ``"bad-reply"``); or the plane
            refused the request (``error`` and ``reason`` name why).
    """
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
        connection.settimeout(timeout_s)
        connection.connect(str(path))
        connection.sendall(_encode(dict(message)))
        received = bytearray()
        while not received.endswith(b"\n"):
            chunk = connection.recv(65536)
            if not chunk:
                break
            received += chunk
            if len(received) > MAX_LINE:
                raise ControlError("reply too large", reason="bad-reply")
    try:
        reply = json.loads(received)
    except ValueError as exc:
        raise ControlError("the plane sent no reply", reason="bad-reply") from exc
    if not isinstance(reply, dict):
        raise ControlError("the plane sent no reply", reason="bad-reply")
    if not reply.get("ok"):
        raise ControlError(
            str(reply.get("message", "")),
            error=str(reply.get("error", "ControlError")),
            reason=str(reply.get("reason", "")),
        )
    return reply
