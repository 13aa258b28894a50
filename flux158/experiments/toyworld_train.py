"""Stage `train_toyworld`: train the toy-world model (resumable), log loss and sample grids, export the EMA model."""

from __future__ import annotations

import logging
from pathlib import Path

import yaml
from hydra.utils import instantiate
from omegaconf import DictConfig

from flux158.artifacts import atomic_write_text, mark_done
from flux158.experiments import artifact_dirs, tracking
from flux158.toyworld.export import check_export_target, export_model
from flux158.toyworld.scenes import heldout_prompts
from flux158.toyworld.train import train_toyworld

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> Path:
    """Train into `outputs/toyworld_train/<hash>/`; with `toyworld.export_to`, copy the model there too."""
    out, determining = artifact_dirs.toyworld_train_artifact(cfg)
    export = cfg.toyworld.get("export_to")
    if export:
        check_export_target(Path(export))  # refused before hours of training, not after
    spec = instantiate(cfg.toyworld.spec, _convert_="all")
    train_cfg = instantiate(cfg.toyworld.train, _convert_="all")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "config.yaml", yaml.safe_dump(determining, sort_keys=False))
    prompts = [p["prompt"] for p in heldout_prompts()][::8]
    log.info("training the toy world: %s, %s -> %s", spec, train_cfg, out)
    with tracking.track(cfg, "train_toyworld") as tracker:
        model_dir = train_toyworld(
            spec, train_cfg, out, prompts,
            on_log=lambda step, metrics: tracker.log(metrics, step=step),
            on_samples=lambda step, path: tracker.log_image("samples", path, step=step, caption=" | ".join(prompts)),
        )
        tracker.artifact(model_dir, "toyworld-model", "model", {"config_hash": out.name})
    mark_done(out, {"model": str(model_dir)})
    if export:
        export_model(model_dir, Path(export), yaml.safe_dump(determining, sort_keys=False))
        log.info("exported the toy-world model to %s", export)
    return model_dir
