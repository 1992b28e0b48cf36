"""The lake: a folder of partitions, each written under a temporary name and renamed into place."""

from __future__ import annotations

import ctypes
import errno
import functools
import os
import shutil
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date
from pathlib import Path


@dataclass(frozen=True)
class Lake:
    """Partition paths under one root (see DESIGN.md, "The lake")."""

    root: Path

    def raw(self, source: str, day: date) -> Path:
        return self.root / "raw" / source / f"date={day:%Y-%m-%d}"

    def events(self, source: str, day: date) -> Path:
        return self.root / "events" / f"source={source}" / f"date={day:%Y-%m-%d}"

    def events_glob(self) -> str:
        return str(self.root / "events" / "source=*" / "date=*" / "*.parquet")

    def quarantine(self, source: str, day: date) -> Path:
        return self.root / "quarantine" / source / f"date={day:%Y-%m-%d}"

    def scores(self, day: date) -> Path:
        return self.root / "scores" / f"date={day:%Y-%m-%d}"

    def accounts(self) -> Path:
        return self.root / "enrichment" / "accounts"

    def sync(self, crm: str) -> Path:
        return self.root / "sync" / crm

    def outcomes(self, week: date) -> Path:
        return self.root / "outcomes" / f"week={week:%Y-%m-%d}"

    def outcome_store(self, crm: str) -> Path:
        """Every meeting, won deal and sales task pulled from a CRM so far, and its watermark."""
        return self.root / "crm_outcomes" / crm

    def models(self) -> Path:
        return self.root / "models"

    def reports(self, week: date) -> Path:
        return self.root / "reports" / f"week={week:%Y-%m-%d}"

    def partitions(self, kind: str) -> list[tuple[date, Path]]:
        """Existing date/week partitions of a top-level area (e.g. 'scores'), oldest first."""
        base = self.root / kind
        found = []
        for p in base.glob("*=*") if base.exists() else []:
            try:
                found.append((date.fromisoformat(p.name.split("=", 1)[1]), p))
            except ValueError:
                continue
        return sorted(found)


@contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield an empty temporary folder that replaces `final` whole when the block succeeds.

    A crash leaves either the old partition or the new one, never half of either.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".tmp-{final.name}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
        # Swapped in one step where the system can (then tmp holds the old version, removed
        # below): two renames would leave no `final` at all if the process died between them.
        if not (final.exists() and _exchange(tmp, final)):
            old = None
            if final.exists():
                old = final.parent / f".old-{final.name}-{uuid.uuid4().hex[:8]}"
                os.replace(final, old)
            os.replace(tmp, final)
            if old is not None:
                shutil.rmtree(old)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


_RENAME_EXCHANGE, _AT_FDCWD = 2, -100


@functools.cache
def _renameat2():
    """Linux's renameat2 from the C library, or None elsewhere."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):  # no glibc 2.28+ (e.g. musl before 1.2.5)
        return None


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two existing paths (renameat2 RENAME_EXCHANGE); False where the system
    or the file system cannot, so the caller falls back to renames."""
    fn = _renameat2()
    if fn is None:
        return False
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EXDEV):
        return False
    raise OSError(err, os.strerror(err), str(b))


@contextmanager
def atomic_file(final: Path, mode: str = "wb"):
    """Open a temporary file that is renamed to `final` when the block succeeds."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".tmp-{final.name}-{uuid.uuid4().hex[:8]}"
    try:
        with open(tmp, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
