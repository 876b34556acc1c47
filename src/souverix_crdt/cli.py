"""``souverix-crdt``: the command line, a thin layer over the public API.

Commands::

    souverix-crdt demo                      the brief's federation on a simulated clock
    souverix-crdt keys init TOPOLOGY --out DIR      DIR/offline/ (roots) + DIR/planes/<name>/
    souverix-crdt keys delegate|revoke|rotate ...   at the issuer, with its own directory
    souverix-crdt peer run --config FILE    one control plane as a long-running process
    souverix-crdt peer write|get ...        write or read a key through a plane's store
    souverix-crdt view                      the Global Fleet View or a regional view
    souverix-crdt bundle export|import|receipt ...  the air-gapped procedure
    souverix-crdt audit                     the conflict log
    souverix-crdt status                    a replica's status

Commands that read a replica take ``--config FILE`` (a peer config: plane, plane directory and
store), or ``--keys DIR --plane NAME --store FILE``. Either reads the plane's own directory
only (DIR, or DIR/planes/NAME/ in the output of ``keys init``): no other private key.

Errors a user can fix (a file that does not validate, a write the key has no authority for, a
store that does not exist) print one line on standard error naming what was wrong, and exit
with status 1; usage errors exit with 2. Nothing here holds logic of its own: each command
loads what it names, calls the library, and prints the result.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, Final, TypeVar

import click
from rich import box
from rich.console import Console
from rich.table import Table

from souverix_crdt.federation.status import LinkState, LinkStatus
from souverix_crdt.plane.control import ControlError, status_document
from souverix_crdt.plane.control import request as control_request
from souverix_crdt.plane.keydir import (
    TOPOLOGY_FILE,
    cut_from_store,
    delegate_plane,
    revoke_known,
    rotate_known,
    save_revocation,
)
from souverix_crdt.plane.keyring import (
    FederationKeys,
    bootstrap_keys,
)
from souverix_crdt.plane.peer import (
    PeerConfig,
    PeerProcess,
    learn_key_directory,
    link_record,
    load_peer_config,
    load_plane_keys,
    open_replica,
    open_writing_replica,
    record_bundle_exchange,
)
from souverix_crdt.plane.planedir import (
    OFFLINE_DIR,
    PLANES_DIR,
    IssuerKeys,
    PlaneKeys,
    check_directory_name,
    is_ceremony,
    issue_plane_tls,
    load_issuer,
    load_offline,
    load_offline_ca,
    load_plane,
    plane_directory,
    save_ceremony,
    save_plane_directory,
)
from souverix_crdt.plane.schedule import LinkState as RecordState
from souverix_crdt.plane.schedule import link_state
from souverix_crdt.plane.topology import (
    Topology,
    default_topology_text,
    load_topology,
    parse_topology,
)
from souverix_crdt.store.sqlite import SqliteStore
from souverix_crdt.transports.tls import CA_KEY_FILE, key_directory_files

from . import __version__
from .authority import Capability, Delegation, Revocation
from .conflicts import ConflictRecord
from .document import COLLECTIONS, NotApplied
from .errors import AuthorityError, ConfigError, KeyFileError, SouverixError, UnknownPlaneError
from .hlc import system_wall_clock
from .naming import describe_writer
from .replica import Replica, SyncDebt
from .scope import Autonomy, Scope, Tier

__all__ = ["cli", "main"]

_F = TypeVar("_F", bound=Callable[..., Any])

#: Exit status of an error the user can fix (click uses 2 for usage errors).
EXIT_ERROR: Final = 1
#: Exit status of ``peer write`` when the write is committed but does not take effect.
EXIT_NOT_APPLIED: Final = 3
_JSON_INDENT: Final = 2


# --------------------------------------------------------------------------- plumbing


#: The source a config built from ``--keys/--plane/--store`` names in its errors.
_OPTIONS_SOURCE: Final = "<command line>"


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, ConfigError) and exc.file == _OPTIONS_SOURCE:
        # The config came from options, not a file: name the option (``--store``), not a
        # file and a field.
        text = f"--{exc.field}: {exc.detail}" if exc.field else exc.detail
    elif isinstance(exc, OSError) and exc.filename is not None:
        text = f"{exc.filename}: {exc.strerror or exc}"
    else:
        text = str(exc) or type(exc).__name__
    return " ".join(text.split())


class _Group(click.Group):
    """A group that turns the library's errors into one line on stderr, without a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (SouverixError, OSError) as exc:
            raise click.ClickException(_one_line(exc)) from exc


#: Columns of tables written off a terminal (pipes, logs, tests): a common editor width.
_PLAIN_WIDTH: Final = 100


def _console(*, stderr: bool = False) -> Console:
    stream = sys.stderr if stderr else sys.stdout
    # Off a terminal keep tables plain and within a fixed width; long cells wrap.
    width = None if stream.isatty() else _PLAIN_WIDTH
    return Console(file=stream, width=width, highlight=False, emoji=False)


@contextlib.contextmanager
def _progress(message: str) -> Iterator[None]:
    """A spinner on a terminal's stderr while a long step runs; nothing when piped."""
    if not sys.stderr.isatty():
        yield
        return
    with _console(stderr=True).status(message):
        yield


def _count(number: int, noun: str) -> str:
    """``"1 envelope"``, ``"2 envelopes"``."""
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"


def _echo_json(value: object) -> None:
    click.echo(json.dumps(value, indent=_JSON_INDENT, sort_keys=True, default=str))


def _now_ms() -> int:
    return system_wall_clock()


# --------------------------------------------------------------------------- replica sources


def _replica_options(function: _F) -> _F:
    """``--config FILE`` or ``--keys DIR --plane NAME --store FILE``: which replica to open."""
    options = [
        click.option(
            "--config",
            "config_path",
            type=click.Path(dir_okay=False, path_type=Path),
            help="A peer config (plane, key directory and store).",
        ),
        click.option(
            "--keys",
            "keys_dir",
            type=click.Path(path_type=Path),
            help="The plane's directory (or the output of keys init).",
        ),
        click.option("--plane", help="The control plane whose replica to open."),
        click.option(
            "--store", "store_path", type=click.Path(path_type=Path), help="Its SQLite store."
        ),
    ]
    for option in reversed(options):
        function = option(function)
    return function


def _peer_config(
    config_path: Path | None, keys_dir: Path | None, plane: str | None, store_path: Path | None
) -> PeerConfig:
    if config_path is not None:
        if keys_dir or plane or store_path:
            raise click.UsageError("give --config, or --keys, --plane and --store, not both")
        return load_peer_config(config_path)
    if keys_dir is None or plane is None or store_path is None:
        raise click.UsageError("give --config FILE, or all of --keys DIR --plane NAME --store FILE")
    try:
        directory = plane_directory(keys_dir, plane)
    except UnknownPlaneError as exc:
        raise ConfigError(
            file=_OPTIONS_SOURCE, field="plane", detail=str(exc), reason="reference"
        ) from exc
    return PeerConfig(
        plane=plane,
        keys=directory,
        store=store_path,
        source=_OPTIONS_SOURCE,
    )


@contextlib.contextmanager
def _opened(config: PeerConfig, *, create: bool = False) -> Iterator[Replica]:
    with _progress(f"opening {config.plane}'s replica ({config.store})"):
        replica = open_replica(config, create=create)
    try:
        yield replica
    finally:
        replica.close()


