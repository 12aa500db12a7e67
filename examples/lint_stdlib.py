"""Lint the whole standard library: parse each file once, run every rule on its tree.

Every ``.py`` file of the running Python's standard library (about 2,000 files, test
suites included) is read and parsed once; each rule then runs on that tree as a task of
its own. The same job runs three ways and must produce identical findings:

::

    sequential   for each file: parse, then every rule              (one core, the floor)

    staged       stage 1: pool.map(parse_file, files)  -- barrier: every tree is held --
                 stage 2: pool.map(check, pairs, trees)      (concurrent.futures, by hand)

    dagexec      map_shared(check, pairs, shared=parse_file, key=path)
                 parse:a ──▶ check (a, rule) x 8     a file's checks start the moment its
                 parse:b ──▶ check (b, rule) x 8     tree exists; a tree is dropped once
                 ...                                 its last check has finished

With process pools both parallel variants pay for the same thing: each tree is pickled
back from the worker that parsed it and sent again with each of its checks. The staged
variant also waits for the slowest parse before any check starts, and holds every tree
at once.

What to expect: a tree takes about as long to unpickle as its source takes to parse, and
longer than any one rule takes to run, so on a few cores both process variants are
several times slower than the sequential loop; shipping trees is the cost this example
exposes. With threads (one GIL) nothing runs in parallel, but holding every tree, as the
staged variant does (over 1 GB for the standard library), makes the garbage collector's
full passes walk them all, again and again: dagexec, which drops each tree after its
last check, stays close to the sequential time and well ahead of the staged one.

Glossary:
    pair     ``(path, rule)``: one task of the second stage.
    Finding  ``(path, rule_name, lineno, message)``: plain data, sortable, cheap to pickle.
    rule     a module-level function ``rule(tree) -> Iterable[(lineno, message)]``.

A file that does not parse (a few test files are broken on purpose) is one finding of
the pseudo-rule ``unparseable``, reported by the task of the first rule.

Process workers get this module's functions by reference (module and function name),
the cheap way; run as a script, it imports itself as ``lint_stdlib`` for that. Imported
from another script, it must be in ``sys.modules`` for ``run_staged`` (``import
lint_stdlib`` with ``examples/`` on ``sys.path``, or the importlib recipe that registers
the module before ``exec_module``); ``run_dagexec`` falls back to sending the functions
by value when the workers could not import them.

Run:  python examples/lint_stdlib.py [--kind process|thread] [--workers N] [--limit N]
                                     [--repeats N] [--no-sequential] [--json PATH]
"""

from __future__ import annotations

import argparse
import ast
import builtins
import importlib.machinery
import json
import operator
import os
import platform
import sys
import sysconfig
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import cloudpickle
import psutil

import dagexec

Finding = tuple[str, str, int, str]
Rule = Callable[[ast.Module], Iterable[tuple[int, str]]]
Pair = tuple[str, str]  # (path, rule name): a name travels to a worker in a few bytes

UNPARSEABLE = "unparseable"
MAX_STATEMENTS = 50

_FUNCTIONS = (ast.FunctionDef, ast.AsyncFunctionDef)
# Bound by the ``site`` module, not the language: shadowing them is harmless.
_SITE_NAMES = frozenset({"copyright", "credits", "exit", "help", "license", "quit"})
_BUILTINS = frozenset(n for n in dir(builtins) if not n.startswith("_")) - _SITE_NAMES
_MUTABLE_LITERALS = {
    ast.List: "list",
    ast.Dict: "dict",
    ast.Set: "set",
    ast.ListComp: "list comprehension",
    ast.DictComp: "dict comprehension",
    ast.SetComp: "set comprehension",
}
_MUTABLE_CALLS = frozenset({"list", "dict", "set", "bytearray"})


# -- files -----------------------------------------------------------------------------


