"""Where each stage's artifacts live: the config keys that name a stage's directory, and that directory for a config.

The one owner of artifact paths. A stage finds another stage's output here ("the generate directory of this
config with quant=bf16") instead of importing that stage. Every directory is
`<paths.output_dir>/<stage>[/<group>]/<label>-<hash8>`, where `hash8` hashes the config values that determine the
artifact (written to its `config.yaml`), never a timestamp.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from flux158.artifacts import LOCK_SUFFIX, artifact_lock, config_hash
from flux158.eval.toyworld.detector import MIN_AREA
from flux158.experiments import processes
from flux158.experiments.provenance import checkout_commit, gpu_name, measured_with
from flux158.experiments.resolve import model_spec, quant_config
from flux158.models import HubFluxSpec, ToyWorldSource
from flux158.models.identity import directory_fingerprint
from flux158.quant.checkpoint import checkpoint_fingerprint

# The teacher states: shared by every quantization method on the same model and sampler.
CALIBRATION_KEYS = ["model", "sampler", "calib.name", "calib.prompt_set", "calib.prompts", "calib.num_prompts",
                    "calib.heldout", "calib.states_per_prompt", "calib.chunk_size", "calib.batch_size", "calib.seed"]
# The images. Evaluator settings (benchmark.evaluator, thresholds) are left out: they do not change the images.
GENERATE_KEYS = ["model", "quant", "sampler", "seed", "batch_size", "benchmark.name", "benchmark.prompt_set",
                 "benchmark.prompts", "benchmark.per_tag", "benchmark.prompt_seed", "benchmark.categories",
                 "benchmark.limit_per_group", "benchmark.layout", "benchmark.samples_per_prompt"]
EVALUATE_KEYS = [*GENERATE_KEYS, "benchmark.evaluator", "benchmark.threshold", "benchmark.counting_threshold",
                 "benchmark.detector", "benchmark.detector_checkpoint", "benchmark.clip_model",
                 "benchmark.clip_pretrained", "benchmark.evaluator_weights", "benchmark.official_checkout",
                 "benchmark.bvqa_image_size", "benchmark.metrics", "benchmark.judge", "benchmark.judge_model",
                 "benchmark.detector_model", "fidelity"]
# Settings added after artifacts existed: hashed only when the config has them, so older directories keep their names.
# (`benchmark.min_area` is not one: its null means today's detector, so it is keyed by the value in effect.)
LATER_EVALUATE_KEYS = ["benchmark.numeracy_parser"]
# Prompt embeddings: the text encoders (the model's, in its dtype) and the token budget. The files inside are keyed by
# prompt text, so every benchmark, calibration set and quantization variant of one model shares one folder.
EMBEDDINGS_KEYS = ["model", "sampler.max_sequence_length"]
STORAGE_KEYS = ["model", "quant"]
LATENCY_KEYS = ["model", "sampler", "latency"]
ACTIVATION_KEYS = ("act_bits", "act_format")  # applied at load time: W2A16 and W1.58A8 share one checkpoint
QUANTIZED_SUBDIR = "transformer"
LOCKS_DIR = ".locks"
# The `quant` section of `quant=bf16` (configs/quant/bf16.yaml; a test keeps the two equal): the unquantized model
# whose images every quantized model's fidelity is measured against.
UNQUANTIZED = {"name": "bf16", "checkpoint": None}


def _plain(value):
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def keyed_dir(cfg: DictConfig, parts: list[str], label: str, keys: list[str], **extra) -> tuple[Path, dict]:
    """`<output_dir>/<parts...>/<label>-<hash8>` and the values it hashes: those of `keys` and `extra`, with what
    lies at a path keyed by content (`content_keys`)."""
    determining = content_keys(cfg, {k: _plain(OmegaConf.select(cfg, k)) for k in keys} | extra)
    return Path(cfg.paths.output_dir).joinpath(*parts) / f"{label}-{config_hash(determining)}", determining


def content_keys(cfg: DictConfig, determining: dict) -> dict:
    """`determining` with each input that is a path keyed by what it holds: the toy-world model's weights, a local
    model directory's files and a quantized checkpoint's recorded hashes replace their paths (a copy moved elsewhere
    keeps its artifacts, one replaced in place gets new ones); an evaluator checkout adds its git commit. A hub model
    is keyed by its revision, which `run.py` resolves to a commit first (`resolve.pin_model_revision`)."""
    determining = dict(determining)
    model = determining.get("model")
    if model is not None:
        spec = model_spec(cfg)
        if isinstance(spec, ToyWorldSource):
            determining["model_weights_sha256"] = spec.fingerprint()
        elif isinstance(spec, HubFluxSpec) and spec.is_local:
            model = {**model, "pretrained": "<local directory>"}
            model["spec"] = {**model.get("spec", {}), "pretrained": "<local directory>"}
            determining["model"] = model
            determining["model_files_sha256"] = directory_fingerprint(Path(spec.pretrained), Path(cfg.paths.cache_dir))
    quant = determining.get("quant")
    if quant is not None and quant.get("checkpoint"):
        determining["quant"] = {**quant, "checkpoint": "<checkpoint>"}
        determining["checkpoint_sha256"] = checkpoint_fingerprint(Path(quant["checkpoint"]))
    if determining.get("benchmark.official_checkout"):
        determining["official_checkout_commit"] = checkout_commit(Path(determining.pop("benchmark.official_checkout")))
    return determining


def distill_processes(cfg: DictConfig) -> dict:
    """`{"distill_processes": n}` when `distill` runs data-parallel over n > 1 processes: each rank draws its own
    rows, so n changes the weights (one process: empty, so earlier directories keep their names)."""
    config = quant_config(cfg)
    if config is None or config.method != "distill" or cfg.quant.get("checkpoint") or processes.num_processes() == 1:
        return {}
    return {"distill_processes": processes.num_processes()}


def embeddings_artifact(cfg: DictConfig) -> tuple[Path, dict]:
    """`embeddings/<model>-<hash8>`: one file per prompt (`flux158.generation.embeddings`)."""
    return keyed_dir(cfg, ["embeddings"], cfg.model.name, EMBEDDINGS_KEYS)


def calibration_artifact(cfg: DictConfig) -> tuple[Path, dict]:
    """`calibrate/<calib>/<model>-<hash8>`: the teacher states."""
    return keyed_dir(cfg, ["calibrate", cfg.calib.name], cfg.model.name, CALIBRATION_KEYS)


def quantize_artifact(cfg: DictConfig) -> tuple[Path, dict]:
    """`quantize/<model>-<quant>-<hash8>`, keyed by the calibration too when the method uses it."""
    keys = ["model", "quant"] + (CALIBRATION_KEYS[1:] if quant_config(cfg).needs_calibration else [])
    weights_only = cfg.copy()
    with open_dict(weights_only):
        for key in ACTIVATION_KEYS:
            weights_only.quant.config.pop(key, None)
    return keyed_dir(weights_only, ["quantize"], f"{cfg.model.name}-{cfg.quant.name}", keys, **distill_processes(cfg))


def benchmark_artifact(cfg: DictConfig, stage: str, keys: list[str]) -> tuple[Path, dict]:
    """`<stage>/<benchmark>/<model>-<quant>-<hash8>` keyed by `keys`.

    A quantized model whose checkpoint comes from the quantize stage is keyed by the calibration settings too (its
    weights depend on them). Speed and memory switches that can move images by rounding are keyed only when on.
    """
    config = quant_config(cfg) if "quant" in keys else None
    extra = {}
    if config is not None and config.needs_calibration and not cfg.quant.get("checkpoint"):
        keys = [*keys, *CALIBRATION_KEYS[1:]]
        extra = distill_processes(cfg)
    for speedup in ("batched_modulation", "compile", "cuda_graph", "low_memory"):
        if cfg.get(speedup) and "sampler" in keys:
            keys = [*keys, speedup]
    if stage == "evaluate" and cfg.benchmark.get("evaluator") == "toyworld":
        min_area = cfg.benchmark.get("min_area")
        extra["benchmark.min_area"] = MIN_AREA if min_area is None else min_area
    return keyed_dir(cfg, [stage, cfg.benchmark.name], f"{cfg.model.name}-{cfg.quant.name}", keys, **extra)


def generate_artifact(cfg: DictConfig) -> tuple[Path, dict]:
    return benchmark_artifact(cfg, "generate", GENERATE_KEYS)


def pairing_key(cfg: DictConfig) -> str:
    """What a variant's images share with the BF16 images they are compared with: the generate key without the
    quantization (model, sampler, seeds, benchmark, prompts). Image grids put side by side only equal keys."""
    return config_hash(keyed_dir(cfg, [], "", [k for k in GENERATE_KEYS if k != "quant"])[1])


def evaluate_artifact(cfg: DictConfig) -> tuple[Path, dict]:
    later = [k for k in LATER_EVALUATE_KEYS if OmegaConf.select(cfg, k) is not None]
    return benchmark_artifact(cfg, "evaluate", [*EVALUATE_KEYS, *later])


def storage_artifact(cfg: DictConfig) -> tuple[Path, dict]:
    """`storage/<model>-<quant>-<hash8>`."""
    return keyed_dir(cfg, ["storage"], f"{cfg.model.name}-{cfg.quant.name}", STORAGE_KEYS)


def latency_artifact(cfg: DictConfig, device_name: str | None = None,
                     software: Mapping[str, Any] | None = None) -> tuple[Path, dict]:
    """`latency/<model>-<device>-<hash8>`: a timing belongs to the GPU model (default: this process's) and to what
    ran on it (default: `provenance.measured_with()`, the code commit, torch, triton, any backend-table override)."""
    device_name = gpu_name() if device_name is None else device_name
    software = measured_with() if software is None else software
    label = f"{cfg.model.name}-{re.sub(r'[^a-z0-9]+', '_', device_name.lower()).strip('_')}"
    return keyed_dir(cfg, ["latency"], label, LATENCY_KEYS, device=device_name, **software)


def toyworld_train_artifact(cfg: DictConfig) -> tuple[Path, dict]:
    """`toyworld_train/toyworld-<hash8>`: the toy model's architecture and training settings."""
    section = OmegaConf.to_container(cfg.toyworld, resolve=True)
    determining = {"spec": section["spec"], "train": section["train"]}
    return Path(cfg.paths.output_dir) / "toyworld_train" / f"toyworld-{config_hash(determining)}", determining


def lock(cfg: DictConfig, directory: Path, what: str, part: str = ""):
    """The lock of an artifact directory, or of one `part` of it (a shard), for `artifacts.artifact_lock`: held by
    whoever makes it, so processes sharing the directory never do the same work twice. The lock files live under
    `<output_dir>/.locks/`, mirroring the artifact tree, so taking a lock writes nothing beside or inside the
    artifacts (a run that fails before writing leaves no artifact folder)."""
    root = Path(cfg.paths.output_dir)
    try:
        relative = Path(directory).relative_to(root)
    except ValueError:  # not under the outputs: keyed by the absolute path
        relative = Path("elsewhere") / config_hash({"path": str(Path(directory).resolve())})
    lock_file = root / LOCKS_DIR / relative.parent / f"{relative.name}{'.' + part if part else ''}{LOCK_SUFFIX}"
    return artifact_lock(lock_file, what, f"{directory}{f' ({part})' if part else ''}")


def unquantized(cfg: DictConfig) -> DictConfig:
    """The same config with `quant=bf16`: the reference a quantized model's images are compared with."""
    reference = cfg.copy()
    with open_dict(reference):
        reference.quant = OmegaConf.create(UNQUANTIZED)
    return reference


def stage_dir(cfg: DictConfig, stage: str) -> Path:
    """The artifact directory `stage` writes for `cfg` (latency: on the GPU, or the CPU, of this process)."""
    dirs = {"calibrate": calibration_artifact, "quantize": quantize_artifact, "generate": generate_artifact,
            "evaluate": evaluate_artifact, "latency": latency_artifact, "storage": storage_artifact,
            "train_toyworld": toyworld_train_artifact}
    if stage not in dirs:
        raise ValueError(f"stage {stage!r} has no keyed artifact directory; stages with one: {list(dirs)}")
    return dirs[stage](cfg)[0]
