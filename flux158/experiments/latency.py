"""Stage `latency` (`experiment=latency`): transformer step latency and peak memory of BF16, ternary W2A16 and
ternary W1.58A8, eager and `torch.compile`d (regional: the repeated blocks), per resolution (paper Table 3, Fig. 2);
and whole generations end to end (text encoders, every step, VAE), eager, compiled and CUDA-graphed.

On a GPU it times the configured model (FLUX.1-dev-shaped with random weights by default); on a CPU only the tiny
model runs, as a smoke test of the protocol, and `metrics.json` says so (`smoke: true`).
"""

from __future__ import annotations

import gc
import json
import logging
import tempfile
import time
from contextlib import ExitStack, nullcontext
from datetime import datetime, timezone
from pathlib import Path

import torch
import yaml
from diffusers import FluxPipeline
from omegaconf import DictConfig, OmegaConf, open_dict

from flux158.artifacts import atomic_write_text, is_done, mark_done
from flux158.errors import Flux158Error
from flux158.experiments import artifact_dirs, pipeline, provenance, resolve, tracking
from flux158.generation.graphs import cuda_graphed
from flux158.latency import StepSettings, StepTiming, time_steps, transformer_inputs
from flux158.models import HubFluxSpec, RandomFluxSpec, parse_dtype
from flux158.models.hub import FLUX1_DEV_TRANSFORMER_CONFIG
from flux158.models.random import random_pipeline, random_transformer
from flux158.modulation import modulation_tables
from flux158.quant import TernaryConfig, TernaryLinear, quantize_, set_activations
from flux158.toyworld.pipeline import ToyWorldSource

log = logging.getLogger(__name__)
# variant -> (activation bits, 8-bit format, `ternary_linear` backend); None is the BF16 model. Plain names
# run `auto` (per shape, the faster of fused and unpack measured for this GPU: `flux158.kernels.backend_table`); the
# `_fused` and `_unpack` names force one backend.
_FORMATS = {"w2a16": (16, "int8"), "w158a8_int8": (8, "int8"), "w158a8_fp8": (8, "fp8")}
_SUFFIXES = {"": "auto", "_fused": "triton", "_unpack": "unpack"}
VARIANTS = {"bf16": None} | {name + suffix: (*bits, backend) for name, bits in _FORMATS.items()
                             for suffix, backend in _SUFFIXES.items()}
MEMORY_MODES = ("resident", "encoders_offloaded", "cached_embeddings")
COLUMNS = ["variant", "compiled", "cuda_graph", "resolution", "per_step_ms", "total_ms", "weights_gib", "peak_gib",
           "error"]


def _architecture(cfg: DictConfig) -> dict:
    spec = resolve.model_spec(cfg)
    if isinstance(spec, RandomFluxSpec):
        return dict(spec.configs.transformer)
    if isinstance(spec, HubFluxSpec):
        return {**FLUX1_DEV_TRANSFORMER_CONFIG, "guidance_embeds": cfg.model.get("guidance_embeds", True)}
    return dict(pipeline.load(resolve.full_precision(cfg), torch.device("cpu")).transformer.config)


