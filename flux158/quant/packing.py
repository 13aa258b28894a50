"""Packed storage of ternary codes; every format round-trips exactly for any shape.

`2bit` (compute): code + 1 in two bits, four per byte along the input dimension K, group-interleaved for the
kernels. The layout is owned by `flux158.kernels.layout` (the kernels read it); for a weight (N, K) the packed tensor is
(packed_rows(K), N) uint8, K padded to a multiple of 128.
`trit5` (archival, 1.6 bits): the flattened codes + 1 in base 3, five trits per byte (3^5 = 243 <= 256).
"""

from __future__ import annotations

import torch

from flux158.kernels.layout import pack_ternary as pack_2bit
from flux158.kernels.layout import packed_rows
from flux158.kernels.layout import unpack_ternary as unpack_2bit

FORMATS = ("2bit", "trit5")


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
        return (packed_rows(k), n)
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
