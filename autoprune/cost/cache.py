"""The latency cache: measured results keyed by what determines them, in memory and optionally in a shared file.

`cache_key` is what a result is filed under; `CACHE_VERSION` changes when the timing protocol changes what a
cached number means, so that old entries are ignored rather than reused.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import torch

from autoprune.errors import UserError

CACHE_FORMAT = "autoprune-latency-cache"
CACHE_VERSION = 1  # bump when the timing protocol changes what a cached number means


class LatencyCache:
    """Latency results keyed by what determines them: the architecture signature, input (size and batch), device,
    backend (its version and export), precision, threads and timing protocol (`cache_key`).

    Always an in-process dict; with `path`, also a JSON file that outlives the process and that several processes
    may share (a search's workers): every write merges the file's current entries with this cache's, writes a
    temporary file next to it and renames it over the old one, under an advisory lock (`PATH.lock`, POSIX), so a
    reader never sees half a file and no writer drops another's entries. A missing file is created on the first
    write; an existing file that is not such a cache is a `UserError` (it is never overwritten).

    Example:
        >>> cache = LatencyCache()          # in-process only
        >>> len(cache)
        0
    """

    def __init__(self, path: str | Path | None = None):
        self.path = Path(path).expanduser() if path is not None else None
        self._entries: dict[str, dict] = {}
        self.hits = 0
        self.misses = 0
        self._deferred = 0  # depth of `deferred` blocks
        self._flush_s = 0.0
        self._written = 0.0  # time.monotonic() of the last write
        self._dirty = False  # entries put but not written yet
        if self.path is not None:
            if self.path.is_dir():
                raise UserError(f"latency cache {self.path} is a folder; give a .json file path")
            self._entries.update(self._read_file())

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: str) -> bool:
        return self.get(key, count=False) is not None

    def get(self, key: str, *, count: bool = True) -> dict | None:
        """The stored result for `key`, or None. A miss re-reads the file to pick up other processes' entries."""
        hit = self._entries.get(key)
        if hit is None and self.path is not None:
            self._entries.update({k: v for k, v in self._read_file().items() if k not in self._entries})
            hit = self._entries.get(key)
        if count:
            if hit is None:
                self.misses += 1
            else:
                self.hits += 1
        return hit

    def put(self, key: str, value: dict) -> None:
        """Store `value` under `key` (and in the file, merged with what other processes wrote there; inside
        `deferred`, at most every `flush_s` seconds)."""
        self._entries[key] = dict(value)
        if self.path is None:
            return
        if self._deferred and time.monotonic() - self._written < self._flush_s:
            self._dirty = True
            return
        self._write()

    @contextlib.contextmanager
    def deferred(self, flush_s: float = 5.0):
        """A block of many puts (a latency table's entries, each measured in well under a second): the file is
        written when `flush_s` seconds have passed since its last write and once at the end, not on every put,
        since each write rewrites the whole file. Entries put in the block are readable from this cache at once."""
        self._deferred += 1
        self._flush_s = flush_s
        self._written = time.monotonic()
        try:
            yield self
        finally:
            self._deferred -= 1
            if not self._deferred and self._dirty:
                self._write()

    def _write(self) -> None:
        """Merge this cache's entries with the file's and write them over it (atomically, under the lock)."""
        self._dirty = False
        self._written = time.monotonic()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._lock():
            merged = self._read_file()
            merged.update(self._entries)
            self._entries = dict(merged)
            fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
            try:
                with os.fdopen(fd, "w") as f:
                    json.dump({"format": CACHE_FORMAT, "version": CACHE_VERSION, "entries": merged}, f, indent=1)
                os.replace(tmp, self.path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise

    def _read_file(self) -> dict[str, dict]:
        if self.path is None or not self.path.exists():
            return {}
        try:
            data = json.loads(self.path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise UserError(f"{self.path} is not an autoprune latency cache ({type(e).__name__}); "
                            "pick another cache path") from None
        if not isinstance(data, dict) or data.get("format") != CACHE_FORMAT or not isinstance(data.get("entries"), dict):
            raise UserError(f"{self.path} is not an autoprune latency cache; pick another cache path")
        if data.get("version") != CACHE_VERSION:
            return {}  # entries of another protocol version mean something else: ignore them (and replace on write)
        return {k: v for k, v in data["entries"].items() if isinstance(v, dict)}

    @contextlib.contextmanager
    def _lock(self):
        try:
            import fcntl
        except ImportError:  # not POSIX: rename still keeps the file whole; concurrent writers may drop an entry
            yield
            return
        with open(self.path.with_name(self.path.name + ".lock"), "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)


def cache_key(signature, imgsz, batch, dev, device_name, backend, precision, threads, protocol) -> str:
    """The key a latency result is filed under: a hash of everything that determines it (runtime versions too)."""
    parts = {
        "version": CACHE_VERSION,
        "signature": signature,
        "imgsz": imgsz,
        "batch": batch,
        "device": str(dev),
        "device_name": device_name,
        "backend": backend,
        "precision": precision,
        "threads": threads,
        "torch": torch.__version__,
        # what is measured, not how the process is tidied first: cached results stay valid across collect_garbage
        "protocol": {k: v for k, v in asdict(protocol).items() if k != "collect_garbage"},
    }
    if backend != "torch":  # the runtime and how the model is exported for it determine the number too
        from autoprune.cost.backends import EXPORTS, runtime_version

        parts[backend] = runtime_version(backend)
        parts["export"] = EXPORTS[backend]
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]
