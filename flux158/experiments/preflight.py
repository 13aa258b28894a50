"""Every setting that can be checked before work starts, checked before anything is written: a bad one is one
`ConfigError` naming it (run.py prints that line and exits 2), never a traceback after hours of work or a silently
ignored override."""

from __future__ import annotations

import json
import os
from pathlib import Path

from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from flux158.data.prompts import PROMPT_SETS
from flux158.data.sources import T2I_COMPBENCH_CATEGORIES
from flux158.errors import ConfigError
from flux158.experiments.provenance import checkout_commit
from flux158.experiments.resolve import model_spec, quant_config, require_positive
from flux158.generation.layouts import LAYOUTS
from flux158.models import HubFluxSpec, ToyWorldSource
from flux158.models.hub import resolve_pretrained
from flux158.sharding import combine_shards

# FLUX packs 2x2 latent patches of the VAE's 8x-downsampled image: pixel sizes must be multiples of 16.
PIXELS_PER_TOKEN = 16
OWN_PROMPT_SETS = ("inline", "toyworld_heldout", "toyworld_balanced")
EVALUATORS = ("toyworld", "geneval", "t2i_compbench")
# The stages that read each kind of input file.
USES_CHECKPOINT = {"generate", "evaluate", "latency", "storage", "encode"}
USES_EVALUATOR_FILES = {"evaluate"}
LOADS_THE_MODEL = {"calibrate", "quantize", "encode", "generate", "latency"}


def check(cfg: DictConfig) -> None:
    """Refuse the first bad setting of `cfg` for the stages it runs.

    Raises:
        ConfigError: one line naming the setting, its value and what it must be.
    """
    stages = set(cfg.stages)
    _counts(cfg)
    _sampler(cfg)
    _built("model.spec", lambda: model_spec(cfg))
    _built("quant.config", lambda: quant_config(cfg))
    _benchmark(cfg)
    if "evaluate" in stages and cfg.benchmark.get("evaluator") is None:
        raise ConfigError(f"stages has evaluate, but benchmark={cfg.benchmark.name} has no evaluator "
                          f"(benchmark.evaluator: one of {EVALUATORS})")
    combine_shards(cfg.shard.index, cfg.shard.count, 0, 1)
    if stages & LOADS_THE_MODEL:
        _model_files(cfg)
    if stages & USES_CHECKPOINT and cfg.quant.get("checkpoint"):
        _quantized_checkpoint(cfg.quant.checkpoint)
    if stages & USES_EVALUATOR_FILES:
        if cfg.benchmark.get("detector_checkpoint"):
            _readable(cfg.benchmark.detector_checkpoint, "benchmark.detector_checkpoint", directory=False)
        if cfg.benchmark.get("official_checkout"):
            _readable(cfg.benchmark.official_checkout, "benchmark.official_checkout", directory=True)
            checkout_commit(Path(cfg.benchmark.official_checkout))  # a git checkout, or one line


def _counts(cfg: DictConfig) -> None:
    require_positive(cfg, "batch_size", "benchmark.samples_per_prompt", "benchmark.limit_per_group",
                     "benchmark.per_tag", "calib.num_prompts", "calib.states_per_prompt", "calib.chunk_size",
                     "calib.batch_size", "sampler.num_inference_steps", "sampler.max_sequence_length")
    heldout = OmegaConf.select(cfg, "calib.heldout")
    if heldout is not None and (not isinstance(heldout, int) or heldout < 0):
        raise ConfigError(f"calib.heldout={heldout!r} must be a whole number >= 0")


def _sampler(cfg: DictConfig) -> None:
    for key in ("sampler.height", "sampler.width"):
        value = OmegaConf.select(cfg, key)
        if not isinstance(value, int) or value < PIXELS_PER_TOKEN or value % PIXELS_PER_TOKEN:
            raise ConfigError(f"{key}={value!r} must be a positive multiple of {PIXELS_PER_TOKEN} (FLUX's 2x2 "
                              "latent patches of the VAE's 8x-downsampled image)")
    guidance = OmegaConf.select(cfg, "sampler.guidance_scale")
    if not isinstance(guidance, int | float) or guidance < 0:
        raise ConfigError(f"sampler.guidance_scale={guidance!r} must be a number >= 0")
    _built("sampler", lambda: instantiate(cfg.sampler))


def _built(section: str, build) -> None:
    """Build a config section's object; its own validation error becomes one line naming the section."""
    try:
        build()
    except InstantiationException as e:
        cause = e.__cause__ or e
        raise ConfigError(f"{section}: {cause}") from None
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{section}: {e}") from None


