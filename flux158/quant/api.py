"""`quantize_`: replace the `nn.Linear`s inside FLUX's transformer blocks with `TernaryLinear`, in place."""

from __future__ import annotations

from dataclasses import dataclass, field

from diffusers.models.transformers.transformer_flux import FluxSingleTransformerBlock, FluxTransformerBlock
from torch import nn

from flux158.quant.config import TernaryConfig
from flux158.quant.linear import TernaryLinear

BLOCK_TYPES = (FluxTransformerBlock, FluxSingleTransformerBlock)


@dataclass
class QuantizationReport:
    """What `quantize_` changed: the replaced layers and the parameter counts."""

    quantized: list[str] = field(default_factory=list)
    quantized_params: int = 0
    total_params: int = 0

    @property
    def share(self) -> float:
        return self.quantized_params / self.total_params if self.total_params else 0.0


def block_linear_names(transformer: nn.Module) -> list[str]:
    """Fully qualified names of the `nn.Linear`s inside FluxTransformerBlock / FluxSingleTransformerBlock."""
    names = []
    for block_name, block in transformer.named_modules():
        if isinstance(block, BLOCK_TYPES):
            names += [f"{block_name}.{n}" for n, m in block.named_modules() if isinstance(m, nn.Linear)]
    return names


def quantize_(transformer: nn.Module, config: TernaryConfig) -> QuantizationReport:
    """Ternarize every block linear of a `FluxTransformer2DModel` in place; everything else is untouched.

    On FLUX.1-dev this replaces 494 layers (19 double blocks x 14 + 38 single blocks x 6 linears).
    """
    report = QuantizationReport(total_params=sum(p.numel() for p in transformer.parameters()))
    for name in block_linear_names(transformer):
        parent_name, _, child = name.rpartition(".")
        parent = transformer.get_submodule(parent_name)
        linear = getattr(parent, child)
        report.quantized_params += linear.weight.numel()
        setattr(parent, child, TernaryLinear.from_linear(linear, config))
        report.quantized.append(name)
    return report