def _through_plane(config: PeerConfig, message: Mapping[str, Any]) -> dict[str, Any] | None:
    """The reply of the plane's running process, or ``None`` when no process serves it.

    Raises:
        click.ClickException: the running plane refused the request.
    """
    path = config.control_socket
    if path is None:
        return None
    try:
        return control_request(path, message)
    except (FileNotFoundError, ConnectionRefusedError):
        return None  # no process runs (or a stale socket file): the store is used
    except ControlError as exc:
        if exc.error in _AUTHORITY_ERRORS:
            raise click.ClickException(
                f"refused: {config.plane} may not write that: {_one_line(exc)}"
            ) from exc
        raise click.ClickException(f"{config.plane} (running): {exc.error}: {exc}") from exc


#: Errors a running plane reports for a write its key may not make.
_AUTHORITY_ERRORS: Final = frozenset(
    {"ScopeViolationError", "CapabilityViolationError", "RevokedError", "ExpiredError"}
)


# --------------------------------------------------------------------------- the group


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="souverix-crdt")
def cli() -> None:
    """Replicated fleet state for a federation of Souverix control planes."""


@cli.command()
@click.option("--seed", default=7, show_default=True, help="Derives keys and replica epochs.")
@click.option(
    "--workdir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Keep keys, bundles and graph files here (default: a temporary folder).",
)
@click.option(
    "--dashboard", is_flag=True, help="Then serve a live web dashboard of the federation."
)
@click.option("--host", default="127.0.0.1", show_default=True, help="Dashboard address.")
@click.option(
    "--port", default=8765, show_default=True, type=int, help="Dashboard port (0: any free one)."
)
def demo(*, seed: int, workdir: Path | None, dashboard: bool, host: str, port: int) -> None:
    """Run the brief's federation on a simulated clock and print its views."""
    if dashboard:
        try:
            # Imported here: the dashboard's web stack is an optional extra.
            from .dashboard import run_demo_dashboard  # noqa: PLC0415
        except ImportError as exc:
            raise click.ClickException(
                "the dashboard needs its extra: pip install 'souverix-crdt[dashboard]'"
            ) from exc
        run_demo_dashboard(host, port, seed=seed, workdir=workdir)
        return
    # Imported here: the demo pulls in the whole in-process federation.
    from souverix_crdt.federation.demo import run_demo  # noqa: PLC0415

    run_demo(workdir=workdir, seed=seed)
    if workdir is None:
        click.echo("(its files were in a temporary folder, now removed: --workdir DIR keeps them)")


# --------------------------------------------------------------------------- keys


@cli.group(cls=_Group)
def keys() -> None:
    """Make and change a key directory: root keys, delegations, revocations."""


def _print_planes(federation: FederationKeys, topology: Topology | None) -> None:
    table = Table(
        title=f"fleet {federation.fleet_id}",
        title_justify="left",
        box=box.SIMPLE_HEAD,
        show_edge=False,
        # Two columns between cells (one of padding, one of separator): the table fits 100.
        padding=(0, 1, 0, 0),
    )
    for column in ("plane", "scope", "tier", "autonomy", "key id"):
        table.add_column(column, no_wrap=True)
    # The one long cell wraps between capabilities rather than widening the table.
    table.add_column("capabilities")
    for name, creds in federation.planes.items():
        leaf = creds.delegation
        table.add_row(
            name,
            str(leaf.scope),
            leaf.tier.value,
            leaf.autonomy.value,
            creds.key_id[:12],
            ", ".join(sorted(c.value for c in leaf.capabilities)),
        )
    _console().print(table)
    if topology is not None:
        extra = sorted(set(federation.planes) - set(topology.planes))
        if extra:
            click.echo(f"not in {TOPOLOGY_FILE} (absent from views): {', '.join(extra)}")


@keys.command("init")
@click.argument("topology_file", required=False, type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Where to write offline/ (the root keys) and planes/<name>/ (one per plane).",
)
@click.option("--seed", help="Derive every key from this seed (demos and tests only).")
@click.option("--roots", default=1, show_default=True, help="Root keys to pin (one file each).")
@click.option("--quorum", default=1, show_default=True, help="Root signatures per root act.")
@click.option("--days", default=365, show_default=True, help="Validity of every delegation.")
@click.option(
    "--no-root-keys", is_flag=True, help="Do not write the root (and TLS CA) private keys."
)
@click.option("--force", is_flag=True, help="Replace the keys of an existing directory.")
@click.option(
    "--tls-host",
    "tls_hosts",
    multiple=True,
    metavar="HOST",
    help="Also name this host or IP in every TLS certificate (repeat; the plane name always is).",
)
@click.option(
    "--nats-credentials",
    "nats_dir",
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    help="The output of nats credentials: each plane's password file goes into its directory.",
)
def keys_init(
    *,
    topology_file: Path | None,
    out_dir: Path,
    seed: str | None,
    roots: int,
    quorum: int,
    days: int,
    no_root_keys: bool,
    force: bool,
    tls_hosts: tuple[str, ...],
    nats_dir: Path | None,
) -> None:
    """Bootstrap root keys and a delegation for every control plane of TOPOLOGY_FILE.

    Writes OUT/offline/ (the root keys, one file each, and the TLS CA's key: keep it off the
    planes' machines) and OUT/planes/<name>/ for each plane: its one private key, its chain,
    the fleet's public anchors and chains, the topology and its TLS material. Copy each plane's
    directory to its machine, and nothing else. Without TOPOLOGY_FILE, the brief's topology
    (packaged with the library) is used.
    """
    if topology_file is None:
        text = default_topology_text()
        topology = parse_topology(text, file="<packaged default topology>")
    else:
        topology = load_topology(topology_file)
        text = topology_file.read_text("utf-8")
    if ((out_dir / "fleet.json").exists() or is_ceremony(out_dir)) and not force:
        raise click.ClickException(
            f"{out_dir} already holds keys ({OFFLINE_DIR}/fleet.json); pass --force to replace them"
        )
    if not 1 <= quorum <= roots:
        raise click.BadParameter(f"must be between 1 and --roots ({roots})", param_hint="--quorum")
    now = _now_ms()
    passwords = {}
    if nats_dir is not None:
        passwords = {
            name: nats_dir / f"{name}.password"
            for name in topology.planes
            if (nats_dir / f"{name}.password").is_file()
        }
    with _progress(f"making keys for {len(topology.planes)} control planes"):
        federation = bootstrap_keys(
            topology,
            seed=seed,
            roots=roots,
            quorum=quorum,
            not_after=None if days == 365 else _window_end(now, days),
        )
        save_ceremony(
            federation,
            out_dir,
            include_roots=not no_root_keys,
            topology_text=text,
            nats_passwords=passwords,
            hosts=tls_hosts,
            validity_days=days,
        )
    _print_planes(federation, None)
    offline = out_dir / OFFLINE_DIR
    where = "not written (kept nowhere)" if no_root_keys else f"in {offline}"
    click.echo(
        f"wrote {out_dir}: {_count(len(federation.planes), 'plane directory')} in "
        f"{out_dir / PLANES_DIR} (copy each to its plane's machine); root keys and the TLS CA "
        f"key {where} (keep it offline)"
    )


def _window_end(now_ms: int, days: int) -> Any:
    from .hlc import Timestamp  # noqa: PLC0415 - only this rare option needs it

    if days < 1:
        raise click.BadParameter("must be at least 1", param_hint="--days")
    return Timestamp(now_ms - 3_600_000 + days * 86_400_000)


