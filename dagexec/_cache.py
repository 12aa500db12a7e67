"""DiskCache: a directory of pickled task values keyed by content hashes.

Layout and entry format::

    path/
      3f/
        3fa9...c1.dxc                    an entry: header + payload
        .3fa9...c1.<pid>.<rand>.tmp      a write in progress (or left by a killed writer)

    entry = header (32 bytes) + payload (the value, cloudpickled)
    header = magic b"\\x93DXC" | version u8 | 3 zero bytes | payload length u64 (little end.)
             | blake2b-16 over (the header's first 16 bytes, the key, the payload)

Reads trust nothing: a wrong magic, version or length, a short file, a checksum that does
not match (the key is hashed in too, so an entry under the wrong name fails), a payload
that does not unpickle, a directory or an unreadable file where an entry should be: each
is a miss, and the entry is removed (best effort) so that the next ``put`` replaces it.

Writes are atomic: the entry is written to a uniquely named temp file in its final
directory and renamed over the entry (``os.replace``). A writer killed halfway leaves at
most a temp file, which no read ever looks at; temp files older than an hour are removed
by the next scan. Several processes may share one directory with no locks: every file
operation tolerates the file vanishing under it (another process evicted or replaced
it), and two writers of one key both succeed (the last rename wins).

``fsync`` is off by default: a file lost or mangled by a power cut reads as a miss
(checksum), so durability buys no correctness for a cache, and an fsync costs
milliseconds per entry. ``DiskCache(..., fsync=True)`` syncs each file before its rename
(not the directory: a lost rename is a miss too).

Recency and eviction: an entry's mtime is its last use; ``put`` stamps it and a hit
restamps it with ``os.utime`` (atime is unreliable: noatime mounts). Stamps come from
``time.time_ns()`` and strictly increase within a process, so the order of uses is
kept even where the file system's own clock is coarse. With ``max_bytes`` set the cache
keeps an estimate of the total size (a scan at the first ``put``, then adding what it
writes); when the estimate passes ``max_bytes`` it rescans the directory and, if the
total really is over, removes the least recently used entries until the total is at
most 90% of ``max_bytes``. The limit is soft across processes: each one only rescans on
its own writes, so N writers can overshoot by about N x 10%. A value whose entry alone is
larger than ``max_bytes`` is not stored (``put`` returns 0) rather than flushing the whole
cache for it.

Never point a DiskCache at a directory that untrusted users can write: reading an entry
unpickles it, which can run arbitrary code.

Glossary of DiskCache fields:

- ``path``, ``max_bytes``, ``fsync``: as given.
- ``_estimate``: bytes this process believes the entries take; None until first scanned.
- ``_last_ns``: the last recency stamp handed out, to keep stamps strictly increasing.
- ``_lock``: guards the two fields above (held for arithmetic only, never for I/O).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import pickle
import re
import secrets
import shutil
import stat
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import cloudpickle

from ._errors import DagexecError

__all__ = ["DiskCache", "NotCacheable"]

_MAGIC = b"\x93DXC"
_VERSION = 1
_PREFIX = struct.Struct("<4sB3xQ")  # magic, version, payload length
_DIGEST_SIZE = 16
_HEADER_SIZE = _PREFIX.size + _DIGEST_SIZE
_SUFFIX = ".dxc"
_TMP_SUFFIX = ".tmp"
_KEY = re.compile(r"[0-9a-f]{16,128}")
_FANOUT = re.compile(r"[0-9a-f]{2}")
_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
#: A temp file untouched this long belongs to a writer that died; a scan removes it.
_STALE_TMP_NS = 3600 * 10**9
#: An eviction brings the total down to this share of ``max_bytes`` (percent), so that
#: the next rescan is some writes away rather than on the very next put.
_LOW_WATER_PERCENT = 90


class NotCacheable(DagexecError):
    """A value cannot be pickled, so it cannot be stored in a cache.

    ``__cause__`` is the pickling error.

    Attributes:
        value_type: the type of the value that could not be pickled.
    """

    def __init__(self, value_type: type) -> None:
        self.value_type = value_type
        super().__init__(
            f"a value of type {value_type.__module__}.{value_type.__qualname__} cannot be "
            "pickled, so it is not cached; return plain data (no locks, open files, "
            "generators) to cache it"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (NotCacheable, (self.value_type,))


class _Entry(NamedTuple):
    """An entry file found by a scan."""

    mtime_ns: int
    name: str
    size: int
    path: str


class DiskCache:
    """A directory of pickled task values, keyed by content hashes; safe to share between
    processes.

    Args:
        path: the directory; created (with parents) if missing.
        max_bytes: evict least recently used entries when the entries take more than
            this many bytes; None (the default) never evicts.
        fsync: sync each entry to disk before it becomes visible; off by default, since
            an entry lost or mangled by a crash reads as a miss anyway.

    Keys are lowercase hex strings of 16 to 128 characters (a hash's ``hexdigest()``).
    ``get`` never raises for a bad entry: it is a miss. See the module docstring for the
    file format and the eviction policy.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        max_bytes: int | None = None,
        *,
        fsync: bool = False,
    ) -> None:
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"path must be a str or a path, got {type(path).__name__}")
        if max_bytes is not None and (
            isinstance(max_bytes, bool) or not isinstance(max_bytes, int)
        ):
            raise TypeError(f"max_bytes must be an int or None, got {type(max_bytes).__name__}")
        if max_bytes is not None and max_bytes <= 0:
            raise ValueError(f"max_bytes must be positive (or None for no limit), got {max_bytes}")
        if not isinstance(fsync, bool):
            raise TypeError(f"fsync must be a bool, got {type(fsync).__name__}")
        self.path = Path(path)
        if self.path.exists() and not self.path.is_dir():
            raise NotADirectoryError(
                f"cache path {str(self.path)!r} is not a directory; give DiskCache a "
                "directory (it is created if missing)"
            )
        self.path.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self.fsync = fsync
        self._root = str(self.path)
        self._lock = threading.Lock()
        self._estimate: int | None = None
        self._last_ns = 0

    def __repr__(self) -> str:
        return f"DiskCache({self._root!r}, max_bytes={self.max_bytes!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (self._root, self.max_bytes, self.fsync))

    # -- reading ---------------------------------------------------------------------------

    def get(self, key: str) -> tuple[bool, Any]:
        """Return ``(True, value)`` for a stored key, ``(False, None)`` for a miss.

        A hit marks the entry as just used. A corrupt, truncated or unreadable entry, or
        one that does not unpickle, is a miss and is removed; this never raises for what
        it finds on disk (only for a malformed ``key``).
        """
        path = self._entry_path(key)
        found = self._read(path, key)
        if found is None:
            return False, None
        payload, ident = found
        try:
            value = pickle.loads(payload)
        except Exception:
            self._discard(path, ident)
            return False, None
        self._touch(path)
        return True, value

    def get_bytes(self, key: str) -> bytes | None:
        """Return the pickled payload of a valid entry (marking it used), or None."""
        path = self._entry_path(key)
        found = self._read(path, key)
        if found is None:
            return None
        self._touch(path)
        return found[0]

    def __contains__(self, key: object) -> bool:
        """Say whether an entry that looks whole exists; a cheap check, no checksum.

        Anything that is not a valid key is simply not in the cache.
        """
        if not isinstance(key, str) or not _KEY.fullmatch(key):
            return False
        try:
            st = os.stat(self._entry_path(key))
        except OSError:
            return False
        return stat.S_ISREG(st.st_mode) and st.st_size >= _HEADER_SIZE

    def _read(self, path: str, key: str) -> tuple[bytes, tuple[int, int]] | None:
        """Return the verified payload and the file's identity, or None (a miss)."""
        ident = None
        try:
            with open(path, "rb") as f:
                st = os.fstat(f.fileno())
                ident = (st.st_dev, st.st_ino)
                header = f.read(_HEADER_SIZE)
                length = _payload_length(header, st.st_size)
                payload = f.read(length) if length is not None else b""
        except FileNotFoundError:
            return None
        except OSError:  # a directory, no permission, an I/O error: unreadable is a miss
            self._discard(path, ident)
            return None
        if (
            length is None
            or len(payload) != length
            or _digest(header, key, payload) != header[-_DIGEST_SIZE:]
        ):
            self._discard(path, ident)
            return None
        return payload, ident

    def _discard(self, path: str, ident: tuple[int, int] | None) -> None:
        """Remove a bad entry, unless another process has replaced it meanwhile."""
        try:
            st = os.lstat(path)
            if stat.S_ISDIR(st.st_mode):
                shutil.rmtree(path, ignore_errors=True)
            elif ident is None or (st.st_dev, st.st_ino) == ident:
                os.unlink(path)
        except OSError:
            pass

    def _touch(self, path: str) -> None:
        now = self._stamp()
        with contextlib.suppress(OSError):  # evicted meanwhile, or a read-only cache
            os.utime(path, ns=(now, now))

    def _stamp(self) -> int:
        with self._lock:
            self._last_ns = max(time.time_ns(), self._last_ns + 1)
            return self._last_ns

    # -- writing ---------------------------------------------------------------------------

    def put(self, key: str, value: Any) -> int:
        """Store ``value`` under ``key`` atomically; return the bytes written.

        Returns 0, storing nothing, when the entry alone would exceed ``max_bytes``.

        Raises:
            NotCacheable: the value cannot be pickled (``__cause__`` says why); nothing
                is written.
            OSError: the entry could not be written (disk full, no permission); no
                partial entry is left behind.
        """
        self._entry_path(key)
        try:
            data = cloudpickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as exc:
            raise NotCacheable(type(value)) from exc
        return self._write(key, data)

    def put_bytes(self, key: str, data: bytes | bytearray | memoryview) -> int:
        """Store an already pickled value under ``key``; otherwise as ``put``."""
        self._entry_path(key)
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"data must be bytes, got {type(data).__name__}")
        return self._write(key, data)

    def _write(self, key: str, data: bytes | bytearray | memoryview) -> int:
        path = self._entry_path(key)
        prefix = _PREFIX.pack(_MAGIC, _VERSION, len(data))
        size = _HEADER_SIZE + len(data)
        if self.max_bytes is not None and size > self.max_bytes:
            return 0
        header = prefix + _digest(prefix, key, data)
        tmp = os.path.join(
            os.path.dirname(path), f".{key}.{os.getpid()}.{secrets.token_hex(4)}{_TMP_SUFFIX}"
        )
        try:
            self._write_tmp(tmp, header, data)
            try:
                replaced = os.stat(path).st_size
            except OSError:
                replaced = 0
            os.replace(tmp, path)
        except BaseException:
            _unlink_quietly(tmp)
            raise
        self._account(size - replaced, path)
        return size

    def _write_tmp(self, tmp: str, header: bytes, data: bytes | bytearray | memoryview) -> None:
        try:
            fd = os.open(tmp, _CREATE_FLAGS, 0o666)
        except FileNotFoundError:  # the first write into this fan-out directory
            os.makedirs(os.path.dirname(tmp), exist_ok=True)
            fd = os.open(tmp, _CREATE_FLAGS, 0o666)
        with open(fd, "wb") as f:
            f.write(header)
            f.write(data)
            if self.fsync:
                f.flush()
                os.fsync(f.fileno())
        now = self._stamp()
        os.utime(tmp, ns=(now, now))

    # -- size and eviction -----------------------------------------------------------------

    def _account(self, added: int, written: str) -> None:
        """Add a write to the estimate; rescan and evict when it passes the limit."""
        if self.max_bytes is None:
            return
        with self._lock:
            if self._estimate is not None:
                self._estimate += added
            due = self._estimate is None or self._estimate > self.max_bytes
        if due:
            self._evict(keep=written)

    def _evict(self, keep: str) -> None:
        """Rescan; if over ``max_bytes``, remove least recently used entries but ``keep``."""
        assert self.max_bytes is not None
        entries = sorted(self._scan(sweep=True))
        total = sum(e.size for e in entries)
        if total > self.max_bytes:
            target = self.max_bytes * _LOW_WATER_PERCENT // 100
            for e in entries:
                if total <= target:
                    break
                if e.path == keep:
                    continue
                try:
                    os.unlink(e.path)
                except FileNotFoundError:
                    pass  # another process evicted it: gone all the same
                except OSError:
                    continue
                total -= e.size
        with self._lock:
            self._estimate = total

    def _scan(self, sweep: bool = False) -> Iterator[_Entry]:
        """Yield every entry; with ``sweep``, remove stale temp files on the way."""
        stale_before = time.time_ns() - _STALE_TMP_NS
        for sub in _listdir(self._root):
            if not (_FANOUT.fullmatch(sub.name) and sub.is_dir(follow_symlinks=False)):
                continue
            for item in _listdir(sub.path):
                name = item.name
                if name.endswith(_SUFFIX) and _KEY.fullmatch(name[: -len(_SUFFIX)]):
                    st = _lstat(item)
                    if st is not None and stat.S_ISREG(st.st_mode):
                        yield _Entry(st.st_mtime_ns, name, st.st_size, item.path)
                elif sweep and name.startswith(".") and name.endswith(_TMP_SUFFIX):
                    st = _lstat(item)
                    if st is not None and st.st_mtime_ns < stale_before:
                        _unlink_quietly(item.path)

    def __len__(self) -> int:
        """Return the number of entries (temp files of writes in progress do not count)."""
        return sum(1 for _ in self._scan())

    def size_bytes(self) -> int:
        """Return the bytes the entries take (file sizes, headers included)."""
        return sum(e.size for e in self._scan())

    def clear(self) -> None:
        """Remove every entry, and temp files left by writers that died.

        Writes in progress in other processes are left alone; their entries appear
        when they finish.
        """
        for e in list(self._scan(sweep=True)):
            _unlink_quietly(e.path)
        with self._lock:
            self._estimate = 0 if self.max_bytes is not None else None

    # -- paths -------------------------------------------------------------------------------

    def _entry_path(self, key: str) -> str:
        if not isinstance(key, str):
            raise TypeError(f"cache key must be a str of hex digits, got {type(key).__name__}")
        if not _KEY.fullmatch(key):
            raise ValueError(
                f"cache key {key[:200]!r} is not 16 to 128 lowercase hex digits; "
                "use a hash's hexdigest()"
            )
        return os.path.join(self._root, key[:2], key + _SUFFIX)


def _rebuild(path: str, max_bytes: int | None, fsync: bool) -> DiskCache:
    return DiskCache(path, max_bytes, fsync=fsync)


def _payload_length(header: bytes, file_size: int) -> int | None:
    """Return the payload length a header announces, or None if it is not ours or the
    file's size disagrees."""
    if len(header) != _HEADER_SIZE:
        return None
    magic, version, length = _PREFIX.unpack_from(header)
    if magic != _MAGIC or version != _VERSION or file_size != _HEADER_SIZE + length:
        return None
    return int(length)


def _digest(prefix: bytes, key: str, payload: bytes | bytearray | memoryview) -> bytes:
    h = hashlib.blake2b(prefix[: _PREFIX.size], digest_size=_DIGEST_SIZE)
    h.update(key.encode("ascii"))
    h.update(payload)
    return h.digest()


def _listdir(path: str) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(path) as it:
            return list(it)
    except OSError:  # removed meanwhile, or not a directory
        return []


def _lstat(item: os.DirEntry[str]) -> os.stat_result | None:
    try:
        return item.stat(follow_symlinks=False)
    except OSError:  # vanished under us: evicted, renamed or swept by another process
        return None


def _unlink_quietly(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)
