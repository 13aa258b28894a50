"""`TernaryLinear`: an `nn.Linear` replacement holding packed ternary codes, a scale and an optional bias."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from flux158.quant.config import TernaryConfig
from flux158.quant.packing import pack, packed_shape, unpack
from flux158.quant.ternary import ternarize


class TernaryLinear(nn.Module):
    """y = x @ (scale * codes)^T + bias, with codes in {-1, 0, +1} stored packed.

    Buffers:
        packed: uint8 codes in `config.packing` layout (see `flux158.quant.packing`).
        scale: float32 (out, 1) per channel or (1, 1) per tensor.
        bias: the original bias (same dtype), or None.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool, config: TernaryConfig,
                 dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> None:
        super().__init__()
        self.in_features, self.out_features, self.config = in_features, out_features, config
        shape = packed_shape(config.packing, (out_features, in_features))
        self.register_buffer("packed", torch.empty(shape, dtype=torch.uint8, device=device))
        rows = out_features if config.per_channel else 1
        self.register_buffer("scale", torch.empty(rows, 1, dtype=torch.float32, device=device))
        self.register_buffer("bias", torch.empty(out_features, dtype=dtype, device=device) if bias else None)

    @classmethod
    def from_linear(cls, linear: nn.Linear, config: TernaryConfig) -> TernaryLinear:
        """Ternarize `linear.weight` with `config.method` and keep its bias."""
        w = linear.weight.detach()
        module = cls(linear.in_features, linear.out_features, linear.bias is not None, config, w.dtype, w.device)
        codes, scale = ternarize(w, config.method, config.per_channel)
        module.packed.copy_(pack(codes, config.packing))
        module.scale.copy_(scale)
        if linear.bias is not None:
            module.bias.copy_(linear.bias.detach())
        return module

    def codes(self) -> torch.Tensor:
        """(out, in) int8 codes."""
        return unpack(self.packed, self.config.packing, (self.out_features, self.in_features))

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The effective weight `scale * codes`, (out, in)."""
        return (self.codes().to(torch.float32) * self.scale).to(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Reference path: unpack, then the dense GEMM. The fused Triton kernels plug in here.
        bias = self.bias.to(x.dtype) if self.bias is not None else None
        return F.linear(x, self.dequantize(x.dtype), bias)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"method={self.config.method}, granularity={self.config.granularity}, bits=1.58 "
                f"({self.config.packing})")
