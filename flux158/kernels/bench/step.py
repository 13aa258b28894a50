"""The linear layers' share of one FLUX.1-dev transformer step, predicted from `flux158.kernels.bench` timings.

    python -m flux158.kernels.bench.step RUN.csv [RUN2.csv ...] [--resolution 1024] [--text-tokens 512]

Sums, over the 494 block linears of one step (one image), the bench's isolated-kernel time of each layer's shape at
its M (linearly interpolated between the measured M, clamped to their range), per method, and for each activation
format the per-cell best of the fused kernel and the unpack baseline (what `auto` picks from a table of this run).
The rest of the step (attention, norms, the unquantized embedders) is the same for every method and not included.
A prediction for choosing what to measure, not a measurement: isolated kernels with L2 flushed ignore overlap.

For a GPU in `bench.roofline`, it also prints the roofline floor of those linears per format: what no kernel
can beat, and so (with the measured step) how far a faster linear can speed up the step at all.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np

from flux158.kernels.bench.roofline import GpuPeaks, peaks_for, roofline_seconds
from flux158.kernels.bench.shapes import FLUX_SHAPES
from flux158.kernels.bench.table import PAIRS, fastest_cells, read_runs

DOUBLE_BLOCKS, SINGLE_BLOCKS = 19, 38


def step_linears(resolution: int, text_tokens: int = 512) -> list[tuple[str, int, int]]:
    """(bench shape name, M, layers) for the block linears of one FLUX.1-dev step on one image."""
    image = (resolution // 16) ** 2  # 8x VAE, 2x2 packing
    both = image + text_tokens
    return [
        ("qkvo", image, 4 * DOUBLE_BLOCKS), ("mlp_up", image, DOUBLE_BLOCKS), ("mlp_down", image, DOUBLE_BLOCKS),
        ("qkvo", text_tokens, 4 * DOUBLE_BLOCKS), ("mlp_up", text_tokens, DOUBLE_BLOCKS),
        ("mlp_down", text_tokens, DOUBLE_BLOCKS), ("mod_double", 1, 2 * DOUBLE_BLOCKS),
        ("mod_single_qkv", 1, SINGLE_BLOCKS), ("qkvo", both, 3 * SINGLE_BLOCKS), ("mlp_up", both, SINGLE_BLOCKS),
        ("single_out", both, SINGLE_BLOCKS),
    ]


def _timings(rows: Iterable[Mapping]) -> dict[tuple[str, str], dict[int, float]]:
    """(shape name, method) -> {M: fastest µs over the runs}."""
    names = {(shape.k, shape.n): shape.name for shape in FLUX_SHAPES}
    out: dict[tuple[str, str], dict[int, float]] = {}
    for (method, k, n, m), us in fastest_cells(rows).items():
        if (k, n) in names:
            out.setdefault((names[(k, n)], method), {})[m] = us
    return out


def _at(curve: dict[int, float], m: int) -> float:
    ms = sorted(curve)
    return float(np.interp(m, ms, [curve[x] for x in ms]))


def _cell(times: dict, shape: str, method: str, fused: str, m: int) -> float:
    """µs of `method` at (shape, M); where it was not timed down to this M (e.g. `_int_mm` refuses M <= 16), the
    fused kernel's, which is what the unpack backend runs there."""
    curve = times.get((shape, method))
    if curve is None or m < min(curve):
        curve = times[(shape, fused)]
    return _at(curve, m)


def predict(rows: Iterable[Mapping], resolution: int, text_tokens: int = 512) -> dict[str, float]:
    """Milliseconds of block-linear time per step, per method and `best_<format>` (the faster of fused and unpack
    in each cell)."""
    times = _timings(rows)
    layers = step_linears(resolution, text_tokens)
    shapes = {shape for shape, _, _ in layers}
    totals: dict[str, float] = {}
    for method in sorted({method for _, method in times}):
        fused = next((f for f, u in PAIRS.values() if method == u), method)
        if all((shape, fused) in times for shape in shapes):
            totals[method] = sum(count * _cell(times, shape, method, fused, m) for shape, m, count in layers) / 1e3
    for act, (fused, unpack) in PAIRS.items():
        if all((shape, fused) in times for shape in shapes):
            totals[f"best_{act}"] = sum(
                count * min(_cell(times, shape, fused, fused, m), _cell(times, shape, unpack, fused, m))
                for shape, m, count in layers) / 1e3
    return totals


def roofline_ms(peaks: GpuPeaks, resolution: int, text_tokens: int = 512) -> dict[str, float]:
    """Milliseconds per step that the block linears take at the roofline: BF16, 2-bit weights with 16-bit
    activations, and 2-bit weights with 8-bit activations (int8, and fp8 where the GPU has it)."""
    formats = {"bf16": (peaks.bf16_tflops, 2, 2), "w2a16": (peaks.bf16_tflops, 0.25, 2),
               "w158a8_int8": (peaks.int8_tops, 0.25, 1)}
    if peaks.fp8_tflops:
        formats["w158a8_fp8"] = (peaks.fp8_tflops, 0.25, 1)
    shapes = {shape.name: shape for shape in FLUX_SHAPES}
    return {name: 1e3 * sum(count * roofline_seconds(m, shapes[shape].k, shapes[shape].n, peak, peaks.bandwidth_gbs,
                                                     weight_bytes, act_bytes)
                            for shape, m, count in step_linears(resolution, text_tokens))
            for name, (peak, weight_bytes, act_bytes) in formats.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m flux158.kernels.bench.step", description=__doc__.splitlines()[0])
    ap.add_argument("csv", type=Path, nargs="+", help="flux158.kernels.bench output files from one GPU")
    ap.add_argument("--resolution", type=int, default=1024)
    ap.add_argument("--text-tokens", type=int, default=512)
    args = ap.parse_args(argv)
    rows = read_runs(args.csv)
    known = {s.name for s in FLUX_SHAPES}
    missing = known - {r["shape"] for r in rows if r.get("us_median")}
    if missing:
        print(f"the runs lack shapes {sorted(missing)}: time every FLUX shape", file=sys.stderr)
        return 2
    totals = predict(rows, args.resolution, args.text_tokens)
    print(f"block linears of one {args.resolution}² step ({args.text_tokens} text tokens), summed kernel times:")
    for name, ms in sorted(totals.items(), key=lambda kv: kv[1]):
        print(f"  {name:>14}  {ms:8.1f} ms")
    gpus = {r["gpu"] for r in rows if r.get("gpu")}
    peaks = peaks_for(gpus.pop()) if len(gpus) == 1 else None
    if peaks:
        print("their roofline floor (no kernel can beat it):")
        for name, ms in roofline_ms(peaks, args.resolution, args.text_tokens).items():
            print(f"  {name:>14}  {ms:8.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
