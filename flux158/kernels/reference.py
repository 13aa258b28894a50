"""Pure-torch references of every kernel: the CPU path, and the oracle of the kernel tests.

W1.58A8 numerics (BitNet-style per-token absmax): `int8` maps each row x to round(x * 127 / max|x|) (round half
away from zero) with dequantization scale max|x| / 127; `fp8` maps it to e4m3(x * 448 / max|x|) with scale
max|x| / 448. Products of integer (or e4m3) activations and ternary codes are exact in fp32 and their sums stay
below 2^24 (|sum| <= 127 * K, K <= 15360 in FLUX), so the fp32 matmul below equals the int32 accumulation of the
kernels exactly; only the epilogue (scales, bias, output rounding) rounds.
"""

from __future__ import annotations

import torch

from flux158.kernels.layout import unpack_ternary

ACT_FORMATS = ("int8", "fp8")
INT8_MAX, FP8_MAX = 127.0, 448.0
_MIN_AMAX = 1e-12  # an all-zero row gets a tiny scale and zero codes instead of 0 / 0


def check_act_format(act: str | None) -> None:
    if act is not None and act not in ACT_FORMATS:
        raise ValueError(f"unknown activation format {act!r}; choose None (16-bit) or one of {ACT_FORMATS}")


def quantize_activations_ref(x: torch.Tensor, act: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(M, K) activations -> (codes int8 or float8_e4m3fn (M, K), dequantization scale float32 (M, 1))."""
    check_act_format(act)
    xf = x.float()
    amax = xf.abs().amax(dim=-1, keepdim=True).clamp_min(_MIN_AMAX)
    top = INT8_MAX if act == "int8" else FP8_MAX
    v = xf * (torch.full_like(amax, top) / amax)  # tensor / tensor is correctly rounded; scalar / tensor is not
    if act == "int8":
        q = (v.sign() * (v.abs() + 0.5).floor()).clamp(-INT8_MAX, INT8_MAX).to(torch.int8)
    else:
        q = v.clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
    return q, amax / top


def ternary_linear_dense(x: torch.Tensor, codes: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None,
                         act: str | None = None) -> torch.Tensor:
    """y = x @ (scale * codes)^T + bias from unpacked (N, K) codes, computed in fp32, returned in x's dtype.

    `scale` has one element per tensor or per output channel (any shape with 1 or N elements). With `act` the
    activations are first quantized per token (see the module docstring). Differentiable in x, scale and bias.
    """
    check_act_format(act)
    n, k = codes.shape
    x2 = x.reshape(-1, k)
    w = codes.to(torch.float32)
    if act is None:
        y = x2.float() @ w.T
    else:
        q, s = quantize_activations_ref(x2, act)
        y = (q.float() @ w.T) * s
    y = y * scale.reshape(1, -1).float()
    if bias is not None:
        y = y + bias.float()
    return y.to(x.dtype).reshape(*x.shape[:-1], n)


def ternary_linear_ref(x: torch.Tensor, packed: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None,
                       in_features: int, act: str | None = None) -> torch.Tensor:
    """`ternary_linear_dense` on codes in the packed `2bit` layout."""
    return ternary_linear_dense(x, unpack_ternary(packed, in_features), scale, bias, act)
