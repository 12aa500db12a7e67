"""Mermaid and DOT pictures: structure, escaping, status styles, speed.

Both outputs are read back by strict parsers written here (a line grammar for Mermaid, a
tokenizer and statement grammar for DOT) that reject anything the generator should never
write; labels are decoded and compared with the expected text. Where Graphviz's ``dot`` is
installed, its SVG is checked too.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dagexec import Graph
from dagexec._pictures import STATUSES, Node, format_duration, label_lines, to_dot, to_mermaid

# -- a strict Mermaid reader ----------------------------------------------------------------

_SHAPE_PAIRS = {"[": "]", "[[": "]]", "([": "])", "(": ")"}
_MERMAID_NODE = re.compile(r'    (n\d+)(\[\[|\(\[|\[|\()"([^"]*)"(\]\]|\]\)|\]|\))')
_MERMAID_EDGE = re.compile(r"    (n\d+) --> (n\d+)")
_MERMAID_CLASSDEF = re.compile(r"    classDef ([a-z]+) ([a-z-]+:[^,]+(?:,[a-z-]+:[^,]+)*)")
_MERMAID_CLASS = re.compile(r"    class (n\d+(?:,n\d+)*) ([a-z]+)")
# Inside a label: no quote, no raw character Mermaid or HTML would read, entities whole.
_MERMAID_LABEL = re.compile(r"(?:[^\"#<>&;%`$\\\n]|#(?:quot|lt|gt|amp|\d+);|<br/>)*")
_MERMAID_NAMED = {"quot": '"', "lt": "<", "gt": ">", "amp": "&"}


@dataclass
class Mermaid:
    title: str | None = None
    shapes: dict[str, str] = field(default_factory=dict)
    labels: dict[str, list[str]] = field(default_factory=dict)
    edges: list[tuple[str, str]] = field(default_factory=list)
    classdefs: dict[str, str] = field(default_factory=dict)
    classes: dict[str, str] = field(default_factory=dict)


def decode_mermaid_label(text: str) -> list[str]:
    assert _MERMAID_LABEL.fullmatch(text), f"unsafe Mermaid label {text!r}"

    def entity(m: re.Match[str]) -> str:
        name = m.group(1)
        if not name.isdigit():
            return _MERMAID_NAMED[name]
        assert not 128 <= int(name) < 160, "HTML reads &#128; to &#159; as cp1252 characters"
        return chr(int(name))

    return [re.sub(r"#(\w+);", entity, line) for line in text.split("<br/>")]


def decode_yaml_string(text: str) -> str:
    """Decode a one-line YAML double-quoted scalar as we write it: JSON's escapes plus
    YAML's ``\\UXXXXXXXX``."""
    assert text.startswith('"'), text
    assert text.isprintable(), text

    def astral(m: re.Match[str]) -> str:
        return m[1] + json.dumps(chr(int(m[2], 16)))[1:-1]

    return str(json.loads(re.sub(r"(?<!\\)((?:\\\\)*)\\U([0-9a-f]{8})", astral, text)))


def parse_mermaid(text: str) -> Mermaid:
    """Read our Mermaid subset; fail on any line outside it."""
    assert text.endswith("\n")
    lines = text[:-1].split("\n")
    out = Mermaid()
    if lines[0] == "---":
        assert lines[2] == "---"
        assert lines[1].startswith("title: ")
        out.title = decode_yaml_string(lines[1][len("title: ") :])
        lines = lines[3:]
    assert lines[0] == "flowchart TD"
    for line in lines[1:]:
        # Raw separators and format characters confuse renderers (U+2028 ends a JS line).
        assert line.isprintable(), f"raw non-printable character in {line!r}"
        if m := _MERMAID_NODE.fullmatch(line):
            nid, opening, label, closing = m.groups()
            assert _SHAPE_PAIRS[opening] == closing, line
            assert nid not in out.labels, f"{nid} declared twice"
            out.shapes[nid] = opening
            out.labels[nid] = decode_mermaid_label(label)
        elif m := _MERMAID_EDGE.fullmatch(line):
            assert m[1] in out.labels, line
            assert m[2] in out.labels, line
            out.edges.append((m[1], m[2]))
        elif m := _MERMAID_CLASSDEF.fullmatch(line):
            out.classdefs[m[1]] = m[2]
        elif m := _MERMAID_CLASS.fullmatch(line):
            assert m[2] in out.classdefs, line
            for nid in m[1].split(","):
                assert nid in out.labels, line
                assert nid not in out.classes, line
                out.classes[nid] = m[2]
        else:
            raise AssertionError(f"not valid in our Mermaid subset: {line!r}")
    return out


