"""Evaluator checkpoints: pinned URL + sha256, a cache directory, atomic download, and clear offline errors.

OpenMMLab publishes the first 8 hex digits of each checkpoint's sha256 in its file name. That prefix guards the
download against corruption, but 32 bits do not prove a pickle (which runs code when loaded) is the published file.
So `trusted_pickle` hands out a checkpoint for unpickling only when its full 64-digit sha256 matches a pin, or when
the user says `--trust-checkpoint` (`benchmark.trust_checkpoint=true`); the error prints the file's full sha256 so
that it can be compared with a trusted copy and pinned here, a one-line change.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import torch.hub

from flux158.eval.errors import WeightsUnavailableError

__all__ = ["MASK2FORMER_SWIN_S_MMDET2", "MASK2FORMER_SWIN_S_MMDET3", "PinnedFile", "UntrustedCheckpointError",
           "WeightsUnavailableError", "default_cache_dir", "fetch", "sha256_of", "trusted_pickle"]


class UntrustedCheckpointError(WeightsUnavailableError):
    """A pickled checkpoint whose full sha256 matches no pin, without the user's explicit trust."""


@dataclass(frozen=True)
class PinnedFile:
    url: str
    sha256: str  # full digest or OpenMMLab's 8-digit prefix

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[-1]

    @property
    def fully_pinned(self) -> bool:
        return len(self.sha256) == 64


MASK2FORMER_SWIN_S_MMDET3 = PinnedFile(
    "https://download.openmmlab.com/mmdetection/v3.0/mask2former/mask2former_swin-s-p4-w7-224_8xb2-lsj-50e_coco/"
    "mask2former_swin-s-p4-w7-224_8xb2-lsj-50e_coco_20220504_001756-c9d0c4f2.pth", "c9d0c4f2")
# What the official GenEval run used (mmdet 2.x): the same training, saved in the mmdet-2 format.
MASK2FORMER_SWIN_S_MMDET2 = PinnedFile(
    "https://download.openmmlab.com/mmdetection/v2.0/mask2former/mask2former_swin-s-p4-w7-224_lsj_8x2_50e_coco/"
    "mask2former_swin-s-p4-w7-224_lsj_8x2_50e_coco_20220504_001756-743b7d99.pth", "743b7d99")


# The full digests are not pinned yet: they were not reachable from the build machine (no access to
# download.openmmlab.com). Whoever has a trusted copy replaces the prefixes above with `sha256_of(file)`.
PINNED = (MASK2FORMER_SWIN_S_MMDET3, MASK2FORMER_SWIN_S_MMDET2)


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


def trusted_pickle(checkpoint: PinnedFile | Path, cache_dir: Path | None = None,
                   trust: bool = False) -> tuple[Path, str]:
    """The local path of a pickled checkpoint that may be unpickled, and its full sha256.

    A `PinnedFile` is fetched (and checked against its pin) first; a user's path must exist. Either may be unpickled
    only if its full sha256 equals a fully pinned digest, or `trust` is set.

    Raises:
        UntrustedCheckpointError: otherwise, with the file's full sha256 in the message.
    """
    path = fetch(checkpoint, cache_dir) if isinstance(checkpoint, PinnedFile) else Path(checkpoint)
    if not path.is_file():
        raise FileNotFoundError(f"detector checkpoint {path} does not exist")
    actual = sha256_of(path)
    if trust or any(p.fully_pinned and p.sha256.lower() == actual for p in PINNED):
        return path, actual
    known = isinstance(checkpoint, PinnedFile)
    raise UntrustedCheckpointError(
        f"{path} is a pickle (it can run code when loaded) with sha256 {actual}, which "
        + ("matches the published 8-digit prefix but no full pinned digest" if known else "matches no pinned file")
        + ". Compare it with a copy you trust; then pin it in flux158/eval/geneval/weights.py, or pass "
        "--trust-checkpoint (benchmark.trust_checkpoint=true) to load it anyway")
