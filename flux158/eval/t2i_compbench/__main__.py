"""`python -m flux158.eval.t2i_compbench <run folder> [--categories color numeracy]`: score a generate run's category
folders (`<folder>/<category>/samples/<prompt>_<NNNNNN>.png`) with the same evaluator object as the evaluate stage
(`flux158.eval.t2i_compbench.evaluator`), writing `results.jsonl` and `metrics.json` into `--out`.
`... <category folder> --category color [--prompts val.txt]` scores one category folder and also writes upstream's
`vqa_result.json` ({question_id, answer})."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from flux158.eval.errors import IncompleteFolderError, WeightsUnavailableError
from flux158.eval.evaluator import metrics_record
from flux158.eval.t2i_compbench.evaluator import TextData, build_evaluator, protocol_for
from flux158.eval.t2i_compbench.folder import check_complete
from flux158.eval.t2i_compbench.official import OfficialRunnerError
from flux158.eval.t2i_compbench.rules import NUMERACY_PARSERS
from flux158.eval.t2i_compbench.scoring import (
    BACKENDS,
    CATEGORIES,
    METRIC_CHOICES,
    ModelSettings,
    Protocol,
    load_models,
    prompts_in_folder,
    score_category,
)
from flux158.eval.t2i_compbench.tiny import tiny_models
from flux158.eval.t2i_compbench.vocabulary import read_numeracy_objects, read_unidet_labels


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m flux158.eval.t2i_compbench", description=__doc__.splitlines()[0])
    ap.add_argument("folder", type=Path, help="a run folder (holding <category>/samples/), or with --category one "
                                              "category folder (holding samples/)")
    ap.add_argument("--category", choices=CATEGORIES, help="score the folder as this one category")
    ap.add_argument("--categories", nargs="+", choices=CATEGORIES,
                    help="run folder: the categories to score (default: those with a folder)")
    ap.add_argument("--seed", type=int, default=0, help="--random-weights: the random models' seed")
    ap.add_argument("--metric", choices=sorted({m for ms in METRIC_CHOICES.values() for m in ms}),
                    help="default: the paper's (S-CoT for non_spatial and complex)")
    ap.add_argument("--prompts", type=Path, help="the category's prompt file (default: prompts read from file names)")
    ap.add_argument("--samples", type=int, default=10, help="images per prompt")
    ap.add_argument("--out", type=Path, help="output directory (default <folder>/t2i_compbench)")
    ap.add_argument("--device", default=None)
    ap.add_argument("--detector", choices=BACKENDS, default="official",
                    help="UniDet categories: upstream's scripts (needs --official-checkout) or native (OWLv2 over "
                         "UniDet's 722 names; an approximation)")
    ap.add_argument("--judge", choices=BACKENDS, default="official",
                    help="S-CoT: upstream's ShareGPT4V-CoT script or native (a LLaVA-format --judge-model)")
    ap.add_argument("--official-checkout", "--unidet-checkout", type=Path, dest="checkout",
                    help="a T2I-CompBench checkout with UniDet (and for S-CoT, ShareGPT4V-CoT) set up")
    ap.add_argument("--unidet-python", default="python", help="the python of the checkout's UniDet environment")
    ap.add_argument("--judge-python", default="python", help="the python of the checkout's ShareGPT4V environment")
    ap.add_argument("--judge-model", help="native S-CoT: a LLaVA-format (HF) conversion of Lin-Chen/ShareGPT4V-7B")
    ap.add_argument("--detector-model", help="native detector: an OWLv2 checkpoint (default the base ensemble)")
    ap.add_argument("--random-weights", action="store_true",
                    help="shrunk random-weight models with the native detector and judge: plumbing checks only")
    ap.add_argument("--complex-spatial", type=Path, help="complex: complex_val_spatial.txt (3-in-1 sub-types)")
    ap.add_argument("--complex-action", type=Path, help="complex: complex_val_action.txt")
    ap.add_argument("--numeracy-objects", type=Path, help="native numeracy: T2I-CompBench's new_objects.txt")
    ap.add_argument("--numeracy-parser", choices=NUMERACY_PARSERS, default="2024-11",
                    help="native numeracy: how counts are read from the prompt, as upstream's numeracy_eval.py at "
                         "33d6305 (2024-11, the paper's era) or 01835fe (2025-01, number words before same-form "
                         "nouns count)")
    ap.add_argument("--unidet-labels", type=Path,
                    help="native detector: UniDet's 722 class names, one per line (see shared SOURCES)")
    ap.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    return ap


def _text_data(args: argparse.Namespace, needed: set[str], protocol: Protocol) -> TextData:
    if "complex_subtypes" in needed and not (args.complex_spatial and args.complex_action):
        raise ValueError("3-in-1 needs --complex-spatial and --complex-action (the sub-type files)")
    if "numeracy_objects" in needed and not args.numeracy_objects:
        raise ValueError("native numeracy needs --numeracy-objects (new_objects.txt)")
    native_detector = "detector" in needed and protocol.detector == "native"
    if native_detector and not args.unidet_labels:
        raise ValueError("the native detector needs --unidet-labels (UniDet's 722 class names)")
    return TextData(
        complex_subtypes=tuple([line for line in f.read_text().splitlines() if line.strip()]
                               for f in (args.complex_spatial, args.complex_action))
        if "complex_subtypes" in needed else None,
        numeracy_objects=read_numeracy_objects(args.numeracy_objects) if "numeracy_objects" in needed else None,
        unidet_labels=read_unidet_labels(args.unidet_labels) if native_detector else ())


def _run_folder(args: argparse.Namespace) -> int:
    """The whole run folder through the stage's evaluator object."""
    categories = args.categories or [c for c in CATEGORIES if (args.folder / c / "samples").is_dir()]
    if not categories:
        raise ValueError(f"{args.folder} holds no <category>/samples folder; pass --category for a category folder")
    weights = "random" if args.random_weights else "pretrained"
    protocol = protocol_for(Protocol({}, args.detector, args.judge, args.numeracy_parser), weights)
    for category in categories:
        check_complete(args.folder / category, prompts_in_folder(args.folder / category, args.samples), args.samples)
    settings = ModelSettings(device=args.device, official_checkout=args.checkout, unidet_python=args.unidet_python,
                             judge_python=args.judge_python, judge_model=args.judge_model,
                             detector_model=args.detector_model)
    evaluator = build_evaluator(categories, protocol, weights=weights, settings=settings,
                                data=_text_data(args, protocol.needs(categories), protocol),
                                samples_per_prompt=args.samples, seed=args.seed)
    rows = evaluator.score(args.folder)
    out = args.out or args.folder / "t2i_compbench"
    out.mkdir(parents=True, exist_ok=True)
    record = metrics_record(evaluator, rows)
    (out / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (out / "metrics.json").write_text(json.dumps(record, indent=2))
    print(", ".join(f"{k} {v:.4f}" for k, v in record["metrics"].items()) + f" over {len(rows)} images -> {out}")
    return 0


def _fail(error: Exception, debug: bool) -> int:
    """One line on stderr and exit code 2 (the traceback with --debug)."""
    if debug:
        raise error
    print(f"error: {error}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.category is None:
        try:
            return _run_folder(args)
        except (IncompleteFolderError, FileNotFoundError, WeightsUnavailableError, OfficialRunnerError,
                ValueError) as e:
            return _fail(e, args.debug)
    prompts = None
    if args.prompts:
        prompts = [line.strip() for line in args.prompts.read_text().splitlines() if line.strip()]
    try:
        if args.random_weights:
            args.detector = args.judge = "native"
        protocol = Protocol({args.category: args.metric} if args.metric else {}, args.detector, args.judge,
                            args.numeracy_parser)
        needed = protocol.needs([args.category])
        data = _text_data(args, needed, protocol)
        official = {"detector": args.detector, "judge": args.judge}
        for name in ("detector", "judge"):
            if name in needed and official[name] == "official" and args.checkout is None:
                raise ValueError(f"{args.category} ({protocol.label(args.category)}) needs --official-checkout "
                                 f"or --{name} native")
        prompts = prompts if prompts is not None else prompts_in_folder(args.folder, args.samples)
        check_complete(args.folder, prompts, args.samples)  # before any model download
        extra = {k: v for k, v in (("complex_subtypes", data.complex_subtypes),
                                   ("numeracy_objects", data.numeracy_objects)) if k in needed}
        labels = data.unidet_labels
        settings = ModelSettings(device=args.device, official_checkout=args.checkout, unidet_python=args.unidet_python,
                                 judge_python=args.judge_python, judge_model=args.judge_model,
                                 detector_model=args.detector_model, labels=labels)
        models = (tiny_models(needed, labels, args.device or "cpu") if args.random_weights
                  else load_models(needed, protocol, settings))
        result = score_category(args.folder, args.category, prompts, args.samples, protocol=protocol,
                                **models, **extra)
    except (IncompleteFolderError, FileNotFoundError, WeightsUnavailableError, OfficialRunnerError, ValueError) as e:
        return _fail(e, args.debug)
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
