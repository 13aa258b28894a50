"""`python -m eval.t2i_compbench <folder> --category color [--prompts val.txt]`: score one category folder in the
official layout (`<folder>/samples/<prompt>_<NNNNNN>.png`). Writes `vqa_result.json` (upstream's list of
{question_id, answer}), `results.jsonl` (per image, with prompts) and `metrics.json` into `--out`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from eval.errors import IncompleteFolderError, WeightsUnavailableError
from eval.t2i_compbench.folder import check_complete
from eval.t2i_compbench.official import OfficialRunner, OfficialRunnerError
from eval.t2i_compbench.scoring import (
    CATEGORIES,
    IN_ENVIRONMENT,
    METRICS,
    load_models,
    needs,
    prompts_in_folder,
    score_category,
)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m eval.t2i_compbench", description=__doc__.splitlines()[0])
    ap.add_argument("folder", type=Path, help="the category folder (holding samples/)")
    ap.add_argument("--category", required=True, choices=CATEGORIES)
    ap.add_argument("--prompts", type=Path, help="the category's prompt file (default: prompts read from file names)")
    ap.add_argument("--samples", type=int, default=10, help="images per prompt")
    ap.add_argument("--out", type=Path, help="output directory (default <folder>/t2i_compbench)")
    ap.add_argument("--device", default=None)
    ap.add_argument("--unidet-checkout", type=Path,
                    help="a T2I-CompBench checkout with UniDet set up: scores spatial, 3d_spatial and numeracy")
    ap.add_argument("--unidet-python", default="python", help="the python of that checkout's environment")
    ap.add_argument("--complex-spatial", type=Path, help="complex: complex_val_spatial.txt (3-in-1 sub-types)")
    ap.add_argument("--complex-action", type=Path, help="complex: complex_val_action.txt")
    args = ap.parse_args(argv)
    subtypes = None
    if args.complex_spatial and args.complex_action:
        subtypes = tuple([line for line in f.read_text().splitlines() if line.strip()]
                         for f in (args.complex_spatial, args.complex_action))
    metric = METRICS[args.category]
    prompts = None
    if args.prompts:
        prompts = [line.strip() for line in args.prompts.read_text().splitlines() if line.strip()]
    official = OfficialRunner(args.unidet_checkout, args.unidet_python) if args.unidet_checkout else None
    try:
        if metric not in IN_ENVIRONMENT and official is None:
            raise NotImplementedError(f"{args.category} uses {metric}: pass --unidet-checkout (the native detector "
                                      "backend is not implemented yet)")
        prompts = prompts if prompts is not None else prompts_in_folder(args.folder, args.samples)
        check_complete(args.folder, prompts, args.samples)  # before any model download
        if args.category == "complex" and subtypes is None:
            raise ValueError("complex needs --complex-spatial and --complex-action (the 3-in-1 sub-type files)")
        result = score_category(args.folder, args.category, prompts, args.samples, official=official,
                                complex_subtypes=subtypes, **load_models(needs([args.category]), args.device))
    except (IncompleteFolderError, FileNotFoundError, WeightsUnavailableError, NotImplementedError,
            OfficialRunnerError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = args.out or args.folder / "t2i_compbench"
    out.mkdir(parents=True, exist_ok=True)
    (out / "vqa_result.json").write_text(json.dumps([{"question_id": r["question_id"], "answer": r["score"]}
                                                     for r in result.rows]))
    (out / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in result.rows))
    (out / "metrics.json").write_text(json.dumps({"category": result.category, "metric": result.metric,
                                                  "score": result.score, "num_images": len(result.rows)}, indent=2))
    print(f"{result.category} ({result.metric}): {result.score:.4f} over {len(result.rows)} images")
    return 0


if __name__ == "__main__":
    sys.exit(main())
