"""Stage `rehearsal` (`experiment=rehearsal`): the paper pipeline in miniature on a random-weight model of
FLUX.1-dev's exact shapes (`model=flux_dev_random`), measured stage by stage, and the resource plan of the full run.

It runs the real stages (calibrate, quantize with each method, generate and evaluate on each benchmark) on a few
prompts and short quantizer schedules, measures each (wall time, peak GPU and host memory, disk), reads the units of
work and their seconds from the stage's own summary, and extrapolates to the paper run (`flux158.rehearsal.plan`).
`resources.json` is rewritten after every stage, so a killed rehearsal keeps what it measured and a rerun goes on
with the stages not yet measured; `resources.md` is the same plan for people.

Stages never import each other: `run.py` hands this stage the stage table.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import psutil
import torch
import yaml
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from flux158.artifacts import atomic_write_text
from flux158.errors import Flux158Error
from flux158.experiments import artifact_dirs, processes, provenance, resolve, tracking
from flux158.models import RandomFluxSpec, parse_dtype
from flux158.models.random import weight_bytes
from flux158.rehearsal import Measured, block_state_bytes, blockwise_plan, linear_plan, measure
from flux158.rehearsal.plan import GB, Estimate, to_json, to_markdown

log = logging.getLogger(__name__)

StageFn = Callable[[DictConfig], object]
UNITS = {"calibrate": "calibration prompt", "generate": "image", "evaluate": "scored image"}


@dataclass(frozen=True)
class Step:
    """One rehearsed stage run: its name in the plan, the stage, its config, and what the paper run repeats."""

    name: str
    stage: str
    cfg: DictConfig
    method: str | None = None
    benchmark: str | None = None


def _with(cfg: DictConfig, **sections) -> DictConfig:
    sub = cfg.copy()
    with open_dict(sub):
        for key, value in sections.items():
            sub[key] = value.copy() if OmegaConf.is_config(value) else value
    return sub


def _shortened(quant: DictConfig, r: DictConfig) -> DictConfig:
    """The method with the rehearsal's short schedule (`distill`: `block_steps`, `e2e_steps`)."""
    quant = quant.copy()
    if quant.get("config") is not None and quant.config.method == "distill":
        with open_dict(quant):
            quant.config.distill.block_steps = r.block_steps
            quant.config.distill.e2e_steps = r.e2e_steps
    return quant


def _benchmark(bench: DictConfig, r: DictConfig) -> DictConfig:
    bench = bench.copy()
    with open_dict(bench):
        bench.limit_per_group, bench.samples_per_prompt = r.prompts_per_group, r.samples_per_prompt
    return bench


def plan_steps(cfg: DictConfig) -> list[Step]:
    """The stage runs of the rehearsal, in order: calibrate (once, for the calibrated methods), quantize per method,
    then generate and evaluate per benchmark and variant."""
    r = cfg.rehearsal
    quants = {name: _shortened(r.quant[name], r) for name in {*r.methods, *r.generate}}
    calibrated = [m for m in r.methods if resolve.quant_config(_with(cfg, quant=quants[m])) is not None
                  and resolve.quant_config(_with(cfg, quant=quants[m])).needs_calibration]
    steps = [Step("calibrate", "calibrate", _with(cfg, quant=quants[calibrated[0]]))] if calibrated else []
    steps += [Step(f"quantize {m}", "quantize", _with(cfg, quant=quants[m]), method=m) for m in r.methods
              if r.quant[m].get("config") is not None]
    for b in r.benchmarks:
        for q in r.generate:
            sub = _with(cfg, quant=quants[q], benchmark=_benchmark(r.benchmark[b], r))
            steps += [Step(f"{stage} {b} {q}", stage, sub, method=q, benchmark=b) for stage in ("generate", "evaluate")]
    return steps


def _work(stage: str, summaries: list[tuple[str, dict]]) -> tuple[float, float]:
    """(units, seconds) of the work the stage reported (its last summary), excluding model loading and, for
    generation, the first pipeline call (compilation, CUDA-graph capture) when later calls were made."""
    mine = [values for name, values in summaries if name == stage]
    if not mine:
        return 0.0, 0.0
    last = mine[-1]
    units = {"calibrate": "prompts_captured", "quantize": "layers_quantized", "generate": "images_generated",
             "evaluate": "num_images"}[stage]
    count, seconds = float(last.get(units, 0)), float(last.get("seconds", 0.0))
    if stage == "generate" and last.get("first_call_seconds") is not None and count > last["first_call_images"]:
        # the first call pays for compilation and graph capture once per job: a fixed cost, not a per-image one
        return count - last["first_call_images"], seconds - last["first_call_seconds"]
    return count, seconds