def _load_topology_of(keys_dir: Path) -> Topology | None:
    for folder in (keys_dir, keys_dir / OFFLINE_DIR):
        if (folder / TOPOLOGY_FILE).is_file():
            return load_topology(folder / TOPOLOGY_FILE)
    return None


_CAPABILITIES: Final = [c.value for c in Capability]

_offline_option: Final = click.option(
    "--offline",
    "offline_dir",
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    help="The offline directory: the root keys and the TLS CA's private key.",
)


def _new_directory(issuer: IssuerKeys, name: str, out_dir: Path | None, *, replace: bool) -> Path:
    if out_dir is None:
        if issuer.ceremony is None:
            raise click.UsageError("give --out DIR: where to write the plane's directory")
        out_dir = issuer.ceremony / PLANES_DIR / name
    if (out_dir / "fleet.json").exists() and not replace:
        raise click.ClickException(f"{out_dir} already holds keys; give another --out")
    return out_dir


@keys.command("delegate")
@click.option(
    "--keys",
    "keys_dir",
    required=True,
    type=click.Path(path_type=Path),
    help="The issuer's plane directory (or the output of keys init, with --issuer).",
)
@click.option("--issuer", help="The plane that delegates (default: the directory's).")
@click.option("--scope", required=True, help="The scope path delegated.")
@click.option(
    "--capability",
    "capabilities",
    multiple=True,
    type=click.Choice(_CAPABILITIES),
    help="A capability to grant (repeat; default: report_status).",
)
@click.option(
    "--tier", type=click.Choice([t.value for t in Tier]), default="local", show_default=True
)
@click.option(
    "--autonomy",
    type=click.Choice([a.value for a in Autonomy]),
    default="conditional",
    show_default=True,
)
@click.option("--days", default=365, show_default=True, help="Validity (cut to the issuer's).")
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Where to write the new plane's directory (default: planes/NAME of keys init's output).",
)
@_offline_option
@click.argument("name")
def keys_delegate(
    *,
    keys_dir: Path,
    issuer: str | None,
    scope: str,
    capabilities: tuple[str, ...],
    tier: str,
    autonomy: str,
    days: int,
    out_dir: Path | None,
    offline_dir: Path | None,
    name: str,
) -> None:
    """Give a new control plane NAME a key and a delegation from the issuer; write its directory.

    Runs at the issuer, with its own plane directory: the new plane's chain is added there
    too. Its TLS certificate needs the fleet CA's private key (--offline); without it the
    directory gets the CA certificate only, and `keys tls` issues the certificate later.
    """
    if is_ceremony(keys_dir) and issuer is None:
        raise click.UsageError("give --issuer PLANE: the output of keys init holds every plane")
    at = load_issuer(keys_dir, issuer=issuer, offline=offline_dir)
    if at.plane is None:
        raise click.UsageError(
            "the root keys delegate only global (keys init); give the issuing plane's directory"
        )
    issuer = at.plane.name
    if name in at.chains:
        raise click.ClickException(f"a plane called {name!r} exists already")
    target = Scope.parse(scope)
    # The issuer's own key is the only private key used.
    own = FederationKeys(at.anchors, {issuer: at.plane.credentials})
    try:
        updated = delegate_plane(
            own,
            issuer=issuer,
            name=name,
            scope=target,
            capabilities={Capability(c) for c in capabilities or ("report_status",)},
            tier=Tier(tier),
            autonomy=Autonomy(autonomy),
            now_ms=_now_ms(),
            validity_ms=days * 86_400_000,
        )
    except AuthorityError as exc:
        raise click.ClickException(
            f"refused: {issuer} cannot delegate {target} to {name}: {_one_line(exc)}"
        ) from exc
    creds = updated[name]
    out = _new_directory(at, name, out_dir, replace=False)
    save_plane_directory(
        out,
        at.anchors,
        creds,
        at.chains,
        ca=at.ca(),
        topology_text=at.topology_text(),
    )
    at.record(name, creds.chain)
    click.echo(
        f"delegated {creds.delegation.scope} to {name} (key {creds.key_id[:16]}) by {issuer}; "
        f"wrote its directory {out}"
    )
    _say_tls(out, name)


def _say_tls(plane_dir: Path, name: str) -> None:
    files = key_directory_files(plane_dir, name)
    if files.cert.is_file():
        click.echo(f"TLS certificate for {name}: {files.cert}")
    else:
        click.echo(
            f"no TLS certificate for {name}: the fleet CA's private key ({CA_KEY_FILE}) is in "
            "the offline directory; pass --offline DIR, or issue it there later (keys tls)"
        )


@keys.command("tls")
@click.option(
    "--keys",
    "keys_dir",
    required=True,
    type=click.Path(path_type=Path),
    help="The output of keys init, or the offline directory (with --plane-dir).",
)
@click.option(
    "--plane-dir",
    "plane_dirs",
    multiple=True,
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    help="A plane directory to issue a certificate into (repeat; default: all of keys init's).",
)
@click.option(
    "--renew", multiple=True, metavar="PLANE", help="Replace this plane's certificate (repeat)."
)
@click.option("--new-ca", is_flag=True, help="Replace the TLS CA and every certificate.")
@click.option("--tls-host", "tls_hosts", multiple=True, metavar="HOST", help="See keys init.")
@click.option("--days", default=365, show_default=True, help="Validity of new certificates.")
def keys_tls(
    *,
    keys_dir: Path,
    plane_dirs: tuple[Path, ...],
    renew: tuple[str, ...],
    new_ca: bool,
    tls_hosts: tuple[str, ...],
    days: int,
) -> None:
    """Issue TLS certificates into plane directories: those without one, --renew, or all (--new-ca).

    Runs where the offline directory is: it needs the TLS CA's private key
    (offline/roots/tls-ca.key) unless --new-ca makes a new CA.
    """
    from souverix_crdt.transports.tls import create_fleet_ca, save_ca  # noqa: PLC0415

    offline = load_offline(keys_dir)
    folders = {}
    if is_ceremony(keys_dir):
        for folder in sorted((keys_dir / PLANES_DIR).iterdir()):
            if (folder / "fleet.json").is_file():
                folders[folder.name] = folder
    for folder in plane_dirs:
        folders[load_plane(folder).name] = folder
    unknown = sorted(set(renew) - set(folders))
    if unknown:
        raise click.ClickException(f"--renew: no such plane: {', '.join(unknown)}")
    if days < 1:
        raise click.BadParameter("must be at least 1", param_hint="--days")
    ca_files = key_directory_files(offline.directory, "")
    if new_ca:
        ca = create_fleet_ca(offline.anchors.fleet_id)
        keep = bool(offline.root_keys) or (offline.directory / CA_KEY_FILE).exists()
        save_ca(ca, ca_files.ca, offline.directory / CA_KEY_FILE if keep else None)
    else:
        ca = load_offline_ca(offline.directory)
    issued, unissued = [], []
    for name, folder in folders.items():
        if not (new_ca or name in renew or not key_directory_files(folder, name).cert.exists()):
            continue
        if ca.key is None:
            unissued.append(name)
            continue
        issue_plane_tls(ca, folder, name, hosts=tls_hosts, validity_days=days)
        issued.append(name)
    made = "a new TLS CA; " if new_ca else ""
    click.echo(f"{made}certificates issued: {', '.join(issued) or 'none'}")
    if unissued:
        raise click.ClickException(
            f"no certificate for {', '.join(unissued)}: the TLS CA's private key "
            f"({CA_KEY_FILE}) is not in {offline.directory}"
        )


