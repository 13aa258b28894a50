"""Dense peak rates of the GPUs the project targets (kernels.md section 2.1), and a roofline time per GEMM."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class GpuPeaks:
    bf16_tflops: float
    int8_tops: float
    fp8_tflops: float | None
    bandwidth_gbs: float


# Datasheet dense figures (no sparsity), matched by substring of torch.cuda.get_device_name(); first match wins.
PEAKS = {
    "H200": GpuPeaks(989.4, 1978.9, 1978.9, 4800),
    "H100 PCIe": GpuPeaks(756.0, 1513.0, 1513.0, 2000),
    "H100": GpuPeaks(989.4, 1978.9, 1978.9, 3350),
    "A100": GpuPeaks(312.0, 624.0, None, 2039),
    "L20": GpuPeaks(119.5, 239.0, 239.0, 864),
    "A10": GpuPeaks(125.0, 250.0, None, 600),
    "4090": GpuPeaks(165.2, 660.6, 330.3, 1008),
}


def peaks_for(gpu_name: str) -> GpuPeaks | None:
    return next((p for key, p in PEAKS.items() if key in gpu_name), None)


def gemm_bytes(m: int, k: int, n: int, weight_bytes: float, act_bytes: float) -> float:
    """The fewest bytes a GEMM must move: activations and weights read once, a 16-bit output written once."""
    return act_bytes * m * k + weight_bytes * k * n + 2 * m * n


def roofline_seconds(m: int, k: int, n: int, peak_tflops: float, bandwidth_gbs: float, weight_bytes: float,
                     act_bytes: float) -> float:
    return max(2 * m * k * n / (peak_tflops * 1e12),
               gemm_bytes(m, k, n, weight_bytes, act_bytes) / (bandwidth_gbs * 1e9))
