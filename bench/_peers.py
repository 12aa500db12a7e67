"""The same fan-out job (``_workloads.Job``) written the way each peer's user would write it.

Every variant takes ``(job, workers)`` and returns an ``Outcome``: the result of every
(file, check) pair, the wall time of the job, and extras (dagexec's ``RunStats`` figures
and the pickled size of the values it returned, a cluster's start-up time).
``workers`` is the one worker count every variant gets: ``max_workers`` of executors,
``num_workers`` of dask, ``n_jobs`` of joblib, ``n_workers`` (one thread each) of a
distributed ``LocalCluster``.

What the wall time includes: creating and shutting down the variant's pool when the
variant's own API does that per call (``with ProcessPoolExecutor(...)``, ``dask`` get,
``Graph.run``, ``map_shared``). Two exceptions, reported separately: a distributed
``LocalCluster`` is started before the clock starts and closed after it stops (its
start-up is reported as ``startup_s``), and joblib's reusable loky workers are shut down
after the clock stops, so each repeat starts them cold like every other process variant.

"Staged" is the hand-written two-stage version: stage 1 parses every file on the pool
and keeps all the values, stage 2 submits every check with its file's value. With
threads that holds all the parses at once; with processes it also pickles each value
once back and once per check.
"""

from __future__ import annotations

import pickle
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from _workloads import Job, check, check_item, item_file, parse, parse_shared

Results = dict[tuple[int, int], int]

# ``RunStats`` fields that a dagexec Graph variant records in its outcome. Those of the
# process kinds: ``values_kept``
# stayed in the worker that computed them, ``values_moved`` were sent to a worker that
# did not (``bytes_moved`` of them, inside ``bytes_to_processes``), ``tasks_recomputed``
# ran again because a worker died holding their value.
STATS = (
    "tasks_run",
    "bytes_to_processes",
    "bytes_from_processes",
    "values_kept",
    "values_moved",
    "bytes_moved",
    "tasks_recomputed",
)


@dataclass
class Outcome:
    """What one run of a variant produced."""

    results: Results
    wall_s: float
    extra: dict[str, Any] = field(default_factory=dict)


class _Clock:
    def __init__(self) -> None:
        self.wall_s = 0.0


@contextmanager
def _timed() -> Iterator[_Clock]:
    clock = _Clock()
    t0 = time.perf_counter()
    try:
        yield clock
    finally:
        clock.wall_s = time.perf_counter() - t0


def sequential(job: Job, workers: int) -> Outcome:
    """A plain loop: the floor, and the reference result."""
    results: Results = {}
    with _timed() as clock:
        for i in range(job.files):
            value = parse(job, i)
            for r in range(job.checks):
                results[i, r] = check(job, value, i, r)
            del value
    return Outcome(results, clock.wall_s)


def _staged(pool_factory: Callable[[int], Executor], job: Job, workers: int) -> Outcome:
    with _timed() as clock, pool_factory(workers) as pool:
        values = list(pool.map(partial(parse, job), range(job.files)))
        futures = {
            (i, r): pool.submit(check, job, values[i], i, r)
            for i in range(job.files)
            for r in range(job.checks)
        }
        results = {k: f.result() for k, f in futures.items()}
        del values
    return Outcome(results, clock.wall_s)


def staged_threads(job: Job, workers: int) -> Outcome:
    """Two stages on a ``ThreadPoolExecutor``."""
    return _staged(ThreadPoolExecutor, job, workers)


def staged_processes(job: Job, workers: int) -> Outcome:
    """Two stages on the standard library's ``ProcessPoolExecutor`` (default start method)."""
    return _staged(ProcessPoolExecutor, job, workers)


def joblib_staged(job: Job, workers: int) -> Outcome:
    """Two stages with ``joblib.Parallel`` (loky backend)."""
    from joblib import Parallel, delayed
    from joblib.externals.loky import get_reusable_executor

    with _timed() as clock:
        parallel = Parallel(n_jobs=workers)
        values = parallel(delayed(parse)(job, i) for i in range(job.files))
        keys = job.pairs()
        out = parallel(delayed(check)(job, values[i], i, r) for i, r in keys)
        results = dict(zip(keys, out, strict=True))
        del values
    get_reusable_executor().shutdown(wait=True)  # cold workers in every repeat
    return Outcome(results, clock.wall_s)


def _dask_graph(job: Job) -> tuple[dict[Any, Any], list[Any]]:
    dsk: dict[Any, Any] = {}
    for i in range(job.files):
        dsk["parse", i] = (parse, job, i)
        for r in range(job.checks):
            dsk["check", i, r] = (check, job, ("parse", i), i, r)
    return dsk, [("check", i, r) for i, r in job.pairs()]


