"""Quantization quality: weight SQNR per layer and the transformer's output error against the teacher."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

from flux158.quant.calibration import CalibrationSet

# Noise-level bins of the velocity error (`quant_methods.md` section 8): composition is decided at high sigma.
SIGMA_BINS = {"sigma_gt_0.8": (0.8, 1.01), "sigma_0.5_0.8": (0.5, 0.8), "sigma_lt_0.5": (-0.01, 0.5)}


@dataclass(frozen=True)
class LayerStats:
    """How well one layer's ternary weight approximates the original."""

    params: int
    sqnr_db: float  # 10 log10(||W||^2 / ||W - W_q||^2)
    zero_fraction: float

    def as_dict(self) -> dict:
        return asdict(self)


def layer_stats(weight: torch.Tensor, effective: torch.Tensor, codes: torch.Tensor) -> LayerStats:
    w, q = weight.detach().float(), effective.detach().float()
    noise = (w - q).square().sum().item()
    signal = w.square().sum().item()
    sqnr = 10 * math.log10(signal / noise) if noise > 0 else math.inf
    return LayerStats(w.numel(), sqnr, (codes == 0).float().mean().item())


@torch.no_grad()
def velocity_error(transformer: torch.nn.Module, calib: CalibrationSet, batch_size: int = 8,
                   device: torch.device | str = "cpu") -> dict[str, float]:
    """Relative squared error ||v - v_teacher||^2 / ||v_teacher||^2 of the transformer's output on `calib`,
    overall and per noise-level bin (bins with no rows are left out)."""
    dtype = next(transformer.parameters()).dtype
    err, ref, sigmas = [], [], []
    for kwargs, target in calib.batches(batch_size, device, dtype):
        out = transformer(**kwargs, return_dict=False)[0].float()
        target = target.float()
        err.append((out - target).square().flatten(1).sum(1).cpu())
        ref.append(target.square().flatten(1).sum(1).cpu())
        sigmas.append(kwargs["timestep"].float().cpu())
    err, ref, sigmas = torch.cat(err), torch.cat(ref), torch.cat(sigmas)
    result = {"rel_mse": (err.sum() / ref.sum()).item()}
    for name, (lo, hi) in SIGMA_BINS.items():
        mask = (sigmas > lo) & (sigmas <= hi)
        if mask.any():
            result[name] = (err[mask].sum() / ref[mask].sum()).item()
    return result
