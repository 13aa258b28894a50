"""Stage `calibrate`: teacher trajectories of the full-precision pipeline over the calibration prompts.

Writes sharded safetensors under `artifact_dirs.calibration_artifact(cfg)` (shared by every method on the same model,
sampler and calibration settings), resumable chunk by chunk and shardable like `generate`.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

import yaml
from hydra.utils import instantiate
from omegaconf import DictConfig

from flux158.artifacts import atomic_write_text, is_done, mark_done, tree_bytes
from flux158.errors import Flux158Error
from flux158.experiments import artifact_dirs, pipeline, processes, resolve, tracking
from flux158.quant.calibration import SPLITS, CaptureSettings, chunk_path, estimate_bytes, num_chunks, write_calibration

log = logging.getLogger(__name__)


def settings(cfg: DictConfig) -> CaptureSettings:
    c = cfg.calib
    return CaptureSettings(c.states_per_prompt, c.chunk_size, c.batch_size, c.seed)


def complete(directory: Path, prompts: dict[str, list[str]], capture: CaptureSettings) -> bool:
    return all(chunk_path(directory, split, c).exists() for split in SPLITS
               for c in range(num_chunks(len(prompts[split]), capture.chunk_size)))


def _existing_parent(path: Path) -> Path:
    while not path.exists():
        path = path.parent
    return path


def run(cfg: DictConfig) -> Path | None:
    """Capture this shard's chunks; returns the calibration directory (None when `quant` needs none)."""
    config = resolve.quant_config(cfg)
    if config is None:
        log.info("calibrate: quant=%s is the unquantized model; nothing to calibrate", cfg.quant.name)
        return None
    if not config.needs_calibration and not cfg.calib.with_data_free:
        log.info("calibrate: quant=%s is data-free and calib.with_data_free is off; skipped", cfg.quant.name)
        return None
    out, determining = artifact_dirs.calibration_artifact(cfg)
    if processes.main_decides(lambda: is_done(out)):
        log.info("calibrate: complete in %s", out)
        return out
    prompts = resolve.calibration_prompts(cfg)
    capture, sampler = settings(cfg), instantiate(cfg.sampler)
    process_index, num_processes, device = processes.process()
    index, count = resolve.global_shard(cfg, process_index, num_processes)
    embeddings = pipeline.stored_embeddings(cfg, prompts["train"] + prompts["heldout"])
    pipe = pipeline.load(resolve.full_precision(cfg), device, "all" if embeddings is None else "image")
    pipe.set_progress_bar_config(disable=True)
    total = len(prompts["train"]) + len(prompts["heldout"])
    need = estimate_bytes(pipe, prompts["train"][0], sampler, total, capture.states_per_prompt, embeddings)
    present = tree_bytes([out])  # chunks of an interrupted run count towards the need
    free = shutil.disk_usage(_existing_parent(out)).free
    log.info("calibrate: %s teacher on %s, %d train + %d held-out prompts x %d states (%d steps, %dx%d) -> %s; "
             "needs ~%.2f GB on disk (%.2f GB already there, %.1f GB free)", cfg.model.name, device,
             len(prompts["train"]), len(prompts["heldout"]), capture.states_per_prompt, sampler.num_inference_steps,
             sampler.height, sampler.width, out, need / 1e9, present / 1e9, free / 1e9)
    if need - present > free:
        per_state = need / (total * capture.states_per_prompt)
        raise Flux158Error(f"calibrate: the teacher states need ~{(need - present) / 1e9:.1f} GB more on disk "
                           f"({total} prompts x {capture.states_per_prompt} states x {per_state / 1e6:.1f} MB) but "
                           f"{free / 1e9:.1f} GB are free at {out}. Free space, point paths.output_dir elsewhere, or "
                           "keep fewer states: calib.states_per_prompt or calib.num_prompts. Nothing was written.")
    out.mkdir(parents=True, exist_ok=True)
    if not (out / "config.yaml").exists():
        atomic_write_text(out / "config.yaml", yaml.safe_dump(determining, sort_keys=False))
    with artifact_dirs.lock(cfg, out, "calibrate", f"shard-{index}-of-{count}"), \
            tracking.track(cfg, "calibrate", resolve.shard_label(index, count)) as tracker:
        start = time.perf_counter()
        captured = {split: write_calibration(pipe, prompts[split], out, split, sampler, capture, index, count,
                                             embeddings=embeddings) for split in SPLITS}
        tracker.summary({f"prompts_captured_{k}": v for k, v in captured.items()}
                        | {"prompts_captured": sum(captured.values()), "states_per_prompt": capture.states_per_prompt,
                           "seconds": time.perf_counter() - start, "estimated_bytes": need})
    processes.wait_for_everyone()  # the next stage reads every rank's chunks
    if processes.is_main_process() and complete(out, prompts, capture):
        mark_done(out, {split: len(prompts[split]) for split in SPLITS})
        log.info("calibrate: complete in %s", out)
    processes.wait_for_everyone()
    return out