def dask_threaded(job: Job, workers: int) -> Outcome:
    """``dask.threaded.get`` on the task graph dict."""
    import dask.threaded

    dsk, keys = _dask_graph(job)
    with _timed() as clock:
        out = dask.threaded.get(dsk, keys, num_workers=workers)
    return Outcome(dict(zip(job.pairs(), out, strict=True)), clock.wall_s)


def dask_processes(job: Job, workers: int) -> Outcome:
    """dask's processes scheduler (``dask.multiprocessing.get``) on the same graph."""
    import dask.multiprocessing

    dsk, keys = _dask_graph(job)
    with _timed() as clock:
        out = dask.multiprocessing.get(dsk, keys, num_workers=workers)
    return Outcome(dict(zip(job.pairs(), out, strict=True)), clock.wall_s)


def dask_distributed(job: Job, workers: int) -> Outcome:
    """A ``distributed.LocalCluster`` of ``workers`` processes, one thread each."""
    from distributed import Client, LocalCluster

    dsk, keys = _dask_graph(job)
    t0 = time.perf_counter()
    with (
        LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
        ) as cluster,
        Client(cluster) as client,
    ):
        client.wait_for_workers(workers)
        startup = time.perf_counter() - t0
        with _timed() as clock:
            out = client.get(dsk, keys)
    return Outcome(dict(zip(job.pairs(), out, strict=True)), clock.wall_s, {"startup_s": startup})


def _dagexec_graph(kind: str, job: Job, workers: int, parse_priority: int = 0) -> Outcome:
    import dagexec

    with _timed() as clock:
        g = dagexec.Graph()
        for i in range(job.files):
            value = g.add(("parse", i), parse, job, i, kind=kind, priority=parse_priority)
            for r in range(job.checks):
                g.add(("check", i, r), check, job, value, i, r, kind=kind)
        res = g.run(max_workers=workers)
        results = {(i, r): res["check", i, r] for i, r in job.pairs()}
    extra: dict[str, Any] = {name: getattr(res.stats, name) for name in STATS}
    extra["returned_bytes"] = sum(
        len(pickle.dumps(v, protocol=pickle.HIGHEST_PROTOCOL)) for v in res.values()
    )
    return Outcome(results, clock.wall_s, extra)


def dagexec_graph_thread(job: Job, workers: int) -> Outcome:
    """``dagexec.Graph``, every task ``kind="thread"``."""
    return _dagexec_graph("thread", job, workers)


def dagexec_graph_process(job: Job, workers: int) -> Outcome:
    """``dagexec.Graph``, every task ``kind="process"``."""
    return _dagexec_graph("process", job, workers)


def dagexec_graph_thread_breadth(job: Job, workers: int) -> Outcome:
    """``dagexec.Graph`` with threads, parses given ``priority=1``: every parse runs
    before any check (breadth-first, as staging does), against the default order."""
    return _dagexec_graph("thread", job, workers, parse_priority=1)


def _dagexec_map(kind: str, job: Job, workers: int) -> Outcome:
    import dagexec

    keys = job.pairs()
    with _timed() as clock:
        out = dagexec.map_shared(
            partial(check_item, job),
            keys,
            shared=partial(parse_shared, job),
            key=item_file,
            kind=kind,
            max_workers=workers,
        )
    return Outcome(dict(zip(keys, out, strict=True)), clock.wall_s)


def dagexec_map_thread(job: Job, workers: int) -> Outcome:
    """``dagexec.map_shared``, ``kind="thread"``."""
    return _dagexec_map("thread", job, workers)


def dagexec_map_process(job: Job, workers: int) -> Outcome:
    """``dagexec.map_shared``, ``kind="process"``."""
    return _dagexec_map("process", job, workers)


VARIANTS: dict[str, Callable[[Job, int], Outcome]] = {
    "sequential": sequential,
    "staged-threads": staged_threads,
    "staged-processes": staged_processes,
    "dask-threaded": dask_threaded,
    "dask-processes": dask_processes,
    "dask-distributed": dask_distributed,
    "joblib-staged": joblib_staged,
    "dagexec-graph-thread": dagexec_graph_thread,
    "dagexec-graph-process": dagexec_graph_process,
    "dagexec-graph-thread-breadth": dagexec_graph_thread_breadth,
    "dagexec-map-thread": dagexec_map_thread,
    "dagexec-map-process": dagexec_map_process,
}
