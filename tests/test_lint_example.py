"""examples/lint_stdlib.py: each rule on crafted snippets, parsing, and the three runners.

The rules are tested on small sources with cases that must and must not be found; the
runners are compared end to end on a few standard library files (plus a broken one),
so a scheduling bug that loses, duplicates or misattributes a finding fails here.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import subprocess
import sys
import sysconfig
import textwrap
from collections.abc import Callable, Iterable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

pytestmark = pytest.mark.timeout(60)

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "lint_stdlib.py"


def _load() -> ModuleType:
    # Registered before exec_module, as the example asks: process pools pickle its
    # functions by reference to this name.
    spec = importlib.util.spec_from_file_location("lint_stdlib", EXAMPLE)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


lint = _load()

Rule = Callable[[ast.Module], Iterable[tuple[int, str]]]


def found(rule: Rule, source: str) -> list[tuple[int, str]]:
    """Return ``rule``'s findings on ``source``, sorted."""
    return sorted(rule(ast.parse(textwrap.dedent(source))))


def lines(rule: Rule, source: str) -> list[int]:
    return [lineno for lineno, _ in found(rule, source)]


# -- rules -------------------------------------------------------------------------------


def test_rules_are_module_level_and_distinct() -> None:
    names = [rule.__name__ for rule in lint.RULES]
    assert len(names) >= 6
    assert len(set(names)) == len(names)
    assert lint.UNPARSEABLE not in names
    for rule in lint.RULES:
        assert getattr(lint, rule.__name__) is rule  # plain pickle finds it by name


def test_bare_except() -> None:
    source = """
        try:
            pass
        except:
            pass
        try:
            pass
        except Exception:
            pass
        except (KeyError, ValueError) as e:
            pass
        try:
            pass
        except* OSError:
            pass
        def f():
            try:
                pass
            except:
                raise
    """
    assert lines(lint.bare_except, source) == [4, 19]


def test_mutable_default_positional_keyword_only_and_lambda() -> None:
    source = """
        def f(a, b=[], c=(), *, d={}, e, g=set(), h=None):
            pass
        async def k(p, /, q=list(), r=dict(x=1), s=frozenset()):
            pass
        m = lambda x={k: 1 for k in ()}, y="": x
        def ok(a=None, b=0, c="s", d=(1, 2), *args, e=tuple(), **kwargs):
            pass
    """
    messages = [m for _, m in found(lint.mutable_default, source)]
    assert messages == [
        "argument 'b' has a mutable default (list)",
        "argument 'd' has a mutable default (dict)",
        "argument 'g' has a mutable default (set())",
        "argument 'q' has a mutable default (list())",
        "argument 'r' has a mutable default (dict())",
        "argument 'x' has a mutable default (dict comprehension)",
    ]


def test_mutable_default_names_the_argument_the_default_belongs_to() -> None:
    # Defaults align with the last positional parameters, across positional-only ones.
    source = """
        def f(a, b, /, c, d=[]):
            pass
        def g(a, b=0, /, c={}):
            pass
    """
    messages = [m for _, m in found(lint.mutable_default, source)]
    assert messages == [
        "argument 'd' has a mutable default (list)",
        "argument 'c' has a mutable default (dict)",
    ]


def test_unused_import() -> None:
    source = """
        from __future__ import annotations
        import os
        import sys
        import xml.dom
        import os.path as osp
        from json import dumps as to_json, loads
        from typing import *
        import re as re
        from _decimal import __doc__
        from a import exported, listed, appended
        try:
            import zlib
        except ImportError:
            zlib = None
        __all__ = ["exported"]
        __all__ += ["listed"]
        __all__.append("appended")

        def f():
            import json  # not module level: not checked
            return sys.argv, to_json
    """
    messages = [m for _, m in found(lint.unused_import, source)]
    assert messages == [
        "'os' imported but unused",
        "'xml' imported but unused",
        "'osp' imported but unused",
        "'loads' imported but unused",
        "'zlib' imported but unused",
    ]


def test_unused_import_counts_the_root_of_an_attribute_and_any_scope() -> None:
    source = """
        import os.path
        import collections
        class C:
            def m(self):
                return os.path.join(collections.abc.__name__)
    """
    assert found(lint.unused_import, source) == []


def test_long_function_counts_nested_blocks_but_not_nested_definitions() -> None:
    def body(n: int, indent: str) -> str:
        return "".join(f"{indent}x{i} = {i}\n" for i in range(n))

    # 1 (if) + 48 + 1 (else body) = 50 statements: at the limit, not over it.
    at_limit = "def at_limit():\n    if c:\n" + body(48, " " * 8) + "    else:\n        y = 1\n"
    # 1 (try) + 47 + 1 (handler body) + 1 (finally body) + 1 (return) = 51.
    over = (
        "def over():\n    try:\n"
        + body(47, " " * 8)
        + "    except E:\n        y = 1\n    finally:\n        z = 1\n    return z\n"
    )
    # The inner function is long; the outer one has 2 statements (the def, the return).
    nested = "def outer():\n    def inner():\n" + body(60, " " * 8) + "    return inner\n"
    source = at_limit + over + nested
    messages = [m for _, m in found(lint.long_function, source)]
    assert messages == [
        "function 'over' has 51 statements (> 50)",
        "function 'inner' has 60 statements (> 50)",
    ]
    assert [m for _, m in lint.long_function(ast.parse(at_limit), limit=49)] == [
        "function 'at_limit' has 50 statements (> 49)"
    ]


