"""Resumable image generation: fixed per-image seeds, fixed batches, verified atomic PNG writes, skip what exists.

An image takes its final name only after it was written, checked (PIL's `verify`: every chunk and its CRC) and
fsynced. On resume a cheap check (PNG signature first, IEND chunk last) tells whole files from 0-byte, truncated or
half-copied ones, which are regenerated rather than counted.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from tqdm.auto import tqdm

from flux158.artifacts import atomic_write, atomic_write_text, remove_stale_partials
from flux158.data.prompts import PromptItem
from flux158.generation.embeddings import PromptEmbeddings
from flux158.generation.layouts import ImageLayout
from flux158.modulation import batched_modulation_in_pipeline
from flux158.sharding import seed_for

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SamplerSettings:
    """Arguments of `FluxPipeline.__call__` that define the sampler (the paper: 50 steps, guidance 3.5, 1024^2)."""

    num_inference_steps: int = 50
    guidance_scale: float = 3.5
    height: int = 1024
    width: int = 1024
    max_sequence_length: int = 512

    def __post_init__(self) -> None:
        if self.num_inference_steps < 1:
            raise ValueError("num_inference_steps must be >= 1")
        if self.height % 16 or self.width % 16:
            raise ValueError(f"FLUX needs height and width divisible by 16, got {self.height}x{self.width}")


@dataclass
class GenerationReport:
    """Images written and skipped, wall seconds, and the seconds of the first pipeline call (which pays for
    compilation and CUDA-graph capture once per process; None when nothing was generated)."""

    generated: int = 0
    skipped: int = 0
    seconds: float = 0.0
    first_call_seconds: float | None = None
    first_call_images: int = 0

    @property
    def images_per_second(self) -> float:
        return self.generated / self.seconds if self.seconds > 0 else 0.0


PNG_SIGNATURE, PNG_END = b"\x89PNG\r\n\x1a\n", b"IEND\xaeB`\x82"


def expected_paths(layout: ImageLayout, items: Sequence[PromptItem], samples_per_prompt: int) -> list[Path]:
    return [layout.image_path(item, k) for item in items for k in range(samples_per_prompt)]


def missing_images(layout: ImageLayout, items: Sequence[PromptItem], samples_per_prompt: int) -> list[Path]:
    """The expected images of `items` that are absent or not whole PNGs."""
    return [p for p in expected_paths(layout, items, samples_per_prompt) if not is_whole_png(p)]


def is_whole_png(path: Path) -> bool:
    """Whether `path` starts like a PNG and ends with its IEND chunk (reads 16 bytes; no decoding)."""
    try:
        with open(path, "rb") as f:
            head = f.read(len(PNG_SIGNATURE))
            f.seek(0, 2)
            if f.tell() < len(PNG_SIGNATURE) + 12:
                return False
            f.seek(-len(PNG_END), 2)
            return head == PNG_SIGNATURE and f.read() == PNG_END
    except OSError:
        return False


def _check_png(path: Path) -> None:
    with Image.open(path) as im:
        im.verify()


def write_png(path: Path, image: Image.Image) -> None:
    """Write `image` to `path` through the verified atomic path (write, verify, fsync, rename, fsync the folder)."""
    atomic_write(path, lambda tmp: image.save(tmp, format="PNG"), check=_check_png)


def _chunks(n: int, size: int) -> list[range]:
    return [range(start, min(start + size, n)) for start in range(0, n, size)]


def generate_images(
    pipe: Callable[..., object],
    items: Sequence[PromptItem],
    layout: ImageLayout,
    *,
    samples_per_prompt: int,
    base_seed: int,
    sampler: SamplerSettings,
    batch_size: int = 1,
    progress: bool = True,
    on_image: Callable[[PromptItem, int, Path], None] | None = None,
    batched_modulation: bool = False,
    embeddings: PromptEmbeddings | None = None,
) -> GenerationReport:
    """Generate `samples_per_prompt` images per prompt into `layout`, skipping images already on disk.

    The samples of a prompt are cut into fixed chunks `[0, b), [b, 2b), ...` of `batch_size`; a chunk with any
    missing image is regenerated whole and only its missing files are written. So an image's pixels depend on
    (model, sampler, seed, batch_size) and never on sharding or on which files a killed run left behind.

    Args:
        pipe: a `FluxPipeline` (anything with its call signature returning `.images`).
        items: the prompts of this shard.
        layout: where each image and per-prompt sidecar file goes.
        samples_per_prompt: images per prompt.
        base_seed: the experiment seed; image seeds are `seed_for(base_seed, item.index, sample)`.
        sampler: sampler settings.
        batch_size: images per pipeline call (at most `samples_per_prompt` are batched together).
        progress: show a tqdm bar.
        on_image: called for every image written by this call.
        batched_modulation: compute each pipeline call's AdaLN modulation for all steps in one pass per layer
            (`flux158.modulation`); equal up to rounding, fewer weight reads on GPUs.
        embeddings: stored prompt embeddings to condition on instead of running the text encoders (the pipeline
            may then have none); the images are the same bytes.
    """
    if batch_size < 1 or samples_per_prompt < 1:
        raise ValueError("batch_size and samples_per_prompt must be >= 1")
    report = GenerationReport()
    chunks = _chunks(samples_per_prompt, batch_size)
    start = time.perf_counter()
    bar = tqdm(total=len(items) * samples_per_prompt, desc="generate", unit="img", disable=not progress)
    with batched_modulation_in_pipeline(pipe) if batched_modulation else nullcontext():
        for item in items:
            for path, text in layout.sidecar_files(item).items():
                remove_stale_partials(path)  # a killed rank may have been writing it
                if not path.exists() or path.read_text() != text:
                    atomic_write_text(path, text)
            for chunk in chunks:
                paths = [layout.image_path(item, k) for k in chunk]
                missing = [(k, p) for k, p in zip(chunk, paths, strict=False) if not is_whole_png(p)]
                for _, path in missing:
                    remove_stale_partials(path)  # a killed write's temp file (never a live writer's)
                    if path.exists():
                        log.warning("%s is not a whole PNG (empty, truncated or half-copied): generating it again",
                                    path)
                report.skipped += len(chunk) - len(missing)
                if missing:
                    began = time.perf_counter()
                    conditioning = None if embeddings is None else embeddings.load(item.prompt, _device(pipe))
                    images = _sample(pipe, item.prompt, chunk, base_seed, item.index, sampler, conditioning)
                    if report.first_call_seconds is None:
                        report.first_call_seconds = time.perf_counter() - began
                        report.first_call_images = len(chunk)
                    for k, path in missing:
                        image = images[k - chunk.start]
                        write_png(path, image)
                        report.generated += 1
                        if on_image is not None:
                            on_image(item, k, path)
                bar.update(len(chunk))
    bar.close()
    report.seconds = time.perf_counter() - start
    log.info("generated %d images, skipped %d existing, %.2f img/s%s", report.generated, report.skipped,
             report.images_per_second, "" if report.first_call_seconds is None else
             f" (first call {report.first_call_seconds:.1f} s, compilation and graph capture included)")
    return report


def _device(pipe) -> torch.device:
    return getattr(pipe, "_execution_device", torch.device("cpu"))


def _sample(
    pipe: Callable[..., object], prompt: str, chunk: range, base_seed: int, prompt_index: int,
    sampler: SamplerSettings, conditioning: dict[str, torch.Tensor] | None = None,
) -> list[Image.Image]:
    # CPU generators: the initial noise is then identical on every device and GPU model.
    generators = [torch.Generator("cpu").manual_seed(seed_for(base_seed, prompt_index, k)) for k in chunk]
    if conditioning is None:
        text = {"prompt": prompt, "num_images_per_prompt": len(chunk)}
    else:  # FLUX repeats given embeddings only per prompt: hand it one row per image, as it makes from a prompt
        embeds, pooled = conditioning["prompt_embeds"], conditioning["pooled_prompt_embeds"]
        text = {"prompt_embeds": embeds.repeat(len(chunk), 1, 1), "pooled_prompt_embeds": pooled.repeat(len(chunk), 1)}
    out = pipe(
        **text,
        generator=generators,
        num_inference_steps=sampler.num_inference_steps,
        guidance_scale=sampler.guidance_scale,
        height=sampler.height,
        width=sampler.width,
        max_sequence_length=sampler.max_sequence_length,
    )
    return list(out.images)
