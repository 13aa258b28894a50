"""Artifact bookkeeping: config hashes that name directories, atomic file writes, completion markers."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

PARTIAL_SUFFIX = ".partial"
DONE_MARKER = ".done"


def config_hash(config: Mapping[str, Any], length: int = 8) -> str:
    """Short, stable hash of a JSON-serialisable mapping (key order does not matter)."""
    blob = json.dumps(config, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:length]


def partial_path(path: Path) -> Path:
    """The temporary name a file is written under before it is renamed into place."""
    return path.with_name(path.name + PARTIAL_SUFFIX)


def fsync_path(path: Path) -> None:
    """Flush a file's (or a directory's) data and metadata to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, write: Callable[[Path], None], shared: bool = False,
                 check: Callable[[Path], None] | None = None) -> None:
    """Call `write(tmp)`, fsync it, then rename `tmp` to `path` and fsync the folder, so neither a kill nor a power
    loss leaves a truncated or empty `path`.

    `check(tmp)` (if given) runs before the rename and raises on a bad file, which then never takes the name.
    `shared=True` is for files several processes may write at once (same content): the temp name then holds the
    pid so the writers do not clobber each other's temp file. Otherwise the temp name is `partial_path(path)`,
    which lets the owner of `path` find and remove the leftovers of a killed write.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}{PARTIAL_SUFFIX}") if shared else partial_path(path)
    write(tmp)
    try:
        if check is not None:
            check(tmp)
        fsync_path(tmp)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)
    fsync_path(path.parent)


def sha256_file(path: Path, chunk: int = 1 << 24) -> str:
    """The sha256 of a file, streamed (constant memory)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def atomic_write_text(path: Path, text: str, shared: bool = False) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text), shared=shared)


def is_done(directory: Path) -> bool:
    return (directory / DONE_MARKER).exists()


def mark_done(directory: Path, summary: Mapping[str, Any]) -> None:
    """Write the completion marker of an artifact directory, with a small JSON summary inside."""
    atomic_write_text(directory / DONE_MARKER, json.dumps(dict(summary), indent=2, default=str), shared=True)


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