def test_shadowed_builtin() -> None:
    source = """
        list = []
        async def open():
            pass
        def max(id, *args, input=None, **vars):
            for type in args:
                pass
            with open(id) as file, ctx() as hash:
                pass
            if (len := 3):
                pass
            try:
                pass
            except OSError as iter:
                pass
            return [sum for sum in args], lambda min: min
        class str:
            pass
        match x:
            case [*filter, map]:
                pass
    """
    messages = [m for _, m in found(lint.shadowed_builtin, source)]
    assert sorted(messages) == sorted(
        [
            "variable 'list' shadows a builtin",
            "function 'open' shadows a builtin",
            "function 'max' shadows a builtin",
            "parameter 'id' shadows a builtin",
            "parameter 'input' shadows a builtin",
            "parameter 'vars' shadows a builtin",
            "variable 'type' shadows a builtin",
            "variable 'hash' shadows a builtin",
            "variable 'len' shadows a builtin",
            "exception name 'iter' shadows a builtin",
            "variable 'sum' shadows a builtin",
            "parameter 'min' shadows a builtin",
            "class 'str' shadows a builtin",
            "capture pattern 'filter' shadows a builtin",
            "capture pattern 'map' shadows a builtin",
        ]
    )


def test_shadowed_builtin_skips_class_attributes_site_names_and_non_bindings() -> None:
    source = """
        class A:
            id = 1
            def format(self, spec):
                self.list = []
                return print(list=1)
            def copy(self, type):  # a parameter of a method still shadows
                pass
            async def aclose(self, object):
                pass
        exit = quit = copyright = 0
        del dict
        print(any)
    """
    assert [m for _, m in found(lint.shadowed_builtin, source)] == [
        "parameter 'type' shadows a builtin",
        "parameter 'object' shadows a builtin",
    ]


def test_none_comparison_either_side_and_in_chains() -> None:
    source = """
        a == None
        None != a
        a < b == None
        a == b == c
        a is None
        None in a
        a == "None"
        None < a == b
        a != None != b
    """
    assert found(lint.none_comparison, source) == [
        (2, "comparison with None; use 'is'"),
        (3, "comparison with None; use 'is not'"),
        (4, "comparison with None; use 'is'"),
        (10, "comparison with None; use 'is not'"),
        (10, "comparison with None; use 'is not'"),
    ]


def test_assert_tuple() -> None:
    source = """
        assert (x, "message")
        assert x, "message"
        assert ()
        assert (x)
    """
    assert lines(lint.assert_tuple, source) == [2]


def test_fstring_without_placeholders_ignores_format_specs() -> None:
    source = """
        f"plain"
        f"{x}"
        f"{x:>10}"
        f"{x:{width}.{precision}}"
        f"{x!r:^{w}}" f"tail"
        "{x}" f"no placeholder"
        f"{f'inner'}"
        "not an f-string"
    """
    assert lines(lint.fstring_without_placeholders, source) == [2, 7, 8]


# -- files and check -----------------------------------------------------------------------


def test_parse_file(tmp_path: Path) -> None:
    good = tmp_path / "good.py"
    good.write_bytes(b"# -*- coding: latin-1 -*-\nx = '\xe9'\n")
    tree = lint.parse_file(str(good))
    assert isinstance(tree, ast.Module)
    assert ast.literal_eval(tree.body[0].value) == "\xe9"  # the coding cookie was honoured
    broken = {
        "syntax.py": b"def f(:\n",
        "nul.py": b"x = 1\x00\n",
        "cookie.py": b"# -*- coding: no-such-codec -*-\nx = 1\n",
        "bytes.py": b"x = '\xff'\n",
    }
    for name, data in broken.items():
        (tmp_path / name).write_bytes(data)
        assert lint.parse_file(str(tmp_path / name)) is None, name


def test_check_reports_an_unparseable_file_once(tmp_path: Path) -> None:
    path = str(tmp_path / "x.py")
    reported = [f for rule in lint.RULES for f in lint.check((path, rule.__name__), None)]
    assert reported == [(path, lint.UNPARSEABLE, 0, "file does not parse")]
    tree = ast.parse("try:\n    pass\nexcept:\n    pass\n")
    assert lint.check((path, "bare_except"), tree) == [
        (path, "bare_except", 3, "bare 'except:'; name the exceptions (or 'except Exception:')")
    ]


def test_stdlib_files() -> None:
    files = lint.stdlib_files()
    assert len(files) > 500
    assert files == sorted(files)
    assert all(f.endswith(".py") for f in files)
    assert not any("site-packages" in f for f in files)
    assert any(f.endswith("/ast.py") for f in files)
    assert any("/test/" in f for f in files)  # test suites are included
    assert lint.stdlib_files(limit=7) == files[:7]


