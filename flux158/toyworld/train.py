"""Flow-matching training of the toy-world model on freshly rendered scenes, with EMA, checkpoints and resume."""

from __future__ import annotations

import hashlib
import logging
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from diffusers.optimization import get_cosine_schedule_with_warmup
from PIL import Image
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm.auto import tqdm

from flux158.toyworld.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from flux158.toyworld.model import ToyWorldSpec, build_text_encoder, build_tokenizer, build_transformer, pack
from flux158.toyworld.pipeline import ToyWorldPipeline, make_scheduler
from flux158.toyworld.scenes import render_scene, sample_prompt

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ToyTrainConfig:
    """Optimisation settings. With the spec and seed they determine the trained weights (on a given machine)."""

    steps: int = 2000
    batch_size: int = 64
    lr: float = 1e-3
    warmup_steps: int = 100
    weight_decay: float = 0.0
    ema_decay: float = 0.998
    caption_dropout: float = 0.1
    seed: int = 0
    checkpoint_every: int = 250
    sample_every: int = 500
    sample_steps: int = 20
    sample_guidance: float = 3.0


def _step_seed(seed: int, step: int) -> int:
    return int.from_bytes(hashlib.sha256(f"toyworld/{seed}/{step}".encode()).digest()[:8], "little") >> 1


def make_batch(seed: int, step: int, batch_size: int, image_size: int, caption_dropout: float
               ) -> tuple[torch.Tensor, list[str]]:
    """The scenes of one training step: images in [-1, 1] (B, 3, H, W) and captions ("" when dropped)."""
    rng = np.random.default_rng(_step_seed(seed, step))
    images, captions = [], []
    for _ in range(batch_size):
        spec = sample_prompt(rng)
        image, _ = render_scene(spec, rng, image_size)
        images.append(image)
        captions.append("" if rng.random() < caption_dropout else spec["prompt"])
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 127.5 - 1
    return x, captions


def build_pipeline(spec: ToyWorldSpec, seed: int) -> ToyWorldPipeline:
    """A freshly initialised toy-world pipeline (weights from `seed`)."""
    torch.manual_seed(seed)
    tokenizer = build_tokenizer(spec.max_tokens)
    return ToyWorldPipeline(build_transformer(spec), build_text_encoder(spec, len(tokenizer)), tokenizer,
                            make_scheduler(), image_size=spec.image_size, patch=spec.patch)


def flow_matching_loss(pipe: ToyWorldPipeline, images: torch.Tensor, captions: list[str],
                       generator: torch.Generator) -> torch.Tensor:
    """MSE between predicted and true velocity `noise - x0` at logit-normal noise levels (as SD3/FLUX train)."""
    x0 = pack(images, pipe.config.patch)
    noise = torch.randn(x0.shape, generator=generator)
    sigma = torch.sigmoid(torch.randn(x0.shape[0], generator=generator))
    xt = (1 - sigma[:, None, None]) * x0 + sigma[:, None, None] * noise
    states, pooled = pipe.encode_prompt(captions)
    v = pipe.predict_velocity(xt, sigma, states, pooled)
    return torch.nn.functional.mse_loss(v, noise - x0)


def sample_grid(pipe: ToyWorldPipeline, prompts: list[str], steps: int, guidance: float, seed: int = 0) -> Image.Image:
    """One image per prompt, side by side, 4x upscaled."""
    gens = [torch.Generator().manual_seed(seed + i) for i in range(len(prompts))]
    images = [pipe(p, generator=g, num_inference_steps=steps, guidance_scale=guidance).images[0]
              for p, g in zip(prompts, gens, strict=False)]
    grid = np.concatenate([np.asarray(im) for im in images], axis=1)
    return Image.fromarray(grid).resize((grid.shape[1] * 4, grid.shape[0] * 4), Image.NEAREST)


def train_toyworld(
    spec: ToyWorldSpec,
    config: ToyTrainConfig,
    out_dir: Path,
    sample_prompts: list[str],
    on_log: Callable[[int, dict[str, float]], None] | None = None,
    on_samples: Callable[[int, Path], None] | None = None,
    progress: bool = True,
) -> Path:
    """Train (resuming from the latest checkpoint in `out_dir/checkpoints`) and export the EMA model.

    Returns:
        `out_dir/model`: a `ToyWorldPipeline` directory (fp16 safetensors) with the EMA weights.
    """
    pipe = build_pipeline(spec, config.seed)
    model = torch.nn.ModuleDict({"transformer": pipe.transformer, "text_encoder": pipe.text_encoder})
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(config.ema_decay), use_buffers=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    ckpt_dir = out_dir / "checkpoints"
    start = 0
    if (ckpt := latest_checkpoint(ckpt_dir)) is not None:
        start = load_checkpoint(ckpt, model, ema, optimizer)["step"]
        log.info("resuming toy-world training from %s (step %d)", ckpt, start)
    schedule = get_cosine_schedule_with_warmup(optimizer, config.warmup_steps, config.steps,
                                               last_epoch=start - 1 if start else -1)
    if start:  # LambdaLR with last_epoch needs initial_lr; recompute the rate of the resumed step explicitly
        for group, lr in zip(optimizer.param_groups, schedule.get_last_lr(), strict=False):
            group["lr"] = lr
    extra = {"spec": asdict(spec), "config": asdict(config)}
    bar = tqdm(range(start, config.steps), initial=start, total=config.steps, desc="train toyworld",
               disable=not progress)
    t0 = time.perf_counter()
    for step in bar:
        model.train()
        images, captions = make_batch(config.seed, step, config.batch_size, spec.image_size, config.caption_dropout)
        loss = flow_matching_loss(pipe, images, captions, torch.Generator().manual_seed(_step_seed(config.seed, step)))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        ema.update_parameters(model)
        done = step + 1
        bar.set_postfix(loss=f"{loss.item():.4f}")
        if on_log is not None and (done % 10 == 0 or done == config.steps):
            on_log(done, {"loss": loss.item(), "grad_norm": float(grad_norm), "lr": schedule.get_last_lr()[0],
                          "images_per_second": config.batch_size * (done - start) / (time.perf_counter() - t0)})
        if done % config.checkpoint_every == 0 or done == config.steps:
            save_checkpoint(ckpt_dir, done, model, ema, optimizer, extra)
        if on_samples is not None and (done % config.sample_every == 0 or done == config.steps):
            path = out_dir / "samples" / f"step-{done:07d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            with _ema_weights(model, ema):
                sample_grid(pipe, sample_prompts, config.sample_steps, config.sample_guidance).save(path)
            on_samples(done, path)
    return export_ema(pipe, model, ema, out_dir / "model")


@contextmanager
def _ema_weights(model: torch.nn.Module, ema: AveragedModel) -> Iterator[None]:
    """Temporarily load the EMA weights into `model` (for sampling during training)."""
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    model.load_state_dict(ema.module.state_dict())
    model.eval()
    try:
        yield
    finally:
        model.load_state_dict(saved)


def export_ema(pipe: ToyWorldPipeline, model: torch.nn.Module, ema: AveragedModel, target: Path) -> Path:
    """Save the pipeline with EMA weights in fp16 safetensors, atomically; shards of at most 4 MB keep every committed
    file small (the committed model's transformer is 8.2 MB)."""
    model.load_state_dict(ema.module.state_dict())
    tmp = target.with_name(target.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    pipe.to(torch.float16).save_pretrained(tmp, safe_serialization=True, max_shard_size="4MB")
    pipe.to(torch.float32)
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    return target
