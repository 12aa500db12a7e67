"""The public surface of dagexec: ``__all__``, docstrings, ``py.typed`` and the error tree."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

import dagexec

EXPORTS = [
    "Backoff",
    "Cancelled",
    "CycleError",
    "DagexecError",
    "DiskCache",
    "DuplicateKeyError",
    "Graph",
    "GraphError",
    "MissingDependencyError",
    "NotCacheable",
    "Ref",
    "Results",
    "RunStats",
    "Runner",
    "TaskEvent",
    "TaskFailed",
    "TaskStats",
    "TaskTimeout",
    "WorkerDied",
    "__version__",
    "imap_shared",
    "map_shared",
]

OBJECTS = [name for name in EXPORTS if name != "__version__"]


def test_all_is_pinned() -> None:
    assert dagexec.__all__ == EXPORTS


def test_executors_module_is_pinned() -> None:
    import dagexec.executors

    assert dagexec.executors.__all__ == ["DaskExecutor", "dask"]
    for name in dagexec.executors.__all__:
        assert getattr(dagexec.executors, name).__doc__


def test_star_import_gives_exactly_all() -> None:
    namespace: dict[str, object] = {}
    exec("from dagexec import *", namespace)
    namespace.pop("__builtins__")
    assert sorted(namespace) == sorted(EXPORTS)


@pytest.mark.parametrize("name", EXPORTS)
def test_each_export_is_importable(name: str) -> None:
    module = importlib.import_module("dagexec")
    assert getattr(module, name) is getattr(dagexec, name)


@pytest.mark.parametrize("name", OBJECTS)
def test_each_export_has_its_own_docstring(name: str) -> None:
    obj = getattr(dagexec, name)
    if isinstance(obj, type):
        assert "__doc__" in vars(obj), f"{name} inherits its docstring"
    assert obj.__doc__.strip()


@pytest.mark.parametrize("name", OBJECTS)
def test_public_methods_of_exports_have_docstrings(name: str) -> None:
    obj = getattr(dagexec, name)
    missing = [
        attr
        for attr, value in vars(obj).items()
        if not attr.startswith("_")
        and (callable(value) or isinstance(value, property))
        and not (value.__doc__ or "").strip()
    ]
    assert missing == []


def test_version_is_a_string() -> None:
    assert isinstance(dagexec.__version__, str)
    assert dagexec.__version__


def test_package_is_marked_typed() -> None:
    assert (Path(dagexec.__file__).parent / "py.typed").is_file()


@pytest.mark.parametrize(
    "error", [dagexec.CycleError, dagexec.MissingDependencyError, dagexec.DuplicateKeyError]
)
def test_graph_errors_subclass_graph_error(error: type[Exception]) -> None:
    assert issubclass(error, dagexec.GraphError)


def test_graph_error_is_a_dagexec_error_and_a_value_error() -> None:
    assert issubclass(dagexec.GraphError, dagexec.DagexecError)
    assert issubclass(dagexec.GraphError, ValueError)


@pytest.mark.parametrize("error", [dagexec.TaskFailed, dagexec.WorkerDied])
def test_run_errors_subclass_dagexec_error(error: type[Exception]) -> None:
    assert issubclass(error, dagexec.DagexecError)


def test_task_timeout_is_a_task_failed_and_a_timeout_error() -> None:
    assert issubclass(dagexec.TaskTimeout, dagexec.TaskFailed)
    assert issubclass(dagexec.TaskTimeout, TimeoutError)


def test_cancelled_is_a_dagexec_error_and_a_futures_cancelled_error() -> None:
    import concurrent.futures

    assert issubclass(dagexec.Cancelled, dagexec.DagexecError)
    assert issubclass(dagexec.Cancelled, concurrent.futures.CancelledError)


def test_dagexec_error_is_an_exception() -> None:
    assert issubclass(dagexec.DagexecError, Exception)