def _parse_cut(items: tuple[str, ...]) -> dict[str, int]:
    cut: dict[str, int] = {}
    for item in items:
        scope, _, seq = item.rpartition("=")
        if not scope or not seq.isdigit():
            raise click.BadParameter(f"expected SCOPE=SEQ, got {item!r}", param_hint="--cut")
        cut[str(Scope.parse(scope))] = int(seq)
    return cut


def _cut(
    issuer: IssuerKeys, plane: str, items: tuple[str, ...], store: Path | None
) -> dict[str, int]:
    cut = _parse_cut(items)
    if store is not None:
        if not store.is_file():
            raise click.ClickException(f"{store}: no such store (--cut-from)")
        if plane not in issuer.chains:
            raise click.ClickException(f"no plane {plane!r} known in {issuer.directory}")
        opened = SqliteStore.open(store)
        try:
            key_id = issuer.chains[plane][-1].subject.key_id
            for scope, seq in cut_from_store(opened, key_id).items():
                cut.setdefault(scope, seq)
        finally:
            opened.close()
    return cut


def _apply(
    configs: tuple[Path, ...], delegations: list[Delegation], revocation: Revocation
) -> None:
    for path in configs:
        config = load_peer_config(path)
        with _opened(config, create=True) as replica:
            added = replica.add_delegations(d.encode() for d in delegations)
            added += replica.add_revocations([revocation.encode()])
        click.echo(
            f"applied to {config.plane} ({config.store}): {_count(added, 'new authority item')}"
        )


_cut_options: Final = [
    click.option(
        "--cut",
        "cut_items",
        multiple=True,
        metavar="SCOPE=SEQ",
        help="The key's last sequence number that still counts in SCOPE (repeat).",
    ),
    click.option(
        "--cut-from",
        type=click.Path(dir_okay=False, path_type=Path),
        help="Take the cut from what this SQLite store holds of the key.",
    ),
    click.option(
        "--apply",
        "apply_to",
        multiple=True,
        type=click.Path(dir_okay=False, path_type=Path),
        help="Also add it to the store of this peer config (repeat).",
    ),
]


def _with_cut_options(function: _F) -> _F:
    for option in reversed(_cut_options):
        function = option(function)
    return function


_issuer_keys_option: Final = click.option(
    "--keys",
    "keys_dir",
    required=True,
    type=click.Path(path_type=Path),
    help="The issuer's plane directory, the offline directory (the roots issue), or the "
    "output of keys init.",
)


def _issuer_for(keys_dir: Path, plane: str, offline_dir: Path | None) -> IssuerKeys:
    check_directory_name(plane)  # refuses "../x" before any file is touched
    return load_issuer(keys_dir, target=plane, offline=offline_dir)


def _save_revocation(issuer: IssuerKeys, revocation: Revocation, *extra: Path) -> Path:
    path = save_revocation(issuer.directory, revocation)
    others = [issuer.offline, *extra]
    if issuer.ceremony is not None:
        # Every plane directory at hand learns it now, as each would from its peers.
        others += sorted(p for p in (issuer.ceremony / PLANES_DIR).iterdir() if p.is_dir())
    for folder in dict.fromkeys(f for f in others if f is not None):
        if folder != issuer.directory:
            save_revocation(folder, revocation)
    return path


@keys.command("revoke")
@_issuer_keys_option
@_offline_option
@_with_cut_options
@click.option(
    "--keep-children/--no-keep-children",
    default=True,
    show_default=True,
    help="Keep the delegations the key issued to the planes below valid.",
)
@click.argument("plane")
def keys_revoke(
    *,
    keys_dir: Path,
    offline_dir: Path | None,
    cut_items: tuple[str, ...],
    cut_from: Path | None,
    apply_to: tuple[Path, ...],
    keep_children: bool,
    plane: str,
) -> None:
    """Revoke PLANE's key, signed by the plane that delegated it (at that plane).

    The revocation file is written into the issuer's directory (revocations/), where its
    peer process learns it at start and passes it on. Writes that the cut does not cover stop
    counting on every replica that learns it. Without --cut or --cut-from, none of the key's
    writes count any more.
    """
    issuer = _issuer_for(keys_dir, plane, offline_dir)
    cut = _cut(issuer, plane, cut_items, cut_from)
    revocation = revoke_known(
        issuer.anchors.fleet_id,
        issuer.chains,
        plane,
        issuer.signers(plane),
        cut=cut,
        now_ms=_now_ms(),
        keep_children=keep_children,
    )
    path = _save_revocation(issuer, revocation)
    shown = ", ".join(f"{s}={q}" for s, q in sorted(cut.items())) or "none"
    click.echo(f"revoked {plane} (key {revocation.revoked[:16]}); cut {shown}; wrote {path}")
    _apply(apply_to, [], revocation)


@keys.command("rotate")
@_issuer_keys_option
@_offline_option
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Where to write the plane's new directory (default: its folder in keys init's output).",
)
@_with_cut_options
@click.argument("plane")
def keys_rotate(
    *,
    keys_dir: Path,
    offline_dir: Path | None,
    out_dir: Path | None,
    cut_items: tuple[str, ...],
    cut_from: Path | None,
    apply_to: tuple[Path, ...],
    plane: str,
) -> None:
    """Give PLANE a new key with the same authority, and revoke the old one (at its issuer).

    Writes the plane's new directory (copy it over the old one on the plane's machine) and the
    revocation into the issuer's. Pass --cut-from with the plane's own store so that
    everything it wrote so far still counts; restart its peer process afterwards, so that it
    writes with the new key.
    """
    issuer = _issuer_for(keys_dir, plane, offline_dir)
    cut = _cut(issuer, plane, cut_items, cut_from)
    old = issuer.chains[plane][-1].subject.key_id
    creds, delegation, revocation = rotate_known(
        issuer.chains, plane, issuer.signers(plane), cut=cut, now_ms=_now_ms()
    )
    out = _new_directory(issuer, plane, out_dir, replace=True)
    save_plane_directory(
        out,
        issuer.anchors,
        creds,
        issuer.chains,
        ca=issuer.ca(),
        topology_text=issuer.topology_text(),
    )
    issuer.record(plane, creds.chain)
    path = _save_revocation(issuer, revocation, out)
    shown = ", ".join(f"{s}={q}" for s, q in sorted(cut.items())) or "none"
    click.echo(
        f"rotated {plane}: key {old[:16]} -> {creds.key_id[:16]}; old key revoked "
        f"(cut {shown}); wrote {path} and the plane's new directory {out}"
    )
    _say_tls(out, plane)
    _apply(apply_to, [delegation], revocation)


# --------------------------------------------------------------------------- peer


@cli.group(cls=_Group)
def peer() -> None:
    """Run a control plane as a process, or write and read through its store."""


