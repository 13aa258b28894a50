"""Pinned remote files: download once from a commit-pinned URL, verify sha256, cache by content hash.

Cache layout: `<cache_dir>/<sha256>/<filename>`. Because the key is the content hash, a cache can be seeded from
any directory holding the right bytes under any names (`seed_cache`), which is how tests and offline clusters
provide the files without network.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from flux158.errors import PromptDataError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PinnedFile:
    """A remote file identified by its content: `url` at a fixed commit and the `sha256` of its bytes.

    With `derive`, the file is computed from the download (e.g. text read out of a weights-only torch pickle) and
    `sha256` is that of the derived bytes.
    """

    filename: str
    url: str
    sha256: str
    derive: Callable[[Path], bytes] | None = field(default=None, compare=False, repr=False)

    def cache_path(self, cache_dir: Path) -> Path:
        return cache_dir / self.sha256 / self.filename


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _install(src: Path, pinned: PinnedFile, cache_dir: Path) -> Path:
    """Copy `src` into the cache atomically; the caller has verified its hash."""
    dst = pinned.cache_path(cache_dir)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f"{dst.name}.partial-{os.getpid()}")
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)
    return dst


def seed_cache(cache_dir: Path, source_dir: Path, wanted: list[PinnedFile]) -> list[Path]:
    """Copy every file under `source_dir` whose sha256 matches one of `wanted` into the cache, whatever its name."""
    by_hash = {p.sha256: p for p in wanted if not p.cache_path(cache_dir).exists()}
    installed = []
    if not by_hash:
        return installed
    for path in sorted(source_dir.rglob("*")):
        if path.is_file() and (match := by_hash.get(sha256_of(path))) is not None:
            installed.append(_install(path, match, cache_dir))
    return installed


def _download(pinned: PinnedFile, cache_dir: Path, timeout_s: float) -> Path:
    dst = pinned.cache_path(cache_dir)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f"{dst.name}.download-{os.getpid()}")
    try:
        with urllib.request.urlopen(pinned.url, timeout=timeout_s) as response, tmp.open("wb") as f:
            shutil.copyfileobj(response, f)
        if pinned.derive is not None:
            tmp.write_bytes(pinned.derive(tmp))
        digest = sha256_of(tmp)
        if digest != pinned.sha256:
            raise PromptDataError(
                f"sha256 mismatch for {pinned.filename} downloaded from {pinned.url}:\n"
                f"  expected {pinned.sha256}\n  got      {digest}\n"
                "The pinned file changed or the download was corrupted; nothing was cached."
            )
        os.replace(tmp, dst)
        return dst
    finally:
        tmp.unlink(missing_ok=True)


def fetch(
    pinned: PinnedFile,
    cache_dir: Path,
    mirror_dirs: list[Path] | tuple[Path, ...] = (),
    offline: bool | None = None,
    timeout_s: float = 30.0,
) -> Path:
    """Return the local, verified path of `pinned`: from the cache, a mirror directory, or its URL.

    Args:
        pinned: the file to get.
        cache_dir: content-addressed cache root.
        mirror_dirs: local directories searched by content (any file names) before downloading.
        offline: never touch the network; None follows `HF_HUB_OFFLINE` (the Hugging Face convention).
        timeout_s: network timeout per request.

    Raises:
        PromptDataError: the file is not available locally and cannot be downloaded, or fails its sha256 check.
    """
    cached = pinned.cache_path(cache_dir)
    if cached.exists():
        if sha256_of(cached) == pinned.sha256:
            return cached
        log.warning("Cached %s is corrupt (sha256 mismatch); removing it", cached)
        cached.unlink()
    for mirror in mirror_dirs:
        seed_cache(cache_dir, Path(mirror), [pinned])
        if cached.exists():
            return cached
    if offline is None:
        offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")
    how_to = (
        f"Download it from\n  {pinned.url}\nand place it at\n  {cached}\n"
        f"(or point paths.prompt_mirror / FLUX158_PROMPT_MIRROR at a directory that holds it under any name)."
    )
    if offline:
        raise PromptDataError(f"{pinned.filename} is not in the cache and offline mode is on. {how_to}")
    log.info("Downloading %s", pinned.url)
    try:
        return _download(pinned, cache_dir, timeout_s)
    except OSError as e:  # URLError, timeouts and DNS failures are all OSErrors
        raise PromptDataError(f"Could not download {pinned.filename} ({e}). {how_to}") from None
