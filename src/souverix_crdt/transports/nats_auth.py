"""NATS authorization for a fleet: one server user per plane, allowed only its own subjects.

Without authorization every connection to a fleet's NATS servers may subscribe to and publish on
every subject: a zone could read a sibling zone's session frames and send frames as any plane.
This module writes nats-server's own ``authorization`` block instead (nothing is enforced in
the library: the server refuses what a user may not do, and closes nothing else).

Each plane ``P`` at scope ``S``, linked to the peers ``Q…``, gets one user named ``P`` whose
permissions are (``<prefix>`` is ``souverix.<fleet>``)::

    publish    <prefix>.sync.P.Q                  session frames it sends, to each linked peer
               <prefix>.outbox.P.>                its own outbox
               <prefix>.env.S, <prefix>.env.S.>   the log subjects of the scopes it writes
               $JS.ACK.<its outbox>.>             acknowledgements on its own outbox
               $JS.ACK.<log>.P.>                  ... and on its own consumer of the log
               JetStream API (below)
    subscribe  <prefix>.sync.Q.P                  session frames addressed to it, by each peer
               _INBOX.P.>                         replies to its own requests only

Replies: a plane connects with ``inbox_prefix`` set to :func:`inbox_prefix` (``_INBOX.P``), so
it can only subscribe to its own replies. With the default ``_INBOX`` prefix it would need
``_INBOX.>``, and every JetStream message fetched by a sibling's consumer (delivered to the
sibling's inbox) would be readable. ``allow_responses`` is not granted: no plane answers
requests.

JetStream API (each under ``$JS.API`` and ``$JS.*.API``, the form a client uses to reach
another server's domain across a leaf link): on its own outbox stream ``STREAM.INFO``,
``STREAM.CREATE`` and ``STREAM.UPDATE`` (a plane creates its outbox) and every consumer call a
relay needs (``CONSUMER.INFO``, ``CONSUMER.CREATE``, ``CONSUMER.DURABLE.CREATE``,
``CONSUMER.MSG.NEXT``); on the envelope log only ``STREAM.INFO``, and ``CONSUMER.INFO`` and
``CONSUMER.MSG.NEXT`` of the consumer named after the plane. Planes do not create the log nor
their consumers of it: a consumer's filter subjects (which scopes it reads) travel in the
request body, where permissions cannot see them, so a plane allowed to create its consumer
could give it any filter. The **operator** user (full access, for provisioning only) creates
the log and each plane's consumer with :func:`provision_inbox`; the plane then binds to it.
Stream and account listings, message gets (``STREAM.MSG.GET``, ``DIRECT.GET``), deletes and
purges are not granted to planes.

Passwords are random (256 bits, :func:`generate_password`), stored bcrypt-hashed in the server
config (nats-server recognises a ``$2b$`` hash and compares with bcrypt), and in plain text only
in the plane's own password file (mode 0600). Leaf-node links authenticate too: the hub's
``leafnodes`` block gets one user per leaf, and the leaf's remote URL carries its password.

:func:`write_fleet_credentials` writes it all into one directory::

    authorization.conf       include it at the top level of every server of the fleet
    leafnodes-auth.conf      include it inside the hub's leafnodes { } block
    leaf-<name>.conf         include it inside leaf <name>'s leafnodes { } block (its remote)
    <plane>.password         the plane's password (0600); peer configs name it
    operator.password        the provisioning user's password (0600)
    leaf-<name>.password     the leaf link's password (0600)
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Final

import attrs
from nats.aio.client import Client
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from souverix_crdt.scope import Scope

from .nats import _NATS_ERRORS, Subjects, _translate, subject_token

__all__ = [
    "DEFAULT_BCRYPT_ROUNDS",
    "OPERATOR_USER",
    "FleetCredentials",
    "Permissions",
    "PlaneGrant",
    "UserEntry",
    "authorization_block",
    "generate_password",
    "grants_for",
    "hash_password",
    "inbox_prefix",
    "leaf_user",
    "plane_permissions",
    "provision_inbox",
    "write_fleet_credentials",
]

#: bcrypt's cost in server configs: nats-server's own tool uses 11 (~0.1 s per login check).
DEFAULT_BCRYPT_ROUNDS: Final = 11
#: The provisioning user: creates the envelope log and the planes' consumers of it.
OPERATOR_USER: Final = "operator"
#: Random bytes in a password (256 bits).
_PASSWORD_BYTES: Final = 32
_API_PREFIXES: Final = ("$JS.API", "$JS.*.API")


def inbox_prefix(plane: str) -> str:
    """The reply-subject prefix a plane connects with: ``_INBOX.<plane>`` (its only replies)."""
    return f"_INBOX.{subject_token(plane)}"


def leaf_user(leaf: str) -> str:
    """The user a leaf node authenticates its link to the hub with: ``leaf-<leaf>``."""
    return f"leaf-{subject_token(leaf)}"


def generate_password() -> str:
    """A random password: 256 bits, URL-safe (it goes into a leaf's remote URL as it is)."""
    return secrets.token_urlsafe(_PASSWORD_BYTES)


def hash_password(password: str, *, rounds: int = DEFAULT_BCRYPT_ROUNDS) -> str:
    """The bcrypt hash nats-server accepts in place of a plain password.

    Raises:
        ModuleNotFoundError: if ``bcrypt`` is not installed (the ``nats`` extra has it).
    """
    import bcrypt  # noqa: PLC0415 - only where server configs are written

    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds)).decode()


