"""Streaming writer of partitioned gzip JSON-lines files (event days, upload hours)."""

from __future__ import annotations

import gzip
import os
import shutil
from collections.abc import Callable, Hashable
from pathlib import Path


class PartitionedWriter:
    """Appends lines to one gzip file per partition key while streaming; finalizes atomically.

    Lines are buffered per key and appended to a temporary file beside the key's file as whole
    gzip members (readers handle multi-member files), so no file stays open however many keys
    are in flight. A key is flushed when its buffer reaches `flush_bytes`, and every key when
    all buffers together exceed `buffer_bytes`. `close()` moves each file into place, so
    readers never see half a partition. With `append=True` a partition's existing lines are
    kept. Not thread-safe; use one writer per project at a time.
    """

    def __init__(self, path_for: Callable[[Hashable], Path], *, append: bool = False,
                 buffer_bytes: int = 32 * 2**20, flush_bytes: int = 2**20,
                 compresslevel: int = 5):  # fmt: skip
        self._path_for, self._append, self._level = path_for, append, compresslevel
        self._buffer_bytes, self._flush_bytes = buffer_bytes, flush_bytes
        self._pending: dict[Hashable, list[str]] = {}
        self._pending_size: dict[Hashable, int] = {}
        self._total_pending = 0
        self._temps: dict[Hashable, Path] = {}
        self.counts: dict = {}

    def write_raw(self, key: Hashable, text: str) -> None:
        """Add a verbatim line to the partition `key`."""
        text += "\n"
        self._pending.setdefault(key, []).append(text)
        size = self._pending_size[key] = self._pending_size.get(key, 0) + len(text)
        self._total_pending += len(text)
        self.counts[key] = self.counts.get(key, 0) + 1
        if size >= self._flush_bytes:
            self._flush(key)
        elif self._total_pending > self._buffer_bytes:
            self._flush_all()

    def close(self) -> dict:
        """Flush, then move every partition's file into place; returns lines per partition."""
        self._flush_all()
        for key, tmp in self._temps.items():
            os.replace(tmp, self._path_for(key))
        self._temps.clear()
        return dict(self.counts)

    def abort(self) -> None:
        """Discard everything written by this writer."""
        self._pending.clear()
        self._pending_size.clear()
        self._total_pending = 0
        for tmp in self._temps.values():
            tmp.unlink(missing_ok=True)
        self._temps.clear()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def _flush_all(self) -> None:
        for key in list(self._pending):
            self._flush(key)

    def _flush(self, key: Hashable) -> None:
        data = "".join(self._pending.pop(key)).encode("utf-8")
        self._total_pending -= self._pending_size.pop(key)
        tmp = self._temps.get(key) or self._new_temp(key)
        with open(tmp, "ab") as f:
            f.write(gzip.compress(data, self._level, mtime=0))  # mtime=0: reproducible files

    def _new_temp(self, key: Hashable) -> Path:
        final = self._path_for(key)
        final.parent.mkdir(parents=True, exist_ok=True)
        # Starts with a dot and ends in .tmp, so listings of stored partitions never see it.
        tmp = self._temps[key] = final.with_name(f".{final.name}.{os.getpid()}.tmp")
        if self._append and final.exists():
            shutil.copyfile(final, tmp)  # gzip members concatenate: keep the old lines
        else:
            tmp.unlink(missing_ok=True)
        return tmp
