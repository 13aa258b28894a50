"""Low-bit linear kernels for ternary weights: the packed `2bit` layout, Triton GEMM/GEMV kernels (W2A16 and
W1.58A8 int8/fp8), their `torch.library` registration, pure-torch references, and `flux158.kernels.bench`.

This package imports nothing from the rest of `flux158` (tests/test_architecture.py checks it).
"""

from flux158.kernels.dispatch import ActFormat, graph_timed_calls, kernel_available, ternary_linear
from flux158.kernels.layout import GROUP, pack_ternary, packed_rows, unpack_ternary
from flux158.kernels.reference import quantize_activations_ref, ternary_linear_ref

__all__ = ["GROUP", "ActFormat", "graph_timed_calls", "kernel_available", "pack_ternary", "packed_rows",
           "quantize_activations_ref", "ternary_linear", "ternary_linear_ref", "unpack_ternary"]