@attrs.frozen
class Permissions:
    """What one user may publish and subscribe to (nats-server ``allow`` lists).

    Attributes:
        publish: Subjects (wildcards allowed) it may publish to; nothing else.
        subscribe: Subjects it may subscribe to; nothing else.
    """

    publish: tuple[str, ...]
    subscribe: tuple[str, ...]

    def to_config(self) -> str:
        """The ``permissions { }`` value, in the server's config syntax."""
        return (
            f"{{ publish: {{ allow: {_list(self.publish)} }}, "
            f"subscribe: {{ allow: {_list(self.subscribe)} }} }}"
        )


@attrs.frozen
class PlaneGrant:
    """One plane's place in the fleet, from which its permissions follow.

    Attributes:
        plane: The plane's name (its NATS user, and its name in session subjects).
        scope: The scope it is master of: it writes this scope and those below.
        peers: The planes it runs sync sessions with.
    """

    plane: str
    scope: Scope
    peers: tuple[str, ...]


def plane_permissions(subjects: Subjects, grant: PlaneGrant) -> Permissions:
    """The permissions of ``grant.plane`` (see the module documentation for the list)."""
    plane = grant.plane
    outbox = subjects.outbox_stream(plane)
    log = subjects.log_stream()
    consumer = subject_token(plane)
    own_log = subjects.envelopes(grant.scope)
    publish = [subjects.sync(plane, peer) for peer in grant.peers]
    publish += [subjects.outbox_prefix(plane) + ".>", own_log, own_log + ".>"]
    publish += [f"$JS.ACK.{outbox}.>", f"$JS.ACK.{log}.{consumer}.>"]
    for api in _API_PREFIXES:
        publish += [
            f"{api}.STREAM.INFO.{outbox}",
            f"{api}.STREAM.CREATE.{outbox}",
            f"{api}.STREAM.UPDATE.{outbox}",
            f"{api}.CONSUMER.INFO.{outbox}.*",
            f"{api}.CONSUMER.CREATE.{outbox}.>",
            f"{api}.CONSUMER.DURABLE.CREATE.{outbox}.*",
            f"{api}.CONSUMER.MSG.NEXT.{outbox}.*",
            f"{api}.STREAM.INFO.{log}",
            f"{api}.CONSUMER.INFO.{log}.{consumer}",
            f"{api}.CONSUMER.MSG.NEXT.{log}.{consumer}",
        ]
    subscribe = [subjects.sync(peer, plane) for peer in grant.peers]
    subscribe.append(inbox_prefix(plane) + ".>")
    return Permissions(tuple(publish), tuple(subscribe))