class _JsonLogFormatter(logging.Formatter):
    """One JSON object a line: ``time`` (UTC, ISO 8601), ``level``, ``logger``, ``message``."""

    def format(self, record: logging.LogRecord) -> str:
        moment = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        document = {
            "time": f"{moment}.{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            document["exception"] = self.formatException(record.exc_info)
        return json.dumps(document, sort_keys=True)


def _write_ready_file(path: Path, process: PeerProcess) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    document = {
        "pid": os.getpid(),
        "plane": process.config.plane,
        "port": process.port,
        "metrics_port": None if process.metrics is None else process.metrics.port,
    }
    temporary.write_text(json.dumps(document) + "\n", "utf-8")
    temporary.replace(path)


@peer.command("run")
@click.option(
    "--config",
    "config_path",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="The peer config (see docs/operations.md).",
)
@click.option(
    "--ready-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write {pid, plane, port} here as JSON once listening and syncing.",
)
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning"]),
    default="info",
    show_default=True,
)
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="Log lines as text, or as JSON objects (time, level, logger, message), one a line.",
)
def peer_run(
    *, config_path: Path, ready_file: Path | None, log_level: str, log_format: str
) -> None:
    """Run one control plane until SIGTERM or SIGINT: serve, dial, sync and log each sync."""
    config = load_peer_config(config_path)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        _JsonLogFormatter()
        if log_format == "json"
        else logging.Formatter("%(asctime)s %(message)s")
    )
    logging.basicConfig(level=getattr(logging, log_level.upper()), handlers=[handler], force=True)

    async def run() -> None:
        stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stopping.set)
        process = PeerProcess(config)
        await process.start()
        try:
            if ready_file is not None:
                _write_ready_file(ready_file, process)
            await stopping.wait()
            process.say("stopping")
        finally:
            await process.stop()
        logging.getLogger(__name__).info("%s: stopped", config.plane)

    asyncio.run(run())


@cli.command("dashboard")
@click.option(
    "--config",
    "config_path",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="The peer config of the running plane to show.",
)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to serve on.")
@click.option("--port", default=8766, show_default=True, help="Port (0: any free one).")
@click.option(
    "--poll",
    "poll_s",
    default=0.25,
    show_default=True,
    help="Seconds between looks at the plane's store.",
)
@click.option(
    "--ready-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write {pid, plane, url} here as JSON once serving.",
)
def dashboard_command(
    *, config_path: Path, host: str, port: int, poll_s: float, ready_file: Path | None
) -> None:
    """Serve the live, read-only dashboard of a running plane until SIGTERM or SIGINT.

    It follows the plane's store from a process of its own (it never writes it): what the
    plane writes or receives shows on the page without a reload.
    """
    from souverix_crdt.dashboard import serve  # noqa: PLC0415 - needs the dashboard extra
    from souverix_crdt.plane.follow import StoreFollower  # noqa: PLC0415

    config = load_peer_config(config_path)
    follower = StoreFollower(config)
    stopping: list[int] = []
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda number, _frame: stopping.append(number))
    try:
        follower.changed()
        follower.catch_up()
        with serve(follower.replica, host, port, poll_interval=poll_s) as handle:
            click.echo(f"dashboard of {config.plane} on {handle.url} (read-only)")
            if ready_file is not None:
                temporary = ready_file.with_name(f".{ready_file.name}.tmp")
                document = {"pid": os.getpid(), "plane": config.plane, "url": handle.url}
                temporary.write_text(json.dumps(document) + "\n", "utf-8")
                temporary.replace(ready_file)
            while not stopping:
                time.sleep(poll_s)  # this thread owns the replica; the server reads under lock
                if follower.changed():
                    with handle.lock:
                        follower.catch_up()
    finally:
        follower.close()


def _parse_value(value: str, *, as_json: bool) -> Any:
    if not as_json:
        return value
    try:
        return json.loads(value)
    except ValueError as exc:
        raise click.BadParameter(f"not JSON: {exc}", param_hint="VALUE") from exc


@peer.command("write")
@_replica_options
@click.option("--json", "as_json", is_flag=True, help="Parse VALUE as JSON.")
@click.argument("scope")
@click.argument("collection", type=click.Choice(COLLECTIONS))
@click.argument("key")
@click.argument("value")
def peer_write(
    *,
    config_path: Path | None,
    keys_dir: Path | None,
    plane: str | None,
    store_path: Path | None,
    as_json: bool,
    scope: str,
    collection: str,
    key: str,
    value: str,
) -> None:
    """Write KEY=VALUE in COLLECTION at SCOPE, signed by the plane's key.

    When the plane's peer process runs, the write goes through its control socket: it is
    signed under the plane's chain and synced at once. Otherwise it is written to the store
    under the same chain (which the store keeps across clean closes). A write the key has no
    authority for is refused, and nothing is written. A write that is committed but does not
    become the key's value (another register wins it) is reported with the register that wins
    and why, and the command exits with status 3.
    """
    config = _peer_config(config_path, keys_dir, plane, store_path)
    parsed = _parse_value(value, as_json=as_json)
    target = Scope.parse(scope)
    message = {
        "op": "write",
        "scope": str(target),
        "collection": collection,
        "key": key,
        "value": parsed,
    }
    reply = _through_plane(config, message)
    if reply is not None:
        done = reply["receipt"]
        click.echo(
            f"wrote {collection}.{key} at {done['scope']} as {config.plane} through its "
            f"running process (seq {done['seq']}, hlc {done['hlc']})"
        )
        if done.get("not_applied"):
            for line in done["not_applied"]:
                click.echo(f"not in effect: {line}", err=True)
            raise click.exceptions.Exit(EXIT_NOT_APPLIED)
        return
    plane_keys = load_plane_keys(config)
    with _progress(f"opening {config.plane}'s replica ({config.store})"):
        replica, lease = open_writing_replica(config, keys=plane_keys)
    try:
        learn_key_directory(replica, plane_keys, config.keys)
        try:
            receipt = replica.scope(target).collection(collection).set(key, parsed)
        except AuthorityError as exc:
            raise click.ClickException(
                f"refused: {config.plane} (key {replica.identity.key_id[:16]}) may not write "
                f"{collection} at {target}: {_one_line(exc)}"
            ) from exc
        lost = [_describe_not_applied(replica, item) for item in receipt.not_applied]
    finally:
        lease.close(replica.store)
        replica.close()
    click.echo(
        f"wrote {collection}.{key} at {receipt.scope} as {config.plane} "
        f"(seq {receipt.seq}, hlc {receipt.hlc})"
    )
    if lost:
        for line in lost:
            click.echo(f"not in effect: {line}", err=True)
        raise click.exceptions.Exit(EXIT_NOT_APPLIED)


#: What each reason a write did not take effect means, for people.
_NOT_APPLIED_REASONS: Final = {
    "outranked": "a register this write had not seen ranks higher",
    "superseded": "a register that had seen this write is newer",
    "not-counted": "this plane's registers do not count in the collection",
}


def _describe_not_applied(replica: Replica, item: NotApplied) -> str:
    why = _NOT_APPLIED_REASONS.get(item.reason, item.reason)
    text = f"{item.collection}.{item.key}: {item.reason} ({why})"
    if item.winner is not None:
        holder = describe_writer(
            replica.plane_of(item.winner.writer), _short_chain(item.winner.writer)
        )
        text += f"; {holder} holds it (hlc {item.winner_hlc}, v{item.winner.version})"
    return text