def _measure(step: Step, stages: Mapping[str, StageFn], device: torch.device) -> Measured:
    disk = [artifact_dirs.stage_dir(step.cfg, step.stage)]
    error = None
    with tracking.observed() as summaries, measure(device, disk) as usage:
        try:
            stages[step.stage](step.cfg)
        except torch.cuda.OutOfMemoryError as e:
            error = f"OOM: {str(e).splitlines()[0]}"
        except Exception as e:  # a rehearsal reports every stage's failure, then goes on with the others
            error = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    if device.type == "cuda":
        torch.cuda.empty_cache()
    units, work = _work(step.stage, summaries)
    extra = {}
    if step.stage == "quantize" and error is None:
        metrics = json.loads((disk[0] / "metrics.json").read_text())
        extra = {"timings": metrics.get("timings", {}), "blocks": metrics.get("blocks", [])}
    unit = UNITS.get(step.stage, "layer")
    return Measured(step.name, step.stage, unit, units, work, usage.seconds, usage.peak_gpu_bytes,
                    usage.peak_gpu_reserved_bytes, usage.peak_host_bytes, usage.disk_bytes, error, extra)


def _row_host_bytes(cfg: DictConfig, measured: Mapping[str, Measured]) -> int:
    """Host bytes per calibration row held by a block-wise method: its teacher record (measured on disk by the
    calibrate step) and three block-boundary states (quantized-prefix inputs, full-precision inputs, targets)."""
    spec = resolve.model_spec(cfg)
    arch = spec.configs.transformer
    sampler = instantiate(cfg.sampler)
    element = torch.finfo(getattr(torch, cfg.model.dtype)).bits // 8
    state = block_state_bytes((sampler.height // 16) * (sampler.width // 16), sampler.max_sequence_length,
                              arch["num_attention_heads"] * arch["attention_head_dim"], element)
    calib = measured.get("calibrate")
    rows = calib.units * cfg.calib.states_per_prompt if calib and calib.units else 0
    record = calib.disk_bytes / rows if rows else 0
    return int(record + 3 * state)


def extrapolate(cfg: DictConfig, measured: Mapping[str, Measured]) -> list[Estimate]:
    """The paper run's plan from the measured steps (those that ran without error)."""
    r, full_calib = cfg.rehearsal, cfg.rehearsal.paper_calib
    estimates = []
    calib = measured.get("calibrate")
    if calib is not None and calib.error is None and calib.units:
        prompts = full_calib.num_prompts + full_calib.heldout
        states = full_calib.states_per_prompt / cfg.calib.states_per_prompt  # disk grows with the states kept
        scaled = Measured(**{**asdict(calib), "disk_bytes": int(calib.disk_bytes * states)})
        estimates.append(linear_plan(scaled, prompts, f"calibrate (calib={full_calib.name})"))
    for m in r.methods:
        q = measured.get(f"quantize {m}")
        if q is None or q.error is not None:
            continue
        if not q.extra.get("blocks"):  # data-free: the same layers at full scale
            estimates.append(linear_plan(q, q.units, f"quantize {m}"))
            continue
        config = r.quant[m].config
        limit = config.gptq.get("max_rows") if config.method == "gptq" else config.distill.get("block_rows")
        rows = q.extra["timings"]["blockwise_rows"]
        capped = limit is not None and rows >= limit  # then the rows no longer tell the rows per state
        rows_per_state = 1.0 if capped else rows / (cfg.calib.num_prompts * cfg.calib.states_per_prompt)  # 2: CFG
        full_rows = round(full_calib.num_prompts * full_calib.states_per_prompt * rows_per_state)
        if limit:
            full_rows = min(full_rows, limit)
        if config.method == "gptq" and config.gptq.get("max_rows"):
            full_rows = min(full_rows, config.gptq.max_rows)
        steps = (config.distill.block_steps, config.distill.e2e_steps) if config.method == "distill" else (0, 0)
        estimate = blockwise_plan(q, full_rows, _row_host_bytes(cfg, measured), *steps)
        estimates.append(Estimate(**{**asdict(estimate), "name": f"quantize {m} ({full_rows} rows)"}))
    for b in r.benchmarks:
        for q in r.generate:
            for stage in ("generate", "evaluate"):
                m = measured.get(f"{stage} {b} {q}")
                if m is not None and m.error is None and m.units:
                    estimates.append(linear_plan(m, r.full_images[b]))
    return estimates


def _notes(cfg: DictConfig) -> list[str]:
    notes = ["Loading: each stage builds its random-weight model on the device; loading the real weights from disk "
             "(33 GB for FLUX.1-dev with T5-XXL) is not measured and adds to each stage's fixed part."]
    if any(cfg.rehearsal.benchmark[b].get("evaluator_weights") == "random" for b in cfg.rehearsal.benchmarks):
        notes.append("Evaluators ran with `evaluator_weights=random` (shrunk random-weight models): the evaluate "
                     "rows test the path, not the cost of the real detector, CLIP, BLIP-VQA or judge.")
    return notes


def _header(cfg: DictConfig, device: torch.device) -> dict:
    sampler = instantiate(cfg.sampler)
    env = provenance.environment()
    return {"model": cfg.model.name, "architecture": resolve.model_spec(cfg).architecture,
            "dtype": cfg.model.dtype, "gpu": provenance.gpu_name(), "device": str(device),
            "resolution": f"{sampler.height}x{sampler.width}", "steps": sampler.num_inference_steps,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "random_weights": True,
            "notes": _notes(cfg),
            **{k: env[k] for k in ("git_commit", "torch") if k in env}}


def _refuse_what_the_host_cannot_hold(cfg: DictConfig, device: torch.device) -> None:
    """Without a GPU the random weights are built in host memory: refuse, before allocating, a model that would not
    fit (FLUX.1-dev in BF16: 33.7 GB), rather than be killed by the kernel's OOM killer."""
    if device.type == "cuda":
        return
    spec = resolve.model_spec(cfg)
    need = weight_bytes(spec.configs, parse_dtype(cfg.model.dtype))
    available = psutil.virtual_memory().available
    if need > 0.8 * available:
        raise Flux158Error(
            f"experiment=rehearsal on {spec.architecture} needs a CUDA GPU: no GPU is visible, and its random weights "
            f"alone ({need / GB:.1f} GB in {cfg.model.dtype}) would not fit this host's {available / GB:.1f} GB of "
            "free memory; on a CPU rehearse the tiny architecture (model.spec.architecture=tiny sampler=tiny "
            "model.dtype=float32)")


def run(cfg: DictConfig, stages: Mapping[str, StageFn]) -> Path:
    """Rehearse every step not yet measured in this directory, then write the plan; returns the directory."""
    if not isinstance(resolve.model_spec(cfg), RandomFluxSpec):
        raise Flux158Error("experiment=rehearsal measures a random-weight model: use model=flux_dev_random "
                           f"(got model={cfg.model.name})")
    _, num_processes, device = processes.process()
    if num_processes > 1:
        raise Flux158Error(f"experiment=rehearsal measures one GPU, but {num_processes} processes were launched: run "
                           "it with plain `python run.py experiment=rehearsal`")
    _refuse_what_the_host_cannot_hold(cfg, device)
    out, determining = artifact_dirs.keyed_dir(cfg, ["rehearsal"], f"{cfg.model.name}-{provenance.gpu_name()}",
                                               ["model", "sampler", "calib", "rehearsal"],
                                               gpu=provenance.gpu_name())
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "config.yaml", yaml.safe_dump(determining, sort_keys=False))
    previous = json.loads((out / "resources.json").read_text()) if (out / "resources.json").exists() else {}
    measured = {m["name"]: Measured(**{k: v for k, v in m.items() if k != "seconds_per_unit"})
                for m in previous.get("measured", []) if m.get("error") is None}
    gpu_budget = cfg.rehearsal.gpu_budget_gb * GB
    host_budget = (cfg.rehearsal.host_budget_gb or psutil.virtual_memory().total / GB) * GB
    header = _header(cfg, device)
    steps = plan_steps(cfg)
    log.info("rehearsal: %s (%s) on %s, %d stage runs (%d measured before) -> %s", cfg.model.name,
             header["architecture"], header["gpu"], len(steps), sum(s.name in measured for s in steps), out)

    def write() -> None:
        done = [measured[s.name] for s in steps if s.name in measured]
        estimates = extrapolate(cfg, measured)
        atomic_write_text(out / "resources.json", json.dumps(to_json(done, estimates, header, gpu_budget,
                                                                     host_budget), indent=2))
        atomic_write_text(out / "resources.md", to_markdown(done, estimates, header, gpu_budget, host_budget))

    failed = []
    for step in steps:
        if step.name in measured:
            continue
        log.info("rehearsal: %s", step.name)
        result = _measure(step, stages, device)
        measured[step.name] = result
        if result.error:
            failed.append(f"{step.name}: {result.error}")
            log.error("rehearsal: %s failed after %.1f s: %s", step.name, result.seconds, result.error)
        else:
            log.info("rehearsal: %s: %g %s(s) in %.1f s of work, %.1f s wall", step.name, result.units, result.unit,
                     result.work_seconds, result.seconds)
        write()
    write()
    log.info("rehearsal: plan in %s", out / "resources.md")
    if failed:
        raise Flux158Error(f"rehearsal: {len(failed)} stage run(s) failed (recorded in {out / 'resources.json'}): "
                           + "; ".join(failed))
    return out
