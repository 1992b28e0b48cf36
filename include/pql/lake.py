"""The lake: a folder of partitions, each written under a temporary name and renamed into place."""

from __future__ import annotations

import ctypes
import errno
import fcntl
import functools
import logging
import os
import shutil
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date
from pathlib import Path

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Lake:
    """Partition paths under one root: raw/, events/, quarantine/, scores/, sync/, reports/ ..."""

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

    def live(self) -> Path:
        """The intraday state: the scores of users rescored since the last daily snapshot,
        and each source's watermark (README, "Speed to lead")."""
        return self.root / "live"

    @contextmanager
    def lock(self, name: str) -> Iterator[None]:
        """Hold the lake-wide lock `name` (blocking): an intraday run and a daily run never
        write the same partition or ledger at once, whatever scheduled them."""
        path = self.root / "locks" / f"{name}.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

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

    A crash leaves either the old partition or the new one, never half of either. The folder
    is locked while the block runs; what killed runs left beside `final` is removed first.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    sweep(final)
    tmp = final.parent / f".tmp-{final.name}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    fd = os.open(tmp, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)  # "a live run owns this": released however the run ends
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
                shutil.rmtree(old, ignore_errors=True)  # a sweep may be at it too
    finally:
        os.close(fd)
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


#: A leftover younger than this may belong to a run that has not locked it yet.
SWEEP_AFTER_SECONDS = 60.0


def sweep(final: Path) -> list[Path]:
    """Remove the temporary folders and files that killed runs left beside `final`.

    A run holds a lock on its temporary folder (or file) as long as it lives, so only what
    nobody holds is removed, and only once it is a minute old. `.old-` folders are removed
    only when `final` exists (else a swap without renameat2 may be half done). Returns what
    was removed.
    """
    removed = []
    now = time.time()
    prefixes = (f".tmp-{final.name}-",) + ((f".old-{final.name}-",) if final.exists() else ())
    try:
        entries = list(os.scandir(final.parent))
    except FileNotFoundError:
        return removed
    for entry in entries:
        if not entry.name.startswith(prefixes):
            continue
        try:
            if now - entry.stat(follow_symlinks=False).st_mtime < SWEEP_AFTER_SECONDS:
                continue
            fd = os.open(entry.path, os.O_RDONLY)
        except OSError:  # gone meanwhile
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # a live run holds it
            os.close(fd)
            continue
        try:
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path, ignore_errors=True)
            else:
                os.unlink(entry.path)
            removed.append(Path(entry.path))
        except OSError:
            pass
        finally:
            os.close(fd)
    if removed:
        log.info("removed %s leftover(s) of killed runs beside %s", len(removed), final)
    return removed


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
    sweep(final)
    tmp = final.parent / f".tmp-{final.name}-{uuid.uuid4().hex[:8]}"
    try:
        with open(tmp, mode) as f:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)  # see atomic_dir
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
