"""The evaluate stage's T2I-CompBench part: score each category folder of the generate stage with
`flux158.eval.t2i_compbench` (models loaded once, only those the configured categories need) and summarise."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from flux158.data import sources
from flux158.data.pinned import fetch
from flux158.data.prompts import load_complex_subtypes
from flux158.errors import Flux158Error
from flux158.eval import pins
from flux158.eval.t2i_compbench.bvqa import BLIP_VQA
from flux158.eval.t2i_compbench.clipscore import CLIP_B32
from flux158.eval.t2i_compbench.depth import DPT_HYBRID
from flux158.eval.t2i_compbench.native import OWLV2
from flux158.eval.t2i_compbench.scoring import CATEGORIES, ModelSettings, Protocol, load_models, score_category
from flux158.eval.t2i_compbench.tiny import tiny_models
from flux158.eval.t2i_compbench.vocabulary import read_numeracy_objects, read_unidet_labels
from flux158.experiments import resolve

log = logging.getLogger(__name__)


def protocol(cfg: DictConfig) -> Protocol:
    """The configured metrics and backends; with random evaluator weights the detector and judge are the native
    (shrunk) ones, since there is no random official runner."""
    bench = cfg.benchmark
    chosen = Protocol(OmegaConf.to_container(bench.metrics), bench.detector, bench.judge,
                      bench.get("numeracy_parser", "2024-11"))
    return replace(chosen, detector="native", judge="native") if bench.evaluator_weights == "random" else chosen


def _data(cfg: DictConfig, needed: set[str], chosen: Protocol) -> tuple[dict, list[str]]:
    """The pinned text data the needed models use: complex sub-types, numeracy objects, UniDet labels."""
    mirror = cfg.paths.get("prompt_mirror")
    where = (Path(cfg.paths.data_dir), [Path(mirror)] if mirror else [])
    data = {}
    if "complex_subtypes" in needed:
        data["complex_subtypes"] = load_complex_subtypes(*where)
    if "numeracy_objects" in needed:
        data["numeracy_objects"] = read_numeracy_objects(fetch(sources.T2I_NUMERACY_OBJECTS, *where))
    native = "detector" in needed and chosen.detector == "native"
    labels = read_unidet_labels(fetch(sources.UNIDET_LABELS, *where)) if native else []
    return data, labels


def _models(cfg: DictConfig, needed: set[str], chosen: Protocol, labels: list[str], device: str) -> dict:
    bench = cfg.benchmark
    if bench.evaluator_weights == "random":
        log.warning("evaluate: T2I-CompBench with shrunk random-weight models (plumbing run): scores are noise")
        return tiny_models(needed, labels, device, cfg.seed)
    if bench.evaluator_weights != "pretrained":
        raise Flux158Error(f"benchmark.evaluator_weights must be pretrained or random, got {bench.evaluator_weights!r}")
    settings = ModelSettings(device=device, cache_dir=Path(cfg.paths.cache_dir) / "eval",
                             bvqa_image_size=bench.bvqa_image_size,
                             official_checkout=Path(bench.official_checkout) if bench.official_checkout else None,
                             unidet_python=bench.unidet_python, judge_python=bench.judge_python,
                             judge_model=bench.judge_model, detector_model=bench.detector_model, labels=labels)
    return load_models(needed, chosen, settings)


def _revisions(cfg: DictConfig, needed: set[str], chosen: Protocol) -> dict[str, str]:
    """The hub commit of every model that scored (`flux158.eval.pins`); empty for random weights."""
    bench = cfg.benchmark
    if bench.evaluator_weights == "random":
        return {}
    repos = {"bvqa": BLIP_VQA, "clip": CLIP_B32, "depth": DPT_HYBRID}
    used = [repo for name, repo in repos.items() if name in needed]
    if "detector" in needed and chosen.detector == "native":
        used.append(bench.detector_model or OWLV2)
    if "judge" in needed and chosen.judge == "native" and bench.judge_model:
        used.append(bench.judge_model)
    return pins.recorded(used)


def score(cfg: DictConfig, images: Path) -> tuple[list[dict], dict]:
    """One row per image (`tag` = category, `score`) over the configured categories, and what scored them.

    A category whose official runner (UniDet or the S-CoT script) is unavailable, because
    `benchmark.official_checkout` is unset, is skipped with a warning; `summarize` then leaves the average out.
    """
    bench = cfg.benchmark
    categories = list(bench.categories or CATEGORIES)
    chosen = protocol(cfg)
    items = resolve.prompts(cfg)
    needed = chosen.needs(categories)
    _, _, device = resolve.process()
    data, labels = _data(cfg, needed, chosen)
    models = {**_models(cfg, needed - set(data), chosen, labels, str(device)), **data}
    rows, skipped = [], {}
    for category in categories:
        prompts = [item.prompt for item in sorted((i for i in items if i.group == category), key=lambda i: i.index)]
        lacking = chosen.needs([category]) - set(models)
        if lacking:
            skipped[category] = (f"{chosen.label(category)} needs benchmark.official_checkout (upstream's "
                                 f"{' and '.join(sorted(lacking))} scripts)")
            log.warning("evaluate: %s not scored: %s", category, skipped[category])
            continue
        result = score_category(images / category, category, prompts, bench.samples_per_prompt, protocol=chosen,
                                **{k: v for k, v in models.items() if k in chosen.needs([category])})
        log.info("evaluate: %s (%s) %.4f over %d images", category, result.metric, result.score, len(result.rows))
        rows += [{"filename": f"{category}/samples/{r['filename']}", "tag": category, "prompt": r["prompt"],
                  "score": r["score"], "metric": result.metric} for r in result.rows]
    return rows, {"evaluator": "t2i_compbench", "not_scored": skipped, "weights": bench.evaluator_weights,
                  "numeracy_parser": chosen.numeracy_parser, "revisions": _revisions(cfg, needed, chosen),
                  "metrics": {c: chosen.label(c) for c in categories}}


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
