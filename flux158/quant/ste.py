"""`STETernaryLinear`: the training-time ternary linear that `distill` trains (latent weights through a
straight-through quantizer, or frozen codes) and turns back into a `TernaryLinear`."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from flux158.quant.config import TernaryConfig
from flux158.quant.linear import TernaryLinear
from flux158.quant.ternary import l2_optimal, l2_optimal_two_sided


class STETernaryLinear(nn.Module):
    """Training-time ternary linear: y = x (s * round(clamp(W / s, -c, c)))^T + b, gradients straight through.
    With input scales r (one per input channel), s becomes the outer product s r.

    Values stay in {-1, 0, 1} * s; W passes gradient while |W / s| < c (c = 1.49 keeps the codes ternary and
    lets weights just past the top level still move, as ParetoQ's stretched quantizer does).

    `scale_gradient` (see `DistillConfig`): `lsq` lets the scale's gradient run through the rounding's straight-through
    estimate as well, giving LSQ's Σ (round(u) - u) ∂L/∂w; `codes` gives the scale the gradient it has with the codes
    held fixed, Σ q ∂L/∂w.
    """

    def __init__(self, weight: torch.Tensor | None, scale: torch.Tensor, bias: torch.Tensor | None, ste_clip: float,
                 lowrank: tuple[torch.Tensor, torch.Tensor] | None = None,
                 frozen_codes: torch.Tensor | None = None, in_scale: torch.Tensor | None = None,
                 scale_gradient: str = "lsq") -> None:
        super().__init__()
        if (weight is None) == (frozen_codes is None):
            raise ValueError("give either a latent weight to train or frozen codes")
        self.weight = nn.Parameter(weight.detach().float().clone()) if weight is not None else None
        self.register_buffer("frozen_codes", frozen_codes.to(torch.int8) if frozen_codes is not None else None)
        self.scale = nn.Parameter(scale.detach().float().clone().clamp(min=1e-8))
        self.in_scale = (nn.Parameter(in_scale.detach().float().clone().clamp(min=1e-8)) if in_scale is not None
                         else None)
        self.bias = nn.Parameter(bias.detach().float().clone()) if bias is not None else None
        self.ste_clip, self.scale_gradient = ste_clip, scale_gradient
        self.lowrank = lowrank  # a frozen low-rank correction carried along (stage 2 only)

    @classmethod
    def from_linear(cls, linear: nn.Linear, ste_clip: float, input_scales: bool = False,
                    scale_gradient: str = "lsq") -> STETernaryLinear:
        """Stage-0 init: the latent weight is the original, the scales its L2-optimal ternary scales (per row, or
        per row and input channel)."""
        weight = linear.weight.detach().float()
        if input_scales:
            _, scale, in_scale = l2_optimal_two_sided(weight)
            return cls(linear.weight, scale, linear.bias, ste_clip, in_scale=in_scale, scale_gradient=scale_gradient)
        _, scale = l2_optimal(weight, per_channel=True)
        return cls(linear.weight, scale, linear.bias, ste_clip, scale_gradient=scale_gradient)

    @classmethod
    def from_ternary(cls, module: TernaryLinear, ste_clip: float, train_weights: bool,
                     scale_gradient: str = "lsq") -> STETernaryLinear:
        """Continue from finished codes: a latent weight `scale * codes` to train (same codes at the start), or the
        codes frozen (int8, no latent copy) so only scale and bias train."""
        lowrank = (module.lowrank_a, module.lowrank_b) if module.lowrank_a is not None else None
        if train_weights:
            return cls(module.dequantize(), module.scale, module.bias, ste_clip, lowrank, in_scale=module.in_scale,
                       scale_gradient=scale_gradient)
        return cls(None, module.scale, module.bias, ste_clip, lowrank, frozen_codes=module.codes(),
                   in_scale=module.in_scale)

    def to_ternary(self, config: TernaryConfig, original: torch.Tensor | None, bias_dtype: torch.dtype | None
                   ) -> TernaryLinear:
        """The finished layer: frozen codes, learned scale and bias (low rank: carried, or fitted to `original`)."""
        bias = self.bias.detach().to(bias_dtype) if self.bias is not None else None
        in_scale = self.in_scale.detach() if self.in_scale is not None else None
        return TernaryLinear.from_codes(self.codes(), self.scale.detach(), bias, config, weight=original,
                                        lowrank=self.lowrank, in_scale=in_scale)

    def _step(self) -> torch.Tensor:
        """The quantizer's step per weight: the row scale, times the input scale if there is one."""
        return self.scale * self.in_scale if self.in_scale is not None else self.scale

    def ternary(self) -> torch.Tensor:
        if self.weight is None:
            return self.frozen_codes.float()
        step = self._step() if self.scale_gradient == "lsq" else self._step().detach()
        u = (self.weight / step).clamp(-self.ste_clip, self.ste_clip)
        return u + (u.round() - u).detach()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = (self.ternary() * self._step()).to(x.dtype)
        y = F.linear(x, w, self.bias.to(x.dtype) if self.bias is not None else None)
        if self.lowrank is not None:
            y = y + F.linear(F.linear(x, self.lowrank[1].to(x.dtype)), self.lowrank[0].to(x.dtype))
        return y

    @torch.no_grad()
    def codes(self) -> torch.Tensor:
        if self.weight is None:
            return self.frozen_codes
        return (self.weight / self._step()).clamp(-self.ste_clip, self.ste_clip).round().to(torch.int8)
