"""Build time and peak memory of a 1,000,000-task dagexec graph.

What is measured
----------------
For each shape, a fresh Python subprocess (``--child``) imports everything, records a
baseline, then builds the graph with ``Graph.add`` and runs it with
``run(max_workers=2)`` (thread kind).  Tasks are no-ops that bump a call counter; the
child checks that exactly N calls were made and that every sink came back.
Shapes, N tasks in all, string keys ``f"t{i}"``:

* ``wide``:   N-1 independent tasks plus one sink ordered after all of them (``after=``
              with the list of Refs that ``add`` returned);
* ``chain``:  N tasks in a line, each taking the previous task's value;
* ``fanout``: N/10 parents, each with 9 children that take the parent's value.

Reported per shape:

* build s: wall time of the ``Graph()`` + ``add`` loop (target < 3 s at 1,000,000);
* run s:   wall time of ``run``;
* peak RSS: ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` of the child, read right after
  the imports (baseline), after the build and after the run; "per task" is
  (peak after run - baseline) / N, i.e. everything the build and the run hold at their
  high-water mark, the user's Refs and the Results included (target < 1 KiB per task).

``--variants`` adds peers for scale: ``sequential`` (a dict ``key -> (fn, deps)`` run by
a plain loop: the floor of holding a graph at all) and ``dask`` (the same graph as a dask
dict run by ``dask.threaded.get``; slow, ~100 s per shape at 1,000,000).

The garbage collector stays enabled, as in real use; ``--no-gc`` disables it in the
children, to see how much of the time is the collector's.

Run:  python bench/build_memory.py [--n 1000000] [--shape wide|chain|fanout|all]
                                   [--variants dagexec,sequential,dask] [--no-gc]
                                   [--json PATH]
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # benchmark this checkout, installed or not

SHAPES = ("wide", "chain", "fanout")
VARIANTS = ("dagexec", "sequential", "dask")
BUILD_TARGET_S = 3.0  # at 1,000,000 tasks
BYTES_TARGET = 1024  # per task

_counter = itertools.count()


def noop(*args: Any) -> None:
    next(_counter)


def maxrss_bytes() -> int:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024  # Linux reports KiB


# --------------------------------------------------------------------------- builders
# Each returns (something to run, the number of sinks); no spec list is materialised,
# so the memory measured is the library's plus what a user naturally keeps.


def build_dagexec(shape: str, n: int) -> tuple[Any, int]:
    import dagexec

    g = dagexec.Graph()
    if shape == "wide":
        refs = [g.add(f"t{i}", noop) for i in range(n - 1)]
        g.add("sink", noop, after=refs)
        return g, 1
    if shape == "chain":
        r = g.add("t0", noop)
        for i in range(1, n):
            r = g.add(f"t{i}", noop, r)
        return g, 1
    for p in range(n // 10):
        r = g.add(f"t{p}", noop)
        for c in range(9):
            g.add(f"t{p}.{c}", noop, r)
    return g, n // 10 * 9


def run_dagexec(g: Any) -> dict[Any, Any]:
    return dict(g.run(max_workers=2))


def build_dict(shape: str, n: int) -> tuple[dict[str, Any], int]:
    """The same graph as ``key -> (noop, *dep keys)`` (dask's tuple spec; the floor)."""
    if shape == "wide":
        dsk: dict[str, Any] = {f"t{i}": (noop,) for i in range(n - 1)}
        dsk["sink"] = (noop, list(dsk))  # dask has no ordering-only edge: pass the list
        return dsk, 1
    if shape == "chain":
        dsk = {"t0": (noop,)}
        dsk.update((f"t{i}", (noop, f"t{i - 1}")) for i in range(1, n))
        return dsk, 1
    dsk = {}
    for p in range(n // 10):
        dsk[f"t{p}"] = (noop,)
        dsk.update((f"t{p}.{c}", (noop, f"t{p}")) for c in range(9))
    return dsk, n // 10 * 9


def sinks_of(dsk: dict[str, Any]) -> list[str]:
    used = {
        k for _, *deps in dsk.values() for d in deps for k in (d if isinstance(d, list) else [d])
    }
    return [k for k in dsk if k not in used]


def run_sequential(dsk: dict[str, Any]) -> dict[Any, Any]:
    values: dict[str, Any] = {}
    for key, (fn, *deps) in dsk.items():  # built in topological order
        args = [[values[k] for k in d] if isinstance(d, list) else values[d] for d in deps]
        values[key] = fn(*args)
    return {k: values[k] for k in sinks_of(dsk)}


def run_dask(dsk: dict[str, Any]) -> dict[Any, Any]:
    import dask.threaded

    sinks = sinks_of(dsk)
    return dict(zip(sinks, dask.threaded.get(dsk, sinks, num_workers=2), strict=True))


IMPLS = {
    "dagexec": (build_dagexec, run_dagexec),
    "sequential": (build_dict, run_sequential),
    "dask": (build_dict, run_dask),
}


def child(variant: str, shape: str, n: int, no_gc: bool) -> dict[str, Any]:
    build, run = IMPLS[variant]
    if variant == "dagexec":
        import dagexec  # noqa: F401  (imports count in the baseline)
    elif variant == "dask":
        import dask.threaded  # noqa: F401
    gc.collect()
    if no_gc:
        gc.disable()
    base = maxrss_bytes()
    t0 = time.perf_counter()
    graph, n_sinks = build(shape, n)
    t1 = time.perf_counter()
    after_build = maxrss_bytes()
    results = run(graph)
    t2 = time.perf_counter()
    peak = maxrss_bytes()
    calls = next(_counter)
    errors = []
    if calls != n:
        errors.append(f"{calls} calls for {n} tasks")
    if len(results) != n_sinks:
        errors.append(f"{len(results)} results for {n_sinks} sinks")
    return {
        "variant": variant,
        "shape": shape,
        "n": n,
        "build_s": t1 - t0,
        "run_s": t2 - t1,
        "baseline_rss": base,
        "peak_rss_after_build": after_build,
        "peak_rss": peak,
        "bytes_per_task": (peak - base) / n,
        "build_bytes_per_task": (after_build - base) / n,
        "errors": errors,
    }


def measure(variant: str, shape: str, n: int, timeout: float, no_gc: bool) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--child", "--variants", variant, "--shape", shape]
    cmd += ["--n", str(n)] + (["--no-gc"] if no_gc else [])
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return {
            "variant": variant,
            "shape": shape,
            "n": n,
            "errors": [f"timed out ({timeout:g} s)"],
        }
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-1:] or [f"exit {proc.returncode}"]
        sys.stderr.write(proc.stderr)
        return {"variant": variant, "shape": shape, "n": n, "errors": [f"child failed: {tail[0]}"]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def print_table(results: list[dict[str, Any]]) -> None:
    mib = 1024 * 1024
    print(
        "| shape | N | variant | build s | run s | baseline RSS MiB | peak after build MiB "
        "| peak after run MiB | **bytes/task** (build / build+run) | note |"
    )
    print("|---|---:|---|---:|---:|---:|---:|---:|---:|---|")
    for r in results:
        if "peak_rss" not in r:
            print(
                f"| {r['shape']} | {r['n']:,} | {r['variant']} | | | | | | | **{r['errors'][0]}** |"
            )
            continue
        note = [f"**MISMATCH: {'; '.join(r['errors'])}**"] if r["errors"] else []
        if r["variant"] == "dagexec":
            scale = r["n"] / 1_000_000  # the build target is stated for 1,000,000 tasks
            over_t = r["build_s"] > BUILD_TARGET_S * scale
            note.append(f"**build OVER {BUILD_TARGET_S * scale:g} s**" if over_t else "build ok")
            over_m = r["bytes_per_task"] > BYTES_TARGET
            note.append(f"**memory OVER {BYTES_TARGET} B/task**" if over_m else "memory ok")
        print(
            f"| {r['shape']} | {r['n']:,} | {r['variant']} | {r['build_s']:.2f} | {r['run_s']:.2f} "
            f"| {r['baseline_rss'] / mib:.1f} | {r['peak_rss_after_build'] / mib:.1f} "
            f"| {r['peak_rss'] / mib:.1f} "
            f"| {r['build_bytes_per_task']:.0f} / **{r['bytes_per_task']:.0f}** | {', '.join(note)} |"
        )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--n", type=lambda s: int(s.replace("_", "")), default=1_000_000)
    ap.add_argument("--shape", choices=[*SHAPES, "all"], default="all")
    ap.add_argument("--variants", default="dagexec", help=f"comma-separated from {VARIANTS}")
    ap.add_argument("--timeout", type=float, default=900, help="seconds per child")
    ap.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    ap.add_argument(
        "--no-gc", action="store_true", help="disable the cyclic garbage collector (diagnostic)"
    )
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    variants = args.variants.split(",")
    for v in variants:
        if v not in VARIANTS:
            ap.error(f"unknown variant {v!r}; choose from {', '.join(VARIANTS)}")
    shapes = list(SHAPES) if args.shape == "all" else [args.shape]

    if args.child:
        print(json.dumps(child(variants[0], shapes[0], args.n, args.no_gc)))
        return 0

    print(f"## Build time and peak memory, N = {args.n:,} (fresh process per row)")
    print()
    print(f"- Python {sys.version.split()[0]} on {sys.platform}; thread kind, 2 workers")
    print(f"- garbage collector: {'DISABLED (--no-gc)' if args.no_gc else 'enabled'}")
    print(f"- targets (dagexec): build < {BUILD_TARGET_S:g} s per 1,000,000 tasks,")
    print(f"  peak RSS growth < {BYTES_TARGET} bytes/task")
    print()
    results = []
    for shape in shapes:
        for v in variants:
            r = measure(v, shape, args.n, args.timeout, args.no_gc)
            results.append(r)
            print(f"  {shape:6} {v:10} {r.get('errors') or 'ok'}", file=sys.stderr, flush=True)
    print_table(results)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 1 if any(r["errors"] for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