def _benchmark(cfg: DictConfig) -> None:
    bench = cfg.benchmark
    if bench.get("prompt_set") not in (*PROMPT_SETS, *OWN_PROMPT_SETS):
        raise ConfigError(f"benchmark.prompt_set={bench.get('prompt_set')!r} is not a prompt set; choose one of "
                          f"{[*PROMPT_SETS, *OWN_PROMPT_SETS]}")
    if bench.get("layout") not in LAYOUTS:
        raise ConfigError(f"benchmark.layout={bench.get('layout')!r} is not an image layout; choose one of {LAYOUTS}")
    if bench.get("evaluator") is not None and bench.evaluator not in EVALUATORS:
        raise ConfigError(f"benchmark.evaluator={bench.evaluator!r} is not an evaluator; choose one of {EVALUATORS}")
    categories = bench.get("categories")
    if categories is not None:
        if bench.prompt_set not in ("t2i_compbench_val", "t2i_compbench_train"):
            raise ConfigError(f"benchmark.categories={list(categories)} selects T2I-CompBench categories, and "
                              f"benchmark={bench.name} has none: leave it null")
        unknown = [c for c in categories if c not in T2I_COMPBENCH_CATEGORIES]
        if not categories:
            raise ConfigError(f"benchmark.categories=[] selects nothing: leave it null for all eight, or name some of "
                              f"{list(T2I_COMPBENCH_CATEGORIES)}")
        if unknown:
            raise ConfigError(f"benchmark.categories={list(categories)}: {unknown} not a T2I-CompBench category; "
                              f"choose from {list(T2I_COMPBENCH_CATEGORIES)}")
    if bench.get("evaluator") == "t2i_compbench":
        _t2i_protocol(bench)
    for key in ("threshold", "counting_threshold"):
        value = bench.get(key)
        if value is not None and (not isinstance(value, int | float) or not 0 <= value <= 1):
            raise ConfigError(f"benchmark.{key}={value!r} must be a score threshold in [0, 1]")
    min_area = bench.get("min_area")
    if min_area is not None and (not isinstance(min_area, int) or min_area < 1):
        raise ConfigError(f"benchmark.min_area={min_area!r} must be a whole number of pixels >= 1")


def _model_files(cfg: DictConfig) -> None:
    """A local model directory (FLUX in diffusers format, or a toy-world model) must hold a pipeline; a hub model is
    checked when it is resolved (`resolve.pin_model_revision`), where the hub or its cache says what is missing."""
    spec = model_spec(cfg)
    if isinstance(spec, HubFluxSpec) and spec.is_local:
        resolve_pretrained(spec)
    elif isinstance(spec, ToyWorldSource):
        spec.resolve()


def _t2i_protocol(bench: DictConfig) -> None:
    from flux158.eval.t2i_compbench.rules import NUMERACY_PARSERS
    from flux158.eval.t2i_compbench.scoring import BACKENDS, METRIC_CHOICES

    for category, metric in (OmegaConf.to_container(bench.metrics) if bench.get("metrics") else {}).items():
        if category not in METRIC_CHOICES:
            raise ConfigError(f"benchmark.metrics.{category}: not a T2I-CompBench category; choose from "
                              f"{list(METRIC_CHOICES)}")
        if metric not in METRIC_CHOICES[category]:
            raise ConfigError(f"benchmark.metrics.{category}={metric!r}: {category} is scored with one of "
                              f"{list(METRIC_CHOICES[category])}")
    for key in ("detector", "judge"):
        if bench.get(key) not in BACKENDS:
            raise ConfigError(f"benchmark.{key}={bench.get(key)!r} is not a backend; choose one of {list(BACKENDS)}")
    parser = bench.get("numeracy_parser")
    if parser is not None and parser not in NUMERACY_PARSERS:
        raise ConfigError(f"benchmark.numeracy_parser={parser!r} is not a parser; choose one of "
                          f"{list(NUMERACY_PARSERS)}")


def _quantized_checkpoint(value: str) -> None:
    _readable(value, "quant.checkpoint", directory=True)
    record = Path(str(value)).expanduser() / "quantization.json"
    try:
        json.loads(record.read_text())
    except FileNotFoundError:
        raise ConfigError(f"quant.checkpoint={value} is not a quantized checkpoint (no quantization.json)") from None
    except (OSError, ValueError) as e:
        raise ConfigError(f"quant.checkpoint={value}: its quantization.json is unreadable ({e})") from None


def _readable(value: str, key: str, directory: bool) -> None:
    path = Path(str(value)).expanduser()
    kind = "directory" if directory else "file"
    if not path.exists():
        raise ConfigError(f"{key}={value}: no such {kind}")
    if directory != path.is_dir():
        raise ConfigError(f"{key}={value} is a {'file' if path.is_file() else 'directory'}, not a {kind}")
    if not os.access(path, os.R_OK | (os.X_OK if directory else 0)):
        raise ConfigError(f"{key}={value}: permission denied (not readable by this user)")
