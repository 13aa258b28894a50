"""The `2bit` layout of ternary codes, owned by the kernels that read it.

Codes c in {-1, 0, +1} are stored as c + 1 in two bits, four per byte, packed along the input dimension K and
group-interleaved (bitnet.cpp's I2_S idea): K is cut into groups of `GROUP` = 128, and in group g byte row
`g * 32 + j` holds K indices `g * 128 + j + 32 * s` in bits `2s..2s+1` (s = 0..3). One shift and mask of a
(32, BN) byte tile therefore yields a *contiguous* 32-long K slab, which a kernel dots with the matching contiguous
slab of activations: every byte is loaded once, with no gather. The packed tensor is (packed_rows(K), N) uint8,
N contiguous; K is padded to a multiple of 128 with zero codes (stored as 1). 32 is the K of an int8/fp8 MMA.
"""

from __future__ import annotations

import torch

GROUP = 128
SLAB = GROUP // 4


def packed_rows(k: int) -> int:
    """Byte rows of the packed tensor for input dimension `k` (K padded to a multiple of `GROUP`)."""
    return -(-k // GROUP) * SLAB


def pack_ternary(codes: torch.Tensor) -> torch.Tensor:
    """(N, K) int8 codes in {-1, 0, 1} -> (packed_rows(K), N) uint8."""
    n, k = codes.shape
    u = (codes.to(torch.int16) + 1).T  # (K, N)
    pad = packed_rows(k) * 4 - k
    if pad:
        u = torch.cat([u, torch.ones(pad, n, dtype=u.dtype, device=u.device)])
    u = u.reshape(-1, 4, SLAB, n)  # (groups, s, j, N): K index g*128 + s*32 + j
    packed = u[:, 0] | (u[:, 1] << 2) | (u[:, 2] << 4) | (u[:, 3] << 6)  # (groups, j, N)
    return packed.reshape(-1, n).to(torch.uint8)


def unpack_ternary(packed: torch.Tensor, k: int) -> torch.Tensor:
    """(packed_rows(K), N) uint8 -> (N, K) int8 codes."""
    rows, n = packed.shape
    p = packed.to(torch.int16).reshape(-1, SLAB, n)
    u = torch.stack([(p >> (2 * s)) & 3 for s in range(4)], dim=1)  # (groups, s, j, N)
    return (u.reshape(rows * 4, n)[:k].T - 1).to(torch.int8).contiguous()
