"""Packed storage of ternary codes; every format round-trips exactly for any shape.

`2bit` (compute): stores `code + 1` in {0, 1, 2}, four per byte along the input dimension K. For a weight of shape
(N, K) the packed tensor is (ceil(K / 4), N) uint8 and K index `4 i + j` sits in bits `2j..2j+1` of row i, so a
kernel tile over K unpacks with one shift and mask. Padding codes are 0 (stored as 1).
`trit5` (archival, 1.6 bits): the flattened codes + 1 in base 3, five trits per byte (3^5 = 243 <= 256).
"""

from __future__ import annotations

import torch

FORMATS = ("2bit", "trit5")


def pack_2bit(codes: torch.Tensor) -> torch.Tensor:
    """(N, K) int8 codes in {-1, 0, 1} -> (ceil(K/4), N) uint8."""
    n, k = codes.shape
    pad = (-k) % 4
    u = (codes.to(torch.int16) + 1).T  # (K, N)
    if pad:
        u = torch.cat([u, torch.ones(pad, n, dtype=u.dtype, device=u.device)])
    u = u.reshape(-1, 4, n)
    packed = u[:, 0] | (u[:, 1] << 2) | (u[:, 2] << 4) | (u[:, 3] << 6)
    return packed.to(torch.uint8)


def unpack_2bit(packed: torch.Tensor, k: int) -> torch.Tensor:
    """(ceil(K/4), N) uint8 -> (N, K) int8 codes."""
    p = packed.to(torch.int16)
    u = torch.stack([(p >> (2 * j)) & 3 for j in range(4)], dim=1)  # (K/4, 4, N)
    return (u.reshape(-1, p.shape[1])[:k].T - 1).to(torch.int8).contiguous()


def pack_trit5(codes: torch.Tensor) -> torch.Tensor:
    """Any-shape int8 codes -> ceil(numel / 5) uint8, base-3 digits, least significant first."""
    flat = codes.reshape(-1).to(torch.int16) + 1
    pad = (-flat.numel()) % 5
    if pad:
        flat = torch.cat([flat, torch.ones(pad, dtype=flat.dtype, device=flat.device)])
    digits = flat.reshape(-1, 5)
    weights = torch.tensor([1, 3, 9, 27, 81], dtype=torch.int16, device=flat.device)
    return (digits * weights).sum(dim=1).to(torch.uint8)


def unpack_trit5(packed: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """Inverse of `pack_trit5` for codes of `shape`."""
    v = packed.to(torch.int16)
    digits = torch.stack([(v // 3**i) % 3 for i in range(5)], dim=1).reshape(-1)
    numel = 1
    for s in shape:
        numel *= s
    return (digits[:numel] - 1).to(torch.int8).reshape(shape)


def packed_shape(fmt: str, shape: tuple[int, int]) -> tuple[int, ...]:
    """Shape of the packed tensor for (N, K) codes, without packing anything."""
    n, k = shape
    if fmt == "2bit":
        return (-(-k // 4), n)
    if fmt == "trit5":
        return (-(-(n * k) // 5),)
    raise ValueError(f"unknown packing {fmt!r}; choose one of {FORMATS}")


def pack(codes: torch.Tensor, fmt: str) -> torch.Tensor:
    if fmt == "2bit":
        return pack_2bit(codes)
    if fmt == "trit5":
        return pack_trit5(codes)
    raise ValueError(f"unknown packing {fmt!r}; choose one of {FORMATS}")


def unpack(packed: torch.Tensor, fmt: str, shape: tuple[int, int]) -> torch.Tensor:
    if fmt == "2bit":
        return unpack_2bit(packed, shape[1])
    if fmt == "trit5":
        return unpack_trit5(packed, shape)
    raise ValueError(f"unknown packing {fmt!r}; choose one of {FORMATS}")
