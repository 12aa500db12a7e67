r"""Pictures of a graph, before or after a run: Mermaid and Graphviz DOT text.

Pure string building, no threads; ``Graph.to_dot()``/``to_mermaid()`` and the same
methods on ``Results`` turn their tasks into ``Node``s and call ``to_dot``/``to_mermaid``.

Mapping::

    nodes: {key: Node(deps, kind, fn, status, duration, attempts)}
      key       -> id ``n0``, ``n1``, ... in insertion order (keys never appear as ids)
      Node      -> one box, labelled with up to three lines:
                     the key (a str as-is, anything else as its repr; cut at 60 chars)
                     kind · fn                      e.g. "process · parse"
                     status · duration              after a run, e.g. "failed · 35 ms",
                                                    then a times sign and the attempts if > 1
      dep in deps -> an edge ``dep -> key`` (deps that are not in ``nodes`` are left out)
      status    -> fill colour (Mermaid ``classDef`` + ``class`` lines, DOT attributes)
      kind      -> Mermaid shape: thread box, process subroutine ``[[ ]]``, inline
                   rounded ``( )``, async stadium ``([ ])``

Escaping. First, for both: C0 control characters show as their symbols from the U+2400
block, C1 ones as ``\x85``, surrogates and non-characters as U+FFFD. Mermaid: labels are quoted
(``n0["..."]``); ``"`` becomes ``#quot;``, other ASCII outside a small safe set (``#`` ``%``
``&`` ``<`` ``>`` ``;`` ``$`` backtick backslash) and non-printable characters become
Mermaid entity codes (``#35;``, ``#lt;``, ...), and a line break is ``<br/>``. DOT: labels
are double-quoted; a backslash becomes ``\\``, ``"`` becomes ``\"``, a line break ``\n``,
``&`` becomes ``&amp;`` (Graphviz decodes HTML entities in labels) and a non-printable
character ``&#N;`` (above U+FFFF, where Graphviz decodes no entity, it stays as it is).

Output is deterministic and built by joining lists, so 10,000 nodes take milliseconds
(Mermaid renderers themselves refuse graphs past a few hundred edges by default).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._graph import _Task

__all__ = [
    "STATUSES",
    "Node",
    "fn_name",
    "format_duration",
    "graph_nodes",
    "label_lines",
    "to_dot",
    "to_mermaid",
]

#: Statuses a node can have after a run, in the order their styles are written.
STATUSES: tuple[str, ...] = ("finished", "failed", "skipped", "cached", "cancelled", "not run")

_MAX_KEY = 60


@dataclass(frozen=True, slots=True)
class Node:
    """One task as drawn: edges come from ``deps``; status fields are None before a run."""

    deps: tuple[Hashable, ...]
    kind: str
    fn: str
    status: str | None = None
    duration: float | None = None
    attempts: int = 1

    def __post_init__(self) -> None:
        if self.status is not None and self.status not in _STYLES:
            raise ValueError(f"unknown status {self.status!r}; choose one of {list(STATUSES)}")


@dataclass(frozen=True, slots=True)
class _Style:
    css: str  # Mermaid classDef body
    dot: str  # DOT node attributes


# Light fills with dark text: readable on light and dark page themes alike.
_STYLES: dict[str, _Style] = {
    "finished": _Style(
        "fill:#d3f9d8,stroke:#2b8a3e,color:#212529",
        'fillcolor="#d3f9d8", color="#2b8a3e"',
    ),
    "failed": _Style(
        "fill:#ffe3e3,stroke:#c92a2a,stroke-width:3px,color:#212529",
        'fillcolor="#ffe3e3", color="#c92a2a", penwidth=2.5',
    ),
    "skipped": _Style(
        "fill:#e9ecef,stroke:#868e96,stroke-dasharray:5 5,color:#495057",
        'fillcolor="#e9ecef", color="#868e96", style="rounded,filled,dashed", fontcolor="#495057"',
    ),
    "cached": _Style(
        "fill:#d0ebff,stroke:#1971c2,color:#212529",
        'fillcolor="#d0ebff", color="#1971c2"',
    ),
    "cancelled": _Style(
        "fill:#ffe8cc,stroke:#e8590c,color:#212529",
        'fillcolor="#ffe8cc", color="#e8590c"',
    ),
    "not run": _Style(
        "fill:#ffffff,stroke:#adb5bd,color:#495057",
        'fillcolor="#ffffff", color="#adb5bd", fontcolor="#495057"',
    ),
}

# Mermaid class names must be identifiers.
_CLASS = {status: status.replace(" ", "") for status in STATUSES}

_SHAPES: dict[str, tuple[str, str]] = {
    "process": ('[["', '"]]'),
    "inline": ('("', '")'),
    "async": ('(["', '"])'),
}
_BOX = ('["', '"]')

# ASCII kept as-is inside a quoted Mermaid label; everything else ASCII is an entity code.
_MERMAID_SAFE = frozenset(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 _-.,:/()[]{}'!?+=*@^~|"
)
_MERMAID_NAMED = {'"': "#quot;", "<": "#lt;", ">": "#gt;", "&": "#amp;"}


def format_duration(seconds: float) -> str:
    """Return ``seconds`` compactly: ``120 µs``, ``35 ms``, ``1.24 s``, ``2 min 05 s``."""
    if not math.isfinite(seconds):
        return "?"
    if seconds <= 0:
        return "0 s"
    for value, unit in ((seconds * 1e6, "µs"), (seconds * 1e3, "ms")):
        if value < 999.5:
            return f"{value:.1f} {unit}" if value < 9.95 else f"{value:.0f} {unit}"
    if seconds < 9.995:
        return f"{seconds:.2f} s"
    if seconds < 59.95:
        return f"{seconds:.1f} s"
    whole = round(seconds)
    if whole < 3600:
        return f"{whole // 60} min {whole % 60:02d} s"
    return f"{whole // 3600} h {whole % 3600 // 60:02d} min"


def label_lines(key: Hashable, node: Node) -> list[str]:
    """Return the label's lines as shown, before escaping: key, ``kind · fn``, status info."""
    if isinstance(key, str):
        text = key
    else:
        try:
            text = repr(key)
        except Exception:  # a user's __repr__ must not break a picture
            text = f"<{type(key).__name__}>"
    if len(text) > _MAX_KEY:
        text = text[: _MAX_KEY - 1] + "…"
    lines = text.split("\n")
    lines.append(f"{node.kind} · {node.fn}" if node.fn else node.kind)
    if node.status is not None:
        info = node.status
        if node.duration is not None:
            info += f" · {format_duration(node.duration)}"
        if node.attempts > 1:
            info += f" \N{MULTIPLICATION SIGN}{node.attempts}"
        lines.append(info)
    return [_visible(line) for line in lines]


