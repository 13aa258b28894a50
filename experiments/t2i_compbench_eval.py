"""The evaluate stage's T2I-CompBench part: score each category folder of the generate stage with
`eval.t2i_compbench` (models loaded once, only those the configured categories need) and summarise."""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig

from eval.t2i_compbench.official import OfficialRunner
from eval.t2i_compbench.scoring import CATEGORIES, METRICS, load_models, needs, score_category
from experiments import resolve
from flux158.data.prompts import load_complex_subtypes
from flux158.errors import Flux158Error

log = logging.getLogger(__name__)


def _models(cfg: DictConfig, needed: set[str], device: str) -> dict:
    bench = cfg.benchmark
    if bench.evaluator_weights != "pretrained":
        raise Flux158Error("T2I-CompBench scoring needs the real BLIP, CLIP and UniDet models; this model's "
                           f"evaluator_weights is {bench.evaluator_weights!r} (its images are noise). Run "
                           "stages=[generate] or set benchmark.evaluator_weights=pretrained")
    models = load_models(needed, device, Path(cfg.paths.cache_dir) / "eval", bench.bvqa_image_size)
    if "official" in needed and bench.get("unidet_checkout"):
        models["official"] = OfficialRunner(Path(bench.unidet_checkout), bench.unidet_python)
    return models


def score(cfg: DictConfig, images: Path) -> tuple[list[dict], dict]:
    """One row per image (`tag` = category, `score`) over the configured categories, and what scored them.

    A category whose metric needs UniDet is skipped with a warning when `benchmark.unidet_checkout` is unset;
    `summarize` then leaves the average of 8 out.
    """
    bench = cfg.benchmark
    categories = list(bench.categories or CATEGORIES)
    items = resolve.prompts(cfg)
    needed = needs(categories)
    _, _, device = resolve.process()
    models = _models(cfg, needed, str(device))
    mirror = cfg.paths.get("prompt_mirror")
    subtypes = load_complex_subtypes(Path(cfg.paths.data_dir), [Path(mirror)] if mirror else []) if (
        "complex" in categories) else None
    rows, skipped = [], {}
    for category in categories:
        prompts = [item.prompt for item in sorted((i for i in items if i.group == category), key=lambda i: i.index)]
        if "official" in needs([category]) and "official" not in models:
            skipped[category] = f"{METRICS[category]} needs benchmark.unidet_checkout (upstream UniDet)"
            log.warning("evaluate: %s not scored: %s", category, skipped[category])
            continue
        result = score_category(images / category, category, prompts, bench.samples_per_prompt,
                                complex_subtypes=subtypes, **models)
        log.info("evaluate: %s (%s) %.4f over %d images", category, result.metric, result.score, len(result.rows))
        rows += [{"filename": f"{category}/samples/{r['filename']}", "tag": category, "prompt": r["prompt"],
                  "score": r["score"], "metric": result.metric} for r in result.rows]
    return rows, {"evaluator": "t2i_compbench", "not_scored": skipped,
                  "metrics": {c: METRICS[c] for c in categories}}


def summarize(rows: list[dict], categories: list[str]) -> dict[str, float]:
    """Mean score per category, and `average` over the categories when all of the configured ones were scored
    (the paper's average is over all 8)."""
    by_category: dict[str, list[float]] = {}
    for row in rows:
        by_category.setdefault(row["tag"], []).append(row["score"])
    scores = {c: sum(v) / len(v) for c, v in by_category.items()}
    if scores and set(scores) == set(categories):
        scores["average"] = sum(scores.values()) / len(scores)
    return scores
