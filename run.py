"""Entry point: `python run.py [experiment=<name>] [overrides...]` runs the stages listed in `cfg.stages`."""

from __future__ import annotations

import logging
import platform
import subprocess
import sys
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from experiments import generate
from flux158.errors import Flux158Error

log = logging.getLogger("flux158")

STAGES = {"generate": generate.run}


def _git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).parent,
                             capture_output=True, text=True, check=True, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=Path(__file__).parent,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _describe_run(cfg: DictConfig) -> None:
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "none"
    log.info("flux158 experiment=%s stages=%s model=%s quant=%s benchmark=%s shard=%s/%s",
             cfg.experiment_name, list(cfg.stages), cfg.model.name, cfg.quant.name, cfg.benchmark.name,
             cfg.shard.index, cfg.shard.count)
    log.info("commit %s | python %s | torch %s | GPU %s | host %s", _git_commit(), platform.python_version(),
             torch.__version__, gpu, platform.node())
    log.debug("resolved config:\n%s", OmegaConf.to_yaml(cfg, resolve=True))


@hydra.main(version_base="1.3", config_path="configs", config_name="config")
def main(cfg: DictConfig) -> None:
    unknown = [s for s in cfg.stages if s not in STAGES]
    if unknown:
        log.error("unknown stage(s) %s; available: %s", unknown, sorted(STAGES))
        sys.exit(2)
    _describe_run(cfg)
    torch.manual_seed(cfg.seed)
    try:
        for stage in cfg.stages:
            out = STAGES[stage](cfg)
            log.info("stage %s -> %s", stage, out)
    except Flux158Error as e:  # a message the user can act on; a stack trace would only hide it
        log.error("%s", e)
        sys.exit(2)


if __name__ == "__main__":
    main()
