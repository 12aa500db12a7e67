"""The benchmark report: dagexec next to the tools a user would otherwise pick.

One command runs four workloads over the same variants and writes a markdown report to
stdout, ``<out>/report.json`` and ``<out>/report.png`` (one panel per workload).

Workloads
---------
(a) scheduling overhead: no-op tasks in the ``wide``, ``chain`` and ``fanout`` shapes of
    ``bench/overhead.py`` (whose functions this reuses), in us per task (build + run).
    The ``dagexec-map-thread`` rows spell the shapes that ``map_shared`` can express with
    the same N calls: ``wide`` is N-1 items sharing one key, ``fanout`` is N/10 keys with
    9 items each; a chain is not a map.
(b) CPU fan-out with shared work: K files, each parsed by ~40 ms of pure-Python CPU into
    a ~20 MB value, then 8 checks of ~10 ms each that read it (see ``bench/_workloads.py``
    for the value's make-up and pickled size; the measured single-core times are printed).
    Reported: wall time, speed-up over the sequential loop (its wall / the variant's
    wall), and parallel efficiency = (total single-core CPU time / workers) / wall, the
    share of the workers' time that did useful work. The total single-core CPU time is
    the sequential loop's CPU time (``time.process_time``): its wall time on an idle
    machine, but unlike its wall time not inflated by whatever else the machine runs.
    For dagexec ``Graph`` runs, from ``Results.stats``: the bytes pickled to and from
    process workers (task payloads, i.e. functions and literal arguments, plus values),
    and how many values stayed in the worker that computed them (kept), were sent to a
    worker that did not compute them (moved; ``bytes_moved`` of them, inside the bytes
    to processes) or were computed again because a worker died holding them
    (recomputed); figures an older engine lacks read as 0. Next to them: the pickled
    size of the values the run returned to the caller (measured after the clock stops)
    and the total pickled size of the parse values (a staging variant with processes
    moves about 9x that: each value comes back once and goes out again with each of its
    8 checks; estimated from the value sizes, not measured).
(c) memory: 64 parses (48 in quick mode) of ~50 MB each, 4 light checks each (which
    variants run by default: see the modes below). Reported: the peak RSS of the
    variant's whole process tree (its subprocess plus every descendant: pool workers,
    dask workers), sampled every 10 ms by a background thread, next to that tree's RSS
    just before the job (after the imports). RSS of forked workers counts shared pages
    twice; no variant here forks after holding parse values.
(d) the standard-library lint of ``examples/lint_stdlib.py`` (loaded from its path):
    its sequential loop, its staged ``concurrent.futures`` version and its dagexec
    version, with threads and with processes.

Variants (``--variants`` takes names or shell patterns such as ``'dagexec*'``)
---------------------------------------------------------------------------------
``sequential`` (the floor and the reference result, always run for b, c and d),
``staged-threads`` / ``staged-processes`` (stage 1 parses everything on a
``ThreadPoolExecutor`` / the standard library's ``ProcessPoolExecutor``, stage 2 submits
every check), ``dask-threaded``, ``dask-processes`` (``dask.multiprocessing.get``),
``dask-distributed`` (a ``LocalCluster`` of N worker processes, one thread each, started
per repeat; its start-up is reported apart and not in the wall time), ``joblib-staged``
(``Parallel`` with the loky backend, two stages, its workers shut down between repeats),
``dagexec-graph-thread`` / ``-process`` (``Graph``, every task of that kind),
``dagexec-map-thread`` / ``-process`` (``map_shared``); in (a) also ``graphlib+TPE``; in
(d) ``dagexec-thread`` / ``dagexec-process`` (the example's ``run_dagexec``).
Every variant gets the same ``--workers`` (default: the physical cores).

How it is measured
------------------
Every repeat of every variant of (b), (c) and (d) runs in a fresh subprocess (its own
process group, killed after ``--timeout``), with ``bench/`` and the repository on
``PYTHONPATH`` so every worker process imports the workload functions by name. The
repeats run in rounds, each round every variant once, so that whatever else the machine
is doing is spread over all variants alike; the repeat with the median wall time is
shown, and the median of the peak RSS. (a) keeps ``bench/overhead.py``'s design: one
subprocess per (variant, N), the repeats inside it. Every repeat's results are reduced to a checksum and compared
with the sequential loop's: a difference is a loud MISMATCH and a non-zero exit status,
and so is a variant that fails or times out (shown as FAILED, never dropped). Every
parse appends a line to a log file, so the number of parses per file is counted across
all processes: a variant that parsed any file more than once is marked.

Targets
-------
Printed with the measured ratio and ok / MISSED (or NOT MEASURED); never hidden.
``--strict`` makes a miss exit non-zero.

(b) locality-aware process execution: dagexec with process kinds (``Graph`` and
    ``map_shared``) >= 1.5x faster than ``staged-processes`` and than ``dask-processes``
    in the same run (wall ratio <= 1/1.5), with parallel efficiency >= 0.9; for
    ``Graph``, the value bytes moved between processes (``bytes_from_processes +
    bytes_moved``) <= 1.2x the pickled size of the values returned to the caller. As
    info: all bytes to and from processes (payloads included) over the parse values'
    pickled size, next to staging's estimated ~9x.
(c) dagexec's peak RSS (thread kinds, next to ``dask-threaded``) <= 1.2x that of
    ``dask-threaded`` and <= 1/10 of ``staged-threads``; the process kinds' ratios are
    printed as info.
(d) dagexec (process kind) >= 1.6x faster than the sequential loop and not slower than
    the staged process pool.

Run:  python bench/report.py [--quick] [--workloads a,b,c,d] [--variants ...]
                             [--repeats 3] [--workers N] [--out bench/out]
                             [--lint-files N] [--timeout S] [--strict]

``--quick`` (the README's main job, under 3 minutes on 2 cores) runs (a) at N=10,000,
(b) with 6 files, (c) with 48 parses (2.4 GB held by staging) and (d) on the first 40
standard-library files. The full mode runs (a) at N=10,000 and 100,000, (b) with 24
files, (c) with 64 parses (adding dask-distributed) and (d) on the first 500
standard-library files: about 15-20 minutes on 2 cores (``--lint-files 0`` lints all
~1,800 files, where each process variant takes ~160 s a repeat on 2 cores).

In both modes (c) runs by default only the variants that never send a value through a
pipe (sequential, staged-threads, dask-threaded, the dagexec thread kinds; the full mode
adds dask-distributed, whose checks run where their parse is): the process-pool
variants move every ~50 MB value five times (~16 GB, about a minute per repeat on 2
cores). Name them to include them: ``--workloads c --variants '*'``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import fnmatch
import gc
import importlib.metadata
import importlib.util
import json
import os
import pickle
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
for _p in (str(REPO), str(BENCH)):  # benchmark this checkout, installed or not
    if _p not in sys.path:
        sys.path.insert(0, _p)

import _workloads  # noqa: E402

WORKLOADS = ("a", "b", "c", "d")
TITLES = {
    "a": "(a) scheduling overhead, no-op tasks",
    "b": "(b) CPU fan-out with shared work",
    "c": "(c) memory: peak RSS of the process tree",
    "d": "(d) standard-library lint (examples/lint_stdlib.py)",
}
# (a): our name -> bench/overhead.py's variant name
A_VARIANTS = {
    "sequential": "sequential",
    "graphlib+TPE": "graphlib+TPE",
    "dask-threaded": "dask.threaded",
    "dagexec-graph-thread": "dagexec",
    "dagexec-map-thread": "dagexec.map_shared",
}
JOB_VARIANTS = (
    "sequential",
    "staged-threads",
    "staged-processes",
    "dask-threaded",
    "dask-processes",
    "dask-distributed",
    "joblib-staged",
    "dagexec-graph-thread",
    "dagexec-graph-process",
    "dagexec-map-thread",
    "dagexec-map-process",
)
# (d): our name -> (function of examples/lint_stdlib.py, its extra arguments)
D_VARIANTS: dict[str, tuple[str, dict[str, str]]] = {
    "sequential": ("run_sequential", {}),
    "staged-threads": ("run_staged", {"executor": "thread"}),
    "staged-processes": ("run_staged", {"executor": "process"}),
    "dagexec-thread": ("run_dagexec", {"kind": "thread"}),
    "dagexec-process": ("run_dagexec", {"kind": "process"}),
}
# (c) only: the default depth-first order against parses first (priority=1).
BREADTH = "dagexec-graph-thread-breadth"
LINT_EXAMPLE = REPO / "examples" / "lint_stdlib.py"
SHAPES = ("wide", "chain", "fanout")


@dataclass(frozen=True)
class Mode:
    """The sizes of one mode."""

    name: str
    a_sizes: tuple[int, ...]
    b_files: int
    c_files: int
    c_variants: tuple[str, ...]  # (c)'s variants unless --variants names others
    d_limit: int | None  # standard-library files for (d); None: all (~1,800)
    timeout_s: float  # per variant subprocess, all repeats


# (c) by default: the variants that keep every value in one process (the target's peers);
# the full mode adds dask-distributed. The others pickle every ~50 MB value 5 times
# through pipes (~16 GB in all, about a minute per repeat on 2 cores): --variants.
C_DEFAULT = (
    "sequential",
    "staged-threads",
    "dask-threaded",
    "dagexec-graph-thread",
    "dagexec-map-thread",
    BREADTH,
)
QUICK = Mode("quick", (10_000,), 6, 48, C_DEFAULT, d_limit=40, timeout_s=120)
FULL = Mode("full", (10_000, 100_000), 24, 64, (*C_DEFAULT, "dask-distributed"), 500, timeout_s=900)


# =========================================================================== child side


class PeakRSS:
    """Sample the RSS of this process and all its descendants in a background thread.

    The list of descendants is refreshed every ``refresh`` samples (listing processes
    costs ~1-2 ms, reading one RSS ~20 us), so sampling steals little from the job.
    """

    def __init__(self, interval: float = 0.01, refresh: int = 5) -> None:
        import psutil

        self._psutil = psutil
        self._me = psutil.Process()
        self._interval = interval
        self._refresh = refresh
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, name="peak-rss", daemon=True)
        self._procs: list[Any] = []
        self.base = self._total(list_children=True)
        self.peak = self.base

    def _total(self, list_children: bool) -> int:
        psutil = self._psutil
        if list_children:
            with contextlib.suppress(psutil.Error):
                self._procs = [self._me, *self._me.children(recursive=True)]
        total = 0
        for proc in self._procs:
            with contextlib.suppress(psutil.Error):  # it just exited
                total += proc.memory_info().rss
        return total

    def _sample(self) -> None:
        n = 0
        while not self._stop.wait(self._interval):
            n += 1
            self.peak = max(self.peak, self._total(list_children=n % self._refresh == 0))

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._total(list_children=True))


def _median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    return sorted(runs, key=lambda r: r["wall_s"])[(len(runs) - 1) // 2]


def _job(workload: str, files: int) -> _workloads.Job:
    return (_workloads.cpu_job if workload == "b" else _workloads.memory_job)(files)


def child_job(spec: dict[str, Any]) -> dict[str, Any]:
    """(b) or (c): run one fan-out variant ``repeats`` times in this process; every run."""
    import _peers

    job = _job(spec["workload"], spec["files"])
    fn = _peers.VARIANTS[spec["variant"]]
    log = Path(os.environ[_workloads.PARSE_LOG_ENV])
    runs: list[dict[str, Any]] = []
    for _ in range(spec["repeats"]):
        gc.collect()
        log.write_bytes(b"")
        with PeakRSS(interval=spec["rss_interval"]) as rss:
            cpu0 = time.process_time()
            out = fn(job, spec["workers"])
            cpu = time.process_time() - cpu0  # this process only, not its workers
        runs.append(
            {
                "wall_s": out.wall_s,
                "cpu_s": cpu,
                "peak_rss": rss.peak,
                "base_rss": rss.base,
                "checksum": _workloads.checksum(out.results),
                "n_results": len(out.results),
                "parses": _workloads.parse_counts(log, job.files),
                **out.extra,
            }
        )
        del out
    return {"runs": runs}


def _summarize(runs: list[dict[str, Any]], expected_results: int) -> dict[str, Any]:
    med = _median_run(runs)
    summary = {k: v for k, v in med.items() if k not in ("peak_rss", "base_rss")}
    summary["walls_s"] = [r["wall_s"] for r in runs]
    if "cpu_s" in med:
        summary["cpu_s"] = statistics.median(r["cpu_s"] for r in runs)
    summary["peak_rss"] = statistics.median(r["peak_rss"] for r in runs)
    summary["base_rss"] = statistics.median(r["base_rss"] for r in runs)
    summary["peaks_rss"] = [r["peak_rss"] for r in runs]
    summary["checksums"] = sorted({r["checksum"] for r in runs})
    summary["expected_results"] = expected_results
    summary["bad_counts"] = sorted(
        {r["n_results"] for r in runs if r["n_results"] != expected_results}
    )
    if "parses" in med:
        summary["parses_max"] = max(r["parses"]["max"] for r in runs)
        summary["parses_min"] = min(r["parses"]["min"] for r in runs)
        summary["parses_per_file"] = max(r["parses"]["per_file_mean"] for r in runs)
    if "startup_s" in med:
        summary["startup_s"] = statistics.median(r["startup_s"] for r in runs)
    return summary


def _load_lint_example() -> Any:
    name = LINT_EXAMPLE.stem
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, LINT_EXAMPLE)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {LINT_EXAMPLE}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # process workers look its functions up by this name
    spec.loader.exec_module(module)
    return module


def child_lint(spec: dict[str, Any]) -> dict[str, Any]:
    """(d): run one variant of the lint example ``repeats`` times in this process; every run."""
    lint = _load_lint_example()
    files = lint.stdlib_files(spec["limit"])
    fn_name, kwargs = D_VARIANTS[spec["variant"]]
    fn = getattr(lint, fn_name)
    args = (files,) if fn_name == "run_sequential" else (files, spec["workers"])
    runs: list[dict[str, Any]] = []
    for _ in range(spec["repeats"]):
        gc.collect()
        with PeakRSS(interval=spec["rss_interval"]) as rss:
            t0 = time.perf_counter()
            findings = fn(*args, **kwargs)
            wall = time.perf_counter() - t0
        runs.append(
            {
                "wall_s": wall,
                "peak_rss": rss.peak,
                "base_rss": rss.base,
                "checksum": _workloads.digest(findings),
                "n_results": len(findings),
                "files": len(files),
            }
        )
    return {"runs": runs}


def _map_shared_noop(shape: str, spec: Any) -> tuple[float, float, dict[str, Any]]:
    """(a): the overhead shapes that map_shared can express, with the same N calls."""
    import overhead

    import dagexec

    n = len(spec)
    t0 = time.perf_counter()
    if shape == "wide":  # N-1 items, one shared key
        out = dagexec.map_shared(
            overhead.noop, range(n - 1), shared=overhead.noop, key=lambda i: 0,
            max_workers=overhead.WORKERS,
        )  # fmt: skip
        values: dict[str, Any] = {"sink": out}
    elif shape == "fanout":  # N/10 keys, 9 items each
        out = dagexec.map_shared(
            overhead.noop, range(n // 10 * 9), shared=overhead.noop, key=lambda i: i // 9,
            max_workers=overhead.WORKERS,
        )  # fmt: skip
        values = {f"c{i // 9}.{i % 9}": v for i, v in enumerate(out)}
    else:
        raise ValueError(f"map_shared cannot express the {shape!r} shape")
    return 0.0, time.perf_counter() - t0, values


def child_overhead(spec: dict[str, Any]) -> dict[str, Any]:
    """(a): one variant of bench/overhead.py at one N, every shape, ``repeats`` times each."""
    import overhead

    overhead.WORKERS = spec["workers"]
    name = A_VARIANTS[spec["variant"]]
    rows = []
    for shape in spec["shapes"]:
        if name == "dagexec.map_shared":
            overhead.VARIANTS[name] = partial(_map_shared_noop, shape)
        rows.append(overhead.measure(name, shape, spec["n"], spec["repeats"], spec["timeout"]))
    return {"rows": rows}


def child_calibrate(spec: dict[str, Any]) -> dict[str, Any]:
    """Single-core parse and check times and the size of a parse value, per job."""
    out = {}
    for wl, make in (("b", _workloads.cpu_job), ("c", _workloads.memory_job)):
        if wl not in spec["workloads"]:
            continue
        job = make(1)
        parses, checks = [], []
        value: Any = None
        for _ in range(3):
            del value
            gc.collect()
            t0 = time.perf_counter()
            value = _workloads.parse(job, 0)
            parses.append(time.perf_counter() - t0)
        for r in range(job.checks):
            t0 = time.perf_counter()
            _workloads.check(job, value, 0, r)
            checks.append(time.perf_counter() - t0)
        rows = value["rows"]
        in_memory = (
            sys.getsizeof(rows)
            + sum(sys.getsizeof(t) + sys.getsizeof(t[0]) + sys.getsizeof(t[1]) for t in rows)
            + sys.getsizeof(value["blob"])
        )
        t0 = time.perf_counter()
        pickled = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
        t1 = time.perf_counter()
        pickle.loads(pickled)
        t2 = time.perf_counter()
        out[wl] = {
            "job": asdict(job),
            "parse_s": statistics.median(parses),
            "check_s": statistics.median(checks),
            "value_bytes": in_memory,
            "pickled_bytes": len(pickled),
            "dumps_s": t1 - t0,
            "loads_s": t2 - t1,
        }
    return out


CHILDREN: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "a": child_overhead,
    "b": child_job,
    "c": child_job,
    "d": child_lint,
    "calibrate": child_calibrate,
}


def child_main(arg: str) -> int:
    spec = json.loads(arg)
    try:
        result = CHILDREN[spec["workload"]](spec)
    except BaseException:
        print(json.dumps({"error": traceback.format_exc()}))
        return 1
    print(json.dumps(result))
    return 0


# ========================================================================== driver side


def run_child(spec: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Run one measurement in a fresh interpreter, in its own process group."""
    env = dict(os.environ)
    paths = [str(REPO), str(BENCH), str(REPO / "examples")]
    env["PYTHONPATH"] = os.pathsep.join([*paths, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    with tempfile.TemporaryDirectory(prefix="dagexec-report-") as tmp:
        env[_workloads.PARSE_LOG_ENV] = str(Path(tmp) / "parses.log")
        cmd = [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(spec)]
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
            start_new_session=True, cwd=str(REPO),
        )  # fmt: skip
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            try:
                _, stderr = proc.communicate(timeout=30)
            except subprocess.TimeoutExpired:  # a descendant left the group, holding a pipe
                proc.kill()
                stderr = ""
            return {"error": f"timed out after {timeout:.0f} s", "stderr": stderr[-2000:]}
        finally:
            _kill_group(proc)  # leftover workers of a variant that did not clean up
        elapsed = time.perf_counter() - t0
    lines = stdout.strip().splitlines()
    try:
        result: dict[str, Any] = json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):
        result = {"error": f"exit status {proc.returncode}, no result:\n{stderr[-3000:]}"}
    if "error" not in result and proc.returncode != 0:
        result["error"] = f"exit status {proc.returncode}:\n{stderr[-3000:]}"
    result["subprocess_s"] = elapsed
    return result


