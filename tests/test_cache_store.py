"""DiskCache, the storage under ``cache=``: real files, real processes, no mocks.

Writers in other processes are plain ``python -c`` children so that the tests can
SIGKILL them mid-write and count exactly what they leave behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import cloudpickle
import pytest

import dagexec
from dagexec._cache import DiskCache, NotCacheable


def key(name: object) -> str:
    return hashlib.sha256(repr(name).encode()).hexdigest()


def entry_file(cache: DiskCache, k: str) -> Path:
    return cache.path / k[:2] / f"{k}.dxc"


def files_under(path: Path) -> list[Path]:
    return sorted(p for p in path.rglob("*") if not p.is_dir())


def make_adder(n: int) -> Callable[[int], int]:
    return lambda x: x + n


class Point:
    def __init__(self, x: int, y: int) -> None:
        self.x, self.y = x, y

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Point) and (self.x, self.y) == (other.x, other.y)

    __hash__ = None  # type: ignore[assignment]


# -- round trips -----------------------------------------------------------------------------

BIG = {"rows": [list(range(i, i + 50)) for i in range(5000)], "blob": bytes(range(256)) * 4000}


@pytest.mark.parametrize(
    "value",
    [None, b"", b"\x00bytes\xff", "text", 0, 3.5, (1, "a", None), Point(1, 2), BIG],
    ids=["None", "empty-bytes", "bytes", "str", "int", "float", "tuple", "object", "big"],
)
def test_round_trip(tmp_path: Path, value: Any) -> None:
    cache = DiskCache(tmp_path)
    written = cache.put(key(1), value)
    assert written == entry_file(cache, key(1)).stat().st_size
    assert cache.get(key(1)) == (True, value)
    assert key(1) in cache


def test_lambdas_and_closures_round_trip_by_value(tmp_path: Path) -> None:
    cache = DiskCache(tmp_path)
    cache.put(key("add"), make_adder(5))
    cache.put(key("sq"), lambda x: x * x)
    hit, add = cache.get(key("add"))
    assert hit
    assert add(1) == 6
    assert cache.get(key("sq"))[1](7) == 49


def test_unknown_key_is_a_miss(tmp_path: Path) -> None:
    cache = DiskCache(tmp_path)
    assert cache.get(key("nothing")) == (False, None)
    assert cache.get_bytes(key("nothing")) is None
    assert key("nothing") not in cache
    assert len(cache) == 0


def test_put_bytes_and_get_bytes_skip_the_pickling(tmp_path: Path) -> None:
    cache = DiskCache(tmp_path)
    data = cloudpickle.dumps({"a": [1, 2]})
    assert cache.put_bytes(key(1), data) == entry_file(cache, key(1)).stat().st_size
    assert cache.get_bytes(key(1)) == data
    assert cache.get(key(1)) == (True, {"a": [1, 2]})
    cache.put_bytes(key(2), memoryview(bytearray(data)))
    assert cache.get_bytes(key(2)) == data
    with pytest.raises(TypeError, match="data must be bytes"):
        cache.put_bytes(key(3), "text")  # type: ignore[arg-type]


BAD_KEYS = [
    "abc",  # too short
    "a" * 129,  # too long
    "0123456789ABCDEF",  # uppercase
    "0123456789abcdeg",
    "../../../../etc/passwd",
    "0123456789abcdef\n",
    "0123456789abcde/",
    "",
]


@pytest.mark.parametrize("bad", BAD_KEYS)
def test_malformed_keys_are_rejected_before_touching_the_disk(tmp_path: Path, bad: str) -> None:
    cache = DiskCache(tmp_path / "c")
    for call in (
        lambda: cache.get(bad),
        lambda: cache.get_bytes(bad),
        lambda: cache.put(bad, 1),
        lambda: cache.put_bytes(bad, b"x"),
    ):
        with pytest.raises(ValueError, match="cache key"):
            call()
    assert bad not in cache
    assert files_under(tmp_path) == []


def test_non_string_keys_are_a_type_error(tmp_path: Path) -> None:
    cache = DiskCache(tmp_path)
    with pytest.raises(TypeError, match="cache key must be a str"):
        cache.get(b"0123456789abcdef")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="cache key must be a str"):
        cache.put(12345678901234567890, 1)  # type: ignore[arg-type]
    assert 12345678901234567890 not in cache
    assert key(1).upper() not in cache


def test_keys_of_16_and_128_digits_are_fine(tmp_path: Path) -> None:
    cache = DiskCache(tmp_path)
    for k in ("0" * 16, "f" * 128):
        cache.put(k, k)
        assert cache.get(k) == (True, k)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"max_bytes": 0}, ValueError, "max_bytes must be positive"),
        ({"max_bytes": -5}, ValueError, "max_bytes must be positive"),
        ({"max_bytes": "10"}, TypeError, "max_bytes must be an int"),
        ({"max_bytes": True}, TypeError, "max_bytes must be an int"),
        ({"max_bytes": 1.5}, TypeError, "max_bytes must be an int"),
        ({"fsync": "yes"}, TypeError, "fsync must be a bool"),
    ],
)
def test_bad_arguments_name_the_argument(
    tmp_path: Path, kwargs: dict[str, Any], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        DiskCache(tmp_path, **kwargs)


def test_path_must_be_a_directory(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="path must be"):
        DiskCache(42)  # type: ignore[arg-type]
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match="not a directory"):
        DiskCache(tmp_path / "file")
    cache = DiskCache(str(tmp_path / "new" / "nested"))
    assert cache.path.is_dir()
    assert repr(cache) == f"DiskCache({str(tmp_path / 'new' / 'nested')!r}, max_bytes=None)"


# -- damage ------------------------------------------------------------------------------------


def _truncate_half(p: Path) -> None:
    os.truncate(p, p.stat().st_size // 2)


def _truncate_to_header(p: Path) -> None:
    os.truncate(p, 32)


def _flip_payload_byte(p: Path) -> None:
    data = bytearray(p.read_bytes())
    data[-100] ^= 0x01
    p.write_bytes(bytes(data))


def _flip_checksum_byte(p: Path) -> None:
    data = bytearray(p.read_bytes())
    data[20] ^= 0x80
    p.write_bytes(bytes(data))


def _garbage_header(p: Path) -> None:
    data = p.read_bytes()
    p.write_bytes(b"\xde\xad\xbe\xef" * 8 + data[32:])


def _bad_version(p: Path) -> None:
    data = bytearray(p.read_bytes())
    data[4] = 99
    p.write_bytes(bytes(data))


def _longer_length_field(p: Path) -> None:
    data = bytearray(p.read_bytes())
    data[8] ^= 0x01
    p.write_bytes(bytes(data))


def _extra_trailing_byte(p: Path) -> None:
    with p.open("ab") as f:
        f.write(b"\x00")


def _zero_length(p: Path) -> None:
    p.write_bytes(b"")


def _a_directory_instead(p: Path) -> None:
    p.unlink()
    (p / "inner").mkdir(parents=True)
    (p / "inner" / "file").write_text("x")


def _another_keys_entry(p: Path) -> None:
    # A whole, valid entry stored under the wrong name: the key is in the checksum.
    other = p.parent.parent / key("other")[:2] / f"{key('other')}.dxc"
    p.write_bytes(other.read_bytes())


DAMAGE = [
    _truncate_half,
    _truncate_to_header,
    _flip_payload_byte,
    _flip_checksum_byte,
    _garbage_header,
    _bad_version,
    _longer_length_field,
    _extra_trailing_byte,
    _zero_length,
    _a_directory_instead,
    _another_keys_entry,
]


@pytest.mark.parametrize("damage", DAMAGE, ids=lambda f: f.__name__.strip("_"))
@pytest.mark.parametrize("read", ["get", "get_bytes"])
def test_a_damaged_entry_is_a_miss_and_is_removed(
    tmp_path: Path, damage: Callable[[Path], None], read: str
) -> None:
    cache = DiskCache(tmp_path)
    value = {"payload": bytes(range(256)) * 8}
    cache.put(key("other"), "another value")
    cache.put(key(1), value)
    damage(entry_file(cache, key(1)))

    if read == "get":
        assert cache.get(key(1)) == (False, None)
    else:
        assert cache.get_bytes(key(1)) is None
    assert not entry_file(cache, key(1)).exists()
    assert key(1) not in cache
    assert cache.get(key("other")) == (True, "another value")
    cache.put(key(1), value)
    assert cache.get(key(1)) == (True, value)


def test_a_whole_entry_that_does_not_unpickle_is_a_miss_and_is_removed(tmp_path: Path) -> None:
    cache = DiskCache(tmp_path)
    cache.put_bytes(key(1), b"this is not a pickle")
    assert key(1) in cache
    assert cache.get(key(1)) == (False, None)
    assert not entry_file(cache, key(1)).exists()


def test_the_raw_payload_of_a_valid_entry_is_served_as_is(tmp_path: Path) -> None:
    cache = DiskCache(tmp_path)
    cache.put_bytes(key(1), b"this is not a pickle")
    assert cache.get_bytes(key(1)) == b"this is not a pickle"


# -- not cacheable -----------------------------------------------------------------------------


class _RefusesPickling:
    def __reduce__(self) -> tuple[Any, ...]:
        raise RuntimeError("no pickling for me")


def _generator() -> Iterator[int]:
    yield 1


@pytest.mark.parametrize(
    "make",
    [threading.Lock, _generator, lambda: {"nested": [threading.Lock()]}, _RefusesPickling],
    ids=["lock", "generator", "nested-lock", "reduce-raises"],
)
def test_an_unpicklable_value_raises_not_cacheable_and_leaves_nothing(
    tmp_path: Path, make: Callable[[], Any]
) -> None:
    cache = DiskCache(tmp_path / "c", max_bytes=10_000)
    value = make()
    with pytest.raises(NotCacheable, match="cannot be pickled") as info:
        cache.put(key(1), value)
    assert isinstance(info.value, dagexec.DagexecError)
    assert info.value.__cause__ is not None
    assert info.value.value_type is type(value)
    assert files_under(tmp_path) == []
    assert len(cache) == 0
    assert cache.get(key(1)) == (False, None)


def test_not_cacheable_pickles() -> None:
    err = pickle.loads(pickle.dumps(NotCacheable(threading.Thread)))
    assert isinstance(err, NotCacheable)
    assert err.value_type is threading.Thread
    assert "threading.Thread" in str(err)


# -- persistence, len, size, clear --------------------------------------------------------------


def test_entries_outlive_the_object_and_clear_removes_them(tmp_path: Path) -> None:
    first = DiskCache(tmp_path)
    sizes = [first.put(key(i), list(range(i * 100))) for i in range(5)]
    again = DiskCache(tmp_path)
    assert again.get(key(3)) == (True, list(range(300)))
    assert len(again) == 5
    assert again.size_bytes() == sum(sizes)

    again.put(key(3), list(range(300)))  # replacing an entry does not add one
    assert len(again) == 5
    assert again.size_bytes() == sum(sizes)

    again.clear()
    assert len(again) == 0
    assert again.size_bytes() == 0
    assert first.get(key(3)) == (False, None)
    first.put(key(3), "back")
    assert again.get(key(3)) == (True, "back")


def test_a_cache_object_pickles_as_its_settings(tmp_path: Path) -> None:
    cache = DiskCache(tmp_path, max_bytes=12345, fsync=True)
    cache.put(key(1), "v")
    copy = pickle.loads(pickle.dumps(cache))
    assert (copy.path, copy.max_bytes, copy.fsync) == (cache.path, 12345, True)
    assert copy.get(key(1)) == (True, "v")


def test_fsync_writes_the_same_entries(tmp_path: Path) -> None:
    cache = DiskCache(tmp_path, fsync=True)
    cache.put(key(1), "durable")
    assert DiskCache(tmp_path).get(key(1)) == (True, "durable")


def _temp_file(cache: DiskCache, name: str, age_s: float) -> Path:
    p = cache.path / name[:2] / f".{name}.999.abcd1234.tmp"
    p.parent.mkdir(exist_ok=True)
    p.write_bytes(b"half an entry")
    then = time.time() - age_s
    os.utime(p, (then, then))
    return p


def test_temp_files_are_not_entries_and_stale_ones_are_swept(tmp_path: Path) -> None:
    cache = DiskCache(tmp_path, max_bytes=1_000_000)
    stale = _temp_file(cache, key("stale"), age_s=2 * 3600)
    fresh = _temp_file(cache, key("fresh"), age_s=60)
    assert len(cache) == 0
    assert cache.size_bytes() == 0
    assert cache.get(key("stale")) == (False, None)

    cache.put(key(1), "x")  # the first put of a bounded cache scans the directory
    assert not stale.exists()
    assert fresh.exists()  # may be a write in progress elsewhere
    stale = _temp_file(cache, key("stale"), age_s=2 * 3600)
    cache.clear()
    assert not stale.exists()
    assert fresh.exists()


# -- size limit and LRU --------------------------------------------------------------------------

VALUE = b"v" * 1000


def test_the_least_recently_used_entry_goes_first(tmp_path: Path) -> None:
    probe = DiskCache(tmp_path / "probe")
    size = probe.put(key("probe"), VALUE)
    cache = DiskCache(tmp_path / "c", max_bytes=int(size * 3.5))
    for name in "abc":
        cache.put(key(name), VALUE)
    assert cache.get(key("a")) == (True, VALUE)
    cache.put(key("d"), VALUE)
    assert {n for n in "abcd" if key(n) in cache} == {"a", "c", "d"}
    assert cache.size_bytes() <= cache.max_bytes  # type: ignore[operator]


def test_eviction_goes_down_to_90_percent_oldest_first(tmp_path: Path) -> None:
    probe = DiskCache(tmp_path / "probe")
    size = probe.put(key("probe"), VALUE)
    cache = DiskCache(tmp_path / "c", max_bytes=size * 10)
    for i in range(10):
        cache.put(key(i), VALUE)
    assert len(cache) == 10  # exactly at the limit: nothing goes yet
    cache.get_bytes(key(0))
    cache.put(key(10), VALUE)
    kept = {i for i in range(11) if key(i) in cache}
    assert kept == {0, *range(3, 11)}  # 9 entries = 90%; 1 and 2 were the oldest
    assert cache.size_bytes() == 9 * size


def test_the_entry_just_written_is_kept(tmp_path: Path) -> None:
    probe = DiskCache(tmp_path / "probe")
    size = probe.put(key("probe"), VALUE)
    cache = DiskCache(tmp_path / "c", max_bytes=size + 10)
    cache.put(key("a"), VALUE)
    cache.put(key("b"), VALUE)
    assert key("a") not in cache
    assert cache.get(key("b")) == (True, VALUE)


def test_a_value_larger_than_the_limit_is_not_stored(tmp_path: Path) -> None:
    cache = DiskCache(tmp_path, max_bytes=500)
    cache.put(key("small"), "s")
    assert cache.put(key("big"), VALUE) == 0
    assert key("big") not in cache
    assert cache.get(key("small")) == (True, "s")


def test_many_puts_stay_under_the_limit(tmp_path: Path) -> None:
    cache = DiskCache(tmp_path, max_bytes=50_000)
    for i in range(300):
        cache.put(key(i), bytes([i % 256]) * (100 + 37 * (i % 50)))
        assert cache.size_bytes() <= 50_000
    assert cache.get(key(299)) == (True, bytes([299 % 256]) * (100 + 37 * (299 % 50)))
    assert len(cache) > 10


def test_an_existing_directory_over_the_limit_is_trimmed_on_the_first_put(tmp_path: Path) -> None:
    unbounded = DiskCache(tmp_path)
    size = sum(unbounded.put(key(i), VALUE) for i in range(20))
    bounded = DiskCache(tmp_path, max_bytes=size // 2)
    bounded.put(key("new"), VALUE)
    assert bounded.size_bytes() <= size // 2
    assert key("new") in bounded
    assert key(19) in bounded
    assert key(0) not in bounded


# -- other processes -------------------------------------------------------------------------------

_KILLED_WRITER = """
import sys
from dagexec._cache import DiskCache
cache = DiskCache(sys.argv[1], fsync=True)
value = bytes(range(256)) * (int(sys.argv[3]) // 256)
print("ready", flush=True)
cache.put(sys.argv[2], value)
print("done", flush=True)
"""

_BIG = 48 * 2**20


def _kill_once_a_file_appears(path: Path, k: str) -> tuple[bool, bool]:
    """Start a writer, SIGKILL it once a file of its appears; return (seen, finished).

    Any file: a writer that wrote the entry in place would be caught with half of it.
    """
    child = subprocess.Popen(
        [sys.executable, "-c", _KILLED_WRITER, str(path), k, str(_BIG)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline() == "ready\n"
        fan_out = path / k[:2]
        seen = False
        deadline = time.monotonic() + 20
        while not seen and child.poll() is None and time.monotonic() < deadline:
            seen = fan_out.is_dir() and bool(os.listdir(fan_out))
        child.kill()
        finished = "done" in child.stdout.read()
    finally:
        child.kill()
        child.wait()
        if child.stdout is not None:
            child.stdout.close()
    return seen, finished


def test_a_writer_killed_mid_write_leaves_no_partial_entry(tmp_path: Path) -> None:
    k = key("big")
    value = bytes(range(256)) * (_BIG // 256)
    full = DiskCache(tmp_path / "reference").put(k, value)
    caught = False
    for attempt in range(5):
        path = tmp_path / str(attempt)
        cache = DiskCache(path)
        seen, finished = _kill_once_a_file_appears(path, k)
        entry = entry_file(cache, k)
        raw_size = entry.stat().st_size if entry.exists() else None
        assert raw_size in (None, full)  # never a visible partial entry
        hit, got = cache.get(k)
        assert hit == (raw_size is not None)
        assert not hit or got == value
        assert len(cache) == (1 if hit else 0)  # a temp file left behind is no entry
        assert cache.size_bytes() == (raw_size or 0)
        cache.put(k, value)
        assert cache.get(k) == (True, value)
        if seen and not finished and raw_size is None:
            assert list((path / k[:2]).glob("*.tmp")), "the killed write left no temp file?"
            caught = True
            break
    assert caught, "no writer was ever killed mid-write"


_HAMMER = """
import hashlib, json, random, sys
from dagexec._cache import DiskCache

path, me, ops, max_bytes = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
keys = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(12)]