def _transformer(cfg: DictConfig, arch: dict, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    if cfg.latency.weights == "pretrained":
        return pipeline.load(resolve.full_precision(cfg), torch.device("cpu")).transformer.to(device, dtype)
    return random_transformer(arch, device, dtype, seed=cfg.seed)


def _convert(model: torch.nn.Module, variant: str, method: str, quantized: bool) -> bool:
    """Turn `model` into `variant` in place (BF16 -> ternary is one-way); returns whether it is ternary now."""
    bits = VARIANTS[variant]
    if bits is None:
        if quantized:
            raise Flux158Error("latency.variants must list bf16 before the ternary variants")
        return False
    if not quantized:
        quantize_(model, TernaryConfig(method, "channel"))
    act_bits, act_format, backend = bits
    set_activations(model, act_bits, act_format)
    on_gpu = next(model.parameters()).is_cuda
    for module in model.modules():
        if isinstance(module, TernaryLinear):
            module.backend = backend if on_gpu else "auto"  # the CPU smoke test runs the reference
    return True


def _gib(n: int | None) -> float | None:
    return None if n is None else round(n / 2**30, 3)


def run(cfg: DictConfig) -> Path:
    lat = cfg.latency
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    smoke = device.type == "cpu"
    if smoke and isinstance(resolve.model_spec(cfg), HubFluxSpec):
        raise Flux158Error("experiment=latency on a CPU runs the tiny-model smoke test only: add model=tiny")
    if lat.weights not in ("random", "pretrained"):
        raise Flux158Error(f"latency.weights must be random or pretrained, got {lat.weights!r}")
    unknown = [v for v in lat.variants if v not in VARIANTS]
    if unknown:
        raise Flux158Error(f"unknown latency variant(s) {unknown}; choose from {list(VARIANTS)}")
    graphs = list(lat.cuda_graph)
    if smoke and any(graphs):
        log.info("latency: CUDA-graphed steps are timed on GPUs only; skipping them on CPU")
        graphs = [g for g in graphs if not g]
    out, determining = artifact_dirs.latency_artifact(cfg)
    with artifact_dirs.lock(cfg, out, "latency"):  # two timings at once on one machine would disturb each other
        if is_done(out):
            log.info("latency: %s holds a finished measurement of this config, code and GPU; delete it to measure "
                     "again", out)
            return out
        return _measure(cfg, device, smoke, graphs, out, determining)


def _measure(cfg: DictConfig, device: torch.device, smoke: bool, graphs: list[bool], out: Path,
             determining: dict) -> Path:
    """Time every variant and setting into `out/metrics.json` (written after each row), then mark it done."""
    lat = cfg.latency
    arch = _architecture(cfg)
    dtype = parse_dtype(lat.dtype)
    torch._dynamo.config.automatic_dynamic_shapes = False  # one static graph per resolution, as in deployment
    torch._dynamo.config.cache_size_limit = 64
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "config.yaml", yaml.safe_dump(determining, sort_keys=False))
    rows: list[dict] = []
    metrics = {"model": cfg.model.name, "quant": "latency", "benchmark": "latency", **provenance.environment(),
               "triton": provenance.triton_version(), "measured_at": _utc_now(),
               "kernel_table": _kernel_table(device), "smoke": smoke,
               "weights": lat.weights,
               "settings": {**OmegaConf.to_container(lat, resolve=True), "device": str(device)},
               "metrics": {"rows": rows}}
    for compiled in lat.compile:
        if compiled and smoke:
            log.info("latency: torch.compile is timed on GPUs only; skipping on CPU")
            continue
        model, quantized = _transformer(cfg, arch, device, dtype), False
        for variant in lat.variants:
            quantized = _convert(model, variant, lat.method, quantized)
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
            if compiled:
                model.compile_repeated_blocks(fullgraph=lat.fullgraph)
            for resolution in lat.resolutions:
                settings = StepSettings(resolution, resolution, lat.steps, lat.warmup, 1, lat.text_tokens)
                inputs = transformer_inputs(arch, settings, device, dtype)
                for graphed in graphs:
                    with ExitStack() as stack:
                        prepare = None
                        if lat.batched_modulation:  # all steps' modulation vectors in one pass per layer
                            prepare = stack.enter_context(modulation_tables(
                                model, settings.timesteps(device), inputs["pooled_projections"],
                                inputs.get("guidance"))).select
                        try:
                            timing = time_steps(model, inputs, settings, cuda_graph=graphed, prepare=prepare)
                        except Exception as err:  # one failing setting must not lose the others
                            log.exception("latency %s failed", variant)
                            timing = StepTiming(error=f"{type(err).__name__}: {str(err).strip()[:300]}")
                    row = {"variant": variant, "compiled": compiled, "cuda_graph": graphed, "resolution": resolution,
                           "per_step_ms": timing.per_step_ms, "total_ms": timing.total_ms,
                           "weights_gib": _gib(timing.weights_bytes), "peak_gib": _gib(timing.peak_bytes),
                           "error": timing.error}
                    rows.append(row)
                    mode = ("compiled" if compiled else "eager") + (", CUDA graph" if graphed else "")
                    log.info("latency %s (%s) %dpx: %s", variant, mode, resolution,
                             timing.error or f"{timing.per_step_ms:.2f} ms/step, {lat.steps} steps "
                             f"{timing.total_ms / 1e3:.2f} s, peak {_gib(timing.peak_bytes)} GiB")
                    atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2))  # partial results survive
        del model
        gc.collect()
    _speedups(rows)
    if lat.end_to_end:
        metrics["metrics"]["pipeline"] = _whole_pipeline(cfg, device, arch)
        _speedups(metrics["metrics"]["pipeline"], "end_to_end_ms", "pipeline_peak_gib")
    atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2))
    with tracking.track(cfg, "latency") as tracker:
        tracker.table("latency", COLUMNS + ["speedup_vs_bf16_compiled", "memory_ratio_vs_bf16"],
                      [[r.get(c) for c in COLUMNS + ["speedup_vs_bf16_compiled", "memory_ratio_vs_bf16"]]
                       for r in rows])
        tracker.artifact(out / "metrics.json", f"latency-{cfg.model.name}-{device.type}", "results")
    log.info("latency: wrote %s (%s%s)", out / "metrics.json", metrics["gpu"], ", CPU smoke test" if smoke else "")
    failed = [r for r in rows if r["error"] and r["error"] != "OOM"]
    if not failed:
        mark_done(out, {"rows": len(rows)})
    else:
        raise Flux158Error(f"latency: {len(failed)} setting(s) failed (the rest are in {out / 'metrics.json'}): "
                           + "; ".join(f"{r['variant']} compiled={r['compiled']} cuda_graph={r['cuda_graph']} "
                                       f"{r['resolution']}px: {r['error']}" for r in failed))
    return out


