"""What a result was made with: git commit, machine, GPU, library versions."""

from __future__ import annotations

import hashlib
import os
import platform
import subprocess
from pathlib import Path

import torch

from flux158.errors import ConfigError
from flux158.kernels.backend_table import TABLE_ENV

REPO = Path(__file__).resolve().parents[2]


def git_commit() -> str:
    """Short commit of the code that ran, with `-dirty` when tracked files differ from it."""
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                             check=True, timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def checkout_commit(checkout: Path) -> str:
    """The commit a git checkout (an upstream evaluator's clone) is at, with `-dirty-<sha256 of its diff>` when its
    tracked files were changed.

    Raises:
        ConfigError: `checkout` is not a git checkout.
    """
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(checkout), *args], capture_output=True, text=True, check=True,
                              timeout=60).stdout

    try:
        commit = git("rev-parse", "HEAD").strip()
        diff = git("diff", "HEAD")
    except (OSError, subprocess.SubprocessError):
        raise ConfigError(f"benchmark.official_checkout={checkout} is not a git checkout, so the evaluator code it "
                          "holds cannot be identified; clone the upstream repository and check out the commit you "
                          "mean") from None
    return commit + (f"-dirty-{hashlib.sha256(diff.encode()).hexdigest()[:16]}" if diff else "")


def gpu_name() -> str:
    return torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"


def triton_version() -> str | None:
    try:
        import triton
    except ImportError:
        return None
    return triton.__version__


def kernel_table_override() -> str | None:
    """sha256 over the backend tables named by `FLUX158_KERNEL_TABLE` (they change which kernels `auto` runs), or
    None when the shipped tables (part of the commit) are used."""
    names = [n for n in os.environ.get(TABLE_ENV, "").split(os.pathsep) if n]
    if not names:
        return None
    digest = hashlib.sha256()
    for name in names:
        path = Path(name)
        digest.update(path.read_bytes() if path.is_file() else f"missing:{name}".encode())
    return digest.hexdigest()


def measured_with() -> dict[str, str | None]:
    """What a timing depends on beyond the config and the GPU: the code, torch, triton and any backend tables."""
    return {"git_commit": git_commit(), "torch": str(torch.__version__), "triton": triton_version(),
            "kernel_table_override": kernel_table_override()}


def environment() -> dict[str, str]:
    return {"git_commit": git_commit(), "gpu": gpu_name(), "host": platform.node(),
            "python": platform.python_version(), "torch": torch.__version__}


def random_weights(cfg) -> dict[str, bool]:
    """`{"random_weights": True}` for a random-weight model (`model=flux_dev_random`): its results measure cost,
    never quality, and the tables refuse them; else empty."""
    return {"random_weights": True} if cfg.model.get("random_weights") else {}
