"""`TernaryConfig`: what to ternarize and how, validated on construction."""

from __future__ import annotations

from dataclasses import dataclass

from flux158.quant.packing import FORMATS
from flux158.quant.ternary import METHODS

GRANULARITIES = ("tensor", "channel")


@dataclass(frozen=True)
class TernaryConfig:
    """Ternary quantization of FLUX's block linears.

    Attributes:
        method: a data-free rule (`absmean`, `twn`, `l2_optimal`).
        granularity: one scale per `tensor` or per output `channel`.
        packing: storage format of the codes, `2bit` (compute) or `trit5` (archival).
    """

    method: str = "absmean"
    granularity: str = "tensor"
    packing: str = "2bit"

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; choose one of {sorted(METHODS)}")
        if self.granularity not in GRANULARITIES:
            raise ValueError(f"unknown granularity {self.granularity!r}; choose one of {GRANULARITIES}")
        if self.packing not in FORMATS:
            raise ValueError(f"unknown packing {self.packing!r}; choose one of {FORMATS}")

    @property
    def per_channel(self) -> bool:
        return self.granularity == "channel"
