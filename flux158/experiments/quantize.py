"""Stage `quantize`: apply `cfg.quant` to the full-precision transformer, save the checkpoint, measure it.

Writes into `artifact_dirs.quantize_artifact(cfg)`: `transformer/` (a `save_quantized` checkpoint, which `generate`
then loads) and `metrics.json`: per-layer weight SQNR and zero fraction, the transformer-output error against the
teacher on the held-out calibration states, bytes in BF16 / 2bit / trit5 (with scales and any low-rank factors), and
wall time.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import shutil
import time
from contextlib import nullcontext
from dataclasses import asdict
from pathlib import Path

import psutil
import torch
import yaml
from omegaconf import DictConfig

from flux158.artifacts import atomic_write_text, is_done, mark_done
from flux158.errors import Flux158Error, ShardsPending
from flux158.experiments import artifact_dirs, pipeline, processes, provenance, resolve, tracking
from flux158.models import HubFluxSpec
from flux158.models.hub import meta_flux_transformer, transformer_folder
from flux158.quant import (
    QuantizationReport,
    QuantizedCheckpointError,
    TernaryConfig,
    load_quantized,
    quantize_,
    save_quantized,
)
from flux158.quant.blockwise import held_bytes_per_row
from flux158.quant.calibration import CalibrationError, CalibrationSet
from flux158.quant.checkpoint import verify_quantized
from flux158.quant.metrics import guidance_direction_error, velocity_error
from flux158.quant.storage import storage_report
from flux158.quant.streaming import quantize_checkpoint_streaming

log = logging.getLogger(__name__)
REPORT_FILE = "report.json"  # what quantize_ reported, saved with the checkpoint for its record
HOST_MEMORY_SHARE = 0.8  # of the available host memory the block states may take (the rest: the process, the OS)


def _calibration(cfg: DictConfig, needed: bool) -> tuple[CalibrationSet | None, CalibrationSet | None]:
    """(train, heldout) calibration sets; None where absent and not needed."""
    directory = artifact_dirs.calibration_artifact(cfg)[0]
    if not is_done(directory):
        if needed:
            raise CalibrationError(f"quant={cfg.quant.name} needs complete calibration data in {directory}: run the "
                                   "calibrate stage first (all shards)")
        log.info("quantize: no calibration data in %s; the output error will not be measured", directory)
        return None, None
    return CalibrationSet.load(directory, "train"), CalibrationSet.load(directory, "heldout")


def run(cfg: DictConfig) -> Path | None:
    """Quantize once; returns the quantize directory (None for the unquantized model).

    The work is done once, under the directory's lock (a second process on the same config waits, then reuses
    it): on the main process while the other ranks wait, or, for `distill` under accelerate/torchrun, data-parallel
    on every rank. A checkpoint that was saved and verifies but has no `.done` (a run killed while it was being
    measured) is finished, not redone: only its record is written.
    """
    config = resolve.quant_config(cfg)
    if config is None:
        log.info("quantize: quant=%s is the unquantized model; nothing to quantize", cfg.quant.name)
        return None
    out = artifact_dirs.quantize_artifact(cfg)[0]
    calibration = artifact_dirs.calibration_artifact(cfg)[0]
    if (config.needs_calibration and cfg.shard.count > 1
            and processes.main_decides(lambda: not is_done(out) and not is_done(calibration))):
        raise ShardsPending(f"quantize: the calibration in {calibration} is not complete yet (other jobs of "
                            f"shard.count={cfg.shard.count} are still capturing); the shard job that completes it "
                            "quantizes. Launch the same command again once this array has finished, to generate")
    data_parallel = config.method == "distill" and processes.num_processes() > 1
    with artifact_dirs.lock(cfg, out, "quantize") if processes.is_main_process() else nullcontext():
        step = processes.main_decides(lambda: _next_step(out))
        if step == "quantize" and (data_parallel or processes.is_main_process()):
            if data_parallel:
                log.info("quantize: distill data-parallel over %d processes", processes.num_processes())
            _quantize(cfg, config, out)
        elif step == "record" and processes.is_main_process():
            _record_saved(cfg, config, out)
    processes.wait_for_everyone()  # the other ranks then find the checkpoint done
    return out


def _next_step(out: Path) -> str:
    """"done", "record" (a saved, verified checkpoint without its record) or "quantize"."""
    if is_done(out):
        log.info("quantize: checkpoint exists in %s", out)
        return "done"
    checkpoint = out / artifact_dirs.QUANTIZED_SUBDIR
    if not (checkpoint.exists() and (out / REPORT_FILE).exists()):
        return "quantize"
    try:
        verify_quantized(checkpoint)
    except QuantizedCheckpointError as e:
        log.warning("quantize: the saved checkpoint does not verify (%s); quantizing again", e)
        shutil.rmtree(checkpoint, ignore_errors=True)
        return "quantize"
    log.info("quantize: %s was saved and verifies, but was never recorded (the run stopped after saving it); "
             "writing its record, not quantizing again", checkpoint)
    return "record"


def _quantize(cfg: DictConfig, config: TernaryConfig, out: Path) -> Path:
    """Quantize and measure; the non-main ranks of data-parallel distillation only compute."""
    _, _, device = processes.process()
    train, heldout = _calibration(cfg, config.needs_calibration)
    log.info("quantize: %s with %s (%s) on %s%s -> %s", cfg.model.name, config.method, config.granularity, device,
             f", {len(train)} calibration rows" if config.needs_calibration else "", out)
    if isinstance(resolve.model_spec(cfg), HubFluxSpec) and not config.needs_calibration:
        transformer, report, storage, seconds = _streamed(cfg, config, out, device, heldout is not None)
    else:
        transformer, report, storage, seconds = _in_memory(cfg, config, out, device, train)
        if not processes.is_main_process():
            return out
    _record(cfg, config, out, transformer, report, storage, seconds, heldout, device)
    return out


def _record_saved(cfg: DictConfig, config: TernaryConfig, out: Path) -> None:
    """The record of a checkpoint saved by an earlier run: its report from `report.json`, the checkpoint reloaded
    (and verified again) for the output error."""
    _, _, device = processes.process()
    _, heldout = _calibration(cfg, False)
    checkpoint = out / artifact_dirs.QUANTIZED_SUBDIR
    saved = json.loads((out / REPORT_FILE).read_text())
    report = QuantizationReport.from_dict(saved["report"])
    arch = json.loads((checkpoint / "transformer_config.json").read_text())
    storage = storage_report(meta_flux_transformer(arch), per_channel_scales=config.per_channel,
                             lowrank_rank=config.lowrank_rank, input_scales=config.input_scales)
    transformer = load_quantized(checkpoint, device) if heldout is not None else None
    _record(cfg, config, out, transformer, report, storage, saved["seconds"], heldout, device)


def _save_report(out: Path, report: QuantizationReport, seconds: float) -> None:
    """Written before the checkpoint: a checkpoint on disk always has the report its record needs."""
    atomic_write_text(out / REPORT_FILE, json.dumps({"report": report.as_dict(), "seconds": seconds}, indent=2))


def _start(cfg: DictConfig, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "config.yaml", yaml.safe_dump(artifact_dirs.quantize_artifact(cfg)[1], sort_keys=False))


def _check_host_memory(config: TernaryConfig, train: CalibrationSet, transformer) -> None:
    """A block-wise method holds three block-boundary states per calibration row in host memory; refuse, before
    anything is written, when they cannot fit, and say how many rows would."""
    limit = config.gptq.max_rows if config.method == "gptq" else config.distill.block_rows
    rows = len(train) if limit is None else min(len(train), limit)
    per_row = held_bytes_per_row(train, transformer)
    available = psutil.virtual_memory().available
    if rows * per_row <= HOST_MEMORY_SHARE * available:
        log.info("quantize: %s holds %d rows x %.1f MB of block states in host memory (%.1f of %.1f GB available)",
                 config.method, rows, per_row / 1e6, rows * per_row / 1e9, available / 1e9)
        return
    fitting = int(HOST_MEMORY_SHARE * available // per_row)
    knob = "quant.config.gptq.max_rows" if config.method == "gptq" else "quant.config.distill.block_rows"
    raise Flux158Error(f"quantize: {config.method} would hold {rows * per_row / 1e9:.1f} GB of block states in host "
                       f"memory ({rows} calibration rows x {per_row / 1e6:.1f} MB: the quantized prefix's inputs, the "
                       f"full-precision inputs and the targets), but {available / 1e9:.1f} GB are available. At most "
                       f"{fitting} rows fit: lower {knob}. Nothing was written.")


def _streamed(cfg: DictConfig, config: TernaryConfig, out: Path, device: torch.device, reload: bool):
    """FLUX.1-dev and other hub models: quantize the sharded BF16 weights tensor by tensor (no 24 GB in RAM)."""
    spec = resolve.model_spec(cfg)
    source = transformer_folder(spec)  # fails fast, before any output folder exists
    _start(cfg, out)
    arch = json.loads((source / "config.json").read_text())
    storage = storage_report(meta_flux_transformer(arch), per_channel_scales=config.per_channel,
                             lowrank_rank=config.lowrank_rank, input_scales=config.input_scales)
    checkpoint = out / artifact_dirs.QUANTIZED_SUBDIR
    start = time.perf_counter()
    stats = quantize_checkpoint_streaming(source, checkpoint, config, spec.pretrained, spec.revision)
    seconds = time.perf_counter() - start
    report = QuantizationReport(quantized=sorted(stats), quantized_params=sum(s.params for s in stats.values()),
                                total_params=storage.total_params, layers=stats)
    _save_report(out, report, seconds)  # after the checkpoint: a checkpoint without it is quantized again
    return (load_quantized(checkpoint, device) if reload else None), report, storage, seconds


def _in_memory(cfg: DictConfig, config: TernaryConfig, out: Path, device: torch.device,
               train: CalibrationSet | None):
    """Load the full-precision transformer, quantize it in place (block-wise methods resume from `out/blocks`)."""
    spec = resolve.model_spec(cfg)
    transformer = pipeline.load(resolve.full_precision(cfg), device).transformer
    if config.needs_calibration:
        _check_host_memory(config, train, transformer)
    _start(cfg, out)
    storage = storage_report(transformer, per_channel_scales=config.per_channel, lowrank_rank=config.lowrank_rank,
                             input_scales=config.input_scales)
    start = time.perf_counter()
    report = quantize_(transformer, config, train, device=device, batch_size=cfg.quant.get("batch_size", 8),
                       checkpoint_dir=out / "blocks", progress=True)
    seconds = time.perf_counter() - start
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        _check_ranks_agree(transformer)
    if processes.is_main_process():
        _save_report(out, report, seconds)
        save_quantized(transformer, out / artifact_dirs.QUANTIZED_SUBDIR, config,
                       base_model=getattr(spec, "pretrained", None), revision=getattr(spec, "revision", None))
    return transformer, report, storage, seconds


def _record(cfg: DictConfig, config: TernaryConfig, out: Path, transformer, report: QuantizationReport, storage,
            seconds: float, heldout: CalibrationSet | None, device: torch.device) -> None:
    """metrics.json, the W&B run and the completion marker."""
    this_run = seconds
    if report.timings:  # block-wise: the work of every run that built it (a resumed run did only the rest)
        seconds = report.timings["blockwise_seconds"] + report.timings.get("e2e_seconds", 0.0)
    error = direction = None
    if heldout is not None and transformer is not None:
        error = velocity_error(transformer, heldout, cfg.quant.get("batch_size", 8), device)
        direction = guidance_direction_error(transformer, heldout, cfg.quant.get("batch_size", 8), device)
    summary = {
        "layers_quantized": len(report.quantized), "quantized_params": report.quantized_params,
        "total_params": report.total_params, "quantized_share": report.share,
        "weight_sqnr_db_mean": report.mean_sqnr_db(), "zero_fraction": report.zero_fraction(),
        "bytes_bf16": storage.bf16_bytes, "bytes_2bit": storage.packed_bytes["2bit"],
        "bytes_trit5": storage.packed_bytes["trit5"], "ratio_2bit": storage.ratio("2bit"),
        "ratio_trit5": storage.ratio("trit5"), "seconds": seconds, "seconds_this_run": this_run,
        **({f"output_{k}": v for k, v in error.items()} if error else {}),
        **({f"output_direction_{k}": v for k, v in direction.items()} if direction else {}),
    }
    summary |= {f"{k}": v for k, v in report.timings.items()}
    if report.e2e_losses:
        summary["e2e_loss_first"], summary["e2e_loss_last"] = report.e2e_losses[0], report.e2e_losses[-1]
    metrics = {"model": cfg.model.name, **provenance.random_weights(cfg), "quant": cfg.quant.name,
               "method": config.method,
               "config": _json_safe(asdict(config)), **provenance.environment(), "metrics": summary,
               "layers": {n: _json_safe(s.as_dict()) for n, s in report.layers.items()},
               "blocks": report.blocks, "timings": report.timings}
    atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2))
    with tracking.track(cfg, "quantize") as tracker:
        tracker.summary(summary)
        tracker.table("layers", ["layer", "params", "sqnr_db", "zero_fraction"],
                      [[n, s.params, s.sqnr_db, s.zero_fraction] for n, s in report.layers.items()])
        for step, loss in enumerate(report.e2e_losses):
            tracker.log({"e2e_loss": loss}, step=step)
        tracker.artifact(out / "metrics.json", f"quantize-{cfg.model.name}-{cfg.quant.name}", "results")
    mark_done(out, {"seconds": seconds, "layers": len(report.quantized)})
    shutil.rmtree(out / "blocks", ignore_errors=True)  # resume state of the block-wise methods; only once recorded
    log.info("quantize: %d layers in %.1f s; weight SQNR %.2f dB, zeros %.1f%%%s; 2bit %.2fx", len(report.quantized),
             seconds, report.mean_sqnr_db(), 100 * report.zero_fraction(),
             (f"; held-out output rel. MSE {error['rel_mse']:.4g}" if error else "")
             + (f", of the guidance direction {direction['rel_mse']:.4g}" if direction else ""), storage.ratio("2bit"))


def _check_ranks_agree(transformer: torch.nn.Module) -> None:
    """Data-parallel distillation must leave every rank with the same weights; fail loudly if not."""
    digest = hashlib.sha256()
    for tensor in transformer.state_dict().values():
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    digests: list[str | None] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(digests, digest.hexdigest())
    if len(set(digests)) > 1:
        raise RuntimeError(f"data-parallel ranks diverged: weight digests {digests}")
    log.info("quantize: %d ranks hold identical weights (sha256 %s)", len(digests), digests[0][:16])


def _json_safe(value):
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    return value