# -- runners -------------------------------------------------------------------------------


# Small modules with findings of several rules between them (3.11 has all of these).
_CANDIDATES = [
    "asyncio/runners.py",
    "bdb.py",
    "calendar.py",
    "cmd.py",
    "code.py",
    "dis.py",
    "fnmatch.py",
    "ftplib.py",
    "getopt.py",
    "getpass.py",
    "gettext.py",
    "graphlib.py",
    "imp.py",
    "mailcap.py",
    "mimetypes.py",
    "netrc.py",
    "pstats.py",
    "shlex.py",
    "timeit.py",
    "urllib/robotparser.py",
    "wave.py",
]


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """About 20 standard library files that each have findings, and one that does not parse.

    Every file has a finding, so a runner that loses a file's checks is caught.
    """
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    picked = [str(stdlib / c) for c in _CANDIDATES if (stdlib / c).exists()]
    picked = [f for f in picked if lint.run_sequential([f])]
    broken = tmp_path_factory.mktemp("lint") / "broken.py"
    broken.write_text("def f(:\n")
    assert len(picked) >= 18
    return [*picked, str(broken)]


@pytest.fixture(scope="module")
def expected(files: list[str]) -> list[tuple[str, str, int, str]]:
    findings: list[tuple[str, str, int, str]] = lint.run_sequential(files)
    assert findings == sorted(findings)
    assert {path for path, _, _, _ in findings} == set(files)
    rules = {rule for _, rule, _, _ in findings}
    assert len(rules - {lint.UNPARSEABLE}) >= 5
    assert lint.UNPARSEABLE in rules
    return findings


@pytest.mark.parametrize("kind", ["thread", "process"])
def test_run_dagexec_finds_what_sequential_finds(
    kind: str, files: list[str], expected: list[tuple[str, str, int, str]]
) -> None:
    assert lint.run_dagexec(files, 2, kind=kind) == expected


@pytest.mark.parametrize("executor", ["thread", "process"])
def test_run_staged_finds_what_sequential_finds(
    executor: str, files: list[str], expected: list[tuple[str, str, int, str]]
) -> None:
    assert lint.run_staged(files, 2, executor=executor) == expected


def test_run_staged_rejects_an_unknown_executor() -> None:
    with pytest.raises(ValueError, match="'fibers'"):
        lint.run_staged([], 2, executor="fibers")


def test_main_prints_the_summary_and_writes_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "lint.json"
    assert (
        lint.main(["--kind", "thread", "--workers", "2", "--limit", "12", "--json", str(out)]) == 0
    )
    printed = capsys.readouterr().out
    report = json.loads(out.read_text())
    assert report["files"] == 12
    assert report["identical"] is True
    assert set(report["best_s"]) == {"sequential", "staged (thread pool)", "dagexec (thread)"}
    assert f"{report['findings']} findings from {len(lint.RULES)} rules" in printed
    assert "all 3 variants found the same" in printed


def test_main_fails_when_the_variants_disagree(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def one_more(files: list[str], workers: int, kind: str = "process", **_: Any) -> list[object]:
        return [*lint.run_sequential(files), (files[0], "bare_except", 1, "not there")]

    monkeypatch.setattr(lint, "run_dagexec", one_more)
    assert lint.main(["--kind", "thread", "--workers", "2", "--limit", "12"]) == 1
    assert "MISMATCH: dagexec (thread) vs sequential" in capsys.readouterr().out


def test_runs_as_a_script_with_process_workers(tmp_path: Path) -> None:
    out = tmp_path / "lint.json"
    command = [sys.executable, str(EXAMPLE), "--workers", "2", "--limit", "8", "--json", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(out.read_text())
    assert report["identical"] is True
    assert set(report["best_s"]) == {"sequential", "staged (process pool)", "dagexec (process)"}


def test_trace_runs_the_lint_as_a_graph_and_writes_a_perfetto_trace(tmp_path: Path) -> None:
    trace = tmp_path / "lint-trace.json"
    command = [sys.executable, str(EXAMPLE), "--workers", "2", "--limit", "6", "--kind"]
    command += ["thread", "--no-sequential", "--progress", "--trace", str(trace)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "MISMATCH" not in done.stdout
    assert "critical path:" in done.stdout
    events = json.loads(trace.read_text())["traceEvents"]
    ran = [e for e in events if e["ph"] == "X"]
    assert len(ran) == 6 * (1 + len(lint.RULES))  # a parse and a check per rule per file
    assert {e["name"].split()[0] for e in ran} == {"parse", *(r.__name__ for r in lint.RULES)}


def test_run_staged_needs_the_module_registered(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("lint_unregistered", EXAMPLE)
    assert spec is not None
    assert spec.loader is not None
    unregistered = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(unregistered)  # not in sys.modules: pickle cannot find it
    with pytest.raises(RuntimeError, match=r"sys\.modules\[spec\.name\] = module"):
        unregistered.run_staged([str(EXAMPLE)], 2)
    assert unregistered.run_staged([str(EXAMPLE)], 2, executor="thread") == lint.run_sequential(
        [str(EXAMPLE)]
    )
