"""Entry point: `python run.py [experiment=<name>] [overrides...]` runs the stages listed in `cfg.stages`."""

from __future__ import annotations

import functools
import logging
import os
import sys

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from flux158.errors import Flux158Error
from flux158.experiments import (
    calibrate,
    encode,
    evaluate,
    generate,
    latency,
    provenance,
    quantize,
    rehearsal,
    storage,
    tables,
    toyworld_train,
)

log = logging.getLogger("flux158")

STAGES = {"calibrate": calibrate.run, "quantize": quantize.run, "encode": encode.run, "generate": generate.run,
          "evaluate": evaluate.run, "train_toyworld": toyworld_train.run, "storage": storage.run,
          "latency": latency.run, "tables": tables.run}
STAGES["rehearsal"] = functools.partial(rehearsal.run, stages=STAGES)  # runs the others, measured


def _describe_run(cfg: DictConfig) -> None:
    log.info("flux158 experiment=%s stages=%s model=%s quant=%s benchmark=%s shard=%s/%s",
             cfg.experiment_name, list(cfg.stages), cfg.model.name, cfg.quant.name, cfg.benchmark.name,
             cfg.shard.index, cfg.shard.count)
    env = provenance.environment()
    log.info("commit %s | python %s | torch %s | GPU %s | host %s", env["git_commit"], env["python"], env["torch"],
             env["gpu"], env["host"])
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
            log.debug("stage %s -> %s", stage, out)  # each stage logs its own summary last
    except Flux158Error as e:  # a message the user can act on; a stack trace would only hide it
        if os.environ.get("HYDRA_FULL_ERROR") == "1":  # Hydra's own switch for the full trace
            raise
        log.error("%s", e)
        sys.exit(2)


if __name__ == "__main__":
    main()
