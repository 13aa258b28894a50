"""FLUX.1-dev's linear shapes (diffusers `FluxTransformer2DModel`; kernels.md section 2.2) and the M values benched."""

from __future__ import annotations

from dataclasses import dataclass

D, MLP = 3072, 12288


@dataclass(frozen=True)
class LinearShape:
    name: str
    k: int
    n: int
    layers: str  # which FLUX linears have this (K, N)


FLUX_SHAPES = (
    LinearShape("qkvo", D, D, "to_q/k/v, to_out, add_*_proj, to_add_out, single to_q/k/v"),
    LinearShape("mlp_up", D, MLP, "ff(.context) up, single proj_mlp"),
    LinearShape("mlp_down", MLP, D, "ff(.context) down"),
    LinearShape("single_out", D + MLP, D, "single proj_out"),
    LinearShape("mod_double", D, 6 * D, "norm1(.context).linear (M = 1 per step)"),
    LinearShape("mod_single_qkv", D, 3 * D, "single norm.linear (M = 1), fused q/k/v (M = tokens)"),
)
# the issue's M values, plus the exact token counts of a 1024² step (512 text, 4096 image), so `auto`'s table and
# `flux158.kernels.bench.step` need not interpolate where FLUX spends its time
M_VALUES = (1, 16, 256, 512, 1024, 4096, 4608)