def payload(i, writer):
    return bytes([(i * 7 + writer) % 256]) * (500 + 997 * i)

cache = DiskCache(path, max_bytes=max_bytes)
rng = random.Random(me)
stats = {"errors": [], "puts": 0, "hits": 0, "misses": 0, "cross_hits": 0}
print("ready", flush=True)
sys.stdin.readline()
for n in range(ops):
    i = rng.randrange(len(keys))
    try:
        op = rng.random()
        if op < 0.45:
            cache.put(keys[i], (i, me, payload(i, me)))
            stats["puts"] += 1
        elif op < 0.995:
            hit, value = cache.get(keys[i])
            if not hit:
                stats["misses"] += 1
                continue
            stats["hits"] += 1
            got_i, writer, data = value
            stats["cross_hits"] += writer != me
            if got_i != i or data != payload(i, writer):
                stats["errors"].append(f"key {i}: wrong value from writer {writer}")
        else:
            cache.clear()
    except Exception as exc:
        stats["errors"].append(repr(exc))
print(json.dumps(stats), flush=True)
"""


def test_four_processes_share_one_small_directory(tmp_path: Path) -> None:
    max_bytes = 30_000  # about four of the twelve values: constant eviction
    children = [
        subprocess.Popen(
            [sys.executable, "-c", _HAMMER, str(tmp_path), str(me), "600", str(max_bytes)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for me in range(4)
    ]
    try:
        for child in children:
            assert child.stdout is not None
            assert child.stdout.readline() == "ready\n"
        for child in children:  # all are waiting on stdin: start them together
            assert child.stdin is not None
            child.stdin.write("go\n")
            child.stdin.flush()
        reports = []
        for child in children:
            out, _ = child.communicate(timeout=60)
            assert child.returncode == 0
            reports.append(json.loads(out))
    finally:
        for child in children:
            child.kill()
            child.wait()
            for stream in (child.stdin, child.stdout):
                if stream is not None:
                    stream.close()

    assert [r["errors"] for r in reports] == [[]] * 4
    assert all(r["puts"] > 0 and r["hits"] > 0 for r in reports)
    assert sum(r["cross_hits"] for r in reports) > 0
    assert sum(r["misses"] for r in reports) > 0

    cache = DiskCache(tmp_path)
    assert not list(tmp_path.glob("*/*.tmp"))
    for i in range(12):
        hit, value = cache.get(hashlib.sha256(str(i).encode()).hexdigest())
        assert not hit or value[0] == i
