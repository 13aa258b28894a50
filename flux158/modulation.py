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
    param = transformer.x_embedder.weight
    steps, batch = timesteps.shape[0], pooled_projections.shape[0]
    t = timesteps.to(param.device, param.dtype).repeat_interleave(batch) * 1000  # as the forward scales them
    pooled = pooled_projections.to(param.device).repeat(steps, 1)
    with torch.no_grad():
        if guidance is None:
            temb = transformer.time_text_embed(t, pooled)
        else:
            g = guidance.to(param.device, param.dtype).repeat(steps) * 1000
            temb = transformer.time_text_embed(t, g, pooled)
        keys = F.silu(temb)
        index = torch.arange(batch, device=param.device)
        norms = _modulated_norms(transformer)
        originals = [norm.linear for norm in norms]
        for norm, linear in zip(norms, originals, strict=True):
            norm.linear = ModulationTable(linear(keys.to(param.dtype)), index)
    known_t = timesteps.detach().to(param.device, torch.float32)
    known_pooled = pooled_projections.detach().to(param.device)

    def select_step(module: nn.Module, args: tuple, kwargs: dict) -> None:
        step_t = kwargs["timestep"].to(known_t.device, torch.float32)
        distance, nearest = (step_t[:, None] - known_t[None, :]).abs().min(dim=1)
        i = int(nearest[0])
        if (distance.max() > 1e-4 or (nearest != i).any()  # one call serves one step for every batch row
                or not torch.equal(kwargs["pooled_projections"], known_pooled)):
            raise ValueError(f"batched_modulation: timestep {step_t.tolist()} or the pooled text embedding was not "
                             "precomputed; enter batched_modulation with the sampler's timesteps and prompts")
        index.copy_(i * batch + torch.arange(batch, device=index.device))

    handle = transformer.register_forward_pre_hook(select_step, with_kwargs=True)
    try:
        yield len(norms)
    finally:
        handle.remove()
        for norm, linear in zip(norms, originals, strict=True):
            norm.linear = linear
