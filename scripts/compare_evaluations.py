"""Paired differences between evaluations of the same prompts and seeds (e.g. two `distill` variants on the toy
world): each folder's score minus the reference's, per tag and overall, with 95 % bootstrap intervals.

    python scripts/compare_evaluations.py outputs/evaluate/toyworld/toyworld-distill-<a> \\
        outputs/evaluate/toyworld/toyworld-distill-<b> [...]

The first folder is the reference. Pairing removes the prompts' shared difficulty, so these intervals are much
narrower than the difference of two unpaired intervals.

A method run several times (quantizer seeds, or machines whose float rounding differs) is given as one argument,
its folders joined by commas; its score is then the mean over its runs, and the interval also resamples the runs,
so it counts their spread (`flux158.eval.intervals.pooled_comparison`):

    python scripts/compare_evaluations.py <distill seed 0>,<seed 1>,<seed 2> <variant seed 0>,<seed 1>,<seed 2>
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from flux158.eval.intervals import pooled_comparison


def _runs(group: str) -> list[Path]:
    return [Path(folder) for folder in group.split(",") if folder]


def _rows(folder: Path) -> list[dict]:
    path = folder / "results.jsonl"
    if not path.is_file():
        raise SystemExit(f"{folder}: no results.jsonl (not an evaluate folder, or not finished)")
    return pd.read_json(path, lines=True).to_dict("records")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("reference", type=_runs, help="an evaluate folder, or several runs joined by commas")
    parser.add_argument("others", type=_runs, nargs="+")
    parser.add_argument("--resamples", type=int, default=10_000)
    args = parser.parse_args()
    reference = [_rows(folder) for folder in args.reference]
    name = ",".join(folder.name for folder in args.reference)
    for group in args.others:
        try:
            comparison = pooled_comparison([_rows(folder) for folder in group], reference, args.resamples)
        except ValueError as e:
            raise SystemExit(f"{group} vs {args.reference}: {e}") from None
        print(f"{','.join(folder.name for folder in group)} - {name}")
        for tag, parts in comparison.items():
            d = parts["difference"]
            print(f"  {tag:<14} {d.estimate:+.3f} [{d.low:+.3f}, {d.high:+.3f}]")


if __name__ == "__main__":
    main()