# -- a strict DOT reader -------------------------------------------------------------------

_DOT_TOKEN = re.compile(
    r"""(?P<ws>[ \n]+)
    | (?P<id>[A-Za-z_][A-Za-z_0-9]*)
    | (?P<num>-?(?:\d+(?:\.\d*)?|\.\d+))
    | (?P<str>"(?:[^"\\\n]|\\.)*")
    | (?P<op>->|[{}\[\];,=])""",
    re.VERBOSE,
)
_KEYWORDS = {"node", "edge", "graph", "digraph", "subgraph", "strict"}


@dataclass
class Dot:
    graph: dict[str, str] = field(default_factory=dict)
    defaults: dict[str, dict[str, str]] = field(default_factory=dict)
    nodes: dict[str, dict[str, str]] = field(default_factory=dict)
    edges: list[tuple[str, str]] = field(default_factory=list)

    def labels(self) -> dict[str, list[str]]:
        return {nid: decode_dot_string(attrs["label"]) for nid, attrs in self.nodes.items()}


def tokenize_dot(text: str) -> list[tuple[str, str]]:
    """Split DOT into (kind, text) tokens; fail on any character outside a token."""
    # Raw only where Graphviz decodes no entity: above the Basic Multilingual Plane.
    raw = [c for c in text if not c.isprintable() and c != "\n" and c <= "\uffff"]
    assert not raw, f"raw non-printable characters {raw!r}"
    tokens, pos = [], 0
    while pos < len(text):
        m = _DOT_TOKEN.match(text, pos)
        assert m, f"DOT syntax error at {text[pos : pos + 40]!r}"
        assert m.lastgroup is not None
        if m.lastgroup != "ws":
            tokens.append((m.lastgroup, m.group()))
        pos = m.end()
    return tokens


def decode_dot_string(token: str) -> list[str]:
    """Undo our escapes in a quoted DOT string, then Graphviz's entities; return the lines."""
    assert token[0] == token[-1] == '"'
    escapes = {'"': '"', "\\": "\\", "n": "\n"}

    def unescape(m: re.Match[str]) -> str:
        assert m[1] in escapes, f"escape \\{m[1]} is not ours (Graphviz reads it specially)"
        return escapes[m[1]]

    text = re.sub(r"\\(.)", unescape, token[1:-1])
    assert re.fullmatch(r"(?:[^&]|&amp;|&#\d+;)*", text, re.DOTALL), f"bare & in {text!r}"
    text = re.sub(r"&(amp|#\d+);", lambda m: "&" if m[1] == "amp" else chr(int(m[1][1:])), text)
    return text.split("\n")


def parse_dot(text: str) -> Dot:
    """Read our DOT subset with a grammar; fail on anything outside it."""
    tokens = tokenize_dot(text)
    pos = 0

    def take(kind: str, value: str | None = None) -> str:
        nonlocal pos
        got_kind, got = tokens[pos]
        assert got_kind == kind, f"expected {kind}, got {got!r}"
        assert value in (None, got), f"expected {value}, got {got!r}"
        pos += 1
        return got

    def peek(offset: int = 0) -> str:
        return tokens[pos + offset][1] if pos + offset < len(tokens) else ""

    def value() -> str:
        kind, got = tokens[pos]
        assert kind in ("id", "num", "str"), got
        return take(kind)

    def attr_list() -> dict[str, str]:
        attrs: dict[str, str] = {}
        take("op", "[")
        while peek() != "]":
            name = take("id")
            take("op", "=")
            assert name not in attrs, f"attribute {name} twice"
            attrs[name] = value()
            if peek() == ",":
                take("op", ",")
        take("op", "]")
        return attrs

    out = Dot()
    take("id", "digraph")
    take("id")
    take("op", "{")
    while peek() != "}":
        if peek() in ("node", "edge", "graph"):
            which = take("id")
            out.defaults[which] = attr_list()
        elif peek(1) == "=":
            name = take("id")
            take("op", "=")
            out.graph[name] = value()
        elif peek(1) == "->":
            source = take("id")
            take("op", "->")
            target = take("id")
            assert source in out.nodes, source
            assert target in out.nodes, target
            out.edges.append((source, target))
        else:
            nid = take("id")
            assert nid not in _KEYWORDS, nid
            assert nid not in out.nodes, nid
            out.nodes[nid] = attr_list()
        take("op", ";")
    take("op", "}")
    assert pos == len(tokens), "text after the graph"
    return out