@peer.command("link")
@_replica_options
@click.argument("peer_name", metavar="PEER")
@click.argument("state", type=click.Choice(["up", "down"]))
def peer_link(
    *,
    config_path: Path | None,
    keys_dir: Path | None,
    plane: str | None,
    store_path: Path | None,
    peer_name: str,
    state: str,
) -> None:
    """Tell a running plane that its link to PEER is up or down (the connectivity hook).

    Down: no session to PEER is opened or accepted, and an open one closes. Up: a scheduled
    link syncs at once, a live one reconnects. The plane's process must be running.
    """
    config = _peer_config(config_path, keys_dir, plane, store_path)
    reply = _through_plane(config, {"op": "link", "peer": peer_name, "up": state == "up"})
    if reply is None:
        raise click.ClickException(
            f"{config.plane} is not running: its control socket does not answer "
            f"({config.control_socket})"
        )
    click.echo(f"told {config.plane}: the link to {peer_name} is {state}")


@peer.command("get")
@_replica_options
@click.option("--effective", is_flag=True, help="The value in force (inherited from above).")
@click.argument("scope")
@click.argument("collection", type=click.Choice(COLLECTIONS))
@click.argument("key")
def peer_get(
    *,
    config_path: Path | None,
    keys_dir: Path | None,
    plane: str | None,
    store_path: Path | None,
    effective: bool,
    scope: str,
    collection: str,
    key: str,
) -> None:
    """Print the value of KEY in COLLECTION at SCOPE as JSON (exit 1 when it is not set)."""
    config = _peer_config(config_path, keys_dir, plane, store_path)
    target = Scope.parse(scope)
    message = {
        "op": "get",
        "scope": str(target),
        "collection": collection,
        "key": key,
        "effective": effective,
    }
    reply = _through_plane(config, message)
    if reply is not None:
        if not reply["found"]:
            raise click.ClickException(
                f"{collection}.{key} is not set at {target} in {config.plane}"
            )
        _echo_json(reply["value"])
        return
    missing = object()
    with _opened(config) as replica:
        home = replica.identity.scope
        read = replica.effective if effective else replica.get
        found = read(target, collection, key, missing)
    if found is missing and not home.is_related_to(target):
        # Not "not set": this store never receives that scope, whatever is set there.
        raise click.ClickException(
            f"{target} is outside what {config.plane} receives (its subtree {home} and the "
            f"scopes above it): read it from a plane above or in {target}"
        )
    if found is missing:
        raise click.ClickException(f"{collection}.{key} is not set at {target} in {config.plane}")
    _echo_json(found)


# --------------------------------------------------------------------------- view


def _view_configs(
    configs: tuple[Path, ...], keys_dir: Path | None, stores_dir: Path | None
) -> tuple[Path, dict[str, PeerConfig]]:
    """The replicas to read, each with its own plane directory, and where the topology is."""
    found: dict[str, PeerConfig] = {}
    for path in configs:
        config = load_peer_config(path)
        found[config.plane] = config
    if keys_dir is None:
        if not found:
            raise click.UsageError("give --keys DIR with --stores, or one --config per plane")
        keys_dir = next(iter(found.values())).keys
    if stores_dir is not None:
        for store in sorted(stores_dir.glob("*.sqlite3")):
            try:
                check_directory_name(store.stem)
            except SouverixError:
                continue  # not a plane's store: its name could not be a plane's directory
            found.setdefault(
                store.stem,
                PeerConfig(
                    plane=store.stem,
                    keys=plane_directory(keys_dir, store.stem),
                    store=store,
                    source=str(store),
                ),
            )
    if not found:
        raise click.UsageError("give --stores DIR or one --config per plane to read")
    if is_ceremony(keys_dir):
        keys_dir = keys_dir / OFFLINE_DIR
    return keys_dir, found


def _link_statuses(topology: Topology, replicas: Mapping[str, Replica]) -> dict[str, LinkStatus]:
    statuses = {}
    zero = SyncDebt(0, 0, 0)
    for spec in topology.links():
        upper, lower = replicas.get(spec.upper), replicas.get(spec.lower)
        if upper is None and lower is None:
            continue  # nothing is known of this link: the view takes it as connected
        record = (link_record(lower, spec.upper) if lower else None) or (
            link_record(upper, spec.lower) if upper else None
        )
        now_ms = (lower or upper).clock.physical()  # type: ignore[union-attr]  # one is set
        connected = record is None or link_state(record, now_ms) == RecordState.YES
        statuses[spec.lower] = LinkStatus(
            upper=spec.upper,
            lower=spec.lower,
            state=LinkState.UP if connected and not spec.air_gapped else LinkState.DOWN,
            transport="bundle" if spec.air_gapped else str((record or {}).get("transport", "-")),
            to_lower=upper.sync_debt(spec.lower) if upper else zero,
            to_upper=lower.sync_debt(spec.upper) if lower else zero,
            last_sync_ms=None if record is None else record.get("last_sync_ms"),
            air_gapped=spec.air_gapped,
        )
    return statuses


@cli.command()
@click.option(
    "--config",
    "configs",
    multiple=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="A peer config whose store to read (repeat, one per plane).",
)
@click.option(
    "--keys",
    "keys_dir",
    type=click.Path(path_type=Path),
    help="The output of keys init (each store opened with its plane's directory), or a plane "
    "directory.",
)
@click.option(
    "--stores",
    "stores_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="A folder of <plane>.sqlite3 stores (a federation directory).",
)
@click.option(
    "--topology",
    "topology_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help=f"The topology (default: {TOPOLOGY_FILE} in the key directory).",
)
@click.option("--region", help="Show the view of this plane's subtree, as it sees it.")
@click.option("--format", "output", type=click.Choice(["tree", "json"]), default="tree")
def view(
    *,
    configs: tuple[Path, ...],
    keys_dir: Path | None,
    stores_dir: Path | None,
    topology_file: Path | None,
    region: str | None,
    output: str,
) -> None:
    """The Global Fleet View (or a regional one) from the planes' SQLite stores."""
    from souverix_crdt.federation.render import render_text  # noqa: PLC0415 - rich trees only for this command
    from souverix_crdt.federation.views import fleet_view  # noqa: PLC0415

    keys_dir, found = _view_configs(configs, keys_dir, stores_dir)
    if topology_file is None and not (keys_dir / TOPOLOGY_FILE).is_file():
        raise click.UsageError(f"no {TOPOLOGY_FILE} in {keys_dir}: give --topology FILE")
    topology = load_topology(topology_file or keys_dir / TOPOLOGY_FILE)
    viewer = region or topology.root.name
    if viewer not in topology.planes:
        raise click.BadParameter(f"no plane {viewer!r} in {topology.source}", param_hint="--region")
    if viewer not in found:
        raise click.ClickException(
            f"no store for {viewer}: the view is computed at its replica (give its --config, "
            f"or --stores with {viewer}.sqlite3)"
        )
    replicas: dict[str, Replica] = {}
    try:
        for name, config in found.items():
            if name not in topology.planes:
                continue
            try:
                # Each store is opened with its own plane's directory; a plane directory
                # holds only its own key, so the others' stores beside it are skipped.
                plane_keys = load_plane_keys(config)
            except (ConfigError, KeyFileError):
                if name == viewer:
                    raise
                continue
            with _progress(f"reading {name} ({config.store})"):
                replicas[name] = open_replica(config, keys=plane_keys, create=False)
        statuses = _link_statuses(topology, replicas)
        result = fleet_view(replicas[viewer], topology, statuses, root=region)
    finally:
        for replica in replicas.values():
            replica.close()
    if output == "json":
        _echo_json(result.to_json())
    else:
        click.echo(render_text(result, color=sys.stdout.isatty(), details=True), nl=False)


# --------------------------------------------------------------------------- bundles


