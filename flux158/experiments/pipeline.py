"""The FLUX pipeline a config describes, with its transformer quantized as the config says, and the stored prompt
embeddings it may condition on instead of its text encoders."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from omegaconf import DictConfig

from flux158.artifacts import is_done
from flux158.errors import ConfigError
from flux158.experiments import artifact_dirs, resolve
from flux158.generation.embeddings import PromptEmbeddings
from flux158.models import ToyWorldSource, load_pipeline, parse_dtype
from flux158.quant import quantize_, set_activations
from flux158.quant.calibration import CalibrationError

log = logging.getLogger(__name__)


def load(cfg: DictConfig, device: torch.device, components: str = "all"):
    """The FLUX pipeline of `cfg.model` with its transformer quantized as `cfg.quant` says (`components`: see
    `load_pipeline`; "text" skips the transformer, and with it the quantization).

    The transformer comes from `cfg.quant.checkpoint` when set, else from the quantize stage's checkpoint when it
    exists; a data-free method without a checkpoint is applied in memory, a calibrated one is an error.
    """
    checkpoint = cfg.quant.get("checkpoint")
    config = resolve.quant_config(cfg)
    if checkpoint is None and config is not None and components != "text":
        stored = artifact_dirs.quantize_artifact(cfg)[0]
        if is_done(stored):
            checkpoint = str(stored / artifact_dirs.QUANTIZED_SUBDIR)
            log.info("using the quantized checkpoint %s", checkpoint)
        elif config.needs_calibration:
            raise CalibrationError(f"quant={cfg.quant.name} needs its quantized checkpoint, which is not at {stored}: "
                                   "run the stages calibrate and quantize first (stages=[calibrate,quantize,...])")
    wanted = cfg.get("device", "auto")
    # No barrier here (a rank with nothing to do never loads): what a load writes is safe to race. Hub downloads
    # hold huggingface_hub's per-file locks, the tiny model is built in a temp folder and renamed, the random
    # model's tokenizers are written under a file lock.
    pipe = load_pipeline(
        resolve.model_spec(cfg),
        device=device if wanted == "auto" else torch.device(wanted),
        dtype=parse_dtype(cfg.model.dtype),
        cache_dir=Path(cfg.paths.cache_dir),
        transformer_path=Path(checkpoint) if checkpoint else None,
        cpu_offload=cfg.model.get("cpu_offload", False),
        components=components,
        low_memory=bool(cfg.get("low_memory", False)),
    )
    if components == "text":
        return pipe
    if config is not None and checkpoint is None:
        report = quantize_(pipe.transformer, config)
        log.info("quantized %d block linears (%.2f%% of %d transformer parameters) with %s", len(report.quantized),
                 100 * report.share, report.total_params, cfg.quant.name)
    elif config is not None:  # activation precision is an inference setting, not part of the checkpoint
        set_activations(pipe.transformer, config.act_bits, config.act_format)
    if config is not None and config.act_bits == 8:
        log.info("W1.58A8: per-token %s activations in every ternary linear", config.act_format)
    return pipe


def stored_embeddings(cfg: DictConfig, prompts: list[str]) -> PromptEmbeddings | None:
    """The encode stage's embeddings when `cfg.embeddings` asks for them and they cover `prompts`, else None."""
    wanted = cfg.get("embeddings", "auto")
    if wanted not in ("auto", True, False):
        raise ConfigError(f"embeddings={wanted!r} must be auto, true or false")
    if wanted is False or (wanted == "auto" and isinstance(resolve.model_spec(cfg), ToyWorldSource)):
        return None
    folder = artifact_dirs.embeddings_artifact(cfg)[0]
    store = PromptEmbeddings(folder)
    missing = store.missing(prompts)
    if not missing:
        log.info("conditioning on the stored prompt embeddings in %s; T5 and CLIP are not loaded", folder)
        return store
    if wanted is True:
        raise ConfigError(f"embeddings=true, but {len(missing)} prompts of this shard have no stored embeddings in "
                          f"{folder} (e.g. {missing[0]!r}): run the encode stage first (stages=[encode,generate])")
    return None