def _pipeline(cfg: DictConfig, device: torch.device, arch: dict, memory: str = "resident", components: str = "all"):
    """The whole pipeline to time: a hub model with `latency.weights=random` runs a random-weight pipeline of its
    architecture (time and memory are the same; the images are noise). `memory`: "resident" (everything on the
    GPU), "encoders_offloaded" (diffusers' model offload: each model on the GPU only while it runs, so T5 and the
    transformer are never there together) or "cached_embeddings" (`components="image"`: T5 and CLIP are never
    loaded; see `_encode_once`); both low-memory modes decode with diffusers' tiled, sliced VAE, as
    `low_memory=true` generation does."""
    lat = cfg.latency
    if memory not in MEMORY_MODES:
        raise Flux158Error(f"latency.memory_modes: unknown mode {memory!r}; choose from {MEMORY_MODES}")
    offload = memory == "encoders_offloaded" and device.type == "cuda"
    if isinstance(resolve.model_spec(cfg), HubFluxSpec) and lat.weights == "random":
        log.info("latency: %s pipeline with random weights (FLUX.1-dev's architectures), %s", components, memory)
        with tempfile.TemporaryDirectory(prefix="flux158-tokenizers-") as tokenizers:
            pipe = random_pipeline(arch, device, parse_dtype(lat.dtype), Path(tokenizers), seed=cfg.seed,
                                   components=components)
        if offload:
            pipe.enable_model_cpu_offload(device=device)
    else:
        full = resolve.full_precision(cfg)
        with open_dict(full):
            full.low_memory = memory == "encoders_offloaded"
        pipe = pipeline.load(full, device, components=components)
    if memory != "resident" and components != "text" and isinstance(pipe, FluxPipeline):
        pipe.vae.enable_tiling()
        pipe.vae.enable_slicing()
    return pipe


def _encode_once(cfg: DictConfig, device: torch.device, arch: dict) -> dict:
    """The prompt's embeddings from a text-only pipeline, freed before the image pipeline loads: what a run from
    stored embeddings (stage `encode`, then `generate`) holds on the GPU."""
    pipe = _pipeline(cfg, device, arch, "cached_embeddings", components="text")
    with torch.no_grad():
        embeds, pooled, _ = pipe.encode_prompt(cfg.latency.prompt, prompt_2=None,
                                               max_sequence_length=cfg.sampler.max_sequence_length)
    del pipe
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return {"prompt_embeds": embeds, "pooled_prompt_embeds": pooled}


def _generate(pipe, cfg: DictConfig, resolution: int, device: torch.device, conditioning: dict | None = None) -> float:
    """Milliseconds of one whole generation (text encoders unless `conditioning` holds the stored embeddings,
    every step, VAE decode), synchronised."""
    lat = cfg.latency
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    text = {"prompt": lat.prompt} if conditioning is None else conditioning
    pipe(**text, height=resolution, width=resolution, num_inference_steps=lat.steps,
         guidance_scale=cfg.sampler.guidance_scale, max_sequence_length=cfg.sampler.max_sequence_length,
         generator=torch.Generator().manual_seed(cfg.seed))
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return 1e3 * (time.perf_counter() - start)