def stdlib_files(limit: int | None = None) -> list[str]:
    """Return the sorted paths of the standard library's ``.py`` files.

    Test suites are included, ``site-packages`` is not.

    Args:
        limit: keep only the first ``limit`` paths (quick runs).
    """
    root = Path(sysconfig.get_paths()["stdlib"])
    files: list[str] = []
    for folder, dirs, names in os.walk(root):
        dirs[:] = [d for d in dirs if d not in ("site-packages", "__pycache__")]
        files.extend(os.path.join(folder, n) for n in names if n.endswith(".py"))
    files.sort()
    return files if limit is None else files[:limit]


def parse_file(path: str) -> ast.Module | None:
    """Read and parse one file; return None if it does not parse.

    The bytes go to the parser as they are, so it honours the file's coding cookie.
    """
    source = Path(path).read_bytes()
    try:
        return ast.parse(source, filename=path)
    except (
        SyntaxError,
        UnicodeDecodeError,
        ValueError,
    ):  # ValueError: a NUL byte, on older Pythons
        return None


# -- rules -----------------------------------------------------------------------------


def bare_except(tree: ast.Module) -> Iterator[tuple[int, str]]:
    """Find ``except:`` clauses, which also catch SystemExit and KeyboardInterrupt."""
    for node in ast.walk(tree):
        if isinstance(node, ast.ExceptHandler) and node.type is None:
            yield node.lineno, "bare 'except:'; name the exceptions (or 'except Exception:')"


def mutable_default(tree: ast.Module) -> Iterator[tuple[int, str]]:
    """Find default argument values that are mutable, shared by every call.

    Mutable means a list, dict or set display or comprehension, or a call of ``list``,
    ``dict``, ``set`` or ``bytearray`` (by name: a rebound ``list`` is not noticed).
    Positional, keyword-only and lambda defaults are all checked.
    """
    for node in ast.walk(tree):
        if not isinstance(node, (*_FUNCTIONS, ast.Lambda)):
            continue
        args = node.args
        positional = args.posonlyargs + args.args
        named = list(
            zip(positional[len(positional) - len(args.defaults) :], args.defaults, strict=True)
        )
        named += [
            (a, d) for a, d in zip(args.kwonlyargs, args.kw_defaults, strict=True) if d is not None
        ]
        for arg, default in named:
            what = _mutable(default)
            if what is not None:
                yield default.lineno, f"argument {arg.arg!r} has a mutable default ({what})"


def _mutable(node: ast.expr) -> str | None:
    what = _MUTABLE_LITERALS.get(type(node))
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
        what = f"{node.func.id}()" if node.func.id in _MUTABLE_CALLS else None
    return what


def unused_import(tree: ast.Module) -> Iterator[tuple[int, str]]:
    """Find names imported at module level that the module never uses.

    Simplifications (no scopes are tracked):

    * an import is module level when no ``def`` or ``class`` encloses it; imports in
      module-level ``if``/``try``/``with`` blocks count; ``import a.b`` binds ``a``;
    * a use is any ``Name`` read or deleted anywhere in the module (the root of ``a.b.c``
      is the Name ``a``), so a local of the same name elsewhere hides an unused import;
    * a string in a module-level ``__all__`` (assigned, ``+=``, ``.extend``, ``.append``)
      is a use; names in string annotations and doctests are not;
    * skipped: ``from __future__``, ``import *``, the explicit re-export idiom
      ``import a as a`` / ``from m import a as a``, and dunder names such as
      ``from _decimal import __doc__`` (module attributes, used by being there).
    """
    imported: list[tuple[str, int]] = []
    for node in _module_level(tree.body):
        if isinstance(node, ast.ImportFrom) and node.module == "__future__":
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            for alias in node.names:
                bound = alias.asname or alias.name.partition(".")[0]
                if alias.name == "*" or alias.asname == alias.name or _is_dunder(bound):
                    continue
                imported.append((bound, node.lineno))
    if not imported:
        return
    used = {
        n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and not isinstance(n.ctx, ast.Store)
    }
    used.update(_dunder_all(tree.body))
    for name, lineno in imported:
        if name not in used:
            yield lineno, f"{name!r} imported but unused"


