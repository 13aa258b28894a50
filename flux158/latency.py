"""Transformer step latency and memory (the paper's Table 3 protocol): random-weight FLUX transformers (and whole
pipelines) built on the device, inputs for one image at a resolution, and CUDA-event timing of a denoising loop after
warm-up."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from flux158.kernels import graph_timed_calls
from flux158.models.random import random_pipeline, random_transformer

__all__ = ["GraphedStep", "StepSettings", "StepTiming", "random_pipeline", "random_transformer", "time_steps",
           "transformer_inputs"]


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

    def __init__(self, transformer: Callable[..., tuple], inputs: dict,
                 prepare: Callable[[dict], None] | None = None, warmup: int = 2) -> None:
        hooked = isinstance(transformer, torch.nn.Module) and (transformer._forward_pre_hooks
                                                               or transformer._forward_hooks)
        if hooked:
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