def grants_for(
    planes: Mapping[str, Scope | str], links: Iterable[tuple[str, str]]
) -> tuple[PlaneGrant, ...]:
    """Each plane's grant from the fleet's planes (name → scope) and links (pairs of names).

    Raises:
        ValueError: if a link names a plane that is not in ``planes``, or a plane itself.
    """
    peers: dict[str, list[str]] = {name: [] for name in planes}
    for a, b in links:
        if a not in planes or b not in planes:
            raise ValueError(f"link {a}-{b} names a plane that is not in the fleet")
        if a == b:
            raise ValueError(f"link {a}-{b}: a plane does not sync with itself")
        for one, other in ((a, b), (b, a)):
            if other not in peers[one]:
                peers[one].append(other)
    return tuple(
        PlaneGrant(name, Scope.parse(scope), tuple(peers[name])) for name, scope in planes.items()
    )


@attrs.frozen
class UserEntry:
    """One user of a server's ``authorization`` block.

    Attributes:
        user: The user name.
        password: What the config holds: a bcrypt hash (or, for tests, the plain password).
        permissions: Its permissions; ``None`` grants everything (the operator).
    """

    user: str
    password: str
    permissions: Permissions | None = None


def _list(items: Iterable[str]) -> str:
    # The server's config format accepts JSON strings; ``$`` inside a quoted string is literal.
    return "[" + ", ".join(json.dumps(item) for item in items) + "]"


def authorization_block(users: Sequence[UserEntry]) -> str:
    """A top-level ``authorization { users = [...] }`` block for nats-server."""
    lines = ["authorization {", "  users = ["]
    for entry in users:
        fields = f"user: {json.dumps(entry.user)}, password: {json.dumps(entry.password)}"
        if entry.permissions is not None:
            fields += f", permissions: {entry.permissions.to_config()}"
        lines.append(f"    {{ {fields} }}")
    lines += ["  ]", "}"]
    return "\n".join(lines) + "\n"


