"""`torch.ops.flux158.ternary_mm` (the fused kernels) and `torch.ops.flux158.ternary_mm_unpacked` (the layer-wise
unpack baseline), registered with `torch.library.triton_op`, so eager calls and `torch.compile` graphs both see them
(Inductor traces the launches instead of treating the op as opaque).

Launch rules: M <= 16 runs the split-K GEMV (the modulation and embedding linears see one row), larger M the fused
GEMM. 8-bit activation modes first quantize each row (`quantize_rows_kernel`). On CUDA block sizes are autotuned;
under TRITON_INTERPRET=1 (CPU tests) small fixed blocks are used, because `triton.autotune` needs a GPU driver.
"""

# No `from __future__ import annotations`: torch.library infers the op schema from real annotations.
import os
from typing import Optional

import torch
import triton
from torch.library import triton_op, wrap_triton

from flux158.kernels import triton_kernels as tk
from flux158.kernels.layout import GROUP

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
GEMV_MAX_M = 16
SWAP_AB_INTERPRETED = False  # the GEMM form run under the interpreter (tests flip it; on CUDA autotuning picks)
ACT_DTYPES = {1: torch.int8, 2: torch.float8_e4m3fn}

_GEMM_CONFIGS = [  # (BLOCK_M, BLOCK_N, BLOCK_K, warps, stages, swap A/B): kernels.md section 3.5 starting points
    (128, 128, 128, 8, 3, False), (128, 256, 128, 8, 3, False), (64, 128, 128, 4, 4, False),
    (128, 128, 128, 8, 3, True), (128, 256, 128, 8, 3, True), (256, 128, 128, 8, 3, True),
    (64, 128, 128, 4, 4, True), (128, 128, 256, 8, 3, True),
]
_GEMV_CONFIGS = [(64, 4, 3), (128, 4, 3), (256, 8, 3), (128, 8, 4)]  # (BLOCK_N, warps, stages)


def _gemm_tuned():
    configs = [triton.Config({"BLOCK_M": m, "BLOCK_N": n, "BLOCK_K": k, "GROUP_M": 8, "SWAP_AB": swap},
                             num_warps=w, num_stages=s) for m, n, k, w, s, swap in _GEMM_CONFIGS]
    return triton.autotune(configs, key=["M", "N", "K", "A_MODE"])(tk.ternary_gemm_kernel)


def _gemv_tuned():
    configs = [triton.Config({"BLOCK_N": n}, num_warps=w, num_stages=s) for n, w, s in _GEMV_CONFIGS]
    return triton.autotune(configs, key=["M", "N", "K", "A_MODE"])(tk.ternary_gemv_kernel)


_TUNED = {} if INTERPRET else {"gemm": _gemm_tuned(), "gemv": _gemv_tuned()}


def _epilogue_flags(w_scale: torch.Tensor, bias: Optional[torch.Tensor], act_mode: int) -> dict:
    return {"A_MODE": act_mode, "PER_CHANNEL": w_scale.numel() > 1, "HAS_BIAS": bias is not None}