@cli.group(cls=_Group)
def bundle() -> None:
    """The air-gapped procedure: bundles out, receipts back."""


def _neighbours(keys: PlaneKeys, plane: str) -> list[str]:
    """The planes ``plane`` syncs with: the one above it and those below, in the delegations."""
    if plane not in keys.chains:
        return []
    own = keys.chains[plane]
    found = []
    for name, chain in keys.chains.items():
        above = chain[:-1] == own  # plane delegated to it
        below = own[:-1] == chain  # it delegated to plane
        if name != plane and (above or below):
            found.append(name)
    return found


@bundle.command("export")
@_replica_options
@click.option("--peer", "peer_name", required=True, help="The plane the bundle is for.")
@click.option("--out", "out_file", required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--limit", type=int, help="Most envelopes to carry (the rest go next time).")
@click.option(
    "--from-receipt",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Start from the frontiers of this receipt of PEER's, not from what it acknowledged "
    "before (a peer that lost its store).",
)
def bundle_export(
    *,
    config_path: Path | None,
    keys_dir: Path | None,
    plane: str | None,
    store_path: Path | None,
    peer_name: str,
    out_file: Path,
    limit: int | None,
    from_receipt: Path | None,
) -> None:
    """Write a signed bundle of what PEER has not acknowledged yet."""
    from souverix_crdt.transports.bundle import export_bundle, read_receipt  # noqa: PLC0415

    config = _peer_config(config_path, keys_dir, plane, store_path)
    plane_keys = load_plane_keys(config)
    if peer_name not in plane_keys.chains:
        raise click.BadParameter(
            str(UnknownPlaneError(peer_name, plane_keys.chains, where=str(config.keys))),
            param_hint="--peer",
        )
    neighbours = _neighbours(plane_keys, config.plane)
    if peer_name not in neighbours:
        raise click.BadParameter(
            f"{peer_name} is not a plane {config.plane} syncs with: bundles go to the plane "
            f"that delegated to it or to the planes it delegated to "
            f"({', '.join(neighbours) or 'none'})",
            param_hint="--peer",
        )
    with _opened(config) as replica, _progress(f"exporting a bundle for {peer_name}"):
        receipt = None if from_receipt is None else read_receipt(replica, from_receipt)
        info = export_bundle(
            replica,
            out_file,
            peer=peer_name,
            peer_frontiers=receipt,
            peer_scope=plane_keys.chains[peer_name][-1].scope,
            limit=limit,
        )
        record_bundle_exchange(replica, peer_name, kind="export")
    more = "" if info.complete else " (limit reached: export again after its receipt)"
    click.echo(
        f"wrote {info.path}: {_count(info.envelopes, 'envelope')}, "
        f"{_count(info.checkpoints, 'checkpoint')}, {_count(info.delegations, 'delegation')}, "
        f"{_count(info.revocations, 'revocation')}, {_count(info.size, 'byte')}, "
        f"for {peer_name}{more}"
    )


@bundle.command("import")
@_replica_options
@click.option(
    "--receipt-out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="After importing a bundle, write the receipt for its sender here.",
)
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def bundle_import(
    *,
    config_path: Path | None,
    keys_dir: Path | None,
    plane: str | None,
    store_path: Path | None,
    receipt_out: Path | None,
    file: Path,
) -> None:
    """Verify and apply FILE: a bundle (all or nothing) or a receipt (settles sync debt)."""
    from souverix_crdt.transports.bundle import (  # noqa: PLC0415
        RECEIPT_MAGIC,
        export_receipt,
        import_bundle,
        import_receipt,
    )

    config = _peer_config(config_path, keys_dir, plane, store_path)
    with file.open("rb") as stream:
        is_receipt = stream.read(len(RECEIPT_MAGIC)) == RECEIPT_MAGIC
    with _opened(config, create=True) as replica:
        if is_receipt:
            if receipt_out is not None:
                raise click.UsageError("--receipt-out is for bundles; FILE is a receipt")
            receipt = import_receipt(replica, file)
            record_bundle_exchange(replica, receipt.source, kind="receipt")
            click.echo(
                f"imported the receipt of {receipt.source}: "
                f"{_count(len(receipt.frontiers), 'chain')} acknowledged; "
                f"debt to {receipt.source} now "
                f"{_count(replica.sync_debt(receipt.source).envelopes, 'envelope')}"
            )
            return
        with _progress(f"verifying and importing {file.name}"):
            result = import_bundle(replica, file)
        record_bundle_exchange(replica, result.source, kind="import")
        click.echo(
            f"imported {file.name} from {result.source}: {result.applied} applied, "
            f"{result.duplicates} already held, {result.pending} pending, "
            f"{result.rejected} rejected"
        )
        if receipt_out is not None:
            export_receipt(replica, receipt_out, for_peer=result.source)
            click.echo(f"wrote the receipt for {result.source} to {receipt_out}")


@bundle.command("receipt")
@_replica_options
@click.option("--for", "for_peer", required=True, help="The plane whose bundles it receipts.")
@click.option("--out", "out_file", required=True, type=click.Path(dir_okay=False, path_type=Path))
def bundle_receipt(
    *,
    config_path: Path | None,
    keys_dir: Path | None,
    plane: str | None,
    store_path: Path | None,
    for_peer: str,
    out_file: Path,
) -> None:
    """Write a signed receipt of this replica's frontiers for the plane FOR."""
    from souverix_crdt.transports.bundle import export_receipt  # noqa: PLC0415

    config = _peer_config(config_path, keys_dir, plane, store_path)
    # A new or rebuilt zone's first receipt comes from an empty store: create it.
    with _opened(config, create=True) as replica:
        receipt = export_receipt(replica, out_file, for_peer=for_peer)
    click.echo(f"wrote {out_file}: {_count(len(receipt.frontiers), 'chain')}, for {for_peer}")


# --------------------------------------------------------------------------- audit, status


def _short_chain(chain: str) -> str:
    """``<first 12 of the key id>~<epoch>``: enough to tell chains apart on a terminal."""
    key_id, tilde, epoch = chain.partition("~")
    return f"{key_id[:12]}{tilde}{epoch}"


def _audit_line(record: ConflictRecord) -> str:
    winner, loser = record.winner, record.loser
    return (
        f"{record.scope} {record.collection}.{record.key}: "
        f"{describe_writer(record.winner_plane, _short_chain(winner.writer))} "
        f"(hlc {winner.hlc}, v{winner.version}) won over "
        f"{describe_writer(record.loser_plane, _short_chain(loser.writer))} "
        f"(hlc {loser.hlc}, v{loser.version}); {record.strategy}, {record.reason}"
    )


@cli.command()
@_replica_options
@click.option("--format", "output", type=click.Choice(["text", "json"]), default="text")
def audit(
    *,
    config_path: Path | None,
    keys_dir: Path | None,
    plane: str | None,
    store_path: Path | None,
    output: str,
) -> None:
    """The conflict log: every settled conflict, identical on converged replicas."""
    config = _peer_config(config_path, keys_dir, plane, store_path)
    with _opened(config) as replica:
        records = replica.conflicts()
    if output == "json":
        # The plane names come from the writers' verified delegations (Replica.conflicts).
        _echo_json(
            [
                {
                    **record.to_json(),
                    "winner_plane": record.winner_plane or None,
                    "loser_plane": record.loser_plane or None,
                }
                for record in records
            ]
        )
        return
    if not records:
        click.echo(f"no conflicts recorded at {config.plane}")
    for record in records:
        click.echo(_audit_line(record))


def _status_document(config: PeerConfig, replica: Replica) -> dict[str, Any]:
    document = status_document(
        replica, [link.name for link in config.peers], lambda peer: link_record(replica, peer)
    )
    # The chain of the replica opened here is this command's own incarnation, not the plane's.
    del document["chain"]
    document["plane"] = config.plane
    document["store"] = str(config.store)
    return document


def _status_of(config: PeerConfig) -> tuple[dict[str, Any], dict[str, str]]:
    """The plane's status document and the plane names of the writer chains it mentions.

    Live from the plane's running process when one answers, else read from its store.
    """
    reply = _through_plane(config, {"op": "status"})
    if reply is not None:
        document = reply["status"]
        document["running"] = True
        return document, dict(document.get("writers", {}))
    with _opened(config) as replica:
        document = _status_document(config, replica)
        document["running"] = False
        chains = [e["chain"] for r in document["refused"].values() for e in r["envelopes"]]
        chains += [name.split("|", 1)[1] for name in document["gaps"]]
        return document, {chain: replica.plane_of(chain) for chain in chains}


@cli.command()
@_replica_options
@click.option("--format", "output", type=click.Choice(["table", "json"]), default="table")
def status(
    *,
    config_path: Path | None,
    keys_dir: Path | None,
    plane: str | None,
    store_path: Path | None,
    output: str,
) -> None:
    """A replica's status: frontiers, pending, quarantine, sync debt and last syncs."""
    config = _peer_config(config_path, keys_dir, plane, store_path)
    document, replica_planes = _status_of(config)
    if output == "json":
        _echo_json(document)
        return
    console = _console()
    summary = Table(
        title=f"{config.plane} ({config.store})", title_justify="left", box=box.SIMPLE_HEAD
    )
    summary.add_column("field")
    summary.add_column("value")
    # The key's plane as its verified delegation names it (the config names the same one).
    summary.add_row("key_id", describe_writer(document["key_plane"], document["key_id"]))
    for field in ("durability", "hlc", "chains", "pending", "digest"):
        summary.add_row(field, str(document[field]))
    summary.add_row("quarantined", str(sum(document["quarantined"].values())))
    summary.add_row("equivocators", str(len(document["equivocators"])))
    console.print(summary)
    if document["refused"]:
        # What arrived and did not count, and why: the first place to look when a write
        # "never shows up" here.
        refused = Table(title="refused envelopes", title_justify="left", box=box.SIMPLE_HEAD)
        for column in ("reason", "envelopes", "lowest id", "scope", "writer", "seq"):
            refused.add_column(column)
        for reason, record in document["refused"].items():
            first = record["envelopes"][0] if record["envelopes"] else {}
            writer = first.get("chain", "")
            refused.add_row(
                reason,
                f"{record['count']}{'+' if record['more'] else ''}",
                first.get("envelope_id", "")[:16],
                first.get("scope", ""),
                describe_writer(replica_planes.get(writer, ""), writer),
                str(first.get("seq", "")),
            )
        console.print(refused)
    if document["gaps"]:
        # Chains that cannot advance: what they wait for, so an operator can ask for it.
        gaps = Table(title="missing", title_justify="left", box=box.SIMPLE_HEAD)
        for column in ("scope", "writer", "missing seq", "waiting", "since"):
            gaps.add_column(column)
        for name, gap in document["gaps"].items():
            gap_scope, chain = name.split("|", 1)
            gaps.add_row(
                gap_scope,
                describe_writer(replica_planes.get(chain, ""), chain),
                str(gap["missing"]),
                str(gap["waiting"]),
                time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(gap["since_ms"] / 1000)),
            )
        console.print(gaps)
    links = Table(title="links", title_justify="left", box=box.SIMPLE_HEAD)
    for column in ("peer", "debt envelopes", "debt bytes", "oldest", "connected", "last sync"):
        links.add_column(column)
    for peer_name, debt in document["sync_debt"].items():
        record = document["links"].get(peer_name) or {}
        last = record.get("last_sync_ms")
        links.add_row(
            peer_name,
            str(debt["envelopes"]),
            str(debt["bytes"]),
            f"{debt['oldest_age_ms'] / 1000:.1f} s",
            _connected_cell(record),
            "-" if last is None else time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(last / 1000)),
        )
    console.print(links)


