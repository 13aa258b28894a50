"""A `flux158.kernels.backend_table.BackendTable` from `flux158.kernels.bench` timings.

    python -m flux158.kernels.bench.table RUN.csv [RUN2.csv ...] --capability 9.0 \
        --out flux158/kernels/tables/nvidia_h200.json

(`python -m flux158.kernels.bench --table PATH` writes one straight after a run.) Per activation format, shape and M the
faster of the fused kernel and the unpack baseline wins; with several runs each cell keeps its fastest time.
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path

from flux158.kernels.backend_table import EVENT_TIMING, BackendTable, ShapeChoice

# activation operand -> (fused kernel method, unpack baseline method) in `flux158.kernels.bench.methods.METHODS`
PAIRS = {"bf16": ("w2a16", "unpack_bf16"), "int8": ("w158a8_int8", "unpack_int8"),
         "fp8": ("w158a8_fp8", "unpack_fp8")}


def read_runs(paths: Iterable[Path]) -> list[dict]:
    """The rows of `flux158.kernels.bench` CSV files, concatenated."""
    rows = []
    for path in paths:
        with open(path, newline="") as f:
            rows += list(csv.DictReader(f))
    return rows


def fastest_cells(rows: Iterable[Mapping]) -> dict[tuple[str, int, int, int], float]:
    """(method, K, N, M) -> the fastest median µs over the runs; untimed cells (refused shapes) are left out."""
    best: dict[tuple[str, int, int, int], float] = {}
    for row in rows:
        if row.get("us_median"):
            key = (row["method"], int(row["k"]), int(row["n"]), int(row["m"]))
            best[key] = min(best.get(key, float("inf")), float(row["us_median"]))
    return best


def table_from_timings(rows: Iterable[Mapping], capability: tuple[int, int], source: str) -> BackendTable:
    """Rows with gpu, m, k, n, method and us_median (as `kernels.bench` writes them; untimed cells are skipped)."""
    rows = [row for row in rows if row.get("us_median")]
    best = fastest_cells(rows)
    gpus = {row["gpu"] for row in rows}
    timings = {row.get("timing") or EVENT_TIMING for row in rows}  # runs from before the column existed used events
    if len(gpus) != 1:
        raise ValueError(f"timings must come from one GPU, got {sorted(gpus) or 'none'}")
    if len(timings) != 1:  # eager launches and graph replays rank the backends differently at small M
        raise ValueError(f"timings must use one method, got {sorted(timings)}")
    choices = {}
    for act, (fused, unpack) in PAIRS.items():
        for k, n in sorted({(k, n) for (method, k, n, _) in best if method in (fused, unpack)}):
            ms = sorted({m for (method, kk, nn, m) in best if method in (fused, unpack) and (kk, nn) == (k, n)})
            fused_us = tuple(best.get((fused, k, n, m)) for m in ms)
            unpack_us = tuple(best.get((unpack, k, n, m)) for m in ms)
            backends = tuple("unpack" if u is not None and (f is None or u < f) else "triton"
                             for f, u in zip(fused_us, unpack_us, strict=True))
            choices[(act, k, n)] = ShapeChoice(tuple(ms), backends, {"triton": fused_us, "unpack": unpack_us})
    return BackendTable(gpus.pop(), tuple(capability), source, choices, timings.pop())


def _capability(text: str) -> tuple[int, int]:
    major, _, minor = text.partition(".")
    return int(major), int(minor or 0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m flux158.kernels.bench.table", description=__doc__.splitlines()[0])
    ap.add_argument("csv", type=Path, nargs="+", help="flux158.kernels.bench output files from one GPU")
    ap.add_argument("--capability", type=_capability, required=True, help="the GPU's compute capability, e.g. 9.0")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    source = "flux158.kernels.bench: " + ", ".join(p.name for p in args.csv)
    table = table_from_timings(read_runs(args.csv), args.capability, source)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(table.to_json())
    switched = sum(b == "unpack" for c in table.choices.values() for b in c.backends)
    print(f"wrote {args.out}: {len(table.choices)} shapes on {table.gpu}, unpack faster in {switched} cells")
    return 0


if __name__ == "__main__":
    sys.exit(main())
