"""Evaluator checkpoints: pinned URL + sha256, a cache directory, atomic download, and clear offline errors.

OpenMMLab publishes the first 8 hex digits of each checkpoint's sha256 in its file name; that prefix is what we can
pin without having downloaded the file. A full 64-digit value (e.g. recorded after a first verified download) can
replace it in config. Nothing is unpickled before its hash matches.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import torch.hub

from flux158.eval.errors import WeightsUnavailableError

__all__ = ["MASK2FORMER_SWIN_S_MMDET2", "MASK2FORMER_SWIN_S_MMDET3", "PinnedFile", "WeightsUnavailableError",
           "default_cache_dir", "fetch", "sha256_of"]

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


def fetch(pinned: PinnedFile, cache_dir: Path | None = None) -> Path:
    """The verified local copy of `pinned`, downloaded into `cache_dir` once (torch.hub's downloader: a temporary
    file, checked against the hash before it takes the final name)."""
    path = Path(cache_dir or default_cache_dir()) / pinned.filename
    if path.exists():
        actual = sha256_of(path)
        if not actual.startswith(pinned.sha256.lower()):
            raise WeightsUnavailableError(f"{path} has sha256 {actual}, expected {pinned.sha256}...: a corrupt or "
                                          f"different file; delete it to download {pinned.url} again")
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        torch.hub.download_url_to_file(pinned.url, str(path), hash_prefix=pinned.sha256.lower(), progress=True)
    except RuntimeError as e:  # torch.hub's hash check (the temporary file is removed)
        raise WeightsUnavailableError(f"{pinned.url} does not match the pinned sha256, expected {pinned.sha256}...: "
                                      f"{e}") from None
    except OSError as e:
        raise WeightsUnavailableError(
            f"cannot download {pinned.filename} ({e}). Fetch {pinned.url} on a machine with internet and put it at "
            f"{path} (sha256 starting {pinned.sha256}); the cache directory is set by FLUX158_EVAL_CACHE") from None
    return path