def _module_level(body: list[ast.stmt]) -> Iterator[ast.stmt]:
    """Yield the statements of ``body`` and of its blocks, not entering defs or classes."""
    for stmt in body:
        yield stmt
        if isinstance(stmt, (*_FUNCTIONS, ast.ClassDef)):
            continue
        for child in ast.iter_child_nodes(stmt):
            if isinstance(child, ast.stmt):
                yield from _module_level([child])
            elif isinstance(child, (ast.ExceptHandler, ast.match_case)):
                yield from _module_level(child.body)


def _dunder_all(body: list[ast.stmt]) -> Iterator[str]:
    for stmt in _module_level(body):
        value: ast.expr | None = None
        if (isinstance(stmt, ast.Assign) and any(_is_all(t) for t in stmt.targets)) or (
            isinstance(stmt, (ast.AugAssign, ast.AnnAssign)) and _is_all(stmt.target)
        ):
            value = stmt.value
        elif (
            isinstance(stmt, ast.Expr)
            and isinstance(stmt.value, ast.Call)
            and isinstance(stmt.value.func, ast.Attribute)
            and _is_all(stmt.value.func.value)
            and stmt.value.func.attr in ("extend", "append")
        ):
            value = ast.Tuple(elts=stmt.value.args)
        if value is not None:
            for node in ast.walk(value):
                if isinstance(node, ast.Constant) and isinstance(node.value, str):
                    yield node.value


def _is_dunder(name: str) -> bool:
    return len(name) > 4 and name.startswith("__") and name.endswith("__")


def _is_all(node: ast.expr) -> bool:
    return isinstance(node, ast.Name) and node.id == "__all__"


def long_function(tree: ast.Module, limit: int = MAX_STATEMENTS) -> Iterator[tuple[int, str]]:
    """Find functions with more than ``limit`` statements.

    Statements are counted recursively through every block (``if``, loops, ``try``
    with its handlers, ``with``, ``match`` cases). A nested ``def`` or ``class`` counts
    as one statement of its parent; its own body is judged on its own.
    """
    for node in ast.walk(tree):
        if isinstance(node, _FUNCTIONS):
            count = _count_statements(node.body)
            if count > limit:
                yield node.lineno, f"function {node.name!r} has {count} statements (> {limit})"


def _count_statements(body: list[ast.stmt]) -> int:
    count = 0
    for stmt in body:
        count += 1
        if isinstance(stmt, (*_FUNCTIONS, ast.ClassDef)):
            continue
        for child in ast.iter_child_nodes(stmt):
            if isinstance(child, ast.stmt):
                count += _count_statements([child])
            elif isinstance(child, (ast.ExceptHandler, ast.match_case)):
                count += _count_statements(child.body)
    return count