def quantize_rows(x: torch.Tensor, act_mode: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(M, K) float -> (int8 or fp8 codes, fp32 (M,) scales), per-token absmax (see `flux158.kernels.reference`)."""
    m, k = x.shape
    q = torch.empty((m, k), dtype=ACT_DTYPES[act_mode], device=x.device)
    s = torch.empty((m,), dtype=torch.float32, device=x.device)
    block = 128 if INTERPRET else 1024
    wrap_triton(tk.quantize_rows_kernel)[(m,)](x, q, s, k, x.stride(0), q.stride(0), A_MODE=act_mode, BLOCK=block,
                                                num_warps=4)
    return q, s


def _gemm(a, packed, w_scale, a_scale, bias, out, k, act_mode):
    m, n = a.shape[0], packed.shape[1]
    args = (a, packed, w_scale, a_scale, bias if bias is not None else w_scale, out, m, n, k, packed.shape[0],
            a.stride(0), a.stride(1), packed.stride(0), packed.stride(1), out.stride(0), out.stride(1))
    if INTERPRET:
        meta = {"BLOCK_M": 32, "BLOCK_N": 32, "BLOCK_K": 2 * GROUP, "GROUP_M": 2, "SWAP_AB": SWAP_AB_INTERPRETED}
        grid = (triton.cdiv(m, 32) * triton.cdiv(n, 32),)
        wrap_triton(tk.ternary_gemm_kernel)[grid](*args, **_epilogue_flags(w_scale, bias, act_mode), UPCAST=True,
                                                  **meta)
    else:
        def grid(meta):
            return (triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(n, meta["BLOCK_N"]),)
        wrap_triton(_TUNED["gemm"])[grid](*args, **_epilogue_flags(w_scale, bias, act_mode), UPCAST=False)


def _split_count(n: int, groups: int, device: torch.device) -> int:
    """K splits so that ~4 programs per SM stream the weights (at BLOCK_N 128)."""
    sms = 4 if INTERPRET else torch.cuda.get_device_properties(device).multi_processor_count
    per_split = triton.cdiv(groups, max(1, min(groups, (4 * sms) // triton.cdiv(n, 128))))
    return triton.cdiv(groups, per_split)


def _gemv(a, packed, w_scale, a_scale, bias, out, k, act_mode):
    m, n = a.shape[0], packed.shape[1]
    groups = triton.cdiv(k, GROUP)
    splits = _split_count(n, groups, a.device)
    per_split = triton.cdiv(groups, splits)
    part = torch.empty((splits, m, n), dtype=torch.float32, device=a.device)
    args = (a, packed, part, m, n, k, packed.shape[0], per_split, a.stride(0), a.stride(1), packed.stride(0),
            packed.stride(1), part.stride(0), part.stride(1), part.stride(2))
    if INTERPRET:
        wrap_triton(tk.ternary_gemv_kernel)[(triton.cdiv(n, 32), splits)](
            *args, A_MODE=act_mode, UPCAST=True, BLOCK_M=GEMV_MAX_M, BLOCK_N=32)
    else:
        def grid(meta):
            return (triton.cdiv(n, meta["BLOCK_N"]), splits)
        wrap_triton(_TUNED["gemv"])[grid](*args, A_MODE=act_mode, UPCAST=False, BLOCK_M=GEMV_MAX_M)
    _epilogue_launch(part, w_scale, a_scale, bias, out, act_mode)


def _epilogue_launch(part, w_scale, a_scale, bias, out, act_mode):
    """out = sum over splits of part (S, M, N; fp32 or int32) * a_scale[m] * w_scale[n] + bias[n]."""
    splits, m, n = part.shape
    wrap_triton(tk.splitk_epilogue_kernel)[(m, triton.cdiv(n, 256))](
        part, w_scale, a_scale, bias if bias is not None else w_scale, out, m, n, splits, part.stride(0),
        part.stride(1), part.stride(2), out.stride(0), out.stride(1), **_epilogue_flags(w_scale, bias, act_mode),
        BLOCK_N=256)


@triton_op("flux158::ternary_mm", mutates_args=())
def ternary_mm(x: torch.Tensor, packed: torch.Tensor, w_scale: torch.Tensor, bias: Optional[torch.Tensor],
               in_features: int, act_mode: int) -> torch.Tensor:
    """y (M, N) = x (M, K) @ (w_scale * codes)^T + bias; x contiguous, w_scale fp32 with 1 or N elements,
    act_mode 0 (16-bit activations), 1 (int8) or 2 (fp8 e4m3)."""
    m = x.shape[0]
    out = torch.empty((m, packed.shape[1]), dtype=x.dtype, device=x.device)
    a, a_scale = (x, w_scale) if act_mode == 0 else quantize_rows(x, act_mode)
    if act_mode == 2:
        a = a.view(torch.uint8)  # the kernels bitcast it back (masked loads need an integer zero)
    launch = _gemv if m <= GEMV_MAX_M else _gemm
    launch(a, packed, w_scale, a_scale, bias, out, in_features, act_mode)
    return out


def _unpack(packed: torch.Tensor, w_scale: torch.Tensor, in_features: int, dtype: torch.dtype, scaled: bool,
            out: Optional[torch.Tensor] = None) -> torch.Tensor:
    n = packed.shape[1]
    w = out if out is not None else torch.empty((n, in_features), dtype=dtype, device=packed.device)
    grid = (triton.cdiv(in_features, GROUP), triton.cdiv(n, 128))
    wrap_triton(tk.unpack_kernel)[grid](packed, w_scale, w, n, in_features, packed.shape[0], packed.stride(0),
                                        packed.stride(1), w.stride(0), w.stride(1), SCALED=scaled,
                                        PER_CHANNEL=w_scale.numel() > 1, BLOCK_N=128)
    return w


def unpack_codes(packed: torch.Tensor, in_features: int, dtype: torch.dtype,
                 out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Dense (N, K) codes in `dtype` (int8, bf16, fp16 or fp8), written into `out` (a reused scratch) if given."""
    return _unpack(packed, packed.new_ones(1, dtype=torch.float32), in_features, dtype, False, out)


def unpacked_supported(m: int, k: int, n: int, act_mode: int) -> bool:
    """Whether `ternary_mm_unpacked` can serve this shape (library GEMM constraints)."""
    if act_mode == 1:
        return m > 16 and k % 8 == 0 and n % 8 == 0  # torch._int_mm
    if act_mode == 2:
        return k % 16 == 0 and n % 16 == 0  # torch._scaled_mm
    return True


@triton_op("flux158::ternary_mm_unpacked", mutates_args=())
def ternary_mm_unpacked(x: torch.Tensor, packed: torch.Tensor, w_scale: torch.Tensor, bias: Optional[torch.Tensor],
                        in_features: int, act_mode: int) -> torch.Tensor:
    """The same product as `ternary_mm` by the layer-wise unpack baseline: this layer's weight is unpacked into a
    temporary dense tensor (freed after the call, so the allocator reuses it for the next layer), then a library GEMM
    runs: cuBLAS with the scale folded into BF16 weights (act_mode 0), `torch._int_mm` and the fused kernels' epilogue
    (1) or `torch._scaled_mm` with row-wise scales (2). Shapes must pass `unpacked_supported`."""
    if act_mode == 0:
        w = _unpack(packed, w_scale, in_features, x.dtype, True)
        return torch.nn.functional.linear(x, w, bias.to(x.dtype) if bias is not None else None)
    q, a_scale = quantize_rows(x, act_mode)
    n = packed.shape[1]
    if act_mode == 1:  # int32 products, then the fused kernels' epilogue in one pass (no fp32 temporaries)
        acc = torch._int_mm(q, _unpack(packed, w_scale, in_features, torch.int8, False).t())
        out = torch.empty((acc.shape[0], n), dtype=x.dtype, device=x.device)
        _epilogue_launch(acc[None], w_scale, a_scale, bias, out, act_mode)
        return out
    w = _unpack(packed, w_scale, in_features, torch.float8_e4m3fn, False)
    w_rows = w_scale.expand(n) if w_scale.numel() == 1 else w_scale
    out_dtype = x.dtype if x.dtype in (torch.bfloat16, torch.float16) else torch.bfloat16
    y = torch._scaled_mm(q, w.t(), scale_a=a_scale[:, None], scale_b=w_rows[None, :].contiguous(),
                         bias=bias.to(out_dtype) if bias is not None else None, out_dtype=out_dtype)
    return y.to(x.dtype)
