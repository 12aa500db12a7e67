"""Per-task scheduling overhead of dagexec next to its peers, on no-op tasks.

What is measured
----------------
Every task is ``noop(*args)``: it only bumps a shared call counter (``next()`` on an
``itertools.count``, atomic under the GIL) and returns ``None``, so what is left is the
cost of the scheduler itself.  Three graph shapes of exactly N tasks each:

* ``wide``:   N-1 independent tasks, plus one sink that depends on all of them
              (ordering-only: ``after=`` in dagexec, a list argument in dask);
* ``chain``:  N tasks in a line, each taking the previous task's value as argument;
* ``fanout``: N/10 parents, each with 9 children that take the parent's value.

The shape is first generated as a plain list of ``(key, value_deps, after_deps)`` in
topological order (not timed).  Each variant then does, with the ``thread`` kind / 2
worker threads where it has workers:

* ``build``: turn that list into the variant's own structures (``Graph.add`` calls, the
  dask graph dict, the ``TopologicalSorter``; nothing for ``sequential``);
* ``run``:   execute the graph and get the sinks' values back.

The headline figure is ``us/task = (build + run wall time) / N``.  Each (variant, shape,
N) runs in a fresh subprocess that imports only what that variant needs, so one
variant's imports and leftovers never grow the heap another one's garbage collector
walks; inside it the variant runs ``--repeats`` times with ``gc.collect()`` in between.  The garbage collector stays enabled while timing, as in real use (``--no-gc``
turns it off for the whole benchmark, to see how much of the time is the collector's).
The repeat with the median total is reported.  Every run checks that exactly N calls
were made and that the sinks came back, and reports a MISMATCH loudly (exit status 1)
otherwise.

Variants:

1. ``sequential``:   a plain Python loop over the list, calling each task with the
                     values of its dependencies held in a dict (the floor);
2. ``graphlib+TPE``: ``graphlib.TopologicalSorter`` + ``ThreadPoolExecutor(2)``, ready
                     tasks submitted as they appear, completions fed back through a
                     queue (``add_done_callback``) -- a hand-written ~30-line scheduler;
3. ``dask.threaded``: ``dask.threaded.get(dsk, sinks, num_workers=2)`` on a graph dict
                     with tuple task specs ``(noop, dep, ...)``;
4. ``dagexec``:      ``dagexec.Graph`` built with ``add``, run with ``run(max_workers=2)``.

The project's target is a dagexec *run* overhead <= 10 us/task on every shape (building
the graph has its own target, 1,000,000 ``add`` calls in under 3 s, measured by
``bench/build_memory.py``); dagexec rows whose run column is above it are marked OVER.
The peers' comparison uses the total (build + run), the fair figure across variants.

Run:  python bench/overhead.py [--quick] [--sizes 10000,100000] [--repeats 3]
                               [--variants sequential,graphlib+TPE,dask.threaded,dagexec]
                               [--shapes wide,chain,fanout] [--no-gc] [--json PATH]
"""

from __future__ import annotations

import argparse
import faulthandler
import gc
import importlib.metadata
import itertools
import json
import os
import platform
import queue
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from graphlib import TopologicalSorter
from pathlib import Path
from typing import Any

# Benchmark the checkout this script lives in, installed or not.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

TARGET_US = 10.0
SHAPES = ("wide", "chain", "fanout")
WORKERS = 2

Spec = list[tuple[str, tuple[str, ...], tuple[str, ...]]]  # (key, value deps, after deps)

_counter = itertools.count()


def noop(*args: Any) -> None:
    next(_counter)


def reset_counter() -> None:
    global _counter
    _counter = itertools.count()


def calls_made() -> int:
    return next(_counter)  # count() yields 0, 1, ...: the next value is the number of calls


# --------------------------------------------------------------------------- shapes