def _visible(line: str) -> str:
    """Return ``line`` with control characters visible (C0 as their U+2400 symbols, C1 as
    ``\\x85``), and surrogates and non-characters, which no renderer can encode, as U+FFFD."""
    if line.isprintable():
        return line
    return "".join([c if c.isprintable() else _visible_char(ord(c)) for c in line])


def _visible_char(code: int) -> str:
    if code < 0x20:
        return chr(0x2400 + code)
    if code == 0x7F:
        return "\N{SYMBOL FOR DELETE}"
    if code < 0xA0:  # C1 controls: an HTML &#128; shows cp1252's euro sign, so spell them out
        return f"\\x{code:02x}"
    if 0xD800 <= code < 0xE000 or 0xFDD0 <= code < 0xFDF0 or code & 0xFFFE == 0xFFFE:
        return "\N{REPLACEMENT CHARACTER}"
    return chr(code)  # left to the escaping: spaces, format characters, private use


_MERMAID_TABLE = {
    i: _MERMAID_NAMED.get(chr(i), f"#{i};") for i in range(128) if chr(i) not in _MERMAID_SAFE
}
_DOT_TABLE = {ord("\\"): "\\\\", ord('"'): '\\"', ord("&"): "&amp;"} | {
    i: f"&#{i};" for i in (*range(32), 127)
}


def _escape(line: str, table: Mapping[int, str], entity: str, raw: str = "\U0010ffff") -> str:
    """Escape ``line``'s ASCII by ``table``, then write the non-printable characters left as
    ``entity``, those above ``raw`` as they are."""
    line = line.translate(table)
    if line.isprintable():
        return line
    return "".join([c if c.isprintable() or c > raw else entity.format(ord(c)) for c in line])


