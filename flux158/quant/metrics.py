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


def _relative_by_sigma(err: torch.Tensor, ref: torch.Tensor, sigmas: torch.Tensor) -> dict[str, float]:
    """Σ err / Σ ref over all rows and per noise-level bin (bins with no rows are left out)."""
    result = {"rel_mse": (err.sum() / ref.sum()).item()}
    for name, (lo, hi) in SIGMA_BINS.items():
        mask = (sigmas > lo) & (sigmas <= hi)
        if mask.any():
            result[name] = (err[mask].sum() / ref[mask].sum()).item()
    return result


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
    return _relative_by_sigma(torch.cat(err), torch.cat(ref), torch.cat(sigmas))


@torch.no_grad()
def guidance_direction_error(transformer: torch.nn.Module, calib: CalibrationSet, batch_size: int = 8,
                             device: torch.device | str = "cpu") -> dict[str, float] | None:
    """Relative squared error of the guidance direction, ||d - d_teacher||^2 / ||d_teacher||^2 with
    d = v_cond - v_uncond of the same classifier-free-guided call: the text-conditioning signal that CFG
    amplifies, a small part of each velocity (the toy world's `distill` matches both halves to 2 % error and
    this to only 33 %).
    Overall and per noise-level bin; None when `calib` holds no CFG pairs (guidance-distilled FLUX.1-dev)."""
    pairs = calib.guidance_pairs()
    if not pairs:
        return None
    dtype = next(transformer.parameters()).dtype
    sigmas_all = calib.sigmas()
    err, ref, sigmas = [], [], []
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start:start + batch_size]
        kwargs, target = calib.batch([u for u, _ in chunk] + [c for _, c in chunk], device, dtype)
        out_u, out_c = transformer(**kwargs, return_dict=False)[0].float().chunk(2)
        target_u, target_c = target.float().chunk(2)
        err.append(((out_c - out_u) - (target_c - target_u)).square().flatten(1).sum(1).cpu())
        ref.append((target_c - target_u).square().flatten(1).sum(1).cpu())
        sigmas.append(sigmas_all[[u for u, _ in chunk]])
    return _relative_by_sigma(torch.cat(err), torch.cat(ref), torch.cat(sigmas))