class _Shadowing(ast.NodeVisitor):
    """Collect bindings of builtin names, except those made directly in a class body."""

    def __init__(self) -> None:
        self.found: list[tuple[int, str]] = []
        self._in_class = False

    def _bind(self, name: str | None, node: ast.AST, what: str) -> None:
        if name in _BUILTINS and not self._in_class:
            self.found.append((getattr(node, "lineno", 0), f"{what} {name!r} shadows a builtin"))

    def _scope(self, node: ast.AST, in_class: bool) -> None:
        outer, self._in_class = self._in_class, in_class
        try:
            self.generic_visit(node)
        finally:
            self._in_class = outer

    def visit_FunctionDef(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        self._bind(node.name, node, "function")
        # Decorators, defaults and annotations belong to the enclosing scope; only the
        # bindings below matter, and the parameters are bound in the function's scope.
        self._scope(node, in_class=False)

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_Lambda(self, node: ast.Lambda) -> None:
        self._scope(node, in_class=False)

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        self._bind(node.name, node, "class")
        self._scope(node, in_class=True)

    def _comprehension(self, node: ast.AST) -> None:
        self._scope(node, in_class=False)

    visit_ListComp = visit_SetComp = visit_DictComp = visit_GeneratorExp = _comprehension

    def visit_arg(self, node: ast.arg) -> None:
        self._bind(node.arg, node, "parameter")
        self.generic_visit(node)

    def visit_Name(self, node: ast.Name) -> None:
        if isinstance(node.ctx, ast.Store):
            self._bind(node.id, node, "variable")

    def visit_ExceptHandler(self, node: ast.ExceptHandler) -> None:
        self._bind(node.name, node, "exception name")
        self.generic_visit(node)

    def visit_MatchAs(self, node: ast.MatchAs) -> None:
        self._bind(node.name, node, "capture pattern")
        self.generic_visit(node)

    def visit_MatchStar(self, node: ast.MatchStar) -> None:
        self._bind(node.name, node, "capture pattern")


def shadowed_builtin(tree: ast.Module) -> list[tuple[int, str]]:
    """Find variables, parameters, functions and classes named like a builtin.

    Builtins are the public names of the ``builtins`` module, less those ``site`` adds
    (``exit``, ``help``, ...). Names bound directly in a class body (methods and class
    attributes such as ``def format(self)``) are attributes, not shadows, and are
    skipped; ``import`` and ``global`` statements are not checked.
    """
    visitor = _Shadowing()
    visitor.visit(tree)
    return visitor.found


def none_comparison(tree: ast.Module) -> Iterator[tuple[int, str]]:
    """Find ``== None`` and ``!= None`` (None on either side, also in a chain)."""
    for node in ast.walk(tree):
        if not isinstance(node, ast.Compare):
            continue
        left = node.left
        for op, right in zip(node.ops, node.comparators, strict=True):
            if isinstance(op, (ast.Eq, ast.NotEq)) and (_is_none(left) or _is_none(right)):
                better = "is" if isinstance(op, ast.Eq) else "is not"
                yield node.lineno, f"comparison with None; use {better!r}"
            left = right


def _is_none(node: ast.expr) -> bool:
    return isinstance(node, ast.Constant) and node.value is None


def assert_tuple(tree: ast.Module) -> Iterator[tuple[int, str]]:
    """Find ``assert (condition, message)``: a non-empty tuple is always true."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Assert) and isinstance(node.test, ast.Tuple) and node.test.elts:
            yield node.lineno, "assert on a tuple is always true; drop the parentheses"


def fstring_without_placeholders(tree: ast.Module) -> Iterator[tuple[int, str]]:
    """Find f-strings with no ``{...}`` placeholder.

    The format spec of a placeholder (``>10`` in ``f"{x:>10}"``) is itself an f-string
    node in the tree; it is not an f-string of the source and is skipped.
    """
    specs: set[int] = set()
    # ast.walk is breadth first: a placeholder is seen before its format spec.
    for node in ast.walk(tree):
        if isinstance(node, ast.FormattedValue) and node.format_spec is not None:
            specs.add(id(node.format_spec))
        elif (
            isinstance(node, ast.JoinedStr)
            and id(node) not in specs
            and not any(isinstance(v, ast.FormattedValue) for v in node.values)
        ):
            yield node.lineno, "f-string without placeholders; drop the 'f' prefix"


RULES: tuple[Rule, ...] = (
    bare_except,
    mutable_default,
    unused_import,
    long_function,
    shadowed_builtin,
    none_comparison,
    assert_tuple,
    fstring_without_placeholders,
)
RULES_BY_NAME: dict[str, Rule] = {rule.__name__: rule for rule in RULES}


def check(pair: Pair, tree: ast.Module | None) -> list[Finding]:
    """Run one rule (by name) on one file's tree; return its findings.

    A tree of None (the file does not parse) is one ``unparseable`` finding, reported by
    the first rule only so that it counts once per file.
    """
    path, name = pair
    if tree is None:
        first = name == RULES[0].__name__
        return [(path, UNPARSEABLE, 0, "file does not parse")] if first else []
    return [(path, name, lineno, message) for lineno, message in RULES_BY_NAME[name](tree)]


def pairs_of(files: list[str]) -> list[Pair]:
    """Return every (file, rule name) pair, file by file."""
    return [(path, rule.__name__) for path in files for rule in RULES]


# -- runners ---------------------------------------------------------------------------


def run_sequential(files: list[str]) -> list[Finding]:
    """Lint ``files`` in this thread, one after the other; return the sorted findings."""
    findings: list[Finding] = []
    for path in files:
        tree = parse_file(path)
        for rule in RULES:
            findings += check((path, rule.__name__), tree)
    return sorted(findings)


def run_staged(files: list[str], workers: int, executor: str = "process") -> list[Finding]:
    """Lint ``files`` as two stages over one concurrent.futures pool; sorted findings.

    Stage 1 parses every file and holds all the trees; stage 2 maps every (file, rule)
    check over the pool, each tree passed as an argument. This is the usual hand-written
    way, and the baseline for ``run_dagexec``.

    Args:
        files: the paths to lint.
        workers: the pool's size.
        executor: "process" (ProcessPoolExecutor) or "thread" (ThreadPoolExecutor).
    """
    pool: Executor
    if executor == "process":
        _check_registered()
        pool = ProcessPoolExecutor(max_workers=workers)
    elif executor == "thread":
        pool = ThreadPoolExecutor(max_workers=workers)
    else:
        raise ValueError(f"executor must be 'process' or 'thread', not {executor!r}")
    pairs = pairs_of(files)
    with pool:
        trees = list(pool.map(parse_file, files))
        per_pair = [tree for tree in trees for _ in RULES]
        results = list(pool.map(check, pairs, per_pair))
    return sorted(finding for found in results for finding in found)


def run_dagexec(
    files: list[str],
    workers: int,
    kind: str = "process",
    shared_kind: str | None = None,
    progress: bool | str = False,
) -> list[Finding]:
    """Lint ``files`` with ``dagexec.map_shared``; return the sorted findings.

    Each file is parsed once (the shared value, keyed by path) and each of its checks
    starts as soon as that tree exists.

    Args:
        files: the paths to lint.
        workers: the pool size of each kind.
        kind: where the checks run ("process", "thread" or "inline").
        shared_kind: where the parses run; None means the same as ``kind``.
        progress: show a progress bar (``True``: when stderr is a terminal).
    """
    if "process" in (kind, shared_kind):
        _send_by_value_unless_importable()
    results = dagexec.map_shared(
        check,
        pairs_of(files),
        shared=parse_file,
        key=operator.itemgetter(0),
        kind=kind,
        shared_kind=shared_kind or kind,
        max_workers=workers,
        progress=progress,
    )
    return sorted(finding for found in results for finding in found)


def run_graph(
    files: list[str],
    workers: int,
    kind: str = "process",
    progress: bool | str = False,
    cache: dagexec.DiskCache | None = None,
) -> tuple[list[Finding], dagexec.Results]:
    """Lint ``files`` with a ``dagexec.Graph``: a parse task per file, a check task per
    (file, rule) reading it. Return the sorted findings and the run's Results, whose
    ``stats`` say where the time went (``stats.to_chrome_trace(path)`` for Perfetto).
    With a ``cache``, a task whose value it holds is not run again.
    """
    if kind == "process":
        _send_by_value_unless_importable()
    g = dagexec.Graph(default_kind=kind)
    stdlib = sysconfig.get_paths()["stdlib"]
    for path in files:
        name = os.path.relpath(path, stdlib)  # short keys read better in the trace
        tree = g.add(f"parse {name}", parse_file, path)
        for rule in RULES:
            g.add(f"{rule.__name__} {name}", check, (path, rule.__name__), tree)
    results = g.run(max_workers=workers, progress=progress, cache=cache)
    return sorted(finding for found in results.values() for finding in found), results


# -- process workers -------------------------------------------------------------------


def _check_registered() -> None:
    """Raise unless pickle can find this module's functions by name in ``sys.modules``."""
    module = sys.modules.get(__name__)
    if module is None or vars(module) is not globals():
        raise RuntimeError(
            f"process workers get this module's functions by name, but {__name__!r} is not "
            "this module in sys.modules; import it by name, or set "
            "sys.modules[spec.name] = module before spec.loader.exec_module(module)"
        )


def _send_by_value_unless_importable() -> None:
    """Have cloudpickle send this module's functions by value if workers cannot import it.

    dagexec's process workers (loky) start fresh with the parent's ``sys.path``: a
    module registered in ``sys.modules`` but loaded from a folder that is not on that
    path, or under another name, cannot be imported there. (cloudpickle sends functions
    of ``__main__`` and of unregistered modules by value anyway.) By value, every task
    carries the functions it needs, about 1 ms and 24 kB more per task: the fallback.
    """
    module = sys.modules.get(__name__)
    if __name__ == "__main__" or module is None or vars(module) is not globals():
        return
    spec = importlib.machinery.PathFinder.find_spec(__name__)
    origin = spec.origin if spec is not None else None
    if origin is None or not os.path.samefile(origin, __file__):
        cloudpickle.register_pickle_by_value(module)


# -- main ------------------------------------------------------------------------------


def _timed(runner: Callable[[], list[Finding]], repeats: int) -> tuple[list[Finding], list[float]]:
    """Run ``runner`` ``repeats`` times; return its last findings and every wall time."""
    walls = []
    findings: list[Finding] = []
    for _ in range(repeats):
        started = time.perf_counter()
        findings = runner()
        walls.append(time.perf_counter() - started)
    return findings, walls


def _summary(files: list[str], findings: list[Finding]) -> None:
    per_rule = Counter(rule for _, rule, _, _ in findings)
    files_per_rule = Counter(rule for _, rule in {(path, rule) for path, rule, _, _ in findings})
    print(f"{len(files)} files, {per_rule[UNPARSEABLE]} unparseable")
    print(f"{len(findings) - per_rule[UNPARSEABLE]} findings from {len(RULES)} rules:")
    messages = Counter((rule, message) for _, rule, _, message in findings)
    top: dict[str, str] = {}
    for (rule, message), count in messages.most_common():
        top.setdefault(rule, f"{message} ({count}x)")
    print(f"  {'rule':30} {'findings':>8} {'files':>6}  most frequent")
    for rule in [r.__name__ for r in RULES]:
        print(f"  {rule:30} {per_rule[rule]:8} {files_per_rule[rule]:6}  {top.get(rule, '')}")


def _print_walls(best: dict[str, float], staged: str, repeats: int) -> None:
    print(f"\nwall time, best of {repeats}:")
    print(f"  {'variant':24} {'seconds':>8} {'/ staged':>9} {'/ sequential':>13}")
    for name, wall in best.items():
        seq = f"{wall / best['sequential']:13.2f}" if "sequential" in best else f"{'-':>13}"
        print(f"  {name:24} {wall:8.2f} {wall / best[staged]:9.2f} {seq}")


def _first_difference(a: list[Finding], b: list[Finding]) -> str:
    for x, y in zip(a, b, strict=False):
        if x != y:
            return f"{x!r} != {y!r}"
    return f"{len(a)} findings != {len(b)} findings"


def main(argv: list[str] | None = None) -> int:
    """Lint the standard library three ways, print the findings and the wall times.

    Returns:
        0, or 1 if the variants' findings differ.
    """
    default_workers = psutil.cpu_count(logical=False) or os.cpu_count() or 1
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kind", choices=["process", "thread"], default="process")
    parser.add_argument("--workers", type=int, default=default_workers)
    parser.add_argument("--limit", type=int, default=None, help="lint only the first N files")
    parser.add_argument("--repeats", type=int, default=1, help="time each variant N times")
    parser.add_argument("--no-sequential", action="store_true", help="skip the sequential run")
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    parser.add_argument(
        "--progress", action="store_true", help="show progress bars (on a terminal)"
    )
    parser.add_argument(
        "--trace",
        type=Path,
        default=None,
        help="also lint with a dagexec.Graph; write its Chrome trace (Perfetto) here",
    )
    parser.add_argument(
        "--cache",
        type=Path,
        default=None,
        help="also lint with a dagexec.Graph twice on this (emptied) cache: cold, then warm",
    )
    args = parser.parse_args(argv)

    files = stdlib_files(args.limit)
    print(f"linting {sysconfig.get_paths()['stdlib']} with {args.workers} {args.kind} workers")
    variants: dict[str, Callable[[], list[Finding]]] = {}
    if not args.no_sequential:
        variants["sequential"] = lambda: run_sequential(files)
    variants[f"staged ({args.kind} pool)"] = lambda: run_staged(files, args.workers, args.kind)
    variants[f"dagexec ({args.kind})"] = lambda: run_dagexec(
        files, args.workers, args.kind, progress=args.progress
    )

    findings: dict[str, list[Finding]] = {}
    walls: dict[str, list[float]] = {}
    for name, runner in variants.items():
        findings[name], walls[name] = _timed(runner, args.repeats)
    reference_name, reference = next(iter(findings.items()))
    _summary(files, reference)

    best = {name: min(times) for name, times in walls.items()}
    _print_walls(best, f"staged ({args.kind} pool)", args.repeats)

    differ = [name for name, found in findings.items() if found != reference]
    for name in differ:
        print(
            f"MISMATCH: {name} vs {reference_name}: {_first_difference(findings[name], reference)}"
        )
    if not differ:
        same = f"the same {len(reference)} findings (unparseable files included)"
        print(f"\nall {len(findings)} variants found {same}")

    if args.trace is not None:
        found, results = run_graph(files, args.workers, args.kind, progress=args.progress)
        if found != reference:
            differ.append("dagexec graph")
            print(f"MISMATCH: dagexec graph vs {reference_name}")
        results.stats.to_chrome_trace(args.trace)
        print(f"\nthe same lint as a dagexec.Graph ({len(results.stats.tasks)} tasks):")
        print(results.stats)
        print(f"trace written to {args.trace} (open it in https://ui.perfetto.dev)")

    if args.cache is not None:
        cache = dagexec.DiskCache(args.cache)
        cache.clear()
        walls_cache = []
        for _ in ("cold", "warm"):
            started = time.perf_counter()
            found, results = run_graph(files, args.workers, args.kind, args.progress, cache)
            walls_cache.append(time.perf_counter() - started)
            if found != reference:
                differ.append("dagexec graph (cache)")
                print(f"MISMATCH: dagexec graph with a cache vs {reference_name}")
        cold, warm = walls_cache
        print(
            f"\ncache: cold {cold:.2f} s ({len(cache)} entries, {cache.size_bytes() / 1e6:.1f} MB), "
            f"warm {warm:.2f} s ({results.stats.tasks_cached} targets from the cache, "
            f"{results.stats.tasks_run} tasks run): {cold / warm:.1f}x"
        )

    if args.json is not None:
        per_rule = Counter(rule for _, rule, _, _ in reference)
        report = {
            "python": platform.python_version(),
            "files": len(files),
            "unparseable": per_rule.pop(UNPARSEABLE, 0),
            "findings": sum(per_rule.values()),
            "per_rule": dict(sorted(per_rule.items())),
            "kind": args.kind,
            "workers": args.workers,
            "repeats": args.repeats,
            "wall_s": walls,
            "best_s": best,
            "identical": not differ,
        }
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 1 if differ else 0


if __name__ == "__main__":
    # As "__main__", cloudpickle would send this module's functions by value with every
    # dagexec task, and plain pickle by reference: run the copy importable by name, so
    # that both variants send references.
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import lint_stdlib

    sys.exit(lint_stdlib.main())