def _write_secret(path: Path, text: str) -> None:
    # Created 0600 from the start: never readable by others, not even for a moment.
    path.unlink(missing_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as file:
        file.write(text)


@attrs.frozen(kw_only=True)
class FleetCredentials:
    """What :func:`write_fleet_credentials` wrote.

    Attributes:
        directory: Where it all is.
        authorization: The ``authorization`` include of every server.
        leafnodes_authorization: The include of the hub's ``leafnodes`` block.
        leaf_remotes: Each leaf's include (its remote, with credentials), by leaf name.
        password_files: Each user's password file (0600), by user name.
        permissions: Each plane's permissions, by plane name.
    """

    directory: Path
    authorization: Path
    leafnodes_authorization: Path
    leaf_remotes: Mapping[str, Path]
    password_files: Mapping[str, Path]
    permissions: Mapping[str, Permissions]

    def password(self, user: str) -> str:
        """The plain password of ``user``, read from its file."""
        return self.password_files[user].read_text("utf-8").strip()

    def leaf_url(self, leaf: str, address: str) -> str:
        """The remote URL leaf node ``leaf`` connects to the hub's ``address`` with."""
        user = leaf_user(leaf)
        return f"nats-leaf://{user}:{self.password(user)}@{address}"


def write_fleet_credentials(
    directory: Path,
    subjects: Subjects,
    grants: Sequence[PlaneGrant],
    *,
    leaves: Mapping[str, Sequence[str]] | None = None,
    rounds: int = DEFAULT_BCRYPT_ROUNDS,
    permissions: Mapping[str, Permissions] | None = None,
) -> FleetCredentials:
    """Write fresh credentials and the server includes for a fleet (see the module docs).

    Every call draws new passwords: running it again rotates every credential.

    Args:
        directory: Where to write (created if missing; files in it are replaced).
        subjects: The fleet's subjects.
        grants: Every plane's grant (:func:`grants_for`).
        leaves: Each leaf node's name and the hub leaf-node addresses it connects to
            (``host:port``; none: no remote include is written, build the URL later with
            :meth:`FleetCredentials.leaf_url`); ``None``: no leaf.
        rounds: bcrypt's cost (tests lower it: every login checks the hash).
        permissions: Overrides by plane name (tests widen one to show what the default stops).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    entries: list[UserEntry] = []
    granted: dict[str, Permissions] = {}

    def new_user(user: str) -> str:
        password = generate_password()
        files[user] = directory / f"{user}.password"
        _write_secret(files[user], password + "\n")
        return hash_password(password, rounds=rounds)

    for grant in grants:
        if grant.plane == OPERATOR_USER or grant.plane.startswith("leaf-"):
            raise ValueError(f"plane name {grant.plane!r} is reserved for a NATS user")
        granted[grant.plane] = (permissions or {}).get(grant.plane) or plane_permissions(
            subjects, grant
        )
        entries.append(UserEntry(grant.plane, new_user(grant.plane), granted[grant.plane]))
    entries.append(UserEntry(OPERATOR_USER, new_user(OPERATOR_USER)))
    authorization = directory / "authorization.conf"
    authorization.write_text(authorization_block(entries), "utf-8")

    leaf_entries: list[str] = []
    remotes: dict[str, Path] = {}
    for leaf, addresses in (leaves or {}).items():
        user = leaf_user(leaf)
        hashed = new_user(user)
        leaf_entries.append(f"    {{ user: {json.dumps(user)}, password: {json.dumps(hashed)} }}")
        if addresses:
            password = files[user].read_text("utf-8").strip()
            urls = [f"nats-leaf://{user}:{password}@{address}" for address in addresses]
            remotes[leaf] = directory / f"{user}.conf"
            _write_secret(remotes[leaf], f"remotes: [ {{ urls: {_list(urls)} }} ]\n")
    leafnodes = directory / "leafnodes-auth.conf"
    leafnodes.write_text(
        "authorization {\n  users = [\n" + "\n".join(leaf_entries) + "\n  ]\n}\n", "utf-8"
    )
    return FleetCredentials(
        directory=directory,
        authorization=authorization,
        leafnodes_authorization=leafnodes,
        leaf_remotes=remotes,
        password_files=files,
        permissions=granted,
    )


async def provision_inbox(
    connection: Client,
    subjects: Subjects,
    *,
    plane: str,
    interest: Scope | str,
    domain: str | None = None,
    ack_wait: float = 30.0,
    timeout: float = 5.0,
) -> None:
    """Create (or update) ``plane``'s durable consumer of the envelope log, as the operator.

    The consumer is named after the plane and filtered to :meth:`Subjects.interest` of its
    scope; the plane then reads it with a :class:`~.nats.NatsInbox` (``durable=plane``) and
    may fetch from no other consumer.

    Args:
        connection: The operator's connected client.
        subjects: The fleet's subjects.
        plane: The plane whose consumer it is.
        interest: The plane's scope.
        domain: The log's JetStream domain.
        ack_wait: Seconds before an unacknowledged frame is delivered again.
        timeout: Seconds the API call may take.

    Raises:
        TransportError: if the consumer cannot be created.
    """
    js = connection.jetstream(domain=domain, timeout=timeout)
    name = subject_token(plane)
    config = ConsumerConfig(
        name=name,
        durable_name=name,
        ack_policy=AckPolicy.EXPLICIT,
        deliver_policy=DeliverPolicy.ALL,
        ack_wait=ack_wait,
        max_ack_pending=1000,
        filter_subjects=list(subjects.interest(interest)),
    )
    try:
        await js.add_consumer(subjects.log_stream(), config=config)
    except _NATS_ERRORS as exc:
        raise _translate(exc, f"provisioning the log consumer of {plane}") from exc
