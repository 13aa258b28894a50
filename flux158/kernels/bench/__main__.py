"""CLI: `python -m flux158.kernels.bench [--m 1 16 ...] [--shapes qkvo ...] [--out f.csv] [--table t.json]`.

Each cell is timed with `triton.testing.do_bench` (median and p10/p90 of CUDA-event timings, L2 flushed before every
call) while cycling through `--rotate` distinct weight sets; its output is checked against the pure-torch reference
(relative Frobenius error). BF16 is re-run in the same process, so speedups compare like with like.

`--cuda-graph` times the calls replayed from a captured CUDA graph instead (`do_bench_cudagraph`): the GPU time
without host launch overhead, which is what a CUDA-graphed or compiled step pays at small M. It cannot flush L2
between calls, so raise `--rotate` until the rotated weights exceed L2 (the `timing` column says which was used).
"""

from __future__ import annotations

import argparse
import csv
import inspect
import sys
from pathlib import Path

import torch

from flux158.kernels.backend_table import EVENT_TIMING, GRAPH_TIMING, table_slug
from flux158.kernels.bench.methods import METHODS, Problem, build
from flux158.kernels.bench.overhead import device_us, host_us
from flux158.kernels.bench.roofline import gemm_bytes, peaks_for, roofline_seconds
from flux158.kernels.bench.shapes import FLUX_SHAPES, M_VALUES
from flux158.kernels.bench.table import table_from_timings

COLUMNS = ["gpu", "timing", "shape", "m", "k", "n", "method", "us_median", "us_p10", "us_p90", "tflops", "gbs",
           "roofline_pct", "speedup_vs_bf16", "rel_err", "host_us", "device_us", "note"]


def _args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m flux158.kernels.bench", description=__doc__.splitlines()[0])
    ap.add_argument("--m", type=int, nargs="+", default=list(M_VALUES))
    ap.add_argument("--shapes", nargs="+", default=[s.name for s in FLUX_SHAPES],
                    choices=[s.name for s in FLUX_SHAPES])
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    ap.add_argument("--rotate", type=int, default=8, help="distinct weight sets cycled through (defeats L2)")
    ap.add_argument("--rep-ms", type=int, default=100, help="do_bench repetition time per cell")
    ap.add_argument("--cuda-graph", action="store_true", help="time replays of a captured CUDA graph (no host cost)")
    ap.add_argument("--overhead", action="store_true",
                    help="also record host_us (issuing one call) and device_us (its kernels, from the profiler)")
    ap.add_argument("--out", type=Path, default=Path("kernels_bench.csv"))
    ap.add_argument("--table", type=Path, help="also write the backend table `auto` reads (kernels.backend_table)")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _args(argv)
    if not torch.cuda.is_available():
        print("kernels.bench times CUDA kernels; no GPU is visible (on CPU, run the tests under TRITON_INTERPRET=1)",
              file=sys.stderr)
        return 2
    from triton.testing import do_bench, do_bench_cudagraph

    def timed(fn):
        if not args.cuda_graph:
            return do_bench(fn, warmup=25, rep=args.rep_ms, quantiles=[0.5, 0.1, 0.9])
        if "quantiles" in inspect.signature(do_bench_cudagraph).parameters:
            return do_bench_cudagraph(fn, rep=args.rep_ms, quantiles=[0.5, 0.1, 0.9])
        return [do_bench_cudagraph(fn, rep=args.rep_ms)] * 3  # older Triton: the mean only, in all three columns

    gpu = torch.cuda.get_device_name()
    peaks = peaks_for(gpu)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    with open(args.out, "w", newline="") as f:
        writer = csv.DictWriter(f, COLUMNS)
        writer.writeheader()
        for shape in [s for s in FLUX_SHAPES if s.name in args.shapes]:
            for m in args.m:
                problem = Problem.random(m, shape.k, shape.n, args.rotate)
                bf16_us = None
                for name in args.methods:
                    method = METHODS[name]
                    row = {"gpu": gpu, "timing": GRAPH_TIMING if args.cuda_graph else EVENT_TIMING,
                           "shape": shape.name, "m": m, "k": shape.k, "n": shape.n, "method": name}
                    try:
                        fn = build(name, problem)
                        out = fn()
                        if method.backend != "cublas":  # random BF16 weights are not the ternary ones
                            ref = problem.reference(method.act)
                            row["rel_err"] = f"{((out.float() - ref).norm() / ref.norm()).item():.2e}"
                        ms = timed(fn)
                        if args.overhead:
                            row.update(host_us=f"{host_us(fn):.1f}", device_us=f"{device_us(fn):.1f}")
                    except Exception as e:  # a library GEMM that refuses this shape, a kernel that fails to compile
                        row["note"] = str(e).splitlines()[0][:120]
                        writer.writerow(row)
                        continue
                    us = [1e3 * t for t in ms]
                    seconds = us[0] * 1e-6
                    moved = gemm_bytes(m, shape.k, shape.n, method.weight_bytes, method.act_bytes)
                    row.update(us_median=f"{us[0]:.2f}", us_p10=f"{us[1]:.2f}", us_p90=f"{us[2]:.2f}",
                               tflops=f"{2 * m * shape.k * shape.n / seconds / 1e12:.1f}",
                               gbs=f"{moved / seconds / 1e9:.0f}")
                    if name == "bf16":
                        bf16_us = us[0]
                    if bf16_us:
                        row["speedup_vs_bf16"] = f"{bf16_us / us[0]:.2f}"
                    peak = peaks and {"bf16": peaks.bf16_tflops, "int8": peaks.int8_tops,
                                      "fp8": peaks.fp8_tflops}[method.peak]
                    if peak:
                        best = roofline_seconds(m, shape.k, shape.n, peak, peaks.bandwidth_gbs, method.weight_bytes,
                                                method.act_bytes)
                        row["roofline_pct"] = f"{100 * best / seconds:.0f}"
                    writer.writerow(row)
                    f.flush()
                    rows.append(row)
                    print(f"{shape.name:>14} M={m:<5} {name:>12} {row['us_median']:>9} us  "
                          f"x{row.get('speedup_vs_bf16', '-'):>5} vs bf16  {row.get('roofline_pct', '-'):>3}% roof  "
                          f"err {row.get('rel_err', '-')}"
                          + (f"  host {row['host_us']} us, device {row['device_us']} us" if args.overhead else ""),
                          flush=True)
                del problem
                torch.cuda.empty_cache()
            if args.table and rows:  # after every shape, so a run cut off by a timeout still leaves a table
                _write_table(args.table, rows, f"flux158.kernels.bench: {args.out.name}")
    print(f"wrote {args.out} ({len(rows)} timings on {gpu})")
    if args.table and rows:
        print(f"wrote {args.table}: set FLUX158_KERNEL_TABLE={args.table} (or ship it in flux158/kernels/tables/ as "
              f"{table_slug(gpu)}{'.graph' if args.cuda_graph else ''}.json)")
    return 0


def _write_table(path: Path, rows: list[dict], source: str) -> None:
    """The backend table of the cells timed so far, replacing `path` in one step (never half written)."""
    table = table_from_timings(rows, torch.cuda.get_device_capability(), source)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(table.to_json())
    partial.replace(path)


if __name__ == "__main__":
    sys.exit(main())
