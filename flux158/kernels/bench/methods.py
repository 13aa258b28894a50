"""The implementations compared per shape: each is built once with `rotate` distinct weight sets and returns a
callable that runs one GEMM on the next set (so weights do not sit in L2 between timed calls)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from flux158.kernels.dispatch import ACT_MODES, ternary_linear
from flux158.kernels.layout import pack_ternary
from flux158.kernels.reference import ternary_linear_ref


@dataclass(frozen=True)
class Method:
    name: str
    weight_bytes: float  # per weight, for the roofline
    act_bytes: float  # per activation element read by the GEMM
    peak: str  # which peak rate bounds it: bf16, int8 or fp8
    act: str | None  # activation format (None: 16-bit)
    backend: str  # cublas (the BF16 baseline), or the `flux158.kernels.ternary_linear` backend: triton or unpack


METHODS = {m.name: m for m in (
    Method("bf16", 2, 2, "bf16", None, "cublas"),
    Method("unpack_bf16", 0.25, 2, "bf16", None, "unpack"),
    Method("w2a16", 0.25, 2, "bf16", None, "triton"),
    Method("unpack_int8", 0.25, 1, "int8", "int8", "unpack"),
    Method("w158a8_int8", 0.25, 1, "int8", "int8", "triton"),
    Method("unpack_fp8", 0.25, 1, "fp8", "fp8", "unpack"),
    Method("w158a8_fp8", 0.25, 1, "fp8", "fp8", "triton"),
)}


@dataclass
class Problem:
    """One shape's operands on the GPU: activations, `rotate` packed ternary weights, scales and a bias."""

    x: torch.Tensor
    packed: list[torch.Tensor]
    scale: torch.Tensor  # fp32 (N,)
    bias: torch.Tensor
    k: int

    @classmethod
    def random(cls, m: int, k: int, n: int, rotate: int, device: str = "cuda") -> Problem:
        g = torch.Generator(device=device).manual_seed(0)
        packed = [pack_ternary(torch.randint(-1, 2, (n, k), generator=g, device=device, dtype=torch.int8))
                  for _ in range(rotate)]
        return cls(torch.randn(m, k, generator=g, device=device).to(torch.bfloat16), packed,
                   torch.rand(n, generator=g, device=device) * 0.02 + 0.01,
                   torch.randn(n, generator=g, device=device).to(torch.bfloat16), k)

    def reference(self, act: str | None) -> torch.Tensor:
        return ternary_linear_ref(self.x, self.packed[0], self.scale, self.bias, self.k, act).float()


def _rotating(count: int, run: Callable[[int], torch.Tensor]) -> Callable[[], torch.Tensor]:
    state = {"i": -1}

    def step() -> torch.Tensor:
        state["i"] = (state["i"] + 1) % count
        return run(state["i"])

    return step


def build(name: str, p: Problem) -> Callable[[], torch.Tensor]:
    """A zero-argument callable for method `name` on problem `p` (raises if the method cannot run this shape)."""
    from flux158.kernels import ops

    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose from {sorted(METHODS)}")
    method = METHODS[name]
    n, k, rotate = p.packed[0].shape[1], p.k, len(p.packed)
    x, scale, bias = p.x, p.scale, p.bias
    if method.backend == "cublas":
        weights = [torch.randn(n, k, device=x.device, dtype=torch.bfloat16) * 0.02 for _ in range(rotate)]
        return _rotating(rotate, lambda i: F.linear(x, weights[i], bias))
    # the unpack backend falls back to the fused kernels where the library GEMM refuses a shape: report that instead
    if method.backend == "unpack" and not ops.unpacked_supported(x.shape[0], k, n, ACT_MODES[method.act]):
        raise ValueError(f"{name} cannot run M={x.shape[0]}, K={k}, N={n} (e.g. torch._int_mm needs M > 16)")
    return _rotating(rotate, lambda i: ternary_linear(x, p.packed[i], scale, bias, k, method.act, method.backend))
