"""Honest storage accounting of a ternary FLUX transformer: every byte counted, scales and BF16 parts included.

Works on a meta-device model, so FLUX.1-dev's figures need no weights.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from flux158.quant.api import block_linear_names

BF16_BYTES = 2


@dataclass(frozen=True)
class StorageReport:
    total_params: int
    quantized_params: int
    bf16_bytes: int
    packed_bytes: dict[str, int]  # format -> bytes of the whole ternary transformer in that format

    @property
    def quantized_share(self) -> float:
        return self.quantized_params / self.total_params

    def ratio(self, fmt: str) -> float:
        return self.bf16_bytes / self.packed_bytes[fmt]

    def summary_line(self) -> str:
        gb = 1e9
        return (f"storage: bf16={self.bf16_bytes / gb:.2f}GB 2bit={self.packed_bytes['2bit'] / gb:.2f}GB "
                f"ratio={self.ratio('2bit'):.2f}x trit5={self.packed_bytes['trit5'] / gb:.2f}GB "
                f"ratio={self.ratio('trit5'):.2f}x")


def storage_report(transformer: nn.Module, per_channel_scales: bool = True, lowrank_rank: int = 0,
                   input_scales: bool = False) -> StorageReport:
    """Bytes of the transformer in BF16 and with its block linears' weights ternary-packed.

    Everything that is not a block-linear weight (biases, norms, embedders, output layers) stays BF16, and each
    quantized layer adds its BF16 scales (one per output channel, or one per tensor; with `input_scales`, one more
    per input channel) and, with `lowrank_rank` r > 0, its BF16 correction factors (r x (in + out) values).
    """
    names = block_linear_names(transformer)
    total = sum(p.numel() for p in transformer.parameters())
    quantized, packed = 0, {"2bit": 0, "trit5": 0}
    for name in names:
        out_features, in_features = transformer.get_submodule(name).weight.shape
        quantized += out_features * in_features
        scales = ((out_features if per_channel_scales else 1) + (in_features if input_scales else 0)) * BF16_BYTES
        scales += lowrank_rank * (in_features + out_features) * BF16_BYTES
        packed["2bit"] += -(-in_features // 4) * out_features + scales
        packed["trit5"] += -(-(out_features * in_features) // 5) + scales
    rest = (total - quantized) * BF16_BYTES
    return StorageReport(total, quantized, total * BF16_BYTES, {k: v + rest for k, v in packed.items()})
