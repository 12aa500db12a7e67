"""The process pool keeps two units per worker in flight; a worker's death is pinned on
the unit it was running, and the units queued behind it run on its replacement."""

from __future__ import annotations

import os

import pytest

import dagexec


def die() -> None:
    os._exit(3)


def pid_of(i: int) -> tuple[int, int]:
    return i, os.getpid()


@pytest.mark.parametrize("deaths", [1, 2])
def test_units_queued_behind_a_dying_unit_run_on_the_replacement(deaths: int) -> None:
    g = dagexec.Graph(default_kind="process")
    for d in range(deaths):
        g.add(("die", d), die)
        g.add(("after", d), pid_of, d)  # queued on the same worker, behind the death
    results = g.run(max_workers=1, on_error="continue")
    assert set(results.errors) == {("die", d) for d in range(deaths)}
    for d in range(deaths):
        cause = results.errors[("die", d)].__cause__
        assert isinstance(cause, dagexec.WorkerDied)
        assert results[("after", d)][0] == d
    pids = {results[("after", d)][1] for d in range(deaths)}
    assert os.getpid() not in pids