def unquote(token: str) -> str:
    return token[1:-1] if token.startswith('"') else token


# -- helpers -------------------------------------------------------------------------------


def diamond(**run: Any) -> dict[Hashable, Node]:
    return {
        "a": Node((), "thread", "load", **run),
        "b": Node(("a",), "process", "left", **run),
        "c": Node(("a",), "inline", "right", **run),
        "d": Node(("b", "c"), "async", "join", **run),
    }


def both_labels(nodes: Mapping[Hashable, Node]) -> tuple[list[list[str]], list[list[str]]]:
    """Return the decoded labels from the Mermaid and the DOT picture, in node order."""
    mermaid = parse_mermaid(to_mermaid(nodes)).labels
    dot = parse_dot(to_dot(nodes)).labels()
    return list(mermaid.values()), list(dot.values())


NASTY_KEYS: list[tuple[Hashable, list[str]]] = [
    ('say "hi"', ['say "hi"']),
    ("back\\slash \\n \\N \\G", ["back\\slash \\n \\N \\G"]),
    ("two\nlines", ["two", "lines"]),
    ("<b>bold</b> & <br/>", ["<b>bold</b> & <br/>"]),
    ("a|b {c} [d] (e)", ["a|b {c} [d] (e)"]),
    ("#quot; #35; &amp; &#9;", ["#quot; #35; &amp; &#9;"]),
    ("x; y --> z; end", ["x; y --> z; end"]),
    ("%%{init: {'theme': 'dark'}}%%", ["%%{init: {'theme': 'dark'}}%%"]),
    ("```fence``` $$x^2$$", ["```fence``` $$x^2$$"]),
    ("naïve Ünïcödé 日本語 🚀👩‍💻", ["naïve Ünïcödé 日本語 🚀👩‍💻"]),
    ("tab\there\x00\x1b\x7f", ["tab␉here␀␛␡"]),
    ("line\u2028sep\u00a0nbsp", ["line\u2028sep\u00a0nbsp"]),
    ("tag \U000e0001 private \U0010fffd", ["tag \U000e0001 private \U0010fffd"]),
    ("c1 \x85 \x80", ["c1 \\x85 \\x80"]),
    ("lone \ud800 surrogate \uffff", ["lone \ufffd surrogate \ufffd"]),
    (("check", "a.py", 3), ["('check', 'a.py', 3)"]),
    (("q", 'say "x"'), ["('q', 'say \"x\"')"]),
    (42, ["42"]),
    (-1.5, ["-1.5"]),
    ("", [""]),
    ("end", ["end"]),
    ("graph", ["graph"]),
]


# -- structure -----------------------------------------------------------------------------


def test_mermaid_diamond_has_a_node_per_task_and_an_edge_per_dependency() -> None:
    text = to_mermaid(diamond())
    picture = parse_mermaid(text)
    assert text.startswith("flowchart TD\n")
    assert list(picture.labels) == ["n0", "n1", "n2", "n3"]
    assert picture.edges == [("n0", "n1"), ("n0", "n2"), ("n1", "n3"), ("n2", "n3")]
    assert picture.labels["n1"] == ["b", "process · left"]
    assert picture.classdefs == picture.classes == {}
    assert len(re.findall(r"^    n\d+[\[(]", text, re.MULTILINE)) == 4
    assert len(re.findall(r" --> ", text)) == 4