# Graphviz (2.42) decodes numeric entities only in the Basic Multilingual Plane.
_ASTRAL = "\uffff"


def _mermaid_text(lines: list[str]) -> str:
    return "<br/>".join([_escape(line, _MERMAID_TABLE, "#{};") for line in lines])


def _dot_text(lines: list[str]) -> str:
    return "\\n".join([_escape(line, _DOT_TABLE, "&#{};", _ASTRAL) for line in lines])


def _yaml_string(text: str) -> str:
    """Return ``text`` as a one-line YAML double-quoted scalar (JSON's escapes are YAML's)."""
    quoted = json.dumps(text, ensure_ascii=False)
    if quoted.isprintable():
        return quoted
    return "".join(
        [
            c if c.isprintable() else f"\\u{ord(c):04x}" if ord(c) < 0x10000 else f"\\U{ord(c):08x}"
            for c in quoted
        ]
    )


def _ids(nodes: Mapping[Hashable, Node]) -> dict[Hashable, str]:
    return {key: f"n{i}" for i, key in enumerate(nodes)}


def _edges(nodes: Mapping[Hashable, Node], ids: Mapping[Hashable, str]) -> list[tuple[str, str]]:
    """Return (dep id, node id) pairs in node order, each once."""
    edges: list[tuple[str, str]] = []
    for key, node in nodes.items():
        target = ids[key]
        for dep in dict.fromkeys(node.deps):
            source = ids.get(dep)
            if source is not None:
                edges.append((source, target))
    return edges


def to_mermaid(nodes: Mapping[Hashable, Node], *, title: str | None = None) -> str:
    """Return a Mermaid ``flowchart`` of ``nodes``, coloured by status where they have one."""
    ids = _ids(nodes)
    out: list[str] = []
    if title is not None:
        out += ["---", f"title: {_yaml_string(_visible(title))}", "---"]
    out.append("flowchart TD")
    groups: dict[str, list[str]] = {}
    for key, node in nodes.items():
        nid = ids[key]
        opening, closing = _SHAPES.get(node.kind, _BOX)
        out.append(f"    {nid}{opening}{_mermaid_text(label_lines(key, node))}{closing}")
        if node.status is not None:
            groups.setdefault(node.status, []).append(nid)
    out += [f"    {source} --> {target}" for source, target in _edges(nodes, ids)]
    for status in STATUSES:
        if status in groups:
            out.append(f"    classDef {_CLASS[status]} {_STYLES[status].css}")
    for status in STATUSES:
        if status in groups:
            out.append(f"    class {','.join(groups[status])} {_CLASS[status]}")
    return "\n".join(out) + "\n"


def to_dot(nodes: Mapping[Hashable, Node], *, title: str | None = None) -> str:
    """Return a Graphviz DOT ``digraph`` of ``nodes``, coloured by status where they have one."""
    ids = _ids(nodes)
    out = ["digraph dagexec {", "    rankdir=TB;"]
    if title is not None:
        title_text = _dot_text([_visible(line) for line in title.split("\n")])
        out.append(f'    label="{title_text}"; labelloc="t"; fontname="Helvetica";')
    out.append(
        '    node [shape=box, style="rounded,filled", fillcolor="white", fontname="Helvetica"];'
    )
    for key, node in nodes.items():
        attrs = f'label="{_dot_text(label_lines(key, node))}"'
        if node.status is not None:
            attrs += ", " + _STYLES[node.status].dot
        out.append(f"    {ids[key]} [{attrs}];")
    out += [f"    {source} -> {target};" for source, target in _edges(nodes, ids)]
    out.append("}")
    return "\n".join(out) + "\n"


def fn_name(fn: Callable[..., Any]) -> str:
    """A task function's name for a label: its qualified name, or its type's name."""
    name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None)
    return name if isinstance(name, str) else type(fn).__name__


def graph_nodes(
    tasks: Mapping[Hashable, _Task], keys: Iterable[Hashable] | None = None
) -> dict[Hashable, Node]:
    """The ``Node`` of each task (of ``keys``, default all), with no run status."""
    return {
        key: Node(tasks[key].preds, tasks[key].kind, fn_name(tasks[key].fn))
        for key in (tasks if keys is None else keys)
    }