def _connected_cell(record: Mapping[str, Any]) -> str:
    """``yes``, ``no``, ``bundle``, or ``stale`` with the age of the last confirmation."""
    state = record.get("state", "-")
    if record.get("transport") == "bundle" and state == RecordState.NO:
        return "no (bundle)"
    if state == RecordState.STALE:
        confirmed = record.get("confirmed_ms", record.get("updated_ms"))
        if isinstance(confirmed, int):
            age = max(0.0, (time.time() * 1000 - confirmed) / 1000)
            return f"stale (confirmed {age:.0f} s ago)"
    return str(state)


@cli.group(cls=_Group)
def nats() -> None:
    """NATS deployment: nats-server authorization for the fleet's planes."""


@nats.command("credentials")
@click.argument("topology_file", required=False, type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Where to write the server includes and the password files.",
)
@click.option(
    "--leaf",
    "leaves",
    multiple=True,
    metavar="NAME=HOST:PORT",
    help="A leaf node and the hub's leaf-node address it connects to (repeatable).",
)
@click.option(
    "--rounds", default=11, show_default=True, help="bcrypt cost of the hashes in the servers."
)
def nats_credentials(
    *, topology_file: Path | None, out_dir: Path, leaves: tuple[str, ...], rounds: int
) -> None:
    """Write one NATS user per plane of TOPOLOGY_FILE, allowed only its own subjects.

    Writes authorization.conf (include it in every server), leafnodes-auth.conf (include it in
    the hub's leafnodes block), leaf-NAME.conf (in leaf NAME's leafnodes block) and one
    password file per user (0600). Running it again rotates every password. Air-gapped links
    get no session subjects.
    """
    try:
        from souverix_crdt.transports.nats import Subjects  # noqa: PLC0415 - the optional nats extra
        from souverix_crdt.transports.nats_auth import grants_for, write_fleet_credentials  # noqa: PLC0415
    except ImportError as exc:
        raise click.ClickException(
            f"needs the nats extra (pip install 'souverix-crdt[nats]'): {exc}"
        ) from exc
    topology = (
        parse_topology(default_topology_text(), file="<packaged default topology>")
        if topology_file is None
        else load_topology(topology_file)
    )
    remotes: dict[str, list[str]] = {}
    for item in leaves:
        name, sep, address = item.partition("=")
        if not sep or not name or ":" not in address:
            raise click.BadParameter(f"expected NAME=HOST:PORT, got {item!r}", param_hint="--leaf")
        remotes.setdefault(name, []).append(address)
    grants = grants_for(
        {name: plane.scope for name, plane in topology.planes.items()},
        [(link.upper, link.lower) for link in topology.links() if not link.air_gapped],
    )
    credentials = write_fleet_credentials(
        out_dir, Subjects(topology.fleet_id), grants, leaves=remotes, rounds=rounds
    )
    for user, path in credentials.password_files.items():
        click.echo(f"{user}: {path}")
    click.echo(f"servers include {credentials.authorization}")


def main() -> None:
    """The ``souverix-crdt`` console script."""
    cli(prog_name="souverix-crdt")


if __name__ == "__main__":
    main()