def test_dot_diamond_has_a_node_per_task_and_an_edge_per_dependency() -> None:
    text = to_dot(diamond())
    picture = parse_dot(text)
    assert text.startswith("digraph dagexec {\n    rankdir=TB;\n")
    assert picture.graph == {"rankdir": "TB"}
    assert picture.defaults["node"] == {
        "shape": "box",
        "style": '"rounded,filled"',
        "fillcolor": '"white"',
        "fontname": '"Helvetica"',
    }
    assert list(picture.nodes) == ["n0", "n1", "n2", "n3"]
    assert picture.edges == [("n0", "n1"), ("n0", "n2"), ("n1", "n3"), ("n2", "n3")]
    assert picture.labels()["n3"] == ["d", "async · join"]
    assert len(re.findall(r"^    n\d+ \[", text, re.MULTILINE)) == 4
    assert len(re.findall(r" -> ", text)) == 4


def test_mermaid_shape_follows_the_kind() -> None:
    picture = parse_mermaid(to_mermaid(diamond() | {"e": Node((), "other", "")}))
    assert picture.shapes == {"n0": "[", "n1": "[[", "n2": "(", "n3": "([", "n4": "["}


def test_dependencies_outside_the_mapping_are_left_out_and_repeats_drawn_once() -> None:
    nodes = {"a": Node(("elsewhere",), "thread", "f"), "b": Node(("a", "a", "gone"), "thread", "")}
    assert parse_mermaid(to_mermaid(nodes)).edges == [("n0", "n1")]
    assert parse_dot(to_dot(nodes)).edges == [("n0", "n1")]
    assert parse_dot(to_dot(nodes)).labels()["n1"] == ["b", "thread"]


def test_empty_mapping_gives_valid_empty_pictures() -> None:
    assert parse_mermaid(to_mermaid({})) == Mermaid()
    assert parse_dot(to_dot({})).nodes == {}


def test_ids_are_generated_in_insertion_order_whatever_the_keys() -> None:
    nodes = {k: Node((), "thread", "f") for k in [("t", 1), 3, "n0", "n1 --> n0"]}
    picture = parse_mermaid(to_mermaid(nodes))
    assert list(picture.labels) == ["n0", "n1", "n2", "n3"]
    assert picture.labels["n2"][0] == "n0"
    assert picture.edges == []


# -- escaping ------------------------------------------------------------------------------


@pytest.mark.parametrize(("key", "shown"), NASTY_KEYS, ids=[repr(k) for k, _ in NASTY_KEYS])
def test_nasty_keys_round_trip_through_both_pictures(key: Hashable, shown: list[str]) -> None:
    nodes = {key: Node((), "process", "parse"), "after": Node((key,), "thread", "f")}
    mermaid, dot = both_labels(nodes)
    assert mermaid[0] == dot[0] == [*shown, "process · parse"]
    assert mermaid[1] == dot[1] == ["after", "thread · f"]
    assert parse_mermaid(to_mermaid(nodes)).edges == [("n0", "n1")]
    assert parse_dot(to_dot(nodes)).edges == [("n0", "n1")]


def test_mermaid_escapes_with_entity_codes_and_breaks_lines_with_br() -> None:
    text = to_mermaid({'a "b"\n<c> #d;': Node((), "thread", "")})
    assert '    n0["a #quot;b#quot;<br/>#lt;c#gt; #35;d#59;<br/>thread"]\n' in text


def test_dot_escapes_quotes_backslashes_newlines_and_ampersands() -> None:
    text = to_dot({'a "b"\\\n&': Node((), "thread", "")})
    assert '    n0 [label="a \\"b\\"\\\\\\n&amp;\\nthread"];\n' in text


def test_fn_names_are_escaped_too() -> None:
    nodes = {"k": Node((), "thread", "make.<locals>.<lambda>")}
    mermaid, dot = both_labels(nodes)
    assert mermaid == dot == [["k", "thread · make.<locals>.<lambda>"]]


def test_long_keys_are_cut_to_60_characters_with_an_ellipsis() -> None:
    key = ("x" * 100, 1)
    lines = label_lines(key, Node((), "thread", "f"))
    assert lines[0] == repr(key)[:59] + "…"
    assert len(lines[0]) == 60
    assert both_labels({key: Node((), "thread", "f")}) == ([lines], [lines])
    short = "y" * 60
    assert label_lines(short, Node((), "thread", ""))[0] == short


