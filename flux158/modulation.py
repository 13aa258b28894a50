"""Batched modulation: every step's AdaLN modulation vectors computed in one pass before sampling.

FLUX's modulation linears (`norm1.linear`, `norm1_context.linear`, single blocks' `norm.linear`, `norm_out.linear`;
27 % of FLUX.1-dev's weights) see one row per image per step, and their input, silu(temb), depends only on the
timestep, the guidance and the pooled text embedding, all known before the first step. Inside
`batched_modulation(...)` each of them is replaced by a table computed with one (steps x batch)-row GEMM per layer,
so the weights are read once per run instead of once per step (kernels.md section 2.5); a forward pre-hook on the
transformer selects the current step's rows and refuses a timestep or text embedding that was not precomputed.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from diffusers.models.normalization import AdaLayerNormContinuous, AdaLayerNormZero, AdaLayerNormZeroSingle
from torch import nn

MODULATED_NORMS = (AdaLayerNormZero, AdaLayerNormZeroSingle, AdaLayerNormContinuous)


class ModulationTable(nn.Module):
    """Stands in for a modulation linear: returns the precomputed rows `values[index]` (index set per call)."""

    def __init__(self, values: torch.Tensor, index: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("values", values, persistent=False)
        self.register_buffer("index", index, persistent=False)  # shared by every table; updated in place

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.values.index_select(0, self.index).to(x.dtype)


def _modulated_norms(transformer: nn.Module) -> list[nn.Module]:
    return [m for m in transformer.modules() if isinstance(m, MODULATED_NORMS) and hasattr(m, "linear")]


class StepTables:
    """The modulation tables of one (timesteps, text, guidance) set, installed in place of the modulation linears
    until `restore()`; `select(kwargs)` points every table at the rows of the step a transformer call is for (in
    place, so a captured CUDA graph that reads the tables sees each step's rows)."""

    def __init__(self, transformer: nn.Module, timesteps: torch.Tensor, pooled_projections: torch.Tensor,
                 guidance: torch.Tensor | None) -> None:
        param = transformer.x_embedder.weight
        steps, self.batch = timesteps.shape[0], pooled_projections.shape[0]
        t = timesteps.to(param.device, param.dtype).repeat_interleave(self.batch) * 1000  # as the forward scales it
        pooled = pooled_projections.to(param.device).repeat(steps, 1)
        with torch.no_grad():
            if guidance is None:
                temb = transformer.time_text_embed(t, pooled)
            else:
                g = guidance.to(param.device, param.dtype).repeat(steps) * 1000
                temb = transformer.time_text_embed(t, g, pooled)
            keys = F.silu(temb)
            self.index = torch.arange(self.batch, device=param.device)
            self.norms = _modulated_norms(transformer)
            self.originals = [norm.linear for norm in self.norms]
            for norm, linear in zip(self.norms, self.originals, strict=True):
                norm.linear = ModulationTable(linear(keys.to(param.dtype)), self.index)
        self.timesteps = timesteps.detach().to(param.device, torch.float32)
        self.pooled = pooled_projections.detach().to(param.device)
        self.guidance = None if guidance is None else guidance.detach().to(param.device)

    def step_of(self, kwargs: dict) -> int | None:
        """The precomputed step this call is for, or None when its timestep, text or guidance is not the tables'."""
        step_t = kwargs["timestep"].to(self.timesteps.device, torch.float32)
        distance, nearest = (step_t[:, None] - self.timesteps[None, :]).abs().min(dim=1)
        i = int(nearest[0])
        guidance = kwargs.get("guidance")
        same_guidance = (guidance is None) == (self.guidance is None) and (
            guidance is None or torch.equal(guidance.to(self.guidance.device), self.guidance))
        same_text = kwargs["pooled_projections"].shape == self.pooled.shape and torch.equal(
            kwargs["pooled_projections"], self.pooled)
        one_step = distance.max() <= 1e-4 and bool((nearest == i).all())  # one call serves one step for every row
        return i if one_step and same_text and same_guidance else None

    def select(self, kwargs: dict) -> None:
        i = self.step_of(kwargs)
        if i is None:
            raise ValueError(f"batched_modulation: timestep {kwargs['timestep'].tolist()}, the pooled text embedding "
                             "or the guidance was not precomputed; enter batched_modulation with the sampler's "
                             "timesteps and prompts")
        self.index.copy_(i * self.batch + torch.arange(self.batch, device=self.index.device))

    def restore(self) -> None:
        for norm, linear in zip(self.norms, self.originals, strict=True):
            norm.linear = linear


@contextmanager
def modulation_tables(transformer: nn.Module, timesteps: torch.Tensor, pooled_projections: torch.Tensor,
                      guidance: torch.Tensor | None = None) -> Iterator[StepTables]:
    """The tables of `batched_modulation`, installed for the `with` block, without its hook: the caller calls
    `tables.select(kwargs)` before each transformer call (e.g. before replaying a captured step)."""
    tables = StepTables(transformer, timesteps, pooled_projections, guidance)
    try:
        yield tables
    finally:
        tables.restore()


@contextmanager
def batched_modulation(transformer: nn.Module, timesteps: torch.Tensor, pooled_projections: torch.Tensor,
                       guidance: torch.Tensor | None = None) -> Iterator[int]:
    """Precompute the modulation of every (timestep, batch row) and serve it during the `with` block.

    Args:
        transformer: a diffusers `FluxTransformer2DModel` (ternary or not).
        timesteps: (steps,) the values the sampler will pass as `timestep` (FLUX's are in [0, 1]).
        pooled_projections: (batch, dim) as they will be passed at every step.
        guidance: (batch,) for guidance-distilled models, else None.

    Yields the number of modulation layers replaced; they are restored on exit.
    """
    with modulation_tables(transformer, timesteps, pooled_projections, guidance) as tables:
        handle = transformer.register_forward_pre_hook(lambda module, args, kwargs: tables.select(kwargs),
                                                       with_kwargs=True)
        try:
            yield len(tables.norms)
        finally:
            handle.remove()


@contextmanager
def batched_modulation_in_pipeline(pipe) -> Iterator[None]:
    """Batched modulation for every `FluxPipeline`-style call made inside the block.

    On a call's first transformer step, the tables are built for all the timesteps the scheduler was set to for
    that call (`pipe.scheduler.timesteps`, passed to the transformer as `t / 1000` in the latents' dtype, as
    FluxPipeline does) and that call's text embedding and guidance. They are reused while calls bring the same
    text and timesteps (the next batch of one prompt), rebuilt otherwise, and the original linears are restored
    on exit.
    """
    transformer, state = pipe.transformer, {"tables": None}

    def prepare(module: nn.Module, args: tuple, kwargs: dict) -> None:
        tables = state["tables"]
        if tables is None or tables.step_of(kwargs) is None:
            if tables is not None:
                tables.restore()
            passed = kwargs["timestep"]
            timesteps = pipe.scheduler.timesteps.to(passed.device, passed.dtype) / 1000
            tables = state["tables"] = StepTables(transformer, timesteps, kwargs["pooled_projections"],
                                                   kwargs.get("guidance"))
        tables.select(kwargs)

    handle = transformer.register_forward_pre_hook(prepare, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()
        if state["tables"] is not None:
            state["tables"].restore()
