"""Entry point: `python run.py [experiment=<name>] [overrides...]` runs the stages listed in `cfg.stages`."""

from __future__ import annotations

import errno
import functools
import logging
import os
import sys

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from flux158.errors import Flux158Error, ShardsPending
from flux158.experiments import (
    calibrate,
    encode,
    evaluate,
    generate,
    latency,
    preflight,
    processes,
    provenance,
    quantize,
    rehearsal,
    resolve,
    storage,
    tables,
    toyworld_train,
)

log = logging.getLogger("flux158")

STAGES = {"calibrate": calibrate.run, "quantize": quantize.run, "encode": encode.run, "generate": generate.run,
          "evaluate": evaluate.run, "train_toyworld": toyworld_train.run, "storage": storage.run,
          "latency": latency.run, "tables": tables.run}
STAGES["rehearsal"] = functools.partial(rehearsal.run, stages=STAGES)  # runs the others, measured
# Under accelerate/torchrun every rank runs these (each takes its share, or joins the data-parallel work, or waits
# while the main process works; they meet at barriers inside). The other stages run on the main process alone.
EVERY_RANK = {"calibrate", "quantize", "encode", "generate"}
# Stages that load the model's weights or find artifacts made from them: a hub revision is resolved to a commit first.
USE_WEIGHTS = EVERY_RANK | {"evaluate", "latency"}
# Errors of the disk or the file system, not of the code: one line, like a bad setting.
DISK_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS}


def _describe_run(cfg: DictConfig) -> None:
    log.info("flux158 experiment=%s stages=%s model=%s quant=%s benchmark=%s shard=%s/%s",
             cfg.experiment_name, list(cfg.stages), cfg.model.name, cfg.quant.name, cfg.benchmark.name,
             cfg.shard.index, cfg.shard.count)
    env = provenance.environment()
    log.info("commit %s | python %s | torch %s | GPU %s | host %s", env["git_commit"], env["python"], env["torch"],
             env["gpu"], env["host"])
    log.debug("resolved config:\n%s", OmegaConf.to_yaml(cfg, resolve=True))


def _run_stages(cfg: DictConfig) -> None:
    """Run `cfg.stages` in order. With several processes a main-only stage runs on the main process while the others
    wait, if a later stage needs them; otherwise they are done and leave."""
    stages = list(cfg.stages)
    for position, stage in enumerate(stages):
        if stage in EVERY_RANK or processes.is_main_process():
            out = STAGES[stage](cfg)
            log.debug("stage %s -> %s", stage, out)  # each stage logs its own summary last
        if stage in EVERY_RANK or processes.num_processes() == 1:
            continue
        if EVERY_RANK.intersection(stages[position + 1:]):
            processes.wait_for_everyone()  # a later stage needs every rank, and what this one wrote
        elif not processes.is_main_process():
            log.info("rank %d: done; the main process runs %s", processes.process()[0], ", ".join(stages[position:]))
            return


def execute(cfg: DictConfig) -> int:
    """Run `cfg.stages`; returns the exit code: 0, or 2 after one logged line for an error the user can act on (a
    bad setting, missing weights, a full disk). `HYDRA_FULL_ERROR=1` (Hydra's own switch) raises it instead."""
    unknown = [s for s in cfg.stages if s not in STAGES]
    if unknown:
        log.error("unknown stage(s) %s; available: %s", unknown, sorted(STAGES))
        return 2
    processes.start(cpu=cfg.get("device", "auto") == "cpu", timeout_hours=cfg.barrier_timeout_hours)
    _describe_run(cfg)
    torch.manual_seed(cfg.seed)
    try:
        preflight.check(cfg)
        if USE_WEIGHTS.intersection(cfg.stages):
            resolve.pin_model_revision(cfg)
        _run_stages(cfg)
    except ShardsPending as e:  # not a failure: another job of the array goes on from here
        log.info("%s; this job's work is done", e)
    except Flux158Error as e:  # a message the user can act on; a stack trace would only hide it
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        log.error("%s", e)
        return 2
    except OSError as e:
        if e.errno not in DISK_ERRORS or os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        log.error("%s: %s (every write is atomic: nothing was left half-written and finished work is kept; fix it "
                  "and run the same command again)", e.strerror, e.filename)
        return 2
    processes.finish()
    return 0


@hydra.main(version_base="1.3", config_path="configs", config_name="config")
def main(cfg: DictConfig) -> None:
    code = execute(cfg)
    if code:
        sys.exit(code)


if __name__ == "__main__":
    main()