def _kill_group(proc: subprocess.Popen[str]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


def _progress(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _short_error(err: str) -> str:
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    return lines[-1][:160] if lines else "failed"


def _mark(row: dict[str, Any], reference: dict[str, Any] | None, check_parses: bool = True) -> None:
    """Fill ``row["problems"]`` (failures, mismatches) and ``row["marks"]`` (repeated work)."""
    problems, marks = [], []
    if "error" in row:
        problems.append("FAILED: " + _short_error(row["error"]))
    else:
        if len(row["checksums"]) > 1:
            problems.append("MISMATCH: repeats disagree")
        if row["bad_counts"]:
            problems.append(
                f"MISMATCH: {row['bad_counts']} results, expected {row['expected_results']}"
            )
        if (
            reference is not None
            and "error" not in reference
            and row["checksums"] != reference["checksums"]
        ):
            problems.append("MISMATCH: checksum differs from sequential")
        if check_parses and row.get("parses_max", 1) > 1:
            marks.append(f"parse ran {row['parses_per_file']:.1f}x")
        if check_parses and row.get("parses_min", 1) < 1:
            problems.append("MISMATCH: a file was never parsed")
    row["problems"] = problems
    row["marks"] = marks


def run_overhead(
    mode: Mode, variants: list[str], repeats: int, workers: int, timeout: float
) -> list[dict[str, Any]]:
    rows = []
    for n in mode.a_sizes:
        for v in variants:
            shapes = [s for s in SHAPES if not (v == "dagexec-map-thread" and s == "chain")]
            spec = {"workload": "a", "variant": v, "shapes": shapes, "n": n}
            spec |= {"repeats": repeats, "workers": workers, "timeout": timeout}
            out = run_child(spec, timeout * repeats * len(shapes) + 60)
            for shape, r in zip(shapes, out.get("rows") or [{} for _ in shapes], strict=True):
                if "error" in out:
                    r = {"error": out["error"]}
                r |= {"variant": v, "shape": shape, "n": n, "problems": []}
                if "error" in r:
                    r["problems"].append("FAILED: " + _short_error(r["error"]))
                elif r.get("errors"):
                    r["problems"].append("MISMATCH: " + "; ".join(r["errors"]))
                rows.append(r)
                fig = "" if "error" in r else f"{r['us_per_task']:8.2f} us/task"
                _progress(f"  (a) {shape:6} N={n:<7,} {v:22} {fig} {' '.join(r['problems'])}")
    order = {s: i for i, s in enumerate(SHAPES)}
    return sorted(rows, key=lambda r: (r["n"], order[r["shape"]]))  # stable: variant order


def _job_spec(workload: str, variant: str, mode: Mode, workers: int) -> dict[str, Any]:
    spec: dict[str, Any] = {"workload": workload, "variant": variant, "repeats": 1}
    spec["workers"] = workers
    if workload in ("b", "c"):
        spec["files"] = mode.b_files if workload == "b" else mode.c_files
        spec["rss_interval"] = 0.01 if workload == "c" else 0.05
    else:
        spec["limit"] = mode.d_limit
        spec["rss_interval"] = 0.05
    return spec


def run_jobs(
    workload: str,
    mode: Mode,
    variants: list[str],
    repeats: int,
    workers: int,
    timeout: float,
) -> list[dict[str, Any]]:
    """Run (b), (c) or (d): ``repeats`` rounds, each variant once per round in a fresh process.

    Interleaving the repeats spreads whatever else the machine does over all variants
    alike, instead of over whichever variant happened to run at that moment.
    """
    runs: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
    errors: dict[str, dict[str, Any]] = {}
    for i in range(repeats):
        for v in variants:
            if v in errors:
                continue  # failed once: failed
            out = run_child(_job_spec(workload, v, mode, workers), timeout)
            if "error" in out:
                errors[v] = out
                _progress(f"  ({workload}) {v:24} FAILED: {_short_error(out['error'])}")
                continue
            runs[v].extend(out["runs"])
            last = out["runs"][-1]
            _progress(f"  ({workload}) {i + 1}/{repeats} {v:24} {last['wall_s']:7.2f} s  "
                      f"{last['peak_rss'] / 2**20:7.0f} MB")  # fmt: skip
    rows: list[dict[str, Any]] = []
    for v in variants:
        if v in errors:
            r = {"error": errors[v]["error"], "variant": v}
        else:
            r = _summarize(runs[v], _expected_results(workload, mode, runs[v])) | {"variant": v}
        rows.append(r)
    seq = rows[0] if rows and rows[0]["variant"] == "sequential" else None
    for r in rows:
        _mark(r, seq if r is not seq else None, check_parses=workload != "d")
        if seq is not None and "error" not in seq and "error" not in r:
            r["speedup"] = seq["wall_s"] / r["wall_s"]
            if "cpu_s" in seq:
                r["efficiency"] = seq["cpu_s"] / workers / r["wall_s"]
    return rows


def _expected_results(workload: str, mode: Mode, runs: list[dict[str, Any]]) -> int:
    """How many results a run must return; for (d), as many as the first run found."""
    if workload in ("b", "c"):
        job = _job(workload, mode.b_files if workload == "b" else mode.c_files)
        return job.files * job.checks
    return int(runs[0]["n_results"])


# ---------------------------------------------------------------------------- targets


@dataclass
class Target:
    workload: str
    target: str
    measured: str
    ratio: float | None
    status: str  # "ok", "MISSED", "NOT MEASURED ...", "info"
    ratio_is_factor: bool = True  # False: a plain number (an efficiency), no "x"


def _by_variant(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {r["variant"]: r for r in rows}


def _usable(row: dict[str, Any] | None) -> bool:
    return row is not None and "error" not in row and not row["problems"]


def _why_not(rows: dict[str, dict[str, Any]], *names: str) -> str:
    for n in names:
        if n not in rows:
            return f"NOT MEASURED ({n} not run)"
        if not _usable(rows[n]):
            return f"NOT MEASURED ({n}: {rows[n]['problems'][0].split(':')[0]})"
    return "NOT MEASURED"


def _compare(
    wl: str,
    rows: dict[str, dict[str, Any]],
    mine: str,
    peer: str,
    field: str,
    text: str,
    ok: Callable[[float], bool],
    fmt: Callable[[float], str],
    info: bool = False,
) -> Target:
    a, b = rows.get(mine), rows.get(peer)
    if not (_usable(a) and _usable(b)):
        return Target(wl, text, "-", None, _why_not(rows, mine, peer))
    assert a is not None
    assert b is not None
    ratio = a[field] / b[field]
    measured = f"{fmt(a[field])} vs {fmt(b[field])}"
    status = "info" if info else ("ok" if ok(ratio) else "MISSED")
    return Target(wl, text, measured, ratio, status)


def _secs(x: float) -> str:
    return f"{x:.2f} s"


def _mb(x: float) -> str:
    return f"{x / 2**20:.0f} MB"


B_FACTOR = 1.5  # (b): dagexec's process kinds at least this much faster than the peers
B_EFFICIENCY = 0.9  # (b): their parallel efficiency at least this
B_VALUE_BYTES = 1.2  # (b): value bytes moved at most this times the returned values' size


def _targets_b(report: dict[str, Any], rows: dict[str, dict[str, Any]]) -> list[Target]:
    out = []
    for mine in ("dagexec-graph-process", "dagexec-map-process"):
        for peer in ("staged-processes", "dask-processes"):
            text = f"{mine} >= {B_FACTOR:g}x faster than {peer} (ratio <= {1 / B_FACTOR:.2f})"
            row = _compare(
                "b", rows, mine, peer, "wall_s", text, lambda r: r <= 1 / B_FACTOR, _secs
            )
            if row.ratio:
                row.measured += f": {1 / row.ratio:.2f}x faster"
            out.append(row)
        out.append(_efficiency_b(rows, mine))
    out += _bytes_b(report, rows, "dagexec-graph-process")
    return out


def _efficiency_b(rows: dict[str, dict[str, Any]], mine: str) -> Target:
    text = f"{mine} parallel efficiency >= {B_EFFICIENCY:g}"
    r = rows.get(mine)
    if r is None or not _usable(r) or "efficiency" not in r:
        why = _why_not(rows, mine, "sequential")
        return Target("b", text, "-", None, why, ratio_is_factor=False)
    eff = r["efficiency"]
    status = "ok" if eff >= B_EFFICIENCY else "MISSED"
    return Target("b", text, f"{eff:.2f}", eff, status, ratio_is_factor=False)


def _bytes_b(report: dict[str, Any], rows: dict[str, dict[str, Any]], mine: str) -> list[Target]:
    """Value bytes moved against the returned values (the target); all bytes as info."""
    text = f"{mine} value bytes between processes (from + moved) <= {B_VALUE_BYTES:g}x returned"
    r = rows.get(mine)
    if r is None or not _usable(r) or not r.get("returned_bytes"):
        why = _why_not(rows, mine)
        if why == "NOT MEASURED":
            why = "NOT MEASURED (no returned_bytes)"
        return [Target("b", text, "-", None, why)]
    moved = r["bytes_from_processes"] + r.get("bytes_moved", 0)
    ratio = moved / r["returned_bytes"]
    measured = f"{_fmt_bytes(moved)} vs {_fmt_bytes(r['returned_bytes'])}"
    out = [Target("b", text, measured, ratio, "ok" if ratio <= B_VALUE_BYTES else "MISSED")]
    total = report.get("parse_values_bytes", {}).get("b")
    if not total:
        return out
    every = r["bytes_to_processes"] + r["bytes_from_processes"]
    text = f"{mine} all bytes to + from processes (payloads too) / parse values"
    measured = f"{_fmt_bytes(every)} vs {_fmt_bytes(total)}"
    out.append(Target("b", text, measured, every / total, "info"))
    checks = report["calibration"]["b"]["job"]["checks"]
    text = (
        f"staged-processes bytes / parse values, estimated from the value sizes "
        f"(1 + {checks} moves each, not measured)"
    )
    staged = (1 + checks) * total
    measured = f"{_fmt_bytes(staged)} vs {_fmt_bytes(total)}"
    out.append(Target("b", text, measured, staged / total, "info"))
    return out


def _targets_c(rows: dict[str, dict[str, Any]]) -> list[Target]:
    out = []
    for mine in ("dagexec-graph-thread", "dagexec-map-thread"):
        text = f"{mine} peak RSS <= 1.2x dask-threaded"
        out.append(
            _compare("c", rows, mine, "dask-threaded", "peak_rss", text, lambda r: r <= 1.2, _mb)
        )
        text = f"{mine} peak RSS <= 1/10 of staged-threads"
        out.append(
            _compare("c", rows, mine, "staged-threads", "peak_rss", text, lambda r: r <= 0.1, _mb)
        )
    if "dagexec-graph-thread" in rows and BREADTH in rows:
        text = "dagexec-graph-thread (depth-first, default) peak RSS / breadth-first (priority)"
        out.append(
            _compare(
                "c", rows, "dagexec-graph-thread", BREADTH, "peak_rss", text, bool, _mb, info=True
            )
        )
    for mine in ("dagexec-graph-process", "dagexec-map-process"):  # only when asked for
        for peer in ("dask-threaded", "staged-processes"):
            if mine in rows and peer in rows:
                text = f"{mine} peak RSS / {peer}"
                out.append(_compare("c", rows, mine, peer, "peak_rss", text, bool, _mb, info=True))
    return out


def _targets_d(rows: dict[str, dict[str, Any]]) -> list[Target]:
    mine = "dagexec-process"
    text = f"{mine} >= 1.6x faster than sequential"
    speedup = _compare("d", rows, "sequential", mine, "wall_s", text, lambda r: r >= 1.6, _secs)
    if speedup.ratio is not None:  # the ratio is sequential / dagexec: show dagexec first
        speedup.measured = " vs ".join(reversed(speedup.measured.split(" vs ")))
    text = f"{mine} not slower than staged-processes (ratio <= 1)"
    slower = _compare("d", rows, mine, "staged-processes", "wall_s", text, lambda r: r <= 1, _secs)
    return [speedup, slower]


def evaluate_targets(report: dict[str, Any]) -> list[Target]:
    """Every target of the workloads that ran, each with its measured ratio and status."""
    wl = report["workloads"]
    out: list[Target] = []
    if "b" in wl:
        out += _targets_b(report, _by_variant(wl["b"]))
    if "c" in wl:
        out += _targets_c(_by_variant(wl["c"]))
    if "d" in wl:
        out += _targets_d(_by_variant(wl["d"]))
    return out


# ----------------------------------------------------------------------------- output


def _fmt_bytes(x: float | None) -> str:
    if x is None:
        return "-"
    if x >= 1e7:
        return f"{x / 1e6:.0f} MB"
    if x >= 1e6:
        return f"{x / 1e6:.1f} MB"
    if x >= 1e4:
        return f"{x / 1e3:.0f} kB"
    return f"{x / 1e3:.1f} kB" if x >= 1e3 else f"{x:.0f} B"


def _note(r: dict[str, Any]) -> str:
    parts = [f"**{p}**" for p in r.get("problems", [])] + [f"**{m}**" for m in r.get("marks", [])]
    if "values_kept" in r and (r.get("bytes_to_processes") or r.get("values_kept")):
        recomputed = f"recomputed {r.get('tasks_recomputed', 0)}"
        parts.append(
            f"values kept {r['values_kept']} / moved {r.get('values_moved', 0)} / "
            + (f"**{recomputed}**" if r.get("tasks_recomputed") else recomputed)
        )
    walls = r.get("walls_s") or []
    if len(walls) > 1 and min(walls) > 0 and max(walls) / min(walls) > 1.25:
        parts.append(f"noisy: max/min {max(walls) / min(walls):.2f}")
    if "startup_s" in r:
        parts.append(f"cluster start-up {r['startup_s']:.2f} s (not in wall)")
    return ", ".join(parts)


def _parse_runs(r: dict[str, Any]) -> str:
    if "parses_per_file" not in r:
        return "-"
    return f"{r['parses_per_file']:.1f}x" + (
        " (max {})".format(r["parses_max"]) if r["parses_max"] > 1 else ""
    )


def print_overhead(rows: list[dict[str, Any]]) -> None:
    print("| shape | N | variant | build us/task | run us/task | **total us/task** | note |")
    print("|---|---:|---|---:|---:|---:|---|")
    for r in rows:
        note = ", ".join(f"**{p}**" for p in r["problems"])
        if "error" in r:
            print(f"| {r['shape']} | {r['n']:,} | {r['variant']} | - | - | **FAILED** | {note} |")
            continue
        if r.get("spread") and r["spread"] > 1.25:
            note = ", ".join(filter(None, [note, f"noisy: max/min {r['spread']:.2f}"]))
        print(
            f"| {r['shape']} | {r['n']:,} | {r['variant']} | {r['build_us_per_task']:.2f} "
            f"| {r['run_us_per_task']:.2f} | **{r['us_per_task']:.2f}** | {note} |"
        )


def print_jobs(workload: str, rows: list[dict[str, Any]]) -> None:
    if workload == "b":
        print(
            "| variant | **wall s** | speed-up | efficiency | peak RSS | parse runs "
            "| bytes to / from processes | checksum | note |"
        )
        print("|---|---:|---:|---:|---:|---:|---:|---|---|")
    elif workload == "c":
        print("| variant | **peak RSS** | RSS before | wall s | parse runs | checksum | note |")
        print("|---|---:|---:|---:|---:|---|---|")
    else:
        print("| variant | **wall s** | speed-up | peak RSS | findings | checksum | note |")
        print("|---|---:|---:|---:|---:|---|---|")
    for r in rows:
        v, note = r["variant"], _note(r)
        if "error" in r:
            dashes = {"b": 7, "c": 5, "d": 5}[workload]
            print(f"| {v} | **FAILED** |" + " - |" * dashes + f" {note} |")
            continue
        cs = r["checksums"][0] if len(r["checksums"]) == 1 else "/".join(r["checksums"])
        speed = f"{r['speedup']:.2f}x" if "speedup" in r else "-"
        if workload == "b":
            eff = f"{r['efficiency']:.2f}" if "efficiency" in r else "-"
            moved = "-"
            if r.get("bytes_to_processes"):
                moved = f"{_fmt_bytes(r['bytes_to_processes'])} / {_fmt_bytes(r['bytes_from_processes'])}"
            print(
                f"| {v} | **{r['wall_s']:.2f}** | {speed} | {eff} | {_mb(r['peak_rss'])} "
                f"| {_parse_runs(r)} | {moved} | `{cs}` | {note} |"
            )
        elif workload == "c":
            print(
                f"| {v} | **{_mb(r['peak_rss'])}** | {_mb(r['base_rss'])} | {r['wall_s']:.2f} "
                f"| {_parse_runs(r)} | `{cs}` | {note} |"
            )
        else:
            print(
                f"| {v} | **{r['wall_s']:.2f}** | {speed} | {_mb(r['peak_rss'])} "
                f"| {r['n_results']:,} | `{cs}` | {note} |"
            )


def print_targets(targets: list[Target]) -> None:
    print("| workload | target | measured | ratio | status |")
    print("|---|---|---|---:|---|")
    for t in targets:
        ratio = "-"
        if t.ratio is not None:  # tiny (bytes against the parse values): 2 significant digits
            ratio = f"{t.ratio:.2f}" if t.ratio == 0 or t.ratio >= 0.01 else f"{t.ratio:.2g}"
            ratio += "x" if t.ratio_is_factor else ""
        status = t.status if t.status in ("ok", "info") else f"**{t.status}**"
        print(f"| ({t.workload}) | {t.target} | {t.measured} | {ratio} | {status} |")


def _print_section(
    w: str, rows: list[dict[str, Any]], report: dict[str, Any], mode: Mode, workers: int
) -> None:
    print(f"## {TITLES[w]}")
    print()
    if w == "a":
        print(f"N = {', '.join(f'{n:,}' for n in mode.a_sizes)}; thread kind, {workers} workers; "
              "us per task = (build + run) / N. map_shared: wide = N-1 items sharing one key, "
              "fanout = N/10 keys x 9 items (a chain is not a map).")  # fmt: skip
        print()
        print_overhead(rows)
    else:
        cal = report.get("calibration", {}).get(w)
        if w in ("b", "c") and cal:
            job = cal["job"]
            files = mode.b_files if w == "b" else mode.c_files
            print(
                f"{files} files x {job['checks']} checks; one parse: {cal['parse_s'] * 1e3:.0f} ms "
                f"single-core into {cal['value_bytes'] / 1e6:.1f} MB in memory "
                f"({cal['pickled_bytes'] / 1e6:.1f} MB pickled in {cal['dumps_s'] * 1e3:.0f} ms, "
                f"unpickled in {cal['loads_s'] * 1e3:.0f} ms; all parse values: "
                f"{files * cal['pickled_bytes'] / 1e6:.0f} MB pickled); one check: "
                f"{cal['check_s'] * 1e3:.1f} ms. {workers} workers."
            )
        seq = next((r for r in rows if r["variant"] == "sequential" and "cpu_s" in r), None)
        if w == "b" and seq is not None:
            print(
                f"Total single-core CPU time (the sequential loop's CPU time, the numerator of "
                f"the efficiency): {seq['cpu_s']:.2f} s; the sequential loop's wall time: "
                f"{seq['wall_s']:.2f} s."
            )
        if w == "b":
            print(
                "Bytes to / from processes: all that dagexec pickled to and from its process "
                "workers (task payloads and values). Values kept / moved / recomputed: values "
                "that stayed in the worker that computed them / were sent to another worker / "
                "were computed again after a worker died."
            )
        elif w == "d":
            n_files = next((r["files"] for r in rows if "files" in r), "?")
            print(f"{n_files} standard-library files x 8 rules; {workers} workers.")
        print()
        print_jobs(w, rows)
    print()


def versions() -> dict[str, str]:
    out = {}
    for name in (
        "dagexec",
        "dask",
        "distributed",
        "joblib",
        "loky",
        "cloudpickle",
        "psutil",
        "matplotlib",
    ):
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    out["dagexec"] += f" ({REPO / 'dagexec'})"
    return out


def machine_info(workers: int) -> dict[str, Any]:
    import overhead
    import psutil

    info = overhead.machine_info()  # cpu, cores, platform, python (and its own versions)
    return {
        "cpu": info["cpu"],
        "cores_physical": info["cores_physical"],
        "cores_logical": info["cores_logical"],
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "loadavg_at_start": info["loadavg"],
        "platform": info["platform"],
        "python": info["python"],
        "workers": workers,
        **versions(),
    }


# ------------------------------------------------------------------------------ main


def _select(patterns: list[str] | None, names: list[str]) -> list[str]:
    if patterns is None:
        return list(names)
    return [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in patterns)]


def _default_workers() -> int:
    try:
        import psutil

        return int(psutil.cpu_count(logical=False) or os.cpu_count() or 2)
    except ImportError:
        return os.cpu_count() or 2


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="the quick mode (under 3 minutes)")
    ap.add_argument("--workloads", default="a,b,c,d", help="comma-separated (default: %(default)s)")
    ap.add_argument("--variants", help="comma-separated names or shell patterns (default: all)")
    ap.add_argument(
        "--repeats", type=int, default=3, help="per variant; the median is shown (default: 3)"
    )
    ap.add_argument(
        "--workers",
        type=int,
        default=_default_workers(),
        help="for every variant (default: physical cores, %(default)s)",
    )
    ap.add_argument(
        "--out", type=Path, default=BENCH / "out", help="where report.json and report.png go"
    )
    ap.add_argument(
        "--timeout",
        type=float,
        help="seconds per variant subprocess (default: 120 quick, 900 full)",
    )
    ap.add_argument(
        "--lint-files",
        type=int,
        help="standard-library files for (d) (default: 40 quick, 500 full; 0: all)",
    )
    ap.add_argument("--strict", action="store_true", help="exit non-zero when a target is missed")
    ap.add_argument("--child", help=argparse.SUPPRESS)  # internal: one measurement, JSON out
    return ap.parse_args(argv)  # fmt: skip


def _choose(args: argparse.Namespace, mode: Mode, workloads: list[str]) -> dict[str, list[str]]:
    """The variants to run per workload; sequential joins b, c and d as the reference."""
    patterns = args.variants.split(",") if args.variants else None
    chosen = {
        "a": _select(patterns, list(A_VARIANTS)),
        "b": _select(patterns, list(JOB_VARIANTS)),
        "c": _select(patterns, [*JOB_VARIANTS, BREADTH]) if patterns else list(mode.c_variants),
        "d": _select(patterns, list(D_VARIANTS)),
    }
    for w in ("b", "c", "d"):
        if w in workloads and chosen[w] and "sequential" not in chosen[w]:
            chosen[w].insert(0, "sequential")
    return {w: chosen[w] for w in workloads if chosen[w]}


def _calibrate(report: dict[str, Any], mode: Mode, workloads: list[str], timeout: float) -> None:
    calib_for = [w for w in ("b", "c") if w in workloads]
    if not calib_for:
        return
    _progress("calibrating the parse and check workloads (single core) ...")
    cal = run_child({"workload": "calibrate", "workloads": calib_for}, timeout)
    if "error" in cal:
        print(f"**calibration FAILED**: {_short_error(cal['error'])}")
        cal = {}
    cal.pop("subprocess_s", None)
    report["calibration"] = cal
    sizes = {"b": mode.b_files, "c": mode.c_files}
    report["parse_values_bytes"] = {w: c["pickled_bytes"] * sizes[w] for w, c in cal.items()}


def _print_header(mode: Mode, info: dict[str, Any], repeats: int) -> None:
    print(f"# dagexec benchmark report ({mode.name} mode)")
    print()
    for k, v in info.items():
        print(f"- {k}: {v}")
    print(f"- repeats: {repeats} per variant (median shown), each variant in its own subprocess")
    print()


def lint_trace(mode: Mode, workers: int, out: Path, timeout: float) -> dict[str, Any]:
    """Run the lint example as a ``dagexec.Graph`` with a progress bar: once to write
    its Chrome trace to ``out/lint-trace.json`` and print its run summary, then twice
    on an emptied ``DiskCache`` (cold, warm) to print both wall times."""
    out.mkdir(parents=True, exist_ok=True)
    trace = out / "lint-trace.json"
    limit = [] if mode.d_limit is None else ["--limit", str(mode.d_limit)]
    command = [sys.executable, str(LINT_EXAMPLE), "--no-sequential", "--progress"]
    command += [*limit, "--workers", str(workers), "--trace", str(trace)]
    command += ["--cache", str(out / "lint-cache")]
    print("## Where the lint's time goes (a dagexec.Graph run of the same lint)")
    print()
    try:
        # stderr (the progress bar) goes to the terminal, if any; stdout is the report's.
        done = subprocess.run(command, stdout=subprocess.PIPE, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        print(f"- timed out after {timeout:.0f} s")
        return {"ok": False}
    summary = done.stdout.split("the same lint as a dagexec.Graph", 1)[-1].splitlines()[1:]
    cache = [line for line in summary if line.startswith("cache:")]
    print("```")
    print("\n".join(line for line in summary if line.strip() and "trace written" not in line
                    and not line.startswith("cache:")))  # fmt: skip
    print("```")
    print()
    if cache:
        print(f"- persistent cache (`DiskCache`), the same Graph run twice: {cache[0][7:]}")
    ok = done.returncode == 0 and trace.exists()
    print(f"- trace: `{trace}` (open it in https://ui.perfetto.dev)" if ok else
          f"- **failed** (exit {done.returncode})")  # fmt: skip
    print()
    return {"ok": ok, "trace": str(trace), "summary": summary, "cache": cache}


def dask_overhead(mode: Mode, timeout: float) -> dict[str, Any]:
    """Print what a task costs on a dask LocalCluster beside dagexec's local processes
    (``bench/dask_overhead.py``, in a subprocess of its own)."""
    n, repeats = ("500", "3") if mode.name == "quick" else ("2000", "5")
    command = [sys.executable, str(REPO / "bench" / "dask_overhead.py"), "--n", n]
    command += ["--repeats", repeats]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        print(f"## Per-task overhead on dask\n\n- timed out after {timeout:.0f} s\n")
        return {"ok": False}
    print(done.stdout.strip() if done.returncode == 0 else
          f"## Per-task overhead on dask\n\n- **failed** (exit {done.returncode})")  # fmt: skip
    print()
    return {"ok": done.returncode == 0, "table": done.stdout}


def _finish(report: dict[str, Any], targets: list[Target], args: argparse.Namespace) -> int:
    """Write the JSON and the chart, print the summary; return the exit status."""
    failed = [
        f"({w}) {r['variant']}" + (f" {r['shape']} N={r['n']:,}" if w == "a" else "") + f": {p}"
        for w, rows in report["workloads"].items()
        for r in rows
        for p in r["problems"]
    ]
    missed = [t for t in targets if t.status not in ("ok", "info")]
    report["machine"]["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    args.out.mkdir(parents=True, exist_ok=True)
    json_path = args.out / "report.json"
    json_path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    png = args.out / "report.png"
    try:
        import _chart

        _chart.draw(report, png)
    except Exception as exc:  # the report stands without its chart
        failed.append(f"chart: {type(exc).__name__}: {exc}")
    ok = sum(t.status == "ok" for t in targets)
    print(f"targets: {ok} ok, {len(missed)} missed or not measured; "
          f"failures and mismatches: {len(failed)}")  # fmt: skip
    for f in failed:
        print(f"- **{f}**")
    print(f"load average at the end: {report['machine']['loadavg_at_end']}; "
          f"report took {report['wall_s']:.0f} s")  # fmt: skip
    print(f"JSON: {json_path}")
    if png.exists() and not any(f.startswith("chart:") for f in failed):
        print(f"chart: {png}")
    if failed:
        return 1
    return 1 if args.strict and missed else 0


def main(argv: list[str] | None = None) -> int:
    """Run the report (or, with ``--child``, one measurement); return the exit status."""
    args = parse_args(argv)
    if args.child:
        return child_main(args.child)
    started = time.perf_counter()
    mode = QUICK if args.quick else FULL
    if args.lint_files is not None:
        mode = dataclasses.replace(mode, d_limit=args.lint_files or None)
    timeout = args.timeout or mode.timeout_s
    workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    if bad := [w for w in workloads if w not in WORKLOADS]:
        print(f"unknown workload {bad[0]!r}; choose from {', '.join(WORKLOADS)}", file=sys.stderr)
        return 2
    if args.workers < 1 or args.repeats < 1:
        print("--workers and --repeats must be at least 1", file=sys.stderr)
        return 2
    chosen = _choose(args, mode, workloads)
    if not chosen:
        print(f"--variants {args.variants!r} matches no variant", file=sys.stderr)
        return 2

    info = machine_info(args.workers)
    report: dict[str, Any] = {
        "mode": mode.name,
        "machine": info,
        "options": {"repeats": args.repeats, "workers": args.workers, "timeout_s": timeout},
        "sizes": asdict(mode),
        "workloads": {},
    }
    _print_header(mode, info, args.repeats)
    _calibrate(report, mode, workloads, timeout)
    for w, variants in chosen.items():
        _progress(f"{TITLES[w]} ...")
        if w == "a":
            rows = run_overhead(mode, variants, args.repeats, args.workers, timeout)
        else:
            rows = run_jobs(w, mode, variants, args.repeats, args.workers, timeout)
        report["workloads"][w] = rows
        _print_section(w, rows, report, mode, args.workers)

    if "d" in workloads:
        report["lint_trace"] = lint_trace(mode, args.workers, args.out, timeout)
    if "a" in workloads:
        report["dask_overhead"] = dask_overhead(mode, timeout)

    targets = evaluate_targets(report)
    report["targets"] = [asdict(t) for t in targets]
    print("## Targets")
    print()
    print_targets(targets)
    print()
    report["wall_s"] = time.perf_counter() - started
    return _finish(report, targets, args)


if __name__ == "__main__":
    sys.exit(main())
