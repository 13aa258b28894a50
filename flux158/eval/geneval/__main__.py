"""`python -m flux158.eval.geneval <image_folder>`: score any folder in GenEval's layout (ours or another tool's).

Writes `results.jsonl` (one row per image, as the official evaluator), `scores.json` (per tag, and `overall`,
the unweighted mean over the six tags) and `metrics.json` (as the evaluate stage writes it, less provenance) into
`--out` (default `<image_folder>/geneval`), and prints the scores.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from flux158.eval.errors import BadInputError, WeightsUnavailableError
from flux158.eval.evaluator import GenEvalEvaluator, metrics_record
from flux158.eval.geneval.build import DETECTORS, build_scorer
from flux158.eval.geneval.detector import DetectorUnavailableError
from flux158.eval.geneval.folder import IncompleteFolderError
from flux158.eval.geneval.scoring import write_results


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m flux158.eval.geneval", description=__doc__.splitlines()[0])
    ap.add_argument("images", type=Path, help="folder with <00000>/metadata.jsonl and samples/<0000>.png")
    ap.add_argument("--out", type=Path,
                    help="where results.jsonl, scores.json and metrics.json go (default <images>/geneval)")
    ap.add_argument("--detector", choices=DETECTORS, default="mmdet",
                    help="mmdet: the official Mask2Former (needs scripts/install_mmcv.sh); hf: approximate")
    ap.add_argument("--checkpoint", type=Path, help="a local mmdet checkpoint instead of the pinned download")
    ap.add_argument("--trust-checkpoint", action="store_true",
                    help="unpickle the detector checkpoint even if its full sha256 matches no pin (a pickle can run "
                         "code: compare the printed sha256 with a copy you trust first)")
    ap.add_argument("--prompts", type=int, default=553, help="prompt folders expected (0 .. N-1)")
    ap.add_argument("--samples", type=int, default=4, help="images expected per prompt")
    ap.add_argument("--device", default=None, help="cuda / cpu (default: cuda when available)")
    ap.add_argument("--random-weights", action="store_true",
                    help="shrunk detector and CLIP with random weights: plumbing checks only, scores are noise")
    ap.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    args = ap.parse_args(argv)
    try:
        scorer = build_scorer(args.detector, "random" if args.random_weights else "pretrained", args.device,
                              args.checkpoint, trust_checkpoint=args.trust_checkpoint)
        evaluator = GenEvalEvaluator(scorer, args.prompts, args.samples)  # what the evaluate stage builds
        rows = evaluator.score(args.images)
    except (IncompleteFolderError, BadInputError, FileNotFoundError, DetectorUnavailableError,
            WeightsUnavailableError) as e:
        if args.debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = args.out or args.images / "geneval"
    scores = write_results(rows, out)
    (out / "metrics.json").write_text(json.dumps(metrics_record(evaluator, rows), indent=2))
    for tag, value in scores.items():
        print(f"{tag:>14}: {value:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
