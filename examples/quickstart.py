"""Parse each file once, run several checks on each parse, and summarise: the shape
dagexec is for.

Every ``.py`` file of the running Python's ``json`` and ``email`` packages is read and
parsed once in a process worker (``ast.parse`` is CPU-bound Python); four checks per file
run on threads as soon as that file's tree exists, with no stage barrier; a report task
collects them. The parse count shows that shared work ran exactly once per file.

Run:  python examples/quickstart.py
"""

from __future__ import annotations

import ast
import json
import sys
import time
from collections import Counter
from pathlib import Path

import dagexec


def parse(path: str) -> ast.Module:
    return ast.parse(Path(path).read_text(encoding="utf-8"), filename=path)


def bare_excepts(tree: ast.Module) -> int:
    return sum(isinstance(n, ast.ExceptHandler) and n.type is None for n in ast.walk(tree))


def mutable_defaults(tree: ast.Module) -> int:
    mutable = (ast.List, ast.Dict, ast.Set)
    return sum(
        isinstance(d, mutable)
        for n in ast.walk(tree)
        if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
        for d in n.args.defaults
    )


def long_functions(tree: ast.Module, limit: int = 50) -> int:
    return sum(
        len(n.body) > limit
        for n in ast.walk(tree)
        if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
    )


def none_comparisons(tree: ast.Module) -> int:
    return sum(
        isinstance(n, ast.Compare)
        and any(isinstance(op, (ast.Eq, ast.NotEq)) for op in n.ops)
        and any(isinstance(c, ast.Constant) and c.value is None for c in n.comparators)
        for n in ast.walk(tree)
    )


CHECKS = [bare_excepts, mutable_defaults, long_functions, none_comparisons]


def report(findings: dict[str, int]) -> Counter[str]:
    totals: Counter[str] = Counter()
    for key, count in findings.items():
        totals[key.rsplit(":", 1)[1]] += count
    return totals


def main() -> int:
    stdlib = Path(json.__file__).parent.parent
    files = sorted(str(p) for pkg in ("json", "email") for p in (stdlib / pkg).rglob("*.py"))
    g = dagexec.Graph()
    checks = {}
    for path in files:
        name = Path(path).relative_to(stdlib).as_posix()  # keys: short and readable
        tree = g.add(f"parse:{name}", parse, path, kind="process")
        for check in CHECKS:
            checks[f"{name}:{check.__name__}"] = g.add(f"{name}:{check.__name__}", check, tree)
    g.add("report", report, checks)  # a dict of Refs: the task receives a dict of values

    started = time.perf_counter()
    results = g.run(progress=True)  # a live bar on stderr when it is a terminal
    wall = time.perf_counter() - started

    print(f"{len(files)} files, {len(CHECKS)} checks each, {len(g)} tasks in {wall:.2f} s")
    print(results.stats)  # where the time went: busy time, critical path, top tasks
    for check, count in sorted(results["report"].items()):
        print(f"  {check:18} {count:4} findings")
    # Each parse ran once however many checks needed it; the intermediate trees were
    # released as soon as their last check finished (only the report is returned).
    assert results.stats.tasks_run == len(g), results.stats
    assert list(results) == ["report"]
    return 0


if __name__ == "__main__":
    sys.exit(main())
