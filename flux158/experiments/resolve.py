"""Translate the Hydra config into typed library objects; shared by the stages."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from flux158.artifacts import config_hash, is_done
from flux158.data.prompts import PromptItem, geneval_prompts_from_records, load_prompt_set, take_per_group
from flux158.models import ModelSpec, ToyWorldSource, load_pipeline, parse_dtype
from flux158.quant import TernaryConfig, quantize_, set_activations
from flux158.quant.calibration import CalibrationError
from flux158.sharding import combine_shards
from flux158.toyworld.scenes import heldout_prompts, sample_prompt

log = logging.getLogger(__name__)

# Config sections that determine the teacher states: shared by every quantization method.
CALIBRATION_KEYS = ["model", "sampler", "calib.name", "calib.prompt_set", "calib.prompts", "calib.num_prompts",
                    "calib.heldout", "calib.states_per_prompt", "calib.chunk_size", "calib.batch_size", "calib.seed"]
QUANTIZED_SUBDIR = "transformer"
ACTIVATION_KEYS = ("act_bits", "act_format")


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


def is_main_process() -> bool:
    from accelerate import PartialState

    return PartialState().is_main_process


def wait_for_everyone() -> None:
    from accelerate import PartialState

    PartialState().wait_for_everyone()


def global_shard(cfg: DictConfig, process_index: int, num_processes: int) -> tuple[int, int]:
    return combine_shards(cfg.shard.index, cfg.shard.count, process_index, num_processes)


def shard_label(index: int, count: int) -> str:
    return f"s{index}of{count}" if count > 1 else ""


def model_spec(cfg: DictConfig) -> ModelSpec:
    return instantiate(cfg.model.spec, _convert_="all")


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


def calibration_artifact(cfg: DictConfig) -> tuple[Path, dict]:
    """`<output_dir>/calibrate/<calib>/<model>-<hash8>` (shared by every method on the same model and sampler) and
    the config values that name it."""
    return keyed_dir(cfg, ["calibrate", cfg.calib.name], cfg.model.name, CALIBRATION_KEYS)


def calibration_dir(cfg: DictConfig) -> Path:
    return calibration_artifact(cfg)[0]


def quantize_artifact(cfg: DictConfig) -> tuple[Path, dict]:
    """`<output_dir>/quantize/<model>-<quant>-<hash8>`, keyed by the calibration too when the method uses it, and
    the config values that name it."""
    keys = ["model", "quant"] + (CALIBRATION_KEYS[1:] if quant_config(cfg).needs_calibration else [])
    weights_only = cfg.copy()  # activation precision is applied at load time: W2A16 and W1.58A8 share weights
    with open_dict(weights_only):
        for key in ACTIVATION_KEYS:
            weights_only.quant.config.pop(key, None)
    return keyed_dir(weights_only, ["quantize"], f"{cfg.model.name}-{cfg.quant.name}", keys)


def quantize_dir(cfg: DictConfig) -> Path:
    return quantize_artifact(cfg)[0]


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
            raise ValueError(f"calib asks for {wanted} prompts but {calib.prompt_set!r} has {len(pool)}")
        texts = [pool[i] for i in rng.permutation(len(pool))[:wanted]]
    return {"heldout": texts[:calib.heldout], "train": texts[calib.heldout:]}


def pipeline(cfg: DictConfig, device: torch.device):
    """The FLUX pipeline of `cfg.model` with its transformer quantized as `cfg.quant` says.

    The transformer comes from `cfg.quant.checkpoint` when set, else from the quantize stage's checkpoint when it
    exists; a data-free method without a checkpoint is applied in memory, a calibrated one is an error.
    """
    from accelerate import PartialState

    checkpoint = cfg.quant.get("checkpoint")
    config = quant_config(cfg)
    if checkpoint is None and config is not None:
        stored = quantize_dir(cfg)
        if is_done(stored):
            checkpoint = str(stored / QUANTIZED_SUBDIR)
            log.info("using the quantized checkpoint %s", checkpoint)
        elif config.needs_calibration:
            raise CalibrationError(f"quant={cfg.quant.name} needs its quantized checkpoint, which is not at {stored}: "
                                   "run the stages calibrate and quantize first (stages=[calibrate,quantize,...])")
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
    if config is not None and checkpoint is None:
        report = quantize_(pipe.transformer, config)
        log.info("quantized %d block linears (%.2f%% of %d transformer parameters) with %s", len(report.quantized),
                 100 * report.share, report.total_params, cfg.quant.name)
    elif config is not None:  # activation precision is an inference setting, not part of the checkpoint
        set_activations(pipe.transformer, config.act_bits, config.act_format)
    if config is not None and config.act_bits == 8:
        log.info("W1.58A8: per-token %s activations in every ternary linear", config.act_format)
    return pipe


def _plain(value):
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def keyed_dir(cfg: DictConfig, parts: list[str], label: str, keys: list[str]) -> tuple[Path, dict]:
    determining = {k: _plain(OmegaConf.select(cfg, k)) for k in keys}
    spec = model_spec(cfg) if "model" in keys else None
    if isinstance(spec, ToyWorldSource):  # same config, retrained weights: a new directory
        determining["model_weights_sha256"] = spec.fingerprint()
    return Path(cfg.paths.output_dir).joinpath(*parts) / f"{label}-{config_hash(determining)}", determining


def artifact_dir(cfg: DictConfig, stage: str, keys: list[str]) -> tuple[Path, dict]:
    """`<output_dir>/<stage>/<benchmark>/<model>-<quant>-<hash8>` keyed by the config sections in `keys`.

    A quantized model whose checkpoint comes from the quantize stage is keyed by that checkpoint's directory too
    (it depends on the calibration settings, which `keys` need not name).
    """
    config = quant_config(cfg) if "quant" in keys else None
    if config is not None and config.needs_calibration and not cfg.quant.get("checkpoint"):
        keys = [*keys, *CALIBRATION_KEYS[1:]]
    for speedup in ("batched_modulation", "compile"):  # they can move images by rounding: keyed only when on
        if cfg.get(speedup) and "sampler" in keys:
            keys = [*keys, speedup]
    return keyed_dir(cfg, [stage, cfg.benchmark.name], f"{cfg.model.name}-{cfg.quant.name}", keys)
