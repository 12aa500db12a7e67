"""The fan-out workloads of ``bench/report.py``: a shared parse per file, several checks each.

Everything here lives in an importable module (``bench/`` is put on ``PYTHONPATH`` for
every variant's process tree), so process-based peers pickle these functions by
reference instead of by value.

A *job* is ``files`` parses, each followed by ``checks`` checks that read the parse's
value::

    parse(job, i) ──▶ check(job, value, i, 0)
                  ├─▶ check(job, value, i, 1)
                  └─▶ ...  check(job, value, i, checks - 1)

The parse value (``Parsed``, a plain dict, so any peer can pickle it) mixes two kinds of
payload, because what it costs to move a value between processes depends on its shape:

* ``rows``: a list of ``rows`` tuples of two ints (0..65535 and 0..32767) built by a
  pure-Python LCG loop seeded by the file id (before it, ``spin`` iterations of the same
  loop that build nothing: the rest of the parse's CPU time). Rows pickle like a real
  parse result, object by object, not as one memcpy;
* ``blob``: ``blob_bytes`` of bytes (a random 64 KiB chunk per file, repeated: cheap to
  build, but written page by page, so it is all in RSS); it pickles at memcpy speed.

(b) ``cpu_job``: ~40 ms of pure-Python CPU into ~20 MB in memory (100,000 rows = 12 MB,
plus an 8 MB blob), 8.8 MB pickled (~10 ms to pickle, ~16 ms to unpickle on the 2-core
VM this was tuned on); 8 checks of ~10 ms, each a pass over every row plus a CRC of
4 KiB of the blob. (c) ``memory_job``: ~50 MB values (10,000 rows + a 48 MiB blob, ~30 ms
to build) with 4 light checks (a quarter of the rows and a CRC of 1 MiB, ~0.5 ms).
``bench/report.py`` measures and prints these figures on the machine it runs on.

Each parse call appends one line ``"<file id>\\n"`` to the file named by the environment
variable ``DAGEXEC_BENCH_PARSE_LOG`` (``O_APPEND``: atomic for such short writes, from
threads, processes and dask workers alike), so the driver counts how often each file
was parsed, whichever process parsed it.
"""

from __future__ import annotations

import hashlib
import os
import random
import zlib
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PARSE_LOG_ENV = "DAGEXEC_BENCH_PARSE_LOG"
_CHUNK = 2**16

Parsed = dict[str, Any]  # {"id": int, "rows": list[tuple[int, int]], "blob": bytes}


@dataclass(frozen=True)
class Job:
    """One fan-out workload: how many files, checks per file, and what a parse builds."""

    files: int
    checks: int
    spin: int  # iterations of a pure-Python loop that builds nothing (more parse CPU)
    rows: int  # (int, int) tuples built by a pure-Python loop (CPU time and pickling cost)
    blob_bytes: int  # a random 64 KiB chunk, repeated
    check_passes: int = 1  # walks over every row per check; 0: one 1/checks slice
    check_window: int = 4096  # bytes of the blob each check CRCs

    def pairs(self) -> list[tuple[int, int]]:
        """Every (file, check) pair, in the order the sequential loop runs them."""
        return [(i, r) for i in range(self.files) for r in range(self.checks)]


def cpu_job(files: int) -> Job:
    """(b): ~40 ms of pure-Python parse into ~20 MB, 8 checks of ~10 ms each."""
    return Job(files=files, checks=8, spin=0, rows=100_000, blob_bytes=8 * 10**6, check_passes=1)


def memory_job(files: int) -> Job:
    """(c): parses of ~50 MB each, 4 light checks each."""
    return Job(
        files=files,
        checks=4,
        spin=0,
        rows=10_000,
        blob_bytes=48 * 2**20,
        check_passes=0,
        check_window=2**20,
    )


def _log_parse(file_id: int) -> None:
    path = os.environ.get(PARSE_LOG_ENV)
    if not path:
        return
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, b"%d\n" % file_id)
    finally:
        os.close(fd)


def parse(job: Job, file_id: int) -> Parsed:
    """Build file ``file_id``'s value: the shared work, logged once per call."""
    _log_parse(file_id)
    x = file_id * 2654435761 + 1
    for _ in range(job.spin):
        x = (x * 1103515245 + 12345) & 0x7FFFFFFF
    rows: list[tuple[int, int]] = []
    append = rows.append
    for _ in range(job.rows):
        x = (x * 1103515245 + 12345) & 0x7FFFFFFF
        append((x & 0xFFFF, x >> 16))
    chunk = random.Random(file_id).randbytes(_CHUNK)
    blob = chunk * (job.blob_bytes // _CHUNK) + chunk[: job.blob_bytes % _CHUNK]
    return {"id": file_id, "rows": rows, "blob": blob}


def check(job: Job, value: Parsed, file_id: int, rule: int) -> int:
    """Check ``rule`` of file ``file_id``: an int that depends on the parse value."""
    s: int = rule * 7919 + value["id"]
    rows = value["rows"]
    for p in range(job.check_passes):
        for a, b in rows:
            s = (s * 31 + (a ^ b) + p) & 0xFFFFFFFF
    if not job.check_passes:
        for a, b in rows[rule :: job.checks]:
            s = (s * 31 + (a ^ b)) & 0xFFFFFFFF
    blob: bytes = value["blob"]
    start = rule * (len(blob) // job.checks)
    return s ^ zlib.crc32(memoryview(blob)[start : start + job.check_window]) ^ (file_id << 24)


# map_shared spells the same work as fn(item, shared_value) and shared(key):


def parse_shared(job: Job, file_id: int) -> Parsed:
    """``shared`` of map_shared: the parse of one file."""
    return parse(job, file_id)


def check_item(job: Job, item: tuple[int, int], value: Parsed) -> int:
    """``fn`` of map_shared: one (file, rule) item with its file's parse value."""
    return check(job, value, item[0], item[1])


def item_file(item: tuple[int, int]) -> int:
    """``key`` of map_shared: the file an item belongs to."""
    return item[0]


def checksum(results: Mapping[tuple[int, int], int]) -> str:
    """A deterministic digest of every (file, check) result."""
    h = hashlib.sha256()
    for (i, r), v in sorted(results.items()):
        h.update(b"%d:%d:%d;" % (i, r, v))
    return h.hexdigest()[:16]


def digest(obj: object) -> str:
    """A deterministic digest of plain data (tuples, lists, str, int) by its repr."""
    return hashlib.sha256(repr(obj).encode()).hexdigest()[:16]


def parse_counts(log: Path, files: int) -> dict[str, Any]:
    """How often each file was parsed, from the log; ``max`` > 1 means repeated work."""
    text = log.read_text() if log.exists() else ""
    counts = Counter(int(x) for x in text.split())
    per_file = [counts.get(i, 0) for i in range(files)]
    return {
        "total": sum(per_file),
        "min": min(per_file, default=0),
        "max": max(per_file, default=0),
        "per_file_mean": sum(per_file) / files if files else 0.0,
    }
