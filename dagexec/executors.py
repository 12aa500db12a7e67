"""Executors that run a Graph somewhere else: a dask.distributed cluster.

Any ``concurrent.futures.Executor`` can run a kind of task (``run(executors=...)``);
``dask(client)`` gives the one for a dask cluster in one line::

    from distributed import Client, LocalCluster

    import dagexec
    import dagexec.executors

    with LocalCluster(n_workers=2) as cluster, Client(cluster) as client:
        results = graph.run(executors=dagexec.executors.dask(client))

Process tasks then run on the cluster's workers, pickled with cloudpickle as for local
worker processes; thread and inline tasks stay here unless ``kinds`` says otherwise.
dagexec still owns the run: each task is submitted once, and errors, retries, progress,
events and cancellation work as locally. What differs on a cluster:

- A worker that dies under a task does not fail it at once: dask runs the task again
  on another worker, up to ``distributed.scheduler.allowed-failures`` times (3 by
  default), then gives up with ``KilledWorker``, which dagexec reports as
  ``WorkerDied`` (and retries if ``retries`` allow). Set ``allowed-failures`` to 0 on
  the scheduler to leave retrying to dagexec alone. A value held only by a worker that
  died before the caller fetched it is computed again by dask (as dagexec's own
  process pool computes again the values a dead worker held).
- Cancelling a run drops its tasks from the cluster, running ones too; but a worker
  thread cannot be interrupted, so a task already running runs on until its function
  returns (its value is discarded).
- ``timeout=`` counts from a task's submission, and a task past it is given up, not
  stopped.
- Each task costs a round trip through the dask scheduler: use dask for tasks that
  take much longer than that (``bench/dask_overhead.py`` measures it).

``client.get_executor()`` (dask's own ``ClientExecutor``) works too, but pass it
``pure=False``, and know that it can leave a task's future pending for good when the
worker holding its value dies and the task then fails (its result is never set);
``DaskExecutor`` settles every future.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable
from concurrent.futures import Executor, Future, InvalidStateError
from contextlib import suppress
from functools import partial
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

if TYPE_CHECKING:
    from distributed import Client

__all__ = ["DaskExecutor", "dask"]

P = ParamSpec("P")
T = TypeVar("T")

_KINDS = ("process", "thread")


def dask(client: Client, *, kinds: Iterable[str] = ("process",)) -> dict[str, Executor]:
    """Return ``executors=`` that run the given kinds of task on a dask cluster.

    Args:
        client: a connected ``distributed.Client``; it stays yours to close.
        kinds: the kinds of task to send to the cluster: ``"process"`` (the default)
            and/or ``"thread"``. Thread tasks sent there are pickled like process tasks.

    Returns:
        A dict for ``Graph.run(executors=...)`` or ``Runner(executors=...)``: one
        ``DaskExecutor`` per kind.

    Raises:
        ImportError: dask.distributed is not installed.
        TypeError: ``client`` is not a ``distributed.Client``.
        ValueError: ``kinds`` is empty or names a kind that cannot run on a cluster.

    Example:
        >>> results = graph.run(executors=dagexec.executors.dask(client))  # doctest: +SKIP
    """
    wanted = [kinds] if isinstance(kinds, str) else list(kinds)
    for kind in wanted:
        if kind not in _KINDS:
            raise ValueError(
                f"kinds={wanted!r}: {kind!r} cannot run on a dask cluster; "
                "use 'process' and/or 'thread'"
            )
    if not wanted:
        raise ValueError("kinds is empty: name 'process' and/or 'thread'")
    return {kind: DaskExecutor(client) for kind in dict.fromkeys(wanted)}


class DaskExecutor(Executor):
    """Run calls on a dask.distributed cluster: ``submit`` returns a plain
    ``concurrent.futures.Future``.

    Each call is a task of its own (``pure=False``: dask never merges two calls that
    look alike; dagexec decides what runs once, and a retry must run again). Every
    future is settled: with the value, with the exception dask reports (the task's, or
    ``KilledWorker``), or cancelled when dask cancelled the task. Cancelling a future
    cancels its task on the cluster, even a running one (whose worker thread runs on
    until the function returns; its value is dropped).
    """

    def __init__(self, client: Client) -> None:
        """Wrap ``client``, a connected ``distributed.Client`` (it stays yours to close).

        Raises:
            ImportError: dask.distributed is not installed.
            TypeError: ``client`` is not a ``distributed.Client``.
        """
        try:
            from distributed import Client
        except ImportError as exc:
            raise ImportError(
                "dagexec.executors.dask needs dask.distributed: pip install 'dagexec[dask]'"
            ) from exc
        if not isinstance(client, Client):
            raise TypeError(f"DaskExecutor takes a distributed.Client, not {client!r}")
        self._client: Any = client  # distributed is untyped
        self._tasks: weakref.WeakSet[Any] = weakref.WeakSet()
        self._shut = False

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        """Run ``fn(*args, **kwargs)`` on the cluster; return a Future of its value.

        Raises:
            RuntimeError: the executor is shut down.
        """
        if self._shut:
            raise RuntimeError("cannot schedule new futures after shutdown")
        task = self._client.submit(fn, *args, pure=False, **kwargs)
        self._tasks.add(task)
        future: Future[T] = Future()
        # Weakly: an exception rebuilt from the worker (tblib) keeps alive the frames it
        # was unpickled under, ours among them; they must not keep the task on the cluster.
        future.add_done_callback(partial(_withdraw, weakref.ref(task)))
        self._client.loop.add_callback(_settle, self._client, task, future)
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Submit nothing more; ``cancel_futures`` cancels the tasks not done; ``wait``
        waits for the others. The client stays open."""
        self._shut = True
        tasks = [task for task in list(self._tasks) if not task.done()]
        if cancel_futures and tasks:
            self._client.cancel(tasks)
        elif wait and tasks:
            import distributed

            waits: Any = distributed.wait  # untyped
            waits(tasks)


async def _settle(client: Any, task: Any, future: Future[Any]) -> None:
    """Settle ``future`` as dask's ``task`` ends (on the client's event loop).

    The task is let go of before ``future`` is settled: the callbacks that run then
    (and whatever they keep) must not keep it, and its value, on the cluster.
    """
    try:
        value = await client.gather(task, asynchronous=True)
    except BaseException as exc:
        cancelled = task.status == "cancelled"
        del task
        if cancelled:
            _cancel(future)
            return
        # Its traceback holds the frames that held the task, and dask keeps this
        # exception: the task would never be released.
        exc.__traceback__ = None
        with suppress(InvalidStateError):  # cancelled meanwhile
            future.set_exception(exc)
        return
    del task
    with suppress(InvalidStateError):  # cancelled meanwhile: the value is dropped
        future.set_result(value)


def _cancel(future: Future[Any]) -> None:
    if future.cancel():
        future.set_running_or_notify_cancel()  # wakes concurrent.futures.wait()


def _withdraw(ref: weakref.ref[Any], future: Future[Any]) -> None:
    """Cancel dask's task when its future was cancelled (not when dask did it)."""
    task = ref()
    if future.cancelled() and task is not None and task.status != "cancelled":
        task.cancel()
