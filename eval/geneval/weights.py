"""Evaluator checkpoints: pinned URL + sha256, a cache directory, atomic download, and clear offline errors.

OpenMMLab publishes the first 8 hex digits of each checkpoint's sha256 in its file name; that prefix is what we can
pin without having downloaded the file. A full 64-digit value (e.g. recorded after a first verified download) can
replace it in config. Nothing is unpickled before its hash matches.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import urllib.request
from dataclasses import dataclass
from pathlib import Path


class WeightsUnavailableError(RuntimeError):
    """A checkpoint is not in the cache and cannot be downloaded, or its hash does not match."""


@dataclass(frozen=True)
class PinnedFile:
    url: str
    sha256: str  # full digest or OpenMMLab's 8-digit prefix

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[-1]


MASK2FORMER_SWIN_S_MMDET3 = PinnedFile(
    "https://download.openmmlab.com/mmdetection/v3.0/mask2former/mask2former_swin-s-p4-w7-224_8xb2-lsj-50e_coco/"
    "mask2former_swin-s-p4-w7-224_8xb2-lsj-50e_coco_20220504_001756-c9d0c4f2.pth", "c9d0c4f2")
# What the official GenEval run used (mmdet 2.x): the same training, saved in the mmdet-2 format.
MASK2FORMER_SWIN_S_MMDET2 = PinnedFile(
    "https://download.openmmlab.com/mmdetection/v2.0/mask2former/mask2former_swin-s-p4-w7-224_lsj_8x2_50e_coco/"
    "mask2former_swin-s-p4-w7-224_lsj_8x2_50e_coco_20220504_001756-743b7d99.pth", "743b7d99")


def default_cache_dir() -> Path:
    return Path(os.environ.get("FLUX158_EVAL_CACHE", Path.home() / ".cache" / "flux158" / "eval"))


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _check(path: Path, pinned: PinnedFile) -> None:
    actual = sha256_of(path)
    if not actual.startswith(pinned.sha256.lower()):
        raise WeightsUnavailableError(f"{path} has sha256 {actual}, expected {pinned.sha256}...: a corrupt or "
                                      f"different file; delete it to download {pinned.url} again")


def fetch(pinned: PinnedFile, cache_dir: Path | None = None) -> Path:
    """The verified local copy of `pinned` (downloaded into `cache_dir` once; `.partial` until verified)."""
    path = Path(cache_dir or default_cache_dir()) / pinned.filename
    if path.exists():
        _check(path, pinned)
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    try:
        with urllib.request.urlopen(pinned.url, timeout=60) as response, open(partial, "wb") as f:
            shutil.copyfileobj(response, f, length=1 << 20)
    except OSError as e:
        partial.unlink(missing_ok=True)
        raise WeightsUnavailableError(
            f"cannot download {pinned.filename} ({e}). Fetch {pinned.url} on a machine with internet and put it at "
            f"{path} (sha256 starting {pinned.sha256}); the cache directory is set by FLUX158_EVAL_CACHE") from None
    try:
        _check(partial, pinned)
    except WeightsUnavailableError:
        partial.unlink()
        raise
    partial.rename(path)
    return path
