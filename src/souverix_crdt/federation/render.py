"""Drawing views and the sync graph: a rich terminal tree, plain text, Mermaid and DOT.

Colours follow authority (global magenta, regional cyan, local green, autonomous yellow); badges
mark conditional autonomy, air gaps and planes operating cut off. Plain text is the same tree
without colour, which is what the demo prints and its test reads back.
"""

from __future__ import annotations

import datetime
import io
from collections.abc import Mapping
from typing import Final

from rich.console import Console, Group
from rich.text import Text
from rich.tree import Tree

from souverix_crdt.plane.topology import LinkSpec, SyncTarget, Topology, format_duration
from souverix_crdt.scope import Autonomy, Tier

from .status import LinkState, LinkStatus
from .views import FleetView, ScopeRow

__all__ = ["LEVEL_STYLES", "dot", "mermaid", "render_text", "render_tree"]

#: The style of each authority level.
LEVEL_STYLES: Final = {
    Tier.GLOBAL: "bold magenta",
    Tier.REGIONAL: "bold cyan",
    Tier.LOCAL: "green",
    Tier.AUTONOMOUS: "bold yellow",
}
_LEVEL_FILL: Final = {
    Tier.GLOBAL: "#e1bee7",
    Tier.REGIONAL: "#b2ebf2",
    Tier.LOCAL: "#c8e6c9",
    Tier.AUTONOMOUS: "#fff9c4",
}
_GUIDE: Final = 4  # rich draws "├── " before each child
_DETAIL_LIMIT: Final = 10


def _when(milliseconds: int) -> str:
    moment = datetime.datetime.fromtimestamp(milliseconds / 1000, tz=datetime.UTC)
    return moment.strftime("%Y-%m-%d %H:%M UTC")


def _status_style(row: ScopeRow) -> str:
    nodes = row.nodes
    if nodes.total and nodes.live == nodes.total:
        return "green"
    if nodes.autonomous == nodes.total and nodes.total:
        return "yellow"
    return "red" if nodes.delayed else "yellow"


def _badges(row: ScopeRow) -> list[tuple[str, str]]:
    badges = []
    if row.autonomy is Autonomy.CONDITIONAL:
        badges.append(("[conditional]", "dim"))
    if row.air_gapped:
        badges.append(("[air-gapped]", "bold blue"))
    if row.isolated:
        badges.append(("[AUTONOMOUS]", "bold black on yellow"))
    return badges


def _badge_text(row: ScopeRow) -> str:
    return " ".join(badge for badge, _ in _badges(row))


def _label(row: ScopeRow, depth: int, widths: tuple[int, int, int, int]) -> Text:
    name_width, badge_width, nodes_width, status_width = widths
    style = LEVEL_STYLES[row.level]
    text = Text(no_wrap=True, overflow="ignore")
    text.append(row.name.ljust(name_width - depth * _GUIDE), style=style)
    text.append(f"  {row.level.value:<10}", style=style)
    if badge_width:
        text.append("  ")
        for index, (badge, badge_style) in enumerate(_badges(row)):
            text.append(" " if index else "")
            text.append(badge, style=badge_style)
        text.append(" " * (badge_width - len(_badge_text(row))))
    # "1 node " keeps the column as wide as "n nodes".
    text.append(
        f"  {row.nodes.total:>{nodes_width}} {'node ' if row.nodes.total == 1 else 'nodes'}  "
    )
    text.append(row.status.ljust(status_width), style=_status_style(row))
    text.append(f"  drift {row.nodes.drifted:<3}", style="red" if row.nodes.drifted else "")
    text.append(f"  debt {row.debt_text}")
    if row.debt is not None and row.debt.envelopes:
        plural = "s" if row.debt.envelopes != 1 else ""
        text.append(f" ({row.debt.envelopes} envelope{plural})", style="dim")
    return text


def render_tree(view: FleetView) -> Tree:
    """The view as a rich :class:`~rich.tree.Tree`, one plane per line."""
    rows = list(view.rows())
    # Pad the columns so that rows line up under rich's guides (each level indents by 4).
    widths = (
        max(len(row.name) + depth * _GUIDE for depth, row in rows),
        max(len(_badge_text(row)) for _, row in rows),
        max(len(str(row.nodes.total)) for _, row in rows),
        max(len(row.status) for _, row in rows),
    )
    header = Text(view.title, style="bold underline")
    header.append(
        f"  seen from {view.viewer} at {_when(view.now_ms)}; delayed after "
        f"{format_duration(view.delayed_after_ms)}",
        style="dim",
    )
    tree = Tree(header, guide_style="dim")
    branches: dict[int, Tree] = {-1: tree}
    for depth, row in rows:
        branches[depth] = branches[depth - 1].add(_label(row, depth, widths))
    return tree


