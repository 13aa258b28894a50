"""T2I-CompBench as one evaluator object (`flux158.eval.evaluator.Evaluator`): build once with the configured
categories and protocol (only the models they need are loaded), then `score(run_folder)` over the category folders
and `summarize(rows)`. The evaluate stage and `python -m flux158.eval.t2i_compbench` build it the same way.

A category whose official runner (UniDet or the S-CoT script) is unavailable, because no official checkout was
given, is skipped with a warning and named in `description["not_scored"]`; the average is then left out.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from flux158.eval import pins
from flux158.eval.t2i_compbench.bvqa import BLIP_VQA
from flux158.eval.t2i_compbench.clipscore import CLIP_B32
from flux158.eval.t2i_compbench.depth import DPT_HYBRID
from flux158.eval.t2i_compbench.native import OWLV2
from flux158.eval.t2i_compbench.scoring import CATEGORIES, ModelSettings, Protocol, load_models, score_category
from flux158.eval.t2i_compbench.tiny import tiny_models

log = logging.getLogger(__name__)
WEIGHTS = ("pretrained", "random")


@dataclass(frozen=True)
class TextData:
    """The pinned text files some metrics read: 3-in-1's (spatial, action) sub-type prompts, native numeracy's
    (singular, plural) object names, the native detector's UniDet class names."""

    complex_subtypes: tuple[Sequence[str], Sequence[str]] | None = None
    numeracy_objects: tuple[Sequence[str], Sequence[str]] | None = None
    unidet_labels: Sequence[str] = ()


class T2ICompBenchEvaluator:
    def __init__(self, categories: Sequence[str], protocol: Protocol, models: Mapping[str, Any],
                 samples_per_prompt: int = 10, prompts: Mapping[str, Sequence[str]] | None = None,
                 weights: str = "pretrained", revisions: Mapping[str, str] | None = None) -> None:
        self.categories, self.protocol, self.models = list(categories), protocol, dict(models)
        self.samples_per_prompt, self.prompts, self.weights = samples_per_prompt, prompts, weights
        self.revisions = dict(revisions or {})
        self.not_scored: dict[str, str] = {}

    @property
    def description(self) -> dict[str, Any]:
        return {"evaluator": "t2i_compbench", "not_scored": dict(self.not_scored), "weights": self.weights,
                "numeracy_parser": self.protocol.numeracy_parser, "revisions": self.revisions,
                "metrics": {c: self.protocol.label(c) for c in self.categories}}

    def score(self, folder: Path) -> list[dict[str, Any]]:
        """One row per image (`tag` = category, `score`) over the categories, from `<folder>/<category>/samples`."""
        rows, self.not_scored = [], {}
        for category in self.categories:
            lacking = self.protocol.needs([category]) - set(self.models)
            if lacking:
                self.not_scored[category] = (f"{self.protocol.label(category)} needs an official checkout "
                                             f"(upstream's {' and '.join(sorted(lacking))} scripts)")
                log.warning("T2I-CompBench: %s not scored: %s", category, self.not_scored[category])
                continue
            prompts = self.prompts.get(category) if self.prompts is not None else None
            result = score_category(Path(folder) / category, category, prompts, self.samples_per_prompt,
                                    protocol=self.protocol, **{k: v for k, v in self.models.items()
                                                               if k in self.protocol.needs([category])})
            log.info("T2I-CompBench: %s (%s) %.4f over %d images", category, result.metric, result.score,
                     len(result.rows))
            rows += [{"filename": f"{category}/samples/{r['filename']}", "tag": category, "prompt": r["prompt"],
                      "score": r["score"], "metric": result.metric} for r in result.rows]
        return rows

    def summarize(self, rows: list[dict[str, Any]]) -> dict[str, float]:
        """Mean score per category, and `average` over them when all of the configured ones were scored (the
        paper's average is over all 8)."""
        by_category: dict[str, list[float]] = {}
        for row in rows:
            by_category.setdefault(row["tag"], []).append(row["score"])
        scores = {c: sum(v) / len(v) for c, v in by_category.items()}
        if scores and set(scores) == set(self.categories):
            scores["average"] = sum(scores.values()) / len(scores)
        return scores


def _revisions(needed: set[str], protocol: Protocol, settings: ModelSettings) -> dict[str, str]:
    repos = {"bvqa": BLIP_VQA, "clip": CLIP_B32, "depth": DPT_HYBRID}
    used = [repo for name, repo in repos.items() if name in needed]
    if "detector" in needed and protocol.detector == "native":
        used.append(settings.detector_model or OWLV2)
    if "judge" in needed and protocol.judge == "native" and settings.judge_model:
        used.append(settings.judge_model)
    return pins.recorded(used)


def protocol_for(protocol: Protocol, weights: str) -> Protocol:
    """The protocol that runs: random weights have no official runner, so their detector and judge are native."""
    return replace(protocol, detector="native", judge="native") if weights == "random" else protocol


def build_evaluator(categories: Sequence[str] | None = None, protocol: Protocol | None = None, *,
                    weights: str = "pretrained", settings: ModelSettings | None = None, data: TextData = TextData(),
                    samples_per_prompt: int = 10, prompts: Mapping[str, Sequence[str]] | None = None,
                    seed: int = 0) -> T2ICompBenchEvaluator:
    """Load what `categories` (default all 8) need under `protocol`. `weights="random"`: shrunk random-weight models
    with the native detector and judge (no random official runner), for plumbing runs; scores are noise.

    Raises:
        ValueError: unknown weights, or a metric whose text data (`data`) is missing.
        WeightsUnavailableError: a pretrained model is neither cached nor reachable.
    """
    if weights not in WEIGHTS:
        raise ValueError(f"T2I-CompBench evaluator weights must be one of {WEIGHTS}, got {weights!r}")
    categories = list(categories or CATEGORIES)
    protocol = protocol_for(protocol or Protocol(), weights)
    settings = settings or ModelSettings()
    needed = protocol.needs(categories)
    given = {"complex_subtypes": data.complex_subtypes, "numeracy_objects": data.numeracy_objects}
    missing = sorted(k for k, v in given.items() if k in needed and v is None)
    native_detector = "detector" in needed and protocol.detector == "native"
    if native_detector and not data.unidet_labels:
        missing.append("unidet_labels")
    if missing:
        raise ValueError(f"the chosen metrics need text data: {', '.join(missing)}")
    models_needed = needed - set(given)
    if weights == "random":
        log.warning("T2I-CompBench with shrunk random-weight models (plumbing run): scores are noise")
        models = tiny_models(models_needed, data.unidet_labels, settings.device or "cpu", seed)
        revisions = {}
    else:
        models = load_models(models_needed, protocol, replace(settings, labels=data.unidet_labels))
        revisions = _revisions(needed, protocol, settings)
    models |= {k: v for k, v in given.items() if k in needed}
    return T2ICompBenchEvaluator(categories, protocol, models, samples_per_prompt, prompts, weights, revisions)
