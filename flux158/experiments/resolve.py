"""Translate the Hydra config into typed library objects; shared by the stages."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from flux158.data.prompts import PromptItem, geneval_prompts_from_records, load_prompt_set, take_per_group
from flux158.errors import ConfigError
from flux158.experiments import processes
from flux158.models import HubFluxSpec, ModelSpec
from flux158.models.identity import is_commit, resolve_commit
from flux158.quant import TernaryConfig
from flux158.sharding import combine_shards
from flux158.toyworld.scenes import heldout_prompts, sample_prompt

log = logging.getLogger(__name__)


def require_positive(cfg: DictConfig, *keys: str) -> None:
    """Refuse counts below 1 (`null` stays allowed where the config means "no limit")."""
    for key in keys:
        value = OmegaConf.select(cfg, key)
        if value is not None and (not isinstance(value, int) or value < 1):
            raise ConfigError(f"{key}={value!r} must be a whole number >= 1")


def prompts(cfg: DictConfig) -> list[PromptItem]:
    """All prompts of the configured benchmark (every shard), after `limit_per_group`."""
    require_positive(cfg, "benchmark.samples_per_prompt", "benchmark.limit_per_group", "benchmark.per_tag",
                     "batch_size")
    bench = cfg.benchmark
    if bench.prompt_set == "inline":
        items = geneval_prompts_from_records(OmegaConf.to_container(bench.prompts, resolve=True))
    elif bench.prompt_set in ("toyworld_heldout", "toyworld_balanced"):  # balanced: `per_tag` entries every tag
        items = geneval_prompts_from_records(
            heldout_prompts(bench.per_tag, bench.prompt_seed, repeat=bench.prompt_set == "toyworld_balanced"))
    else:
        mirror = cfg.paths.get("prompt_mirror")
        items = load_prompt_set(
            bench.prompt_set,
            cache_dir=Path(cfg.paths.data_dir),
            mirror_dirs=[Path(mirror)] if mirror else [],
            categories=list(bench.categories) if bench.get("categories") else None,
        )
    return take_per_group(items, bench.get("limit_per_group"))


def global_shard(cfg: DictConfig, process_index: int, num_processes: int) -> tuple[int, int]:
    return combine_shards(cfg.shard.index, cfg.shard.count, process_index, num_processes)


def shard_label(index: int, count: int) -> str:
    return f"s{index}of{count}" if count > 1 else ""


def model_spec(cfg: DictConfig) -> ModelSpec:
    return instantiate(cfg.model.spec, _convert_="all")


def pin_model_revision(cfg: DictConfig) -> None:
    """Resolve a hub model's branch or tag (null: `main`) to the commit it names now and write that commit into
    `cfg.model.spec.revision`, once per run on the main process: every stage and rank loads, keys and records that
    commit, and a hub update between runs makes new artifacts instead of passing for the old ones."""
    spec = model_spec(cfg)
    if not isinstance(spec, HubFluxSpec) or spec.is_local or is_commit(spec.revision):
        return
    commit = processes.main_decides(lambda: resolve_commit(spec))
    with open_dict(cfg):
        cfg.model.spec.revision = commit
    log.info("model: %s at %s resolves to commit %s; this run loads and keys that commit (pin it with "
             "model.spec.revision=%s)", spec.pretrained, spec.revision or "main", commit, commit)


def quant_config(cfg: DictConfig) -> TernaryConfig | None:
    """The configured `TernaryConfig`, or None for the unquantized model."""
    return instantiate(cfg.quant.config) if cfg.quant.get("config") is not None else None


def full_precision(cfg: DictConfig) -> DictConfig:
    """The same config without quantization (the teacher)."""
    plain = cfg.copy()
    with open_dict(plain):
        plain.quant.config = None
        plain.quant.checkpoint = None
    return plain


def calibration_prompts(cfg: DictConfig) -> dict[str, list[str]]:
    """The `train` and `heldout` calibration prompts: a seeded shuffle of `calib.prompt_set`, held-out first."""
    calib = cfg.calib
    wanted = calib.num_prompts + calib.heldout
    rng = np.random.default_rng(calib.seed)
    if calib.prompt_set == "toyworld_train":  # the toy model's training distribution (an endless supply)
        texts = [sample_prompt(rng)["prompt"] for _ in range(wanted)]
    else:
        if calib.prompt_set == "inline":
            pool = [str(p) for p in calib.prompts]
        else:
            mirror = cfg.paths.get("prompt_mirror")
            pool = [item.prompt for item in load_prompt_set(calib.prompt_set, cache_dir=Path(cfg.paths.data_dir),
                                                             mirror_dirs=[Path(mirror)] if mirror else [])]
        if len(pool) < wanted:
            raise ConfigError(f"calib asks for {wanted} prompts (num_prompts + heldout) but {calib.prompt_set!r} "
                              f"has {len(pool)}")
        texts = [pool[i] for i in rng.permutation(len(pool))[:wanted]]
    return {"heldout": texts[:calib.heldout], "train": texts[calib.heldout:]}