def test_a_key_whose_repr_raises_still_draws() -> None:
    class Awkward:
        def __repr__(self) -> str:
            raise RuntimeError("no")

    assert label_lines(Awkward(), Node((), "thread", "")) == ["<Awkward>", "thread"]


keys = st.one_of(
    st.text(max_size=80),
    st.integers(),
    st.tuples(st.text(max_size=10), st.integers()),
    st.text(st.characters(codec="utf-8", max_codepoint=0x7F), max_size=40),
)


@settings(max_examples=300, deadline=None, database=None)
@given(st.lists(keys, max_size=6, unique=True), st.text(max_size=20))
def test_any_keys_round_trip_and_parse(key_list: list[Hashable], fn: str) -> None:
    nodes = {k: Node(tuple(key_list[:i]), "thread", fn) for i, k in enumerate(key_list)}
    mermaid, dot = both_labels(nodes)
    expected = [label_lines(k, n) for k, n in nodes.items()]
    assert mermaid == dot == expected
    for key, lines in zip(key_list, expected, strict=True):
        text = key if isinstance(key, str) else repr(key)
        if len(text) <= 60 and text.replace("\n", "").isprintable():
            assert "\n".join(lines[: text.count("\n") + 1]) == text
    edges = len(key_list) * (len(key_list) - 1) // 2
    assert len(parse_mermaid(to_mermaid(nodes)).edges) == edges
    assert len(parse_dot(to_dot(nodes)).edges) == edges


def shown(line: str) -> str:
    """Return one line of text as a label shows it (control characters as symbols)."""
    return label_lines(line, Node((), "", ""))[0]


@settings(max_examples=200, deadline=None, database=None)
@given(st.text(max_size=40))
def test_any_title_round_trips(title: str) -> None:
    lines = title.split("\n")
    assert parse_mermaid(to_mermaid({}, title=title)).title == "␊".join(map(shown, lines))
    dot = parse_dot(to_dot({}, title=title))
    assert decode_dot_string(dot.graph["label"]) == [shown(line) for line in lines]


def test_titles() -> None:
    mermaid = to_mermaid(diamond(), title='My "run"\u2028')
    assert mermaid.startswith('---\ntitle: "My \\"run\\"\\u2028"\n---\nflowchart TD\n')
    assert parse_mermaid(mermaid).title == 'My "run"\u2028'
    assert parse_mermaid(to_mermaid({}, title="a\nb")).title == "a␊b"
    dot = parse_dot(to_dot(diamond(), title='My "run"\nday 2'))
    assert decode_dot_string(dot.graph["label"]) == ['My "run"', "day 2"]
    assert dot.graph["labelloc"] == '"t"'


# -- after a run ---------------------------------------------------------------------------


def status_nodes() -> dict[Hashable, Node]:
    return {
        f"t-{status}": Node((), "thread", "f", status=status, duration=0.035 if i % 2 else None)
        for i, status in enumerate(STATUSES)
    }


def test_mermaid_classes_follow_the_status() -> None:
    picture = parse_mermaid(to_mermaid(status_nodes()))
    assert picture.classes == {
        "n0": "finished",
        "n1": "failed",
        "n2": "skipped",
        "n3": "cached",
        "n4": "cancelled",
        "n5": "notrun",
    }
    styles = {
        name: dict(p.split(":", 1) for p in css.split(","))
        for name, css in picture.classdefs.items()
    }
    assert styles["finished"]["fill"] == "#d3f9d8"
    assert styles["failed"]["stroke"] == "#c92a2a"
    assert styles["failed"]["stroke-width"] == "3px"
    assert styles["skipped"]["stroke-dasharray"] == "5 5"
    assert styles["cached"]["fill"] == "#d0ebff"
    assert styles["cancelled"]["fill"] == "#ffe8cc"
    assert styles["notrun"]["fill"] == "#ffffff"
    assert all(re.fullmatch(r"#[0-9a-f]{6}", s["color"]) for s in styles.values())


def test_mermaid_writes_styles_only_for_statuses_present() -> None:
    picture = parse_mermaid(to_mermaid(diamond(status="failed")))
    assert list(picture.classdefs) == ["failed"]
    assert set(picture.classes.values()) == {"failed"}
    assert len(picture.classes) == 4


