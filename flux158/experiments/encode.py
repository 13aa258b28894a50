"""Stage `encode`: the prompt embeddings (T5 + CLIP) of the benchmark, and of the calibration set when the run
calibrates, once per model and token budget, sharded and resumable. `generate` and `calibrate` then condition on
them without loading the text encoders (`embeddings=auto|true`)."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import yaml
from omegaconf import DictConfig

from flux158.artifacts import atomic_write_text
from flux158.errors import ConfigError
from flux158.experiments import artifact_dirs, pipeline, processes, resolve
from flux158.generation.embeddings import PromptEmbeddings
from flux158.models import ToyWorldSource
from flux158.sharding import shard

log = logging.getLogger(__name__)


def _prompts(cfg: DictConfig) -> set[str]:
    """The benchmark's prompts, plus the calibration prompts when this run calibrates."""
    texts = {item.prompt for item in resolve.prompts(cfg)} if cfg.benchmark.get("layout") else set()
    config = resolve.quant_config(cfg)
    calibrates = config is not None and (config.needs_calibration or cfg.calib.get("with_data_free", False))
    if "calibrate" in cfg.stages and calibrates:
        texts |= {p for split in resolve.calibration_prompts(cfg).values() for p in split}
    return texts


def run(cfg: DictConfig) -> Path:
    """Encode this shard's prompts that have no stored embeddings; return the embeddings folder. Under
    accelerate/torchrun all ranks meet at the end, so the next stage finds every rank's embeddings."""
    if isinstance(resolve.model_spec(cfg), ToyWorldSource):
        raise ConfigError("the toy world encodes its short prompts on the fly; the encode stage is for FLUX models")
    out, determining = artifact_dirs.embeddings_artifact(cfg)
    prompts = sorted(_prompts(cfg))  # one order for every shard
    process_index, num_processes, device = processes.process()
    index, count = resolve.global_shard(cfg, process_index, num_processes)
    store = PromptEmbeddings(out)
    mine = shard(prompts, index, count)
    todo = store.missing(mine)
    log.info("encode: %s, %d prompts (shard %d of %d), %d to encode -> %s", cfg.model.name, len(prompts), index,
             count, len(todo), out)
    if todo:
        pipe = pipeline.load(cfg, device, components="text")  # fails fast, before any output folder exists
        out.mkdir(parents=True, exist_ok=True)
        if not (out / "config.yaml").exists():
            atomic_write_text(out / "config.yaml", yaml.safe_dump(determining, sort_keys=False))
        with artifact_dirs.lock(cfg, out, "encode", f"shard-{index}-of-{count}"):
            started = time.perf_counter()
            encoded = store.encode(pipe, mine, cfg.sampler.max_sequence_length)  # what another process left: skipped
            log.info("encode: %d prompts in %.1f s", encoded, time.perf_counter() - started)
    processes.wait_for_everyone()
    return out
