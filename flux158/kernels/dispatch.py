"""`ternary_linear`: one entry point that runs the Triton kernels on CUDA and the pure-torch reference elsewhere."""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal, Optional

import torch

from flux158.kernels.backend_table import choose_from_plan, table_for_device
from flux158.kernels.reference import check_act_format, ternary_linear_ref

ActFormat = Optional[Literal["int8", "fp8"]]
BACKENDS = ("auto", "triton", "unpack", "reference")
ACT_MODES = {None: 0, "int8": 1, "fp8": 2}
_MIN_CAPABILITY = {None: (8, 0), "int8": (8, 0), "fp8": (8, 9)}  # int8 MMA: Ampere; fp8 e4m3 MMA: Ada / Hopper


@torch.compiler.assume_constant_result  # evaluated once while torch.compile traces, not a graph break
def _gpu_supports(device_index: int, act: ActFormat) -> bool:
    if importlib.util.find_spec("triton") is None:
        return False
    return torch.cuda.get_device_capability(device_index) >= _MIN_CAPABILITY[act]


def kernel_available(x: torch.Tensor, act: ActFormat = None) -> bool:
    """Whether the Triton kernels serve `x` on its device: CUDA, Triton installed, a GPU new enough for `act`,
    and 16-bit activations unless they are quantized to 8 bits (fp32 inputs would need a tf32 or slow ieee dot)."""
    if not x.is_cuda or not _gpu_supports(x.device.index or 0, act):
        return False
    return act is not None or x.dtype in (torch.bfloat16, torch.float16)


_graph_timed = {"active": False}


@contextmanager
def graph_timed_calls() -> Iterator[None]:
    """Within the block `auto` chooses as for calls replayed from a CUDA graph (`backend_table`). Wrap both
    the warm-up and the capture of a graph in it, so that the capture runs kernels the warm-up already tuned."""
    previous, _graph_timed["active"] = _graph_timed["active"], True
    try:
        yield
    finally:
        _graph_timed["active"] = previous


@torch.compiler.assume_constant_result  # read once while torch.compile traces; M is compared in the graph's guards
def _measured_plan(device_index: int, act: str, k: int, n: int, graphed: bool) -> tuple[tuple[int | None, str], ...]:
    table = table_for_device(device_index, graphed)
    return table.plan(act, k, n) if table is not None else ()


def auto_backend(x: torch.Tensor, act: ActFormat, in_features: int, out_features: int) -> str:
    """`triton` or `unpack` for `x` on a GPU: the faster one measured for this GPU, format, shape and M
    (`flux158.kernels.backend_table`; timed as graph replays when this call is compiled or captured into a CUDA graph),
    the fused kernels where nothing was measured."""
    graphed = torch.compiler.is_compiling() or _graph_timed["active"] or (
        x.is_cuda and torch.cuda.is_current_stream_capturing())
    plan = _measured_plan(x.device.index or 0, act or "bf16", in_features, out_features, graphed)
    return choose_from_plan(plan, x.numel() // in_features)


def ternary_linear(x: torch.Tensor, packed: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None,
                   in_features: int, act: ActFormat = None, backend: str = "auto") -> torch.Tensor:
    """y = x @ (scale * codes)^T + bias for codes packed in the `2bit` layout, output in x's dtype.

    Args:
        x: (..., in_features) activations.
        packed: (packed_rows(in_features), out_features) uint8 (`flux158.kernels.layout`).
        scale: float32 with 1 (per tensor) or out_features (per channel) elements.
        bias: (out_features,) or None.
        act: None keeps 16-bit activations (W2A16); `int8` / `fp8` quantizes them per token (W1.58A8).
        backend: `auto` (where `kernel_available` and no gradient is needed, the fused kernels or the unpack
            path, whichever `flux158.kernels.backend_table` measured faster for this GPU and shape; else the reference),
            `triton` (the fused kernels; also on CPU under TRITON_INTERPRET=1), `unpack` (this layer unpacked to a
            temporary dense weight, then cuBLAS / `_int_mm` / `_scaled_mm`; the fused kernels where those refuse
            the shape) or `reference`. `unpack` with 16-bit activations folds the scale into BF16 weights, so it
            rounds each channel's scale once.
    """
    check_act_format(act)
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {BACKENDS}")
    if backend == "auto":
        needs_grad = torch.is_grad_enabled() and any(
            t is not None and t.requires_grad for t in (x, scale, bias))
        if kernel_available(x, act) and not needs_grad:
            backend = auto_backend(x, act, in_features, packed.shape[1])
        else:
            backend = "reference"
    if backend == "reference":
        return ternary_linear_ref(x, packed, scale, bias, in_features, act)
    if not x.is_cuda and os.environ.get("TRITON_INTERPRET") != "1":
        raise ValueError(f"backend {backend!r} runs Triton kernels: it needs a CUDA tensor (or TRITON_INTERPRET=1 "
                         f"for CPU tests); got a {x.device.type} tensor. Use backend='auto' or 'reference'.")
    from flux158.kernels import ops  # imports triton and registers torch.ops.flux158

    x2 = x.reshape(-1, in_features).contiguous()
    mode, n = ACT_MODES[act], packed.shape[1]
    op = torch.ops.flux158.ternary_mm
    if backend == "unpack" and ops.unpacked_supported(x2.shape[0], in_features, n, mode):
        op = torch.ops.flux158.ternary_mm_unpacked
    y = op(x2, packed, scale.reshape(-1).float().contiguous(), bias, in_features, mode)
    return y.reshape(*x.shape[:-1], packed.shape[1])