def test_dot_colours_follow_the_status() -> None:
    nodes = parse_dot(to_dot(status_nodes())).nodes
    fills = [unquote(attrs["fillcolor"]) for attrs in nodes.values()]
    assert fills == ["#d3f9d8", "#ffe3e3", "#e9ecef", "#d0ebff", "#ffe8cc", "#ffffff"]
    assert unquote(nodes["n1"]["color"]) == "#c92a2a"
    assert float(nodes["n1"]["penwidth"]) > 1
    assert unquote(nodes["n2"]["style"]) == "rounded,filled,dashed"
    assert all("penwidth" not in a for nid, a in nodes.items() if nid != "n1")


def test_a_plain_picture_has_no_status_styles() -> None:
    assert "fillcolor" not in str(parse_dot(to_dot(diamond())).nodes)
    assert "class" not in to_mermaid(diamond())


def test_status_line_has_the_status_duration_and_attempts() -> None:
    nodes = {
        "a": Node((), "process", "parse", status="finished", duration=1.2449),
        "b": Node(("a",), "thread", "check", status="failed", duration=0.035, attempts=3),
        "c": Node(("b",), "thread", "", status="skipped"),
        "d": Node((), "async", "fetch", status="cached", duration=0.00012, attempts=1),
    }
    expected = [
        ["a", "process · parse", "finished · 1.24 s"],
        ["b", "thread · check", "failed · 35 ms \N{MULTIPLICATION SIGN}3"],
        ["c", "thread", "skipped"],
        ["d", "async · fetch", "cached · 120 µs"],
    ]
    assert both_labels(nodes) == (expected, expected)


