"""Transformer step latency and memory (the paper's Table 3 protocol): random-weight FLUX transformers (and whole
pipelines) built on the device, inputs for one image at a resolution, and CUDA-event timing of a denoising loop after
warm-up."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

from flux158.kernels import graph_timed_calls
from flux158.models.hub import (
    FLUX1_DEV_CLIP_CONFIG,
    FLUX1_DEV_SCHEDULER_CONFIG,
    FLUX1_DEV_T5_CONFIG,
    FLUX1_DEV_VAE_CONFIG,
    meta_flux_transformer,
)
from flux158.models.tokenizers import build_clip_tokenizer, build_t5_tokenizer


@dataclass(frozen=True)
class StepSettings:
    """One timed denoising loop: `steps` transformer calls on one `height` x `width` image after `warmup` calls."""

    height: int = 1024
    width: int = 1024
    steps: int = 50
    warmup: int = 3
    batch: int = 1
    text_tokens: int = 512
    guidance: float = 3.5

    def timesteps(self, device: torch.device) -> torch.Tensor:
        """The `steps` timestep values of the loop (uniform in (0, 1], as the transformer receives them)."""
        return torch.linspace(1.0, 1.0 / self.steps, self.steps, device=device)


@dataclass
class StepTiming:
    """`per_step_ms` and `total_ms` of the timed loop; `weights_bytes` on the device before it and `peak_bytes`
    (max allocated) during it, None off CUDA; `error` is "OOM" when the device ran out of memory."""

    per_step_ms: float | None = None
    total_ms: float | None = None
    weights_bytes: int | None = None
    peak_bytes: int | None = None
    error: str | None = None


@contextmanager
def _default_dtype(dtype: torch.dtype) -> Iterator[None]:
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def random_pipeline(transformer_config: dict, device: torch.device, dtype: torch.dtype, tokenizer_dir: Path,
                    seed: int = 0, t5_config: dict = FLUX1_DEV_T5_CONFIG, clip_config: dict = FLUX1_DEV_CLIP_CONFIG,
                    vae_config: dict = FLUX1_DEV_VAE_CONFIG) -> FluxPipeline:
    """A `FluxPipeline` of these architectures (default FLUX.1-dev's) with random weights, built on `device` in
    `dtype`: whole-pipeline memory needs the shapes, not the weights. The tokenizers are the locally built ones
    (`flux158.models.tokenizers`, written to `tokenizer_dir`): CLIP's full BPE, and a small T5 vocabulary whose
    ids fit any T5 embedding; prompts are padded to the same lengths as with the real ones."""
    torch.manual_seed(seed)
    clip_tok = build_clip_tokenizer(tokenizer_dir / "tokenizer", n_merges=48_894)  # the full 49,408 tokens
    t5_tok = build_t5_tokenizer(tokenizer_dir / "tokenizer_2")
    if len(clip_tok) > clip_config["vocab_size"] or len(t5_tok) > t5_config["vocab_size"]:
        raise ValueError("the text encoders' vocabularies must hold the local tokenizers' ids")
    with torch.device(device), _default_dtype(dtype):  # built in place and type: T5-XXL alone is 4.7B parameters
        clip = CLIPTextModel(CLIPTextConfig(**clip_config, bos_token_id=clip_tok.bos_token_id,
                                            eos_token_id=clip_tok.eos_token_id, pad_token_id=clip_tok.pad_token_id))
        t5 = T5EncoderModel(T5Config(**t5_config))
        vae = AutoencoderKL(**vae_config)
    return FluxPipeline(scheduler=FlowMatchEulerDiscreteScheduler(**FLUX1_DEV_SCHEDULER_CONFIG), vae=vae,
                        text_encoder=clip.eval(), tokenizer=clip_tok, text_encoder_2=t5.eval(), tokenizer_2=t5_tok,
                        transformer=random_transformer(transformer_config, device, dtype, seed))


def random_transformer(config: dict, device: torch.device, dtype: torch.dtype, seed: int = 0
                       ) -> FluxTransformer2DModel:
    """A FLUX transformer of architecture `config` with random weights, allocated directly on `device` in
    `dtype` (FLUX.1-dev's 12B in BF16 never exist in fp32). Linear weights ~ N(0, 0.02), norms 1, biases 0:
    enough for timing, meaningless for images."""
    model = meta_flux_transformer(config).to(dtype).to_empty(device=device)
    g = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim > 1:
                p.normal_(0.0, 0.02, generator=g)
            elif "norm" in name and name.endswith("weight"):
                p.fill_(1.0)
            else:
                p.zero_()
    return model.eval()


def transformer_inputs(config: dict, settings: StepSettings, device: torch.device, dtype: torch.dtype,
                       seed: int = 0) -> dict:
    """Keyword inputs of one `FluxTransformer2DModel` call for `settings` (packed 2x2 latents of an 8x VAE)."""
    g = torch.Generator(device=device).manual_seed(seed)
    rows, cols = settings.height // 16, settings.width // 16
    b, length = settings.batch, settings.text_tokens
    img_ids = torch.zeros(rows, cols, 3, device=device)
    img_ids[..., 1] = torch.arange(rows, device=device)[:, None]
    img_ids[..., 2] = torch.arange(cols, device=device)[None, :]

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g, device=device).to(dtype)

    inputs = {"hidden_states": randn(b, rows * cols, config["in_channels"]),
              "encoder_hidden_states": randn(b, length, config["joint_attention_dim"]),
              "pooled_projections": randn(b, config["pooled_projection_dim"]),
              "img_ids": img_ids.reshape(-1, 3), "txt_ids": torch.zeros(length, 3, device=device),
              "return_dict": False}
    if config.get("guidance_embeds"):
        inputs["guidance"] = torch.full((b,), settings.guidance, device=device)
    return inputs


class GraphedStep:
    """One transformer call captured as a CUDA graph: every later call copies its tensors into the captured inputs
    and replays the graph, so the step costs no per-kernel host launches (the small-M linears are launch-bound).

    The inputs' shapes and non-tensor arguments are fixed at capture; the returned tensors are the graph's static
    outputs, overwritten by the next call. Forward hooks would run at capture only, so a transformer with hooks is
    refused; per-step work that only updates tensors in place (batched modulation's `StepTables.select`) goes in
    `prepare`, which runs with each call's arguments before its replay, outside the graph.
    """

    def __init__(self, transformer: torch.nn.Module, inputs: dict, prepare: Callable[[dict], None] | None = None,
                 warmup: int = 2) -> None:
        if transformer._forward_pre_hooks or transformer._forward_hooks:
            raise ValueError("a CUDA-graphed step replays no forward hooks; remove them (for batched modulation, "
                             "pass `modulation_tables(...).select` as `prepare`)")
        self.prepare = prepare or (lambda kwargs: None)
        self.static = {k: v.clone() if torch.is_tensor(v) else v for k, v in inputs.items()}
        self.prepare(self.static)
        self.graph = torch.cuda.CUDAGraph()
        with graph_timed_calls():  # the kernels chosen for graphs: tuned in the warm-up, captured after
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):  # autotuning, lazy initialisation, allocator growth: outside capture
                for _ in range(warmup):
                    transformer(**self.static)
            torch.cuda.current_stream().wait_stream(side)
            with torch.cuda.graph(self.graph):
                self.outputs = transformer(**self.static)

    def __call__(self, **kwargs) -> tuple:
        for key, value in kwargs.items():
            if torch.is_tensor(value):
                self.static[key].copy_(value)
            elif value != self.static[key]:
                raise ValueError(f"argument {key}={value!r} differs from the captured {self.static[key]!r}")
        self.prepare(kwargs)
        self.graph.replay()
        return self.outputs


def _loop(transformer: Callable[..., tuple], inputs: dict, timesteps: torch.Tensor) -> torch.Tensor:
    latents = inputs["hidden_states"]
    for i, t in enumerate(timesteps):
        velocity = transformer(**{**inputs, "hidden_states": latents, "timestep": t.expand(latents.shape[0])})[0]
        dt = (timesteps[i + 1] if i + 1 < len(timesteps) else 0.0) - t
        latents = latents + dt * velocity  # the Euler step, so each call depends on the last, as in sampling
    return latents


def time_steps(transformer: torch.nn.Module, inputs: dict, settings: StepSettings, cuda_graph: bool = False,
               prepare: Callable[[dict], None] | None = None) -> StepTiming:
    """Warm up, then time `settings.steps` calls (CUDA events on a GPU, wall clock elsewhere). With `cuda_graph`
    (CUDA only) the step is captured once after warm-up (`GraphedStep`) and the timed calls replay it. `prepare`
    runs with each call's arguments before the call (e.g. batched modulation's step selection)."""
    device = inputs["hidden_states"].device
    cuda = device.type == "cuda"
    if cuda_graph and not cuda:
        raise ValueError("cuda_graph=True needs the transformer and inputs on a CUDA device")
    timesteps = settings.timesteps(device)

    def step(**kwargs):
        if prepare is not None:
            prepare(kwargs)
        return transformer(**kwargs)

    try:
        with torch.inference_mode():
            _loop(step, inputs, timesteps[: settings.warmup])
            if not cuda:
                start = time.perf_counter()
                _loop(step, inputs, timesteps)
                total = 1e3 * (time.perf_counter() - start)
                return StepTiming(total / settings.steps, total)
            torch.cuda.synchronize(device)
            weights = torch.cuda.memory_allocated(device)
            torch.cuda.reset_peak_memory_stats(device)
            if cuda_graph:  # captured after the reset: replays allocate nothing, the capture allocated the peak
                first = {**inputs, "timestep": timesteps[:1].expand(inputs["hidden_states"].shape[0])}
                step = GraphedStep(transformer, first, prepare)
                torch.cuda.synchronize(device)
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            begin.record()
            _loop(step, inputs, timesteps)
            end.record()
            torch.cuda.synchronize(device)
            total = begin.elapsed_time(end)
            return StepTiming(total / settings.steps, total, weights, torch.cuda.max_memory_allocated(device))
    except torch.cuda.OutOfMemoryError:
        torch.cuda.empty_cache()
        return StepTiming(error="OOM")
