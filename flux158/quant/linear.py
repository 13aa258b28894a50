"""`TernaryLinear`: an `nn.Linear` replacement holding packed ternary codes, a scale and an optional bias."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from flux158.kernels import ternary_linear
from flux158.kernels.reference import ternary_linear_dense
from flux158.quant.config import TernaryConfig
from flux158.quant.packing import pack, packed_shape, unpack
from flux158.quant.ternary import ternarize


def lowrank_factors(residual: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(A (out, r), B (r, in)) with A @ B the best rank-`rank` approximation of `residual` (truncated SVD)."""
    u, s, vh = torch.linalg.svd(residual.float(), full_matrices=False)
    root = s[:rank].sqrt()
    return u[:, :rank] * root, root[:, None] * vh[:rank]


class TernaryLinear(nn.Module):
    """y = (x * in_scale) @ (scale * codes)^T [+ (x @ B^T) @ A^T] + bias, with codes in {-1, 0, +1} stored packed.

    Buffers:
        packed: uint8 codes in `config.packing` layout (see `flux158.quant.packing`).
        scale: float32 (out, 1) per channel or (1, 1) per tensor.
        in_scale: float32 (in,) scales of the input channels (`config.input_scales`), or None.
        bias: the layer's bias (the layer's dtype), or None.
        lowrank_a, lowrank_b: the optional correction (out, r) and (r, in) in the layer's dtype
            (`config.lowrank_rank > 0`).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool, config: TernaryConfig,
                 dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> None:
        super().__init__()
        self.in_features, self.out_features, self.config = in_features, out_features, config
        shape = packed_shape(config.packing, (out_features, in_features))
        self.register_buffer("packed", torch.empty(shape, dtype=torch.uint8, device=device))
        rows = out_features if config.per_channel else 1
        self.register_buffer("scale", torch.empty(rows, 1, dtype=torch.float32, device=device))
        self.register_buffer("in_scale", torch.ones(in_features, dtype=torch.float32, device=device)
                             if config.input_scales else None)
        self.register_buffer("bias", torch.empty(out_features, dtype=dtype, device=device) if bias else None)
        r = config.lowrank_rank
        self.register_buffer("lowrank_a", torch.empty(out_features, r, dtype=dtype, device=device) if r else None)
        self.register_buffer("lowrank_b", torch.empty(r, in_features, dtype=dtype, device=device) if r else None)
        self.backend = "auto"  # `flux158.kernels.ternary_linear` backend: auto, triton, unpack or reference
        self._float_codes_of: tuple | None = None  # what `_float_codes` was unpacked from
        self._float_codes_cache: torch.Tensor | None = None

    @classmethod
    def from_codes(cls, codes: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None, config: TernaryConfig,
                   weight: torch.Tensor | None = None,
                   lowrank: tuple[torch.Tensor, torch.Tensor] | None = None,
                   in_scale: torch.Tensor | None = None) -> TernaryLinear:
        """Build from (out, in) codes in {-1, 0, 1} and their scale (and, with `config.input_scales`, the input
        channels' `in_scale`; ones if not given). With `config.lowrank_rank > 0` the correction is `lowrank` (A, B)
        when given, else fitted to the residual of `weight` (the original)."""
        out_features, in_features = codes.shape
        dtype = bias.dtype if bias is not None else (weight.dtype if weight is not None else torch.float32)
        module = cls(in_features, out_features, bias is not None, config, dtype, codes.device)
        module.packed.copy_(pack(codes, config.packing))
        module.scale.copy_(scale.reshape(module.scale.shape))
        if in_scale is not None:
            if module.in_scale is None:
                raise ValueError("in_scale given, but config.input_scales is off")
            module.in_scale.copy_(in_scale.reshape(module.in_scale.shape))
        if bias is not None:
            module.bias.copy_(bias.detach())
        if config.lowrank_rank and lowrank is not None:
            module.lowrank_a.copy_(lowrank[0])
            module.lowrank_b.copy_(lowrank[1])
        elif config.lowrank_rank:
            if weight is None:
                raise ValueError("a low-rank correction needs the original weight")
            residual = weight.detach().float() - module.dequantize()
            a, b = lowrank_factors(residual, config.lowrank_rank)
            module.lowrank_a.copy_(a)
            module.lowrank_b.copy_(b)
        return module

    @classmethod
    def from_linear(cls, linear: nn.Linear, config: TernaryConfig) -> TernaryLinear:
        """Ternarize `linear.weight` with the data-free rule `config.method` and keep its bias."""
        w = linear.weight.detach()
        codes, scale = ternarize(w, config.method, config.per_channel)
        return cls.from_codes(codes, scale, linear.bias, config, weight=w)

    def codes(self) -> torch.Tensor:
        """(out, in) int8 codes."""
        return unpack(self.packed, self.config.packing, (self.out_features, self.in_features))

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The effective ternary weight `scale * codes [* in_scale]`, (out, in), without the low-rank correction."""
        weight = self.codes().to(torch.float32) * self.scale
        return (weight * self.in_scale if self.in_scale is not None else weight).to(dtype)

    def _float_codes(self) -> torch.Tensor:
        """The codes as float32 (out, in), unpacked once and kept until `packed` changes or moves: the CPU path's
        weights. The reference unpacks and converts these same values on every call, so results are byte for byte
        the same; the cost is 4 bytes per weight of host memory, on the CPU only."""
        source = (self.packed.data_ptr(), self.packed._version, self.packed.device)
        if self._float_codes_of != source:
            self._float_codes_cache, self._float_codes_of = self.codes().to(torch.float32), source
        return self._float_codes_cache

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = self.config.activations
        xs = x * self.in_scale.to(x.dtype) if self.in_scale is not None else x
        if not xs.is_cuda and self.backend in ("auto", "reference"):  # the reference, on unpacked codes kept
            y = ternary_linear_dense(xs, self._float_codes(), self.scale, self.bias, act)
        elif self.config.packing == "2bit":  # Triton on CUDA (`self.backend`)
            y = ternary_linear(xs, self.packed, self.scale, self.bias, self.in_features, act, self.backend)
        else:
            y = ternary_linear_dense(xs, self.codes(), self.scale, self.bias, act)
        if self.lowrank_a is not None:
            y = y + F.linear(F.linear(x, self.lowrank_b.to(x.dtype)), self.lowrank_a.to(x.dtype))
        return y

    def extra_repr(self) -> str:
        lowrank = f", lowrank_rank={self.config.lowrank_rank}" if self.config.lowrank_rank else ""
        acts = f", activations={self.config.activations}" if self.config.activations else ""
        acts += ", input_scales=True" if self.config.input_scales else ""
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"method={self.config.method}, granularity={self.config.granularity}, bits=1.58 "
                f"({self.config.packing}){acts}{lowrank}")
