"""Stage `storage`: parameter counts and bytes of the model in BF16, `2bit` and `trit5` (paper Fig. 2, storage).

FLUX.1-dev/schnell are built on the meta device from their known architecture, so no weights are needed. The last
line logged is `storage: bf16=<GB>GB 2bit=<GB>GB ratio=<x>x trit5=<GB>GB ratio=<x>x`.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path

import torch
import yaml
from hydra.utils import instantiate
from omegaconf import DictConfig

from flux158.artifacts import atomic_write_text
from flux158.experiments import artifact_dirs, pipeline, provenance, resolve, tracking
from flux158.models import HubFluxSpec, RandomFluxSpec
from flux158.models.hub import FLUX1_DEV_TRANSFORMER_CONFIG, meta_flux_transformer
from flux158.quant.storage import storage_report

log = logging.getLogger(__name__)


def _transformer(cfg: DictConfig) -> torch.nn.Module:
    spec = resolve.model_spec(cfg)
    if isinstance(spec, RandomFluxSpec):  # its architecture is known: no 24 GB of random weights for a count
        return meta_flux_transformer(spec.configs.transformer)
    if isinstance(spec, HubFluxSpec):
        arch = {**FLUX1_DEV_TRANSFORMER_CONFIG, "guidance_embeds": cfg.model.get("guidance_embeds", True)}
        return meta_flux_transformer(arch)
    return pipeline.load(resolve.full_precision(cfg), torch.device("cpu")).transformer


def run(cfg: DictConfig) -> Path:
    """Write `outputs/storage/<model>-<quant>-<hash8>/metrics.json` (skipped when it exists)."""
    out, determining = artifact_dirs.storage_artifact(cfg)
    if (out / "metrics.json").exists():
        log.info("storage: %s exists; nothing to do", out / "metrics.json")
        return out
    quant = cfg.quant.get("config")
    config = instantiate(quant) if quant is not None else None
    per_channel = config.per_channel if config is not None else False
    rank = config.lowrank_rank if config is not None else 0
    input_scales = config.input_scales if config is not None else False
    report = storage_report(_transformer(cfg), per_channel_scales=per_channel, lowrank_rank=rank,
                            input_scales=input_scales)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "config.yaml", yaml.safe_dump(determining, sort_keys=False))
    metrics = {"model": cfg.model.name, "quant": cfg.quant.name, "benchmark": "storage", **provenance.environment(),
               "metrics": {**asdict(report), "quantized_share": report.quantized_share,
                           "ratio_2bit": report.ratio("2bit"), "ratio_trit5": report.ratio("trit5"),
                           "scales": "per_channel" if per_channel else "per_tensor", "lowrank_rank": rank,
                           "input_scales": input_scales}}
    atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2))
    with tracking.track(cfg, "storage") as tracker:
        tracker.summary(metrics["metrics"])
        tracker.artifact(out / "metrics.json", f"storage-{cfg.model.name}-{cfg.quant.name}", "results")
    log.info("params: total %d, quantized %d (%.2f%%), %s scales", report.total_params, report.quantized_params,
             100 * report.quantized_share, metrics["metrics"]["scales"])
    log.info("%s", report.summary_line())
    return out
