"""The toy benchmark's chance level: how often its evaluator passes images that hold no scene at all.

    python scripts/toyworld_chance.py [--per-tag 100] [--images 4] [--seed 0] [--min-area N]

Every image is scored exactly as `benchmark=toyworld` scores a generated one (the toy detector, GenEval's rules,
the default thresholds), against the balanced held-out prompts. Two kinds of empty image: uniform RGB noise, and
the black background alone. A benchmark that can rank methods needs both near 0 on every tag.
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flux158.eval.toyworld.detector import MIN_AREA, ToyDetector  # noqa: E402
from flux158.eval.toyworld.scoring import score_image  # noqa: E402
from flux158.toyworld.scenes import PALETTE, heldout_prompts  # noqa: E402


def chance(per_tag: int, images: int, seed: int, threshold: float = 0.3, counting_threshold: float = 0.7,
           size: int = 32, min_area: int = MIN_AREA) -> dict[str, dict[str, float]]:
    """{kind: {tag: pass rate, ..., "overall": mean over tags}} for kind in noise, blank."""
    detector, rng = ToyDetector(PALETTE, min_area=min_area), np.random.default_rng(seed)
    makers = {"noise": lambda: rng.integers(0, 256, (size, size, 3), dtype=np.uint8),
              "blank": lambda: np.zeros((size, size, 3), dtype=np.uint8)}
    result = {}
    for kind, make in makers.items():
        passed = defaultdict(list)
        for metadata in heldout_prompts(per_tag, repeat=True):
            for _ in range(images):
                passed[metadata["tag"]].append(score_image(detector, make(), metadata, threshold,
                                                           counting_threshold)[0])
        rates = {tag: float(np.mean(v)) for tag, v in passed.items()}
        result[kind] = rates | {"overall": float(np.mean(list(rates.values())))}
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--per-tag", type=int, default=100)
    ap.add_argument("--images", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--min-area", type=int, default=MIN_AREA, help="the detector's smallest object (pixels)")
    args = ap.parse_args(argv)
    for kind, rates in chance(args.per_tag, args.images, args.seed, min_area=args.min_area).items():
        print(kind + ": " + ", ".join(f"{tag} {rate:.3f}" for tag, rate in rates.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