def make_spec(shape: str, n: int) -> Spec:
    """The graph as ``(key, value_deps, after_deps)`` in topological order, exactly n tasks."""
    if shape == "wide":
        leaves = [f"t{i}" for i in range(n - 1)]
        return [(k, (), ()) for k in leaves] + [("sink", (), tuple(leaves))]
    if shape == "chain":
        return [("t0", (), ())] + [(f"t{i}", (f"t{i - 1}",), ()) for i in range(1, n)]
    if shape == "fanout":
        spec: Spec = []
        for p in range(n // 10):
            spec.append((f"p{p}", (), ()))
            spec.extend((f"c{p}.{c}", (f"p{p}",), ()) for c in range(9))
        return spec
    raise ValueError(shape)


def sinks_of(spec: Spec) -> list[str]:
    used = {d for _, deps, after in spec for d in (*deps, *after)}
    return [key for key, _, _ in spec if key not in used]


# --------------------------------------------------------------------------- variants
# Each variant takes the spec and returns (build_s, run_s, sink values as a dict).


def run_sequential(spec: Spec) -> tuple[float, float, dict[str, Any]]:
    t0 = time.perf_counter()
    values: dict[str, Any] = {}
    for key, deps, _after in spec:
        values[key] = noop(*[values[d] for d in deps])
    return 0.0, time.perf_counter() - t0, values


def run_graphlib_tpe(spec: Spec) -> tuple[float, float, dict[str, Any]]:
    t0 = time.perf_counter()
    ts: TopologicalSorter[str] = TopologicalSorter()
    args_of = {}
    for key, deps, after in spec:
        ts.add(key, *deps, *after)
        args_of[key] = deps
    t1 = time.perf_counter()
    values: dict[str, Any] = {}
    done_q: queue.SimpleQueue[Any] = queue.SimpleQueue()
    ts.prepare()
    with ThreadPoolExecutor(WORKERS) as pool:
        pending = {}
        while ts.is_active():
            for key in ts.get_ready():
                fut = pool.submit(noop, *[values[d] for d in args_of[key]])
                pending[fut] = key
                fut.add_done_callback(done_q.put)
            fut = done_q.get()
            key = pending.pop(fut)
            values[key] = fut.result()
            ts.done(key)
    return t1 - t0, time.perf_counter() - t1, values


def run_dask_threaded(spec: Spec) -> tuple[float, float, dict[str, Any]]:
    import dask.threaded

    sinks = sinks_of(spec)  # known to the user who builds the graph; not timed
    t0 = time.perf_counter()
    dsk: dict[str, Any] = {}
    for key, deps, after in spec:
        # dask has no ordering-only edge: the sink takes the list of its predecessors.
        dsk[key] = (noop, *deps, list(after)) if after else (noop, *deps)
    t1 = time.perf_counter()
    out = dask.threaded.get(dsk, sinks, num_workers=WORKERS)
    return t1 - t0, time.perf_counter() - t1, dict(zip(sinks, out, strict=True))


def run_dagexec(spec: Spec) -> tuple[float, float, dict[str, Any]]:
    import dagexec

    t0 = time.perf_counter()
    g = dagexec.Graph()
    refs: dict[str, Any] = {}
    for key, deps, after in spec:
        if after:
            refs[key] = g.add(key, noop, *[refs[d] for d in deps], after=after)
        else:
            refs[key] = g.add(key, noop, *[refs[d] for d in deps])
    t1 = time.perf_counter()
    results = g.run(max_workers=WORKERS)
    return t1 - t0, time.perf_counter() - t1, dict(results)


VARIANTS: dict[str, Callable[[Spec], tuple[float, float, dict[str, Any]]]] = {
    "sequential": run_sequential,
    "graphlib+TPE": run_graphlib_tpe,
    "dask.threaded": run_dask_threaded,
    "dagexec": run_dagexec,
}


# --------------------------------------------------------------------------- driver


def dagexec_problem() -> str | None:
    """None if dagexec is importable and has a Graph, else why not."""
    try:
        import dagexec
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None if hasattr(dagexec, "Graph") else "dagexec has no Graph (not written yet?)"


def version_of(name: str) -> str:
    try:
        mod = __import__(name)
    except Exception:
        return "not importable"
    ver = getattr(mod, "__version__", None)
    if ver is None:
        try:
            ver = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            ver = "unknown"
    return f"{ver} ({Path(mod.__file__).parent if getattr(mod, '__file__', None) else '?'})"


def machine_info() -> dict[str, Any]:
    import psutil

    cpu = platform.processor() or "?"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {
        "cpu": cpu,
        "cores_physical": psutil.cpu_count(logical=False),
        "cores_logical": psutil.cpu_count(logical=True),
        "loadavg": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
        "platform": platform.platform(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "dagexec": version_of("dagexec"),
        "dask": version_of("dask"),
    }


def measure(variant: str, shape: str, n: int, repeats: int, timeout: float) -> dict[str, Any]:
    spec = make_spec(shape, n)
    assert len(spec) == n, (shape, n, len(spec))
    expected_sinks = set(sinks_of(spec))
    fn = VARIANTS[variant]
    runs, errors = [], []
    for _ in range(repeats):
        gc.collect()
        reset_counter()
        faulthandler.dump_traceback_later(timeout, exit=True)  # a hang dumps stacks, exits
        try:
            build_s, run_s, sink_values = fn(spec)
        finally:
            faulthandler.cancel_dump_traceback_later()
        calls = calls_made()
        if calls != n:
            errors.append(f"{calls} calls for {n} tasks")
        if not expected_sinks <= sink_values.keys():
            missing = len(expected_sinks - sink_values.keys())
            errors.append(f"{missing} of {len(expected_sinks)} sink values missing")
        del sink_values
        runs.append((build_s + run_s, build_s, run_s))
    total, build, run = sorted(runs)[(len(runs) - 1) // 2]  # the median repeat
    return {
        "variant": variant,
        "shape": shape,
        "n": n,
        "build_s": build,
        "run_s": run,
        "total_s": total,
        "us_per_task": total / n * 1e6,
        "build_us_per_task": build / n * 1e6,
        "run_us_per_task": run / n * 1e6,
        "all_totals_s": [r[0] for r in runs],
        "spread": (max(r[0] for r in runs) / min(r[0] for r in runs)) if runs else None,
        "errors": sorted(set(errors)),
    }


def measure_isolated(
    variant: str, shape: str, n: int, repeats: int, timeout: float, no_gc: bool
) -> dict[str, Any]:
    """Run ``measure`` in a fresh interpreter and return its result."""
    cmd = [sys.executable, __file__, "--child", json.dumps([variant, shape, n, repeats, timeout])]
    if no_gc:
        cmd.append("--no-gc")
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout * repeats + 60)
    if out.returncode != 0:
        raise RuntimeError(f"{variant} {shape} N={n} failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def print_tables(results: list[dict[str, Any]]) -> None:
    print(
        "| shape | N | variant | build us/task | run us/task | **total us/task** | total s | note |"
    )
    print("|---|---:|---|---:|---:|---:|---:|---|")
    for r in results:
        note = []
        if r["errors"]:
            note.append("**MISMATCH: " + "; ".join(r["errors"]) + "**")
        if r["variant"] == "dagexec":
            note.append(
                f"**run OVER {TARGET_US:g} us target**"
                if r["run_us_per_task"] > TARGET_US
                else "run within target"
            )
        if r["spread"] and r["spread"] > 1.25:
            note.append(f"noisy: max/min {r['spread']:.2f}")
        print(
            f"| {r['shape']} | {r['n']:,} | {r['variant']} | {r['build_us_per_task']:.2f} "
            f"| {r['run_us_per_task']:.2f} | **{r['us_per_task']:.2f}** "
            f"| {r['total_s']:.3f} | {', '.join(note)} |"
        )
    mine = {(r["shape"], r["n"]): r for r in results if r["variant"] == "dagexec"}
    peers = [v for v in VARIANTS if v != "dagexec" and any(r["variant"] == v for r in results)]
    if not mine or not peers:
        return
    print()
    print("dagexec total time / peer total time (< 1: dagexec is faster):")
    print()
    print("| shape | N | " + " | ".join(f"vs {p}" for p in peers) + " |")
    print("|---|---:|" + "---:|" * len(peers))
    by_key = {(r["variant"], r["shape"], r["n"]): r for r in results}
    for (shape, n), r in mine.items():
        cells = []
        for p in peers:
            peer = by_key.get((p, shape, n))
            cells.append(f"{r['total_s'] / peer['total_s']:.2f}x" if peer else "-")
        print(f"| {shape} | {n:,} | " + " | ".join(cells) + " |")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument(
        "--sizes", default="10000,100000", help="comma-separated N (default: %(default)s)"
    )
    ap.add_argument("--quick", action="store_true", help="only N=10,000")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--variants", help=f"comma-separated, default: all of {','.join(VARIANTS)}")
    ap.add_argument("--shapes", default=",".join(SHAPES), help="default: %(default)s")
    ap.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    ap.add_argument(
        "--no-gc", action="store_true", help="disable the cyclic garbage collector (diagnostic)"
    )
    ap.add_argument(
        "--timeout", type=float, default=600, help="seconds per run before giving up (default: 600)"
    )
    ap.add_argument("--child", help=argparse.SUPPRESS)  # internal: one measurement, JSON out
    args = ap.parse_args(argv)
    if args.child:
        if args.no_gc:
            gc.disable()
        variant, shape, n, repeats, timeout = json.loads(args.child)
        print(json.dumps(measure(variant, shape, n, repeats, timeout)))
        return 0

    sizes = [10_000] if args.quick else [int(s.replace("_", "")) for s in args.sizes.split(",")]
    shapes = args.shapes.split(",")
    variants = args.variants.split(",") if args.variants else list(VARIANTS)
    for v in variants:
        if v not in VARIANTS:
            ap.error(f"unknown variant {v!r}; choose from {', '.join(VARIANTS)}")
    for s in shapes:
        if s not in SHAPES:
            ap.error(f"unknown shape {s!r}; choose from {', '.join(SHAPES)}")
    if "dagexec" in variants and (why := dagexec_problem()):
        if args.variants:  # asked for explicitly
            print(f"dagexec is not usable: {why}", file=sys.stderr)
            return 2
        print(f"dagexec variant skipped: {why}", file=sys.stderr)
        variants.remove("dagexec")

    info = machine_info()
    info["gc"] = "DISABLED (--no-gc)" if args.no_gc else "enabled"
    print("## dagexec scheduling overhead (no-op tasks, thread kind, 2 workers)")
    print()
    for k, v in info.items():
        print(f"- {k}: {v}")
    print(
        f"- repeats: {args.repeats} (median shown); target: dagexec run <= {TARGET_US:g} us/task "
        "(graph building has its own target, see bench/build_memory.py)"
    )
    print()

    results = []
    for n in sizes:
        for shape in shapes:
            for v in variants:
                r = measure_isolated(v, shape, n, args.repeats, args.timeout, args.no_gc)
                results.append(r)
                status = "MISMATCH " + "; ".join(r["errors"]) if r["errors"] else "ok"
                print(
                    f"  {shape:6} N={n:<7,} {v:13} {r['us_per_task']:8.2f} us/task  {status}",
                    file=sys.stderr,
                    flush=True,
                )
    print_tables(results)

    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"machine": info, "results": results}, indent=2))
    bad = [r for r in results if r["errors"]]
    for r in bad:
        print(
            f"MISMATCH: {r['variant']} {r['shape']} N={r['n']}: {'; '.join(r['errors'])}",
            file=sys.stderr,
        )
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
