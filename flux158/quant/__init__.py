"""Ternary (1.58-bit) quantization of FLUX: configs, rules, packing, `TernaryLinear`, `quantize_`, calibration."""

from flux158.quant.api import QuantizationReport, block_linear_names, quantize_, set_activations
from flux158.quant.calibration import CalibrationSet, CaptureSettings
from flux158.quant.checkpoint import QuantizedCheckpointError, load_quantized, save_quantized
from flux158.quant.config import DistillConfig, GPTQConfig, TernaryConfig
from flux158.quant.linear import TernaryLinear

__all__ = [
    "CalibrationSet", "CaptureSettings", "DistillConfig", "GPTQConfig", "QuantizationReport",
    "QuantizedCheckpointError", "TernaryConfig", "TernaryLinear", "block_linear_names", "load_quantized",
    "quantize_", "save_quantized", "set_activations",
]
