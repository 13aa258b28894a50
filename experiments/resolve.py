"""Translate the Hydra config into typed library objects; shared by the stages."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from flux158.artifacts import config_hash
from flux158.data.prompts import PromptItem, geneval_prompts_from_records, load_prompt_set, take_per_group
from flux158.models import ModelSpec, ToyWorldSource, load_pipeline, parse_dtype
from flux158.quant import quantize_
from flux158.sharding import combine_shards
from flux158.toyworld.scenes import heldout_prompts

log = logging.getLogger(__name__)


def prompts(cfg: DictConfig) -> list[PromptItem]:
    """All prompts of the configured benchmark (every shard), after `limit_per_group`."""
    bench = cfg.benchmark
    if bench.prompt_set == "inline":
        items = geneval_prompts_from_records(OmegaConf.to_container(bench.prompts, resolve=True))
    elif bench.prompt_set == "toyworld_heldout":
        items = geneval_prompts_from_records(heldout_prompts(bench.per_tag, bench.prompt_seed))
    else:
        mirror = cfg.paths.get("prompt_mirror")
        items = load_prompt_set(
            bench.prompt_set,
            cache_dir=Path(cfg.paths.data_dir),
            mirror_dirs=[Path(mirror)] if mirror else [],
            categories=list(bench.categories) if bench.get("categories") else None,
        )
    return take_per_group(items, bench.get("limit_per_group"))


def process() -> tuple[int, int, torch.device]:
    """(process index, number of processes, device) from accelerate, so `accelerate launch` shards work."""
    from accelerate import PartialState

    state = PartialState(cpu=not torch.cuda.is_available())
    return state.process_index, state.num_processes, state.device


def global_shard(cfg: DictConfig, process_index: int, num_processes: int) -> tuple[int, int]:
    return combine_shards(cfg.shard.index, cfg.shard.count, process_index, num_processes)


def shard_label(index: int, count: int) -> str:
    return f"s{index}of{count}" if count > 1 else ""


def model_spec(cfg: DictConfig) -> ModelSpec:
    return instantiate(cfg.model.spec, _convert_="all")


def pipeline(cfg: DictConfig, device: torch.device):
    """The FLUX pipeline of `cfg.model`, with `cfg.quant.checkpoint` as its transformer when set."""
    from accelerate import PartialState

    checkpoint = cfg.quant.get("checkpoint")
    wanted = cfg.get("device", "auto")
    # The main process builds or downloads first; the others then read its files instead of racing it.
    with PartialState().main_process_first():
        pipe = load_pipeline(
            model_spec(cfg),
            device=device if wanted == "auto" else torch.device(wanted),
            dtype=parse_dtype(cfg.model.dtype),
            cache_dir=Path(cfg.paths.cache_dir),
            transformer_path=Path(checkpoint) if checkpoint else None,
            cpu_offload=cfg.model.get("cpu_offload", False),
        )
    if cfg.quant.get("config") is not None:
        report = quantize_(pipe.transformer, instantiate(cfg.quant.config))
        log.info("quantized %d block linears (%.2f%% of %d transformer parameters) with %s", len(report.quantized),
                 100 * report.share, report.total_params, cfg.quant.name)
    return pipe


def _plain(value):
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def artifact_dir(cfg: DictConfig, stage: str, keys: list[str]) -> tuple[Path, dict]:
    """`<output_dir>/<stage>/<benchmark>/<model>-<quant>-<hash8>` keyed by the config sections in `keys`."""
    determining = {k: _plain(OmegaConf.select(cfg, k)) for k in keys}
    spec = model_spec(cfg) if "model" in keys else None
    if isinstance(spec, ToyWorldSource):  # same config, retrained weights: a new directory
        determining["model_weights_sha256"] = spec.fingerprint()
    name = f"{cfg.model.name}-{cfg.quant.name}-{config_hash(determining)}"
    return Path(cfg.paths.output_dir) / stage / cfg.benchmark.name / name, determining
