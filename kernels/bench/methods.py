"""The implementations compared per shape: each is built once with `rotate` distinct weight sets and returns a
callable that runs one GEMM on the next set (so weights do not sit in L2 between timed calls)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from kernels.dispatch import ternary_linear
from kernels.layout import pack_ternary
from kernels.reference import ternary_linear_ref


@dataclass(frozen=True)
class Method:
    name: str
    weight_bytes: float  # per weight, for the roofline
    act_bytes: float  # per activation element read by the GEMM
    peak: str  # which peak rate bounds it: bf16, int8 or fp8
    act: str | None  # activation format of its ternary reference (None for bf16)


METHODS = {
    "bf16": Method("bf16", 2, 2, "bf16", None),
    "unpack_bf16": Method("unpack_bf16", 0.25, 2, "bf16", None),
    "w2a16": Method("w2a16", 0.25, 2, "bf16", None),
    "unpack_int8": Method("unpack_int8", 0.25, 1, "int8", "int8"),
    "w158a8_int8": Method("w158a8_int8", 0.25, 1, "int8", "int8"),
    "unpack_fp8": Method("unpack_fp8", 0.25, 1, "fp8", "fp8"),
    "w158a8_fp8": Method("w158a8_fp8", 0.25, 1, "fp8", "fp8"),
}


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
    from kernels import ops

    n, k, rotate = p.packed[0].shape[1], p.k, len(p.packed)
    x, scale, bias = p.x, p.scale, p.bias
    if name == "bf16":
        weights = [torch.randn(n, k, device=x.device, dtype=torch.bfloat16) * 0.02 for _ in range(rotate)]
        return _rotating(rotate, lambda i: F.linear(x, weights[i], bias))
    if name in ("w2a16", "w158a8_int8", "w158a8_fp8"):
        act = {"w2a16": None, "w158a8_int8": "int8", "w158a8_fp8": "fp8"}[name]
        return _rotating(rotate, lambda i: ternary_linear(x, p.packed[i], scale, bias, k, act, backend="triton"))
    if name == "unpack_bf16":  # one layer unpacked into a reused scratch, then cuBLAS
        scratch = torch.empty(n, k, device=x.device, dtype=torch.bfloat16)
        return _rotating(rotate, lambda i: torch.addcmul(
            bias, F.linear(x, ops.unpack_codes(p.packed[i], k, torch.bfloat16, scratch)), scale.to(x.dtype)))
    if name == "unpack_int8":
        if x.shape[0] <= 16:
            raise ValueError("torch._int_mm needs M > 16")
        scratch = torch.empty(n, k, device=x.device, dtype=torch.int8)

        def int8(i: int) -> torch.Tensor:
            q, s = ops.quantize_rows(x, 1)
            acc = torch._int_mm(q, ops.unpack_codes(p.packed[i], k, torch.int8, scratch).t())
            return (acc.float() * s[:, None] * scale + bias.float()).to(x.dtype)

        return _rotating(rotate, int8)
    if name == "unpack_fp8":
        scratch = torch.empty(n, k, device=x.device, dtype=torch.float8_e4m3fn)

        def fp8(i: int) -> torch.Tensor:
            q, s = ops.quantize_rows(x, 2)
            w = ops.unpack_codes(p.packed[i], k, torch.float8_e4m3fn, scratch)
            return torch._scaled_mm(q, w.t(), scale_a=s[:, None], scale_b=scale[None, :], bias=bias,
                                    out_dtype=x.dtype)

        return _rotating(rotate, fp8)
    raise ValueError(f"unknown method {name!r}; choose from {sorted(METHODS)}")
