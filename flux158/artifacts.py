"""Artifact bookkeeping: config hashes that name directories, atomic file writes, completion markers, and the lock
that lets several processes (ranks, SLURM jobs, two users' runs) share one artifact directory."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import socket
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

PARTIAL_SUFFIX = ".partial"
DONE_MARKER = ".done"
LOCK_SUFFIX = ".lock"
STALE_SECONDS = 24 * 3600  # a temp file of another host this old is a crashed write's leftover

log = logging.getLogger(__name__)


def config_hash(config: Mapping[str, Any], length: int = 8) -> str:
    """Short, stable hash of a JSON-serialisable mapping (key order does not matter)."""
    blob = json.dumps(config, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:length]


def _writer_tag() -> str:
    """Host and pid of this process (dots would break the temp-name parsing)."""
    return f"{socket.gethostname().replace('.', '_')}-{os.getpid()}"


def partial_path(path: Path) -> Path:
    """A temporary name for `path`, unique to this process and call (`<name>.<host>-<pid>-<rand>.partial`), so
    concurrent writers of one file never share, clobber or unlink each other's temp file."""
    return path.with_name(f"{path.name}.{_writer_tag()}-{uuid.uuid4().hex[:8]}{PARTIAL_SUFFIX}")


def _writer_is_gone(tmp: Path, tag: str) -> bool:
    host, _, pid = tag.rpartition("-")  # host names may hold hyphens (gpu-node-7)
    if host == socket.gethostname().replace(".", "_"):
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return True
        except (ValueError, PermissionError):
            return False
        return False
    try:  # another host: its liveness is unknowable from here, so only a day-old file counts as a leftover
        return time.time() - tmp.stat().st_mtime > STALE_SECONDS
    except OSError:
        return False


def remove_stale_partials(path: Path) -> int:
    """Delete the temp files of `path` (files or directories) whose writer is gone: killed mid-write on this host,
    or older than a day elsewhere. A live writer's temp file is left alone. Returns how many were removed."""
    removed = 0
    legacy = path.with_name(path.name + PARTIAL_SUFFIX)  # the fixed temp name of flux158 before 2026-12-07
    for tmp in [*path.parent.glob(f"{path.name}.*{PARTIAL_SUFFIX}"), *([legacy] if legacy.exists() else [])]:
        tag = tmp.name[len(path.name) + 1:-len(PARTIAL_SUFFIX)].rsplit("-", 1)[0]  # <host>-<pid>
        if tmp == legacy or "-" not in tag or _writer_is_gone(tmp, tag):
            if tmp.is_dir():
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                tmp.unlink(missing_ok=True)
            removed += 1
    return removed


@contextmanager
def artifact_lock(lock_file: Path, what: str, making: str) -> Iterator[None]:
    """Hold `lock_file` while making `making` (an artifact directory, or one shard of it).

    An OS-level lock (`filelock`'s `fcntl.flock`): a process killed while holding it releases it, so a crashed run
    never blocks the next. A process that has to wait says so, once, with the lock file it waits on.
    """
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(lock_file)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        log.info("%s: another process is making %s; waiting for it (lock %s)", what, making, lock_file)
        started = time.perf_counter()
        lock.acquire()
        log.info("%s: the other process finished after %.0f s; going on with what it left", what,
                 time.perf_counter() - started)
    try:
        yield
    finally:
        lock.release()


def fsync_path(path: Path) -> None:
    """Flush a file's (or a directory's) data and metadata to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, write: Callable[[Path], None], check: Callable[[Path], None] | None = None) -> None:
    """Call `write(tmp)`, fsync it, then rename `tmp` to `path` and fsync the folder, so neither a kill nor a power
    loss leaves a truncated or empty `path`.

    `tmp` is `partial_path(path)`, unique to this call: processes writing the same file at once never touch each
    other's temp file, and the last rename wins (every writer writes the whole file). `check(tmp)` (if given) runs
    before the rename and raises on a bad file, which then never takes the name. A failed write removes its temp
    file; a killed one leaves it for `remove_stale_partials`.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = partial_path(path)
    try:
        write(tmp)
        if check is not None:
            check(tmp)
        fsync_path(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_path(path.parent)


def sha256_file(path: Path, chunk: int = 1 << 24) -> str:
    """The sha256 of a file, streamed (constant memory)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text))


def is_done(directory: Path) -> bool:
    return (directory / DONE_MARKER).exists()


def mark_done(directory: Path, summary: Mapping[str, Any]) -> None:
    """Write the completion marker of an artifact directory, with a small JSON summary inside."""
    atomic_write_text(directory / DONE_MARKER, json.dumps(dict(summary), indent=2, default=str))


def tree_bytes(paths: Sequence[Path]) -> int:
    """Bytes of the regular files under `paths` (missing paths count 0; each file once, however it is reached)."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for root in paths:
        for directory, _, files in os.walk(root):
            for name in files:
                try:
                    stat = os.stat(os.path.join(directory, name), follow_symlinks=False)
                except OSError:  # removed while we walked
                    continue
                if (stat.st_dev, stat.st_ino) not in seen:
                    seen.add((stat.st_dev, stat.st_ino))
                    total += stat.st_size
    return total
