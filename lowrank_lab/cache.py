"""Disk caches built once per key, shared by parallel jobs: a key from content (file bytes, settings), a
cross-process lock, atomic writes, and an unreadable entry rebuilt with one warning instead of a traceback.

    get_or_build(path, build, load, save):  load → lock → load again → build → save to a temp file → os.replace
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from filelock import FileLock, Timeout

from lowrank_lab.errors import LabError, bad_value

log = logging.getLogger(__name__)
T = TypeVar("T")
TIMEOUT_ENV = "LOWRANK_LAB_LOCK_TIMEOUT"
DEFAULT_TIMEOUT_S = 6 * 3600.0  # longer than any one build here (a GLUE teacher on a CPU: minutes to an hour)


def file_digest(path: str | Path) -> str:
    """blake2b of the file's bytes, read in 1 MiB chunks (32 hex): a file rewritten at the same size differs."""
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def key_digest(*parts: Any, n: int = 16) -> str:
    """A short hex digest of `parts` (JSON with sorted keys, other objects by str): the settings part of a key."""
    blob = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.blake2b(blob.encode(), digest_size=32).hexdigest()[:n]


def _env_timeout() -> float:
    raw = os.environ.get(TIMEOUT_ENV) or str(DEFAULT_TIMEOUT_S)
    try:
        return float(raw)
    except ValueError:
        raise bad_value(TIMEOUT_ENV, raw, "a number of seconds to wait for a cache lock (-1: forever)") from None


@contextlib.contextmanager
def locked(path: str | Path, timeout: float | None = None) -> Iterator[None]:
    """Hold `<path>.lock` across processes; waiting longer than `timeout` s (default $LOWRANK_LAB_LOCK_TIMEOUT
    or 6 h) is one LabError naming the lock and how to clear a stale one."""
    lock_path = Path(f"{path}.lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    timeout = _env_timeout() if timeout is None else timeout
    lock = FileLock(str(lock_path))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        log.info("waiting for %s: another job is building %s", lock_path, path)
        try:
            lock.acquire(timeout=timeout)
        except Timeout:
            raise LabError(
                f"cache lock {lock_path}: held by another job for over {timeout:g} s ({TIMEOUT_ENV}); if no job is "
                f"still building {Path(path).name}, the lock is stale: delete {lock_path} and rerun"
            ) from None
    try:
        yield
    finally:
        lock.release()


def atomic_write(path: str | Path, write: Callable[[Path], Any], directory: bool = False) -> None:
    """`write(tmp)` into a temp file (or folder) beside `path`, then os.replace it onto `path`: a reader sees the
    old entry or the whole new one, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if directory:
        tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}-"))
    else:
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-", suffix=".tmp")
        os.close(fd)
        tmp = Path(name)
    try:
        write(tmp)
        tmp.chmod(0o755 if directory else 0o644)  # mkstemp / mkdtemp make it private
        if directory and path.is_dir():
            shutil.rmtree(path)  # os.replace cannot replace a non-empty folder
        os.replace(tmp, path)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()


def _load(path: Path, load: Callable[[Path], T]) -> T:
    if path.is_file() and path.stat().st_size == 0:
        raise EOFError("empty file")
    return load(path)


def get_or_build(
    path: str | Path,
    build: Callable[[], T],
    load: Callable[[Path], T],
    save: Callable[[T, Path], Any] | None = None,
    what: str = "cache",
    timeout: float | None = None,
) -> T:
    """`load(path)` when the entry is there; else, under the lock, check again, `build()` and `save(value, tmp)`
    atomically (save=None: `build` writes the entry itself). An entry that fails to load is rebuilt, one warning."""
    path = Path(path)
    if path.exists():
        with contextlib.suppress(Exception):  # unreadable: looked at again under the lock, warned about there
            return _load(path, load)
    with locked(path, timeout):
        if path.exists():  # another job may have built it while we waited
            try:
                return _load(path, load)
            except Exception as err:
                reason = " ".join(str(err).split())[:200]
                log.warning("%s %s is unreadable (%s: %s); rebuilding it", what, path, type(err).__name__, reason)
        value = build()
        if save is not None:
            atomic_write(path, lambda tmp: save(value, tmp))
    return value