def test_unknown_status_is_refused_naming_the_choices() -> None:
    with pytest.raises(ValueError, match=r"unknown status 'done'.*'finished'"):
        Node((), "thread", "f", status="done")


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.0, "0 s"),
        (-0.5, "0 s"),
        (float("nan"), "?"),
        (float("inf"), "?"),
        (2e-9, "0.0 µs"),
        (3.2e-6, "3.2 µs"),
        (0.00012, "120 µs"),
        (0.0009996, "1.0 ms"),
        (0.0042, "4.2 ms"),
        (0.035, "35 ms"),
        (0.9994, "999 ms"),
        (0.9996, "1.00 s"),
        (1.2449, "1.24 s"),
        (9.996, "10.0 s"),
        (42.42, "42.4 s"),
        (59.96, "1 min 00 s"),
        (125.4, "2 min 05 s"),
        (3599.6, "1 h 00 min"),
        (7384.0, "2 h 03 min"),
    ],
)
def test_durations_are_compact(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


# -- determinism and size ------------------------------------------------------------------


@pytest.mark.parametrize("render", [to_mermaid, to_dot])
def test_output_is_deterministic(render: Callable[..., str]) -> None:
    def build() -> dict[Hashable, Node]:
        nodes = status_nodes() | diamond()
        nodes[("t", frozenset({"x", "y", "z"}))] = Node(("a", "d"), "thread", "f")
        return nodes

    assert render(build(), title="t") == render(build(), title="t")


@pytest.mark.parametrize("render", [to_mermaid, to_dot])
def test_a_10000_task_chain_renders_fast(render: Callable[..., str]) -> None:
    nodes = {
        f"step:{i}": Node((f"step:{i - 1}",), "thread", "step", status="finished", duration=i / 1e4)
        for i in range(10_000)
    }
    start = time.perf_counter()
    text = render(nodes)
    elapsed = time.perf_counter() - start
    picture = parse_mermaid(text) if render is to_mermaid else parse_dot(text)
    labels = picture.labels if isinstance(picture, Mermaid) else picture.labels()
    assert len(labels) == 10_000
    assert len(picture.edges) == 9_999
    assert picture.edges[-1] == ("n9998", "n9999")
    assert elapsed < 1.0, f"{elapsed:.2f} s for 10,000 nodes"


# -- real graphs ---------------------------------------------------------------------------


def parse(path: str) -> str:
    return path


def check(tree: str, rule: str) -> str:
    return f"{tree}:{rule}"


def report(*findings: str) -> list[str]:
    return list(findings)


def nodes_of(graph: Graph) -> dict[Hashable, Node]:
    """Build the picture's input from a Graph the way the Graph methods will."""
    return {
        key: Node(deps=task.preds, kind=task.kind, fn=getattr(task.fn, "__name__", ""))
        for key, task in graph._tasks.items()
    }


def lint_graph() -> Graph:
    g = Graph()
    files = ["a.py", 'we"ird <name>.py']
    trees = {f: g.add(("parse", f), parse, f, kind="process") for f in files}
    checks = [
        g.add(("check", f, rule), check, trees[f], rule, kind="inline")
        for f in files
        for rule in ("r1", "r2")
    ]
    g.add("report", report, *checks, after=["setup"])
    g.add("setup", parse, "cfg")
    return g


def test_a_real_graph_draws_every_task_and_dependency() -> None:
    g = lint_graph()
    nodes = nodes_of(g)
    mermaid = parse_mermaid(to_mermaid(nodes))
    dot = parse_dot(to_dot(nodes))
    ids = {key: f"n{i}" for i, key in enumerate(g)}
    expected_edges = sorted(
        (ids[dep], ids[key]) for key, task in g._tasks.items() for dep in task.preds
    )
    assert len(expected_edges) == 4 + 4 + 1  # parse->check, check->report, setup->report
    assert sorted(mermaid.edges) == sorted(dot.edges) == expected_edges
    assert mermaid.labels[ids[("parse", 'we"ird <name>.py')]] == [
        "('parse', 'we\"ird <name>.py')",
        "process · parse",
    ]
    assert mermaid.labels == dot.labels()
    assert mermaid.shapes[ids["report"]] == "["
    assert mermaid.shapes[ids[("check", "a.py", "r1")]] == "("


def test_a_real_graph_after_a_run_with_statuses() -> None:
    g = lint_graph()
    outcome = dict.fromkeys(g, "finished") | {
        ("check", "a.py", "r2"): "failed",
        "report": "skipped",
    }
    nodes = {
        key: Node(node.deps, node.kind, node.fn, status=outcome[key], duration=0.5)
        for key, node in nodes_of(g).items()
    }
    mermaid = parse_mermaid(to_mermaid(nodes, title="lint"))
    ids = {key: f"n{i}" for i, key in enumerate(g)}
    assert mermaid.title == "lint"
    assert mermaid.classes[ids["report"]] == "skipped"
    assert mermaid.classes[ids[("check", "a.py", "r2")]] == "failed"
    assert list(mermaid.classes.values()).count("finished") == len(g) - 2
    assert mermaid.labels[ids["report"]] == ["report", "thread · report", "skipped · 500 ms"]


# -- Graphviz, where installed ------------------------------------------------------------


def svg_labels(svg: str) -> dict[str, list[str]]:
    """Return each node's text lines from Graphviz's SVG, by node id."""
    ns = {"svg": "http://www.w3.org/2000/svg"}
    root = ET.fromstring(svg)
    out = {}
    for group in root.iterfind(".//svg:g[@class='node']", ns):
        title = group.find("svg:title", ns)
        assert title is not None
        assert title.text is not None
        out[title.text] = [t.text or "" for t in group.iterfind("svg:text", ns)]
    return out


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz's dot is not installed")
def test_graphviz_renders_nasty_keys_as_their_text() -> None:
    # Graphviz drops leading and trailing spaces and empty lines, so those keys stay out.
    nodes: dict[Hashable, Node] = {
        key: Node((), "process", "parse", status=STATUSES[i % len(STATUSES)], duration=0.035)
        for i, (key, _) in enumerate(NASTY_KEYS)
        if key != ""
    }
    nodes["last"] = Node(tuple(nodes), "thread", "f", status="failed", attempts=2)
    done = subprocess.run(
        ["dot", "-Tsvg"],
        input=to_dot(nodes, title='a "title"').encode(),
        capture_output=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()
    assert done.stderr == b""
    shown = svg_labels(done.stdout.decode())
    expected = {f"n{i}": label_lines(k, n) for i, (k, n) in enumerate(nodes.items())}
    assert shown == expected