def _details(view: FleetView) -> Text:
    text = Text()
    for _, row in view.rows():
        if row.delayed:
            shown = ", ".join(row.delayed[:_DETAIL_LIMIT])
            more = len(row.delayed) - _DETAIL_LIMIT
            text.append(f"delayed in {row.name}: {shown}")
            text.append(f" (+{more} more)\n" if more > 0 else "\n")
        for item in row.drift[:_DETAIL_LIMIT]:
            text.append(
                f"drift in {row.name}: {item.node_id} {item.collection}.{item.key} "
                f"reports {item.reported!r}, desired {item.desired!r}\n"
            )
        if len(row.drift) > _DETAIL_LIMIT:
            text.append(f"drift in {row.name}: +{len(row.drift) - _DETAIL_LIMIT} more\n")
    return text


def render_text(
    view: FleetView, *, color: bool = False, width: int = 200, details: bool = False
) -> str:
    """The view as terminal text; ``details`` lists delayed and drifted nodes under the tree."""
    buffer = io.StringIO()
    console = Console(
        file=buffer,
        width=width,
        color_system="standard" if color else None,
        force_terminal=color,
        highlight=False,
        emoji=False,
    )
    parts: list[Tree | Text] = [render_tree(view)]
    if details:
        extra = _details(view)
        if extra:
            parts.append(extra)
    console.print(Group(*parts))
    return buffer.getvalue()


# --------------------------------------------------------------------------- the sync graph


def _describe(target: SyncTarget | None, arrow: str) -> str:
    if target is None:
        return ""
    frequency = f" {target.frequency}" if target.frequency else ""
    return f"{arrow} {target.mode.value}{frequency}"


def _edge_label(link: LinkSpec, status: LinkStatus | None) -> str:
    parts = [p for p in (_describe(link.up, "up"), _describe(link.down, "down")) if p]
    if link.air_gapped:
        parts.append("bundle")
    if status is not None and not link.air_gapped and status.state is LinkState.DOWN:
        parts.append("DOWN")
    if status is not None and status.debt.envelopes:
        parts.append(f"debt {format_duration(status.debt.oldest_age_ms)}")
    return ", ".join(parts)


def _dashed(link: LinkSpec, status: LinkStatus | None) -> bool:
    return link.air_gapped or (status is not None and status.state is LinkState.DOWN)


def _mermaid_id(name: str) -> str:
    return "cp_" + name.replace("-", "_")


def mermaid(topology: Topology, links: Mapping[str, LinkStatus] | None = None) -> str:
    """The sync relationship graph as a Mermaid flowchart (edges point downstream).

    Args:
        topology: The planes and links.
        links: Optional current status by lower plane name (down links are dashed).
    """
    statuses = links or {}
    lines = ["flowchart TD"]
    for plane in topology.planes.values():
        label = f"{plane.name}<br/>{plane.level.value} · {plane.autonomy.mode.value}"
        if plane.air_gapped:
            label += " · air-gapped"
        lines.append(f'    {_mermaid_id(plane.name)}["{label}"]')
    for link in topology.links():
        status = statuses.get(link.lower)
        arrow = "-.->" if _dashed(link, status) else "-->"
        label = _edge_label(link, status).replace('"', "'")
        lines.append(f'    {_mermaid_id(link.upper)} {arrow}|"{label}"| {_mermaid_id(link.lower)}')
    lines += [f"    classDef {t.value} fill:{_LEVEL_FILL[t]},stroke:#555" for t in Tier]
    lines += [f"    class {_mermaid_id(p.name)} {p.level.value}" for p in topology.planes.values()]
    return "\n".join(lines) + "\n"


def _dot_quote(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


def dot(topology: Topology, links: Mapping[str, LinkStatus] | None = None) -> str:
    """The sync relationship graph in Graphviz DOT (edges point downstream).

    Args:
        topology: The planes and links.
        links: Optional current status by lower plane name (down links are dashed).
    """
    statuses = links or {}
    lines = [
        f"digraph {_dot_quote(topology.fleet_id)} {{",
        "    rankdir=TB;",
        '    node [shape=box, style="rounded,filled", fontname="Helvetica"];',
        '    edge [fontname="Helvetica", fontsize=10];',
    ]
    for plane in topology.planes.values():
        label = f"{plane.name}\n{plane.scope}\n{plane.level.value} · {plane.autonomy.mode.value}"
        if plane.air_gapped:
            label += "\nair-gapped"
        lines.append(
            f"    {_dot_quote(plane.name)} [label={_dot_quote(label)}, "
            f'fillcolor="{_LEVEL_FILL[plane.level]}"];'
        )
    for link in topology.links():
        status = statuses.get(link.lower)
        style = "dashed" if _dashed(link, status) else "solid"
        lines.append(
            f"    {_dot_quote(link.upper)} -> {_dot_quote(link.lower)} "
            f"[label={_dot_quote(_edge_label(link, status))}, style={style}];"
        )
    lines.append("}")
    return "\n".join(lines) + "\n"
