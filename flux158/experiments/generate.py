"""Stage `generate`: images for the configured benchmark in the official evaluator layout, sharded and resumable."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import yaml
from hydra.utils import instantiate
from omegaconf import DictConfig

from flux158.artifacts import atomic_write_text, mark_done
from flux158.errors import Flux158Error, LayoutError
from flux158.experiments import artifact_dirs, pipeline, processes, resolve, tracking
from flux158.generation.graphs import GraphStats, cuda_graphed
from flux158.generation.images import generate_images, missing_images
from flux158.generation.layouts import make_layout
from flux158.sharding import shard

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> Path:
    """Generate this shard's images; return the artifact directory (shared by all shards).

    Under accelerate/torchrun every rank generates its share, then all meet before the main process checks the
    whole folder and writes `.done`, so the next stage never sees a rank's images half-way.
    """
    bench = cfg.benchmark
    if not bench.get("layout"):
        raise LayoutError(f"benchmark {bench.name!r} has no image layout: it is not meant for the generate stage")
    out, determining = artifact_dirs.generate_artifact(cfg)
    items = resolve.prompts(cfg)
    process_index, num_processes, device = processes.process()
    index, count = resolve.global_shard(cfg, process_index, num_processes)
    mine = shard(items, index, count)
    layout = make_layout(bench.layout, out, bench.samples_per_prompt)
    log.info("generate: %s on %s, %d/%d prompts x %d samples (shard %d of %d) -> %s", cfg.model.name, device,
             len(mine), len(items), bench.samples_per_prompt, index, count, out)
    if not missing_images(layout, mine, bench.samples_per_prompt):
        log.info("generate: all %d images of this shard exist and are whole; nothing to do",
                 len(mine) * bench.samples_per_prompt)
    else:
        _generate_share(cfg, out, determining, mine, layout, (index, count), device)
    processes.wait_for_everyone()  # every rank's images are on disk before the folder is checked
    if processes.is_main_process():
        _mark_if_complete(out, layout, items, bench.samples_per_prompt)
    processes.wait_for_everyone()  # and `.done` is written before any rank goes on
    return out


def _generate_share(cfg: DictConfig, out: Path, determining: dict, mine: list, layout, shard_of: tuple[int, int],
                    device) -> None:
    """Generate the missing images of one shard, holding the shard's lock: a second process on the same config and
    shard waits, then finds the images made."""
    bench, (index, count) = cfg.benchmark, shard_of
    sampler = instantiate(cfg.sampler)
    if device.type == "cpu" and sampler.height * sampler.width >= 512 * 512:
        log.warning("generating %dx%d images on the CPU: expect minutes to hours per image", sampler.height,
                    sampler.width)
    if cfg.get("cuda_graph") and cfg.get("batched_modulation"):
        raise Flux158Error("cuda_graph=true and batched_modulation=true cannot be combined (batched modulation "
                           "swaps the transformer's modules per prompt, under the captured graph); turn one off")
    embeddings = pipeline.stored_embeddings(cfg, [item.prompt for item in mine])
    if cfg.get("cuda_graph") and cfg.get("low_memory") and embeddings is None and device.type == "cuda":
        raise Flux158Error("cuda_graph=true with low_memory=true offloads the transformer between calls, which a "
                           "captured CUDA graph cannot follow: encode the prompts first (stages=[encode,generate]; "
                           "then only the transformer and VAE are loaded) or set cuda_graph=false")
    # fails fast, before any output folder exists
    pipe = pipeline.load(cfg, device, components="all" if embeddings is None else "image")
    if cfg.get("compile"):
        _compile(pipe.transformer, device)
    out.mkdir(parents=True, exist_ok=True)
    if not (out / "config.yaml").exists():
        atomic_write_text(out / "config.yaml", yaml.safe_dump(determining, sort_keys=False))

    with artifact_dirs.lock(cfg, out, "generate", f"shard-{index}-of-{count}"), \
            tracking.track(cfg, "generate", resolve.shard_label(index, count)) as tracker, \
            _graphed(pipe.transformer, device, bool(cfg.get("cuda_graph"))) as graphs:
        report = generate_images(
            pipe, mine, layout, samples_per_prompt=bench.samples_per_prompt, base_seed=cfg.seed,
            sampler=sampler, batch_size=min(cfg.batch_size, bench.samples_per_prompt),
            batched_modulation=bool(cfg.get("batched_modulation", False)), embeddings=embeddings,
        )
        stats = {"images_generated": report.generated, "images_skipped": report.skipped,
                 "images_per_second": report.images_per_second, "seconds": report.seconds,
                 "first_call_seconds": report.first_call_seconds, "first_call_images": report.first_call_images,
                 "prompts": len(mine), "shard_index": index,
                 "shard_count": count}
        if graphs is not None:
            stats |= {"cuda_graphs_captured": graphs.captured, "cuda_graph_replays": graphs.replayed,
                      "cuda_graph_eager_calls": graphs.eager}
        tracker.log(stats)
        tracker.summary(stats)
        rows = _sample_rows(layout, mine, bench.samples_per_prompt, cfg.logger.get("max_images", 16))
        tracker.image_table("samples", ["group", "prompt_index", "sample", "prompt", "image"], rows, "image")


@contextmanager
def _graphed(transformer, device, wanted: bool) -> Iterator[GraphStats | None]:
    """Replay the transformer from CUDA graphs when asked and on CUDA; a CPU run stays eager."""
    if not wanted:
        yield None
    elif device.type != "cuda":
        log.warning("generate: cuda_graph=true replays graphs on CUDA only; this %s run stays eager", device.type)
        yield None
    else:
        with cuda_graphed(transformer) as stats:
            log.info("generate: the transformer replays CUDA graphs (one capture per batch shape)")
            yield stats


def _compile(transformer, device) -> None:
    """Regional `torch.compile` (each repeated block compiled once and reused), on CUDA only: CPU compilation needs
    a C++ toolchain and buys little for the CPU-sized models."""
    if device.type != "cuda":
        log.warning("generate: compile=true compiles on CUDA only; this %s run stays eager", device.type)
        return
    transformer.compile_repeated_blocks(fullgraph=True)
    log.info("generate: compiled the transformer's repeated blocks (the first batch includes the compile time)")


def _sample_rows(layout, items, samples_per_prompt: int, limit: int) -> list[list]:
    """A bounded, deterministic, evenly spread sample of this shard's images for the W&B table."""
    pairs = [(item, k) for item in items for k in range(samples_per_prompt)]
    step = max(1, len(pairs) // max(limit, 1))
    return [[item.group, item.index, k, item.prompt, layout.image_path(item, k)] for item, k in pairs[::step][:limit]]


def _mark_if_complete(out: Path, layout, items, samples_per_prompt: int) -> None:
    """Write `.done` once every shard's images are on disk and whole (whichever shard finishes last does it)."""
    total = len(items) * samples_per_prompt
    missing = len(missing_images(layout, items, samples_per_prompt))
    if not missing:
        mark_done(out, {"images": total, "prompts": len(items)})
        log.info("generate: complete, %d images in %s", total, out)
    else:
        log.info("generate: %d of %d images are still missing in %s (other shards); the shard that completes the "
                 "folder marks it done", missing, total, out)