def _whole_pipeline(cfg: DictConfig, device: torch.device, arch: dict) -> list[dict]:
    """End to end, Table 3's protocol: one whole `latency.steps`-step generation at the first resolution (T5, CLIP,
    transformer and VAE all on `device`, the diffusers-torchao convention) per variant, eager and compiled, with and
    without CUDA-graph replay of the transformer (GPU only), in each of `latency.memory_modes` (see `_pipeline`).
    The first call (compilation and graph capture included) is reported apart from the timed second call; the
    peaks (allocated and reserved) are the timed call's."""
    lat = cfg.latency
    if isinstance(resolve.model_spec(cfg), ToyWorldSource):
        log.info("latency: whole-pipeline runs are measured for FluxPipeline models only; skipped")
        return []
    cuda = device.type == "cuda"
    modes = [(c, g) for c in lat.compile for g in lat.cuda_graph if cuda or not (c or g)]
    resolution = lat.resolutions[0]
    results = []
    for memory in lat.get("memory_modes", ["resident"]):
        for compiled, graphed in modes:
            cached = memory == "cached_embeddings"
            conditioning = _encode_once(cfg, device, arch) if cached else None  # before the image pipeline loads
            pipe = _pipeline(cfg, device, arch, memory, components="image" if cached else "all")
            quantized = False
            for variant in lat.variants:
                quantized = _convert(pipe.transformer, variant, lat.method, quantized)
                if compiled:
                    pipe.transformer.compile_repeated_blocks(fullgraph=lat.fullgraph)
                gc.collect()
                row = {"variant": variant, "compiled": compiled, "cuda_graph": graphed, "memory_mode": memory,
                       "resolution": resolution, "end_to_end_ms": None, "first_call_s": None,
                       "pipeline_peak_gib": None, "pipeline_reserved_gib": None, "error": None}
                try:
                    with cuda_graphed(pipe.transformer, fall_back=False) if graphed else nullcontext():
                        row["first_call_s"] = round(_generate(pipe, cfg, resolution, device, conditioning) / 1e3, 2)
                        if cuda:
                            torch.cuda.empty_cache()
                            torch.cuda.reset_peak_memory_stats(device)
                        row["end_to_end_ms"] = round(_generate(pipe, cfg, resolution, device, conditioning), 1)
                        if cuda:
                            row["pipeline_peak_gib"] = _gib(torch.cuda.max_memory_allocated(device))
                            row["pipeline_reserved_gib"] = _gib(torch.cuda.max_memory_reserved(device))
                except torch.cuda.OutOfMemoryError:
                    torch.cuda.empty_cache()
                    row["error"] = "OOM"
                except Exception as err:  # one failing setting must not lose the others
                    log.exception("latency: whole pipeline %s failed", variant)
                    row["error"] = f"{type(err).__name__}: {str(err).strip()[:300]}"
                results.append(row)
                mode = ("compiled" if compiled else "eager") + (", CUDA graph" if graphed else "") + f", {memory}"
                log.info("latency: whole pipeline %s (%s) %dpx: %s", variant, mode, resolution, row["error"] or
                         f"{row['end_to_end_ms'] / 1e3:.2f} s per image (first call {row['first_call_s']} s), peak "
                         f"{row['pipeline_peak_gib']} GiB (reserved {row['pipeline_reserved_gib']} GiB)")
            del pipe
            gc.collect()
    for r in results:  # what a low-memory mode costs per image against everything resident
        same = [b for b in results if b["memory_mode"] == "resident" and b["end_to_end_ms"] and r["end_to_end_ms"]
                and all(b[k] == r[k] for k in ("variant", "compiled", "cuda_graph"))]
        if same and r["memory_mode"] != "resident":
            r["time_vs_resident"] = round(r["end_to_end_ms"] / same[0]["end_to_end_ms"], 3)
    return results


def _speedups(rows: list[dict], time_key: str = "per_step_ms", peak_key: str = "peak_gib") -> None:
    """Each row's speedup over BF16 at its resolution (and memory mode), and its peak memory over BF16's. The
    baseline is compiled BF16 without a CUDA graph where measured, else eager BF16 without one, else any BF16 row."""
    for r in rows:
        bf16 = [b for b in rows if b["variant"] == "bf16" and b["resolution"] == r["resolution"] and b[time_key]
                and b.get("memory_mode") == r.get("memory_mode")]
        base = min(bf16, key=lambda b: (not b["compiled"], bool(b.get("cuda_graph"))), default=None)
        if base and r[time_key]:
            r["speedup_vs_bf16_compiled" if base["compiled"] else "speedup_vs_bf16_eager"] = round(
                base[time_key] / r[time_key], 3)
        if base and r[peak_key] and base[peak_key]:
            r["memory_ratio_vs_bf16"] = round(base[peak_key] / r[peak_key], 2)


def _kernel_table(device: torch.device) -> dict | None:
    """Which measured tables `auto` reads on this GPU for eager and for compiled / graphed calls
    (`flux158.kernels.backend_table`), for the record."""
    if device.type != "cuda":
        return None
    from flux158.kernels.backend_table import table_for_device

    tables = {kind: table_for_device(device.index or 0, kind == "graphed") for kind in ("eager", "graphed")}
    return {kind: f"{t.gpu}, {t.timing}: {t.source}" if t else None for kind, t in tables.items()}


def _utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
