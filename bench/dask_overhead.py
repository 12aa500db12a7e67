"""What a task costs on dask: dagexec on a LocalCluster beside local processes and plain dask.

What is measured
----------------
``--n`` (2,000) independent tiny tasks (``tiny(i) -> i + 1``), the wall time of the
whole batch divided by the number of tasks: the per-task overhead, since the work
itself is nothing. Every variant has two worker processes:

* ``dagexec, local processes``: ``Runner(max_workers={"process": 2})``, a Graph of
  process tasks (loky workers, started by a warm-up run before the clock);
* ``dagexec on dask``: the same Graph with ``executors=dagexec.executors.dask(client)``
  on a ``LocalCluster(n_workers=2, threads_per_worker=1)``;
* ``dagexec on dask's ClientExecutor``: ``executors={"process":
  client.get_executor(pure=False)}``, dask's own concurrent.futures bridge;
* ``dask client.submit``: one ``client.submit(tiny, i, pure=False)`` per task, then
  ``client.gather``: what dask itself costs per task;
* ``dask client.map``: ``client.map(tiny, range(n), pure=False)``, then gather.

The variants are interleaved, ``--repeats`` times each, ``gc.collect()`` before every
batch; the graph is built before the clock starts. Reported: the median µs per task
(min and max beside it), and ratios to dagexec on local processes and to plain
``client.submit``.

Run:  python bench/dask_overhead.py [--n 2000] [--repeats 5]
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

# Benchmark the checkout this script lives in, installed or not.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import dagexec
import dagexec.executors

WORKERS = 2


def tiny(i: int) -> int:
    return i + 1


def graph(n: int) -> dagexec.Graph:
    g = dagexec.Graph()
    for i in range(n):
        g.add(i, tiny, i, kind="process")
    return g


def dagexec_variant(runner: dagexec.Runner, n: int) -> Callable[[], Callable[[], None]]:
    """Build the graph now; the returned callable runs it (and checks the results)."""

    def prepare() -> Callable[[], None]:
        runner.clear()  # a Runner holds the values it handed out: compute them again
        g = graph(n)

        def go() -> None:
            results = runner.run(g)
            assert results[n - 1] == n

        return go

    return prepare


def submit_variant(client: Any, n: int) -> Callable[[], Callable[[], None]]:
    def prepare() -> Callable[[], None]:
        def go() -> None:
            futures = [client.submit(tiny, i, pure=False) for i in range(n)]
            assert client.gather(futures)[-1] == n

        return go

    return prepare


def map_variant(client: Any, n: int) -> Callable[[], Callable[[], None]]:
    def prepare() -> Callable[[], None]:
        def go() -> None:
            futures = client.map(tiny, range(n), pure=False)
            assert client.gather(futures)[-1] == n

        return go

    return prepare


def measure(
    variants: dict[str, Callable[[], Callable[[], None]]], repeats: int
) -> dict[str, list[float]]:
    """Run each variant ``repeats`` times, interleaved; return the wall times."""
    times: dict[str, list[float]] = {name: [] for name in variants}
    for prepare in variants.values():  # warm up: workers started, code imported
        prepare()()
    for _ in range(repeats):
        for name, prepare in variants.items():
            go = prepare()
            gc.collect()
            start = time.perf_counter()
            go()
            times[name].append(time.perf_counter() - start)
            del go
    return times


def table(times: dict[str, list[float]], n: int, local: str, plain: str) -> str:
    def us(t: float) -> float:
        return t / n * 1e6

    base = statistics.median(times[local])
    dask_base = statistics.median(times[plain])
    rows = [
        "| variant | µs/task (median) | min-max | x dagexec local | x client.submit |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, runs in times.items():
        med = statistics.median(runs)
        rows.append(
            f"| {name} | {us(med):,.0f} | {us(min(runs)):,.0f}-{us(max(runs)):,.0f} "
            f"| {med / base:.2f} | {med / dask_base:.2f} |"
        )
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=2000, help="tasks per batch")
    parser.add_argument("--repeats", type=int, default=5, help="batches per variant")
    args = parser.parse_args()

    import dask
    import distributed

    logging.getLogger("distributed").setLevel(logging.ERROR)
    n = args.n
    with (
        distributed.LocalCluster(
            n_workers=WORKERS, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster,
        distributed.Client(cluster) as client,
        dagexec.Runner(max_workers={"process": WORKERS}) as local,
        dagexec.Runner(executors=dagexec.executors.dask(client)) as on_dask,
        dagexec.Runner(executors={"process": client.get_executor(pure=False)}) as on_cf,
    ):
        variants = {
            "dagexec, local processes": dagexec_variant(local, n),
            "dagexec on dask (`executors.dask`)": dagexec_variant(on_dask, n),
            "dagexec on dask's ClientExecutor": dagexec_variant(on_cf, n),
            "dask `client.submit` + gather": submit_variant(client, n),
            "dask `client.map` + gather": map_variant(client, n),
        }
        times = measure(variants, args.repeats)
    print(
        f"## Per-task overhead on dask ({n:,} no-op tasks, {WORKERS} worker processes, "
        f"median of {args.repeats})\n"
    )
    print(table(times, n, "dagexec, local processes", "dask `client.submit` + gather"))
    print(
        f"\n{platform.platform()}, Python {platform.python_version()}, "
        f"{os.cpu_count()} CPUs, dask {dask.__version__}, distributed "
        f"{distributed.__version__}, dagexec {getattr(dagexec, '__version__', '?')}"
    )


if __name__ == "__main__":
    main()
