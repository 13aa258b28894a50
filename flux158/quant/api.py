"""`quantize_`: replace the `nn.Linear`s inside FLUX's transformer blocks with `TernaryLinear`, in place."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from diffusers.models.transformers.transformer_flux import FluxSingleTransformerBlock, FluxTransformerBlock
from torch import nn

from flux158.quant.blocks import flux_blocks
from flux158.quant.blockwise import quantize_blockwise
from flux158.quant.config import TernaryConfig
from flux158.quant.distill import distill_block, tune_end_to_end
from flux158.quant.gptq import gptq_block
from flux158.quant.linear import TernaryLinear
from flux158.quant.metrics import LayerStats, layer_stats

BLOCK_TYPES = (FluxTransformerBlock, FluxSingleTransformerBlock)


@dataclass
class QuantizationReport:
    """What `quantize_` changed: the replaced layers, the parameter counts and per-layer weight statistics.

    `blocks` holds a record per block of the block-wise methods: for `distill` the block-output error at the
    stage-0 init and after stage 1 and the seconds of its training steps, for `gptq` the seconds of its solves;
    `e2e_losses` the stage-2 training losses; `timings` the seconds of the block-wise pass and of stage 2, with the
    row and step counts they cover (what a cost extrapolation needs).
    """

    quantized: list[str] = field(default_factory=list)
    quantized_params: int = 0
    total_params: int = 0
    layers: dict[str, LayerStats] = field(default_factory=dict)
    blocks: list[dict] = field(default_factory=list)
    e2e_losses: list[float] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def share(self) -> float:
        return self.quantized_params / self.total_params if self.total_params else 0.0

    def mean_sqnr_db(self) -> float:
        """Parameter-weighted mean weight SQNR over the quantized layers."""
        total = sum(s.params for s in self.layers.values())
        return sum(s.sqnr_db * s.params for s in self.layers.values()) / total if total else float("nan")

    def zero_fraction(self) -> float:
        total = sum(s.params for s in self.layers.values())
        return sum(s.zero_fraction * s.params for s in self.layers.values()) / total if total else float("nan")

    def as_dict(self) -> dict:
        """Plain JSON-able values (`from_dict` reads them back), so a saved checkpoint keeps its report."""
        return {**asdict(self), "layers": {n: s.as_dict() for n, s in self.layers.items()}}

    @classmethod
    def from_dict(cls, values: dict) -> QuantizationReport:
        return cls(**{**values, "layers": {n: LayerStats(**s) for n, s in values["layers"].items()}})


def block_linear_names(transformer: nn.Module) -> list[str]:
    """Fully qualified names of the `nn.Linear`s inside FluxTransformerBlock / FluxSingleTransformerBlock."""
    names = []
    for block_name, block in transformer.named_modules():
        if isinstance(block, BLOCK_TYPES):
            names += [f"{block_name}.{n}" for n, m in block.named_modules() if isinstance(m, nn.Linear)]
    return names


def _quantize_data_free(transformer: nn.Module, config: TernaryConfig, report: QuantizationReport) -> None:
    for name in block_linear_names(transformer):
        parent_name, _, child = name.rpartition(".")
        parent = transformer.get_submodule(parent_name)
        linear = getattr(parent, child)
        module = TernaryLinear.from_linear(linear, config)
        report.layers[name] = layer_stats(linear.weight, module.dequantize(), module.codes())
        setattr(parent, child, module)


def quantize_(transformer: nn.Module, config: TernaryConfig, calib=None, *, device: torch.device | str | None = None,
              batch_size: int = 8, checkpoint_dir: Path | None = None, progress: bool = False) -> QuantizationReport:
    """Ternarize every block linear of a `FluxTransformer2DModel` in place; everything else is untouched.

    On FLUX.1-dev this replaces 494 layers (19 double blocks x 14 + 38 single blocks x 6 linears).

    Args:
        calib: a `CalibrationSet` of teacher states; required by `gptq` and `distill`, ignored otherwise.
        device: where block-wise methods compute (default: the transformer's device).
        batch_size: calibration rows per forward pass of the block-wise methods.
        checkpoint_dir: block-wise methods save each finished block here and resume from it.
        progress: show progress bars.
    """
    names = block_linear_names(transformer)
    weights = {n: transformer.get_submodule(n).weight for n in names}
    report = QuantizationReport(total_params=sum(p.numel() for p in transformer.parameters()),
                                quantized=names, quantized_params=sum(w.numel() for w in weights.values()))
    if not config.needs_calibration:
        _quantize_data_free(transformer, config, report)
        return report
    if calib is None:
        raise ValueError(f"method {config.method!r} needs calibration data (calib=CalibrationSet)")

    device = torch.device(device) if device is not None else next(transformer.parameters()).device
    start = time.perf_counter()
    limit = config.gptq.max_rows if config.method == "gptq" else config.distill.block_rows
    calib_rows = calib if limit is None else type(calib)(calib.records[:limit])
    if config.method == "gptq":
        block_fn = gptq_block(config, device)
    else:
        block_fn = distill_block(config, device, len(flux_blocks(transformer)))
    report.layers = quantize_blockwise(transformer, calib_rows, config, block_fn, batch_size=batch_size,
                                       device=device, checkpoint_dir=checkpoint_dir, progress=progress,
                                       records=report.blocks)
    # the work of every run that built the result: each block's record keeps its own seconds across resumes
    n_blocks = len(flux_blocks(transformer))
    blockwise = (sum(r.get("seconds", 0.0) for r in report.blocks) if len(report.blocks) == n_blocks
                 else time.perf_counter() - start)
    report.timings = {"blockwise_seconds": blockwise, "blockwise_rows": len(calib_rows), "blocks": n_blocks}
    if config.method == "distill" and config.distill.e2e_steps:
        e2e_timing: dict[str, float] = {}
        report.e2e_losses = tune_end_to_end(transformer, calib, config, device, progress, checkpoint_dir,
                                            timing=e2e_timing)
        report.timings |= {"e2e_seconds": e2e_timing["seconds"], "e2e_steps": config.distill.e2e_steps}
    return report


def set_activations(transformer: nn.Module, act_bits: int, act_format: str = "int8") -> int:
    """Switch every `TernaryLinear` to 16-bit (W2A16) or per-token 8-bit (W1.58A8) activations; the weights are
    untouched, so one checkpoint serves both. Returns the number of layers switched."""
    layers = [m for m in transformer.modules() if isinstance(m, TernaryLinear)]
    for m in layers:
        m.config = replace(m.config, act_bits=act_bits, act_format=act_format)
    return len(layers)
