"""Score one T2I-CompBench category folder: per-image scores with the category's metric, and the category score
(their mean over all images, as upstream).

Metrics per category (`METRIC_CHOICES`; the first is the 1.58-bit FLUX paper's, its Table 1 header):
- color, shape, texture: B-VQA (in this environment);
- spatial, 3d_spatial, numeracy: the UniDet rules, with detections from the `official` detector (upstream's UniDet
  scripts in their own environment) or the `native` one (OWLv2 over UniDet's 722 names, an approximation);
- non_spatial: S-CoT (the MLLM judge) or classic CLIPScore;
- complex: S-CoT or classic 3-in-1 (B-VQA, CLIPScore without adjectives and complex-mode 2D).
S-CoT runs through upstream's script (`official`) or a LLaVA-format checkpoint in this environment (`native`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image
from tqdm.auto import tqdm

import flux158.eval.t2i_compbench.bvqa as vqa
from flux158.eval.errors import IncompleteFolderError
from flux158.eval.t2i_compbench import rules
from flux158.eval.t2i_compbench.bvqa import BlipVQA, questions_from_phrases
from flux158.eval.t2i_compbench.clipscore import CLIPScore
from flux158.eval.t2i_compbench.complex import three_in_one, without_adjectives
from flux158.eval.t2i_compbench.depth import DepthEstimator
from flux158.eval.t2i_compbench.folder import Sample, check_complete, list_samples
from flux158.eval.t2i_compbench.official import OfficialRunner

CATEGORIES = ("color", "shape", "texture", "spatial", "3d_spatial", "non_spatial", "numeracy", "complex")
METRIC_CHOICES = {"color": ("b-vqa",), "shape": ("b-vqa",), "texture": ("b-vqa",),
                  "spatial": ("unidet-2d", "s-cot"), "3d_spatial": ("unidet-3d", "s-cot"),
                  "numeracy": ("unidet-count", "s-cot"), "non_spatial": ("s-cot", "clipscore"),
                  "complex": ("s-cot", "3-in-1")}
PAPER_METRICS = {c: choices[0] for c, choices in METRIC_CHOICES.items()}
CLASSIC_METRICS = {**PAPER_METRICS, "non_spatial": "clipscore", "complex": "3-in-1"}
DETECTOR_METRICS = ("unidet-2d", "unidet-3d", "unidet-count")
BACKENDS = ("official", "native")


@dataclass(frozen=True)
class Protocol:
    """Which metric scores each category, and which backend runs the detector and the S-CoT judge."""

    metrics: Mapping[str, str] = field(default_factory=lambda: dict(PAPER_METRICS))
    detector: str = "official"
    judge: str = "official"
    numeracy_parser: str = "2024-11"  # how the native detector's numeracy reads counts (rules.NUMERACY_PARSERS)

    def __post_init__(self) -> None:
        for category, metric in self.metrics.items():
            if category not in METRIC_CHOICES:
                raise ValueError(f"unknown T2I-CompBench category {category!r}; choose from {CATEGORIES}")
            if metric not in METRIC_CHOICES[category]:
                raise ValueError(f"{category} is scored with one of {METRIC_CHOICES[category]}, not {metric!r}")
        if self.numeracy_parser not in rules.NUMERACY_PARSERS:
            raise ValueError(f"unknown numeracy parser {self.numeracy_parser!r}; choose one of "
                             f"{rules.NUMERACY_PARSERS}")
        for name, backend in (("detector", self.detector), ("judge", self.judge)):
            if backend not in BACKENDS:
                raise ValueError(f"{name} backend {backend!r}: choose one of {BACKENDS}")

    def metric(self, category: str) -> str:
        if category not in METRIC_CHOICES:
            raise ValueError(f"unknown T2I-CompBench category {category!r}; choose one of {CATEGORIES}")
        return self.metrics.get(category, PAPER_METRICS[category])

    def label(self, category: str) -> str:
        """The metric with its backend, as results record it (e.g. 'unidet-2d (native)')."""
        metric = self.metric(category)
        if metric == "3-in-1":
            return f"3-in-1 (2D {self.detector})"
        backend = self.detector if metric in DETECTOR_METRICS else self.judge if metric == "s-cot" else None
        return f"{metric} ({backend})" if backend else metric

    def needs(self, categories: Sequence[str]) -> set[str]:
        """The models scoring `categories` needs: keyword names of `score_category`."""
        native = self.detector == "native"
        detector = {"detector", "nlp"} if native else {"detector"}  # native detections go through the rules
        by_metric = {"b-vqa": {"bvqa", "nlp"}, "clipscore": {"clip"}, "s-cot": {"judge"},
                     "unidet-2d": detector,
                     "unidet-3d": detector | ({"depth"} if native else set()),
                     "unidet-count": detector | ({"numeracy_objects"} if native else set()),
                     "3-in-1": {"bvqa", "nlp", "clip", "complex_subtypes"} | detector}
        return set().union(*(by_metric[self.metric(c)] for c in categories))


@dataclass(frozen=True)
class ModelSettings:
    """Where the in-environment models and the official runners come from (`load_models`)."""

    device: str | None = None
    cache_dir: Path | None = None
    bvqa_image_size: int = 480
    official_checkout: Path | None = None  # a T2I-CompBench clone: its UniDet and ShareGPT4V-CoT scripts
    unidet_python: str = "python"
    judge_python: str = "python"
    judge_model: str | None = None  # the native judge: a LLaVA-format conversion of ShareGPT4V-7B
    detector_model: str | None = None  # the native detector (default OWLv2 base ensemble)
    labels: Sequence[str] = ()  # the native detector's vocabulary: UniDet's 722 names


def load_models(needed: set[str], protocol: Protocol, settings: ModelSettings) -> dict:
    """The models among `needed`, loaded once. Official runners are built only with a checkout; callers decide
    what a missing one means (the stage skips those categories)."""
    s, models = settings, {}
    if "bvqa" in needed:
        models["bvqa"] = vqa.BlipVQA.from_pretrained(image_size=s.bvqa_image_size, device=s.device,
                                                     cache_dir=s.cache_dir)
    if "nlp" in needed:
        models["nlp"] = vqa.load_spacy()
    if "clip" in needed:
        models["clip"] = CLIPScore.from_pretrained(device=s.device, cache_dir=s.cache_dir)
    if "depth" in needed:
        models["depth"] = DepthEstimator.from_pretrained(device=s.device, cache_dir=s.cache_dir)
    if "detector" in needed:
        if protocol.detector == "native":
            from flux158.eval.t2i_compbench.native import OWLV2, NativeDetector

            models["detector"] = NativeDetector.from_pretrained(s.labels, s.detector_model or OWLV2, device=s.device,
                                                                cache_dir=s.cache_dir)
        elif s.official_checkout is not None:
            models["detector"] = OfficialRunner(Path(s.official_checkout), s.unidet_python)
    if "judge" in needed:
        if protocol.judge == "native":
            from flux158.eval.t2i_compbench.judge import SHAREGPT4V, ShareGPT4VJudge

            models["judge"] = ShareGPT4VJudge.from_pretrained(s.judge_model or SHAREGPT4V, s.device, s.cache_dir)
        elif s.official_checkout is not None:
            models["judge"] = OfficialRunner(Path(s.official_checkout), s.judge_python)
    return models


@dataclass
class CategoryResult:
    category: str
    metric: str
    score: float
    rows: list[dict[str, Any]] = field(default_factory=list)


def prompts_in_folder(category_dir: Path, samples_per_prompt: int = 10) -> list[str]:
    """The prompts in counter order, read from the file names (when no prompt file is given)."""
    prompts: dict[int, str] = {}
    for sample in list_samples(category_dir):
        prompts.setdefault(sample.counter // samples_per_prompt, sample.prompt)
    return [prompts[i] for i in sorted(prompts)]


def _by_question_id(samples: Sequence[Sample], by_id: Mapping[int, float], what: str) -> list[float]:
    missing = [s.counter for s in samples if s.counter not in by_id]
    if missing:
        raise IncompleteFolderError(f"the official {what} scored no image with question_id "
                                    f"{missing[:5]}{' ...' if len(missing) > 5 else ''}")
    return [by_id[s.counter] for s in samples]


def _per_image(samples: Sequence[Sample], score: Callable[[Image.Image, Sample], float], desc: str,
               progress: bool) -> list[float]:
    out = []
    for sample in tqdm(samples, desc=desc, unit="img", disable=not progress):
        with Image.open(sample.path) as im:
            out.append(score(im.convert("RGB"), sample))
    return out


def _bvqa(samples: Sequence[Sample], bvqa: BlipVQA, nlp, progress: bool) -> list[float]:
    questions: dict[str, list[str]] = {}

    def score(image, sample):
        if sample.prompt not in questions:
            questions[sample.prompt] = questions_from_phrases(c.text for c in nlp(sample.prompt).noun_chunks)
        return bvqa.score(image, questions[sample.prompt])

    return _per_image(samples, score, "B-VQA", progress)


def _tokens(nlp, prompt: str) -> list[tuple[str, str]]:
    return [(t.text, t.pos_) for t in nlp(prompt)]


def _detector_scores(category: str, samples: Sequence[Sample], detector, nlp, depth, numeracy_objects,
                     complex_mode: bool, progress: bool, numeracy_parser: str = "2024-11") -> list[float]:
    """Per-image 2D / 3D / numeracy scores from the official runner, or the rules over native detections."""
    if isinstance(detector, OfficialRunner):
        by_id = detector.run(category, samples[0].path.parent.parent, complex_mode)
        return _by_question_id(samples, by_id, f"{category} script")

    def score(image, sample):
        tokens = _tokens(nlp, sample.prompt)
        detections = detector.detect(image)
        if category == "numeracy":
            pairs = rules.parse_counts([t for t, _ in tokens], *numeracy_objects, parser=numeracy_parser)
            return rules.score_numeracy(pairs, rules.deduplicate(detections)) if pairs else 0.0
        if category == "spatial":
            objects = rules.objects_around_prepositions(tokens) if complex_mode else rules.first_and_last_noun(tokens)
            return rules.score_2d(*objects, rules.locality(sample.prompt, rules.SPATIAL_LOCALITIES), detections)
        where = rules.locality(sample.prompt, rules.DEPTH_LOCALITIES)
        return rules.score_3d(*rules.first_and_last_noun(tokens), where, detections, depth.detector_space(image))

    return _per_image(samples, score, f"{category} (native detector)", progress)


def _judge_scores(category: str, samples: Sequence[Sample], judge, progress: bool) -> list[float]:
    if isinstance(judge, OfficialRunner):
        return _by_question_id(samples, judge.judge(category, samples[0].path.parent.parent), "S-CoT script")
    return _per_image(samples, lambda image, s: judge.score(image, s.prompt, category, key=s.counter), "S-CoT",
                      progress)


def _backend(runner) -> str:
    return "native" if runner is not None and not isinstance(runner, OfficialRunner) else "official"


def score_category(category_dir: Path, category: str, prompts: Sequence[str] | None = None,
                   samples_per_prompt: int = 10, *, protocol: Protocol | None = None, bvqa: BlipVQA | None = None,
                   nlp=None, clip: CLIPScore | None = None, depth=None, detector=None, judge=None,
                   numeracy_objects: tuple[Sequence[str], Sequence[str]] | None = None,
                   complex_subtypes: tuple[Sequence[str], Sequence[str]] | None = None,
                   progress: bool = True) -> CategoryResult:
    """Score every image of one category folder (refusing an incomplete one) with the protocol's metric.

    `detector` is an `OfficialRunner` or a `native.NativeDetector`; `judge` an `OfficialRunner` or a
    `judge.ShareGPT4VJudge`. `Protocol.needs` says which of the models a category needs; complex (3-in-1) also
    needs `complex_subtypes` = (complex_val_spatial, complex_val_action) prompts, native numeracy the
    `numeracy_objects` (singular, plural) names.
    """
    protocol = protocol or Protocol(detector=_backend(detector), judge=_backend(judge))
    metric = protocol.metric(category)
    given = {"bvqa": bvqa, "nlp": nlp, "clip": clip, "depth": depth, "detector": detector, "judge": judge,
             "numeracy_objects": numeracy_objects, "complex_subtypes": complex_subtypes}
    lacking = sorted(name for name in protocol.needs([category]) if given[name] is None)
    if lacking:
        raise ValueError(f"{category} ({protocol.label(category)}) needs {', '.join(lacking)}")
    prompts = list(prompts) if prompts is not None else prompts_in_folder(category_dir, samples_per_prompt)
    samples = check_complete(category_dir, prompts, samples_per_prompt)
    if metric == "b-vqa":
        scores = _bvqa(samples, bvqa, nlp, progress)
    elif metric == "clipscore":
        scores = _per_image(samples, lambda image, s: clip.score(image, s.prompt), "CLIPScore", progress)
    elif metric == "s-cot":
        scores = _judge_scores(category, samples, judge, progress)
    elif metric == "3-in-1":
        attribute = _bvqa(samples, bvqa, nlp, progress)
        spatial = _detector_scores("spatial", samples, detector, nlp, None, None, True, progress)
        text = {p: without_adjectives(_tokens(nlp, p)) for p in prompts}
        clip_scores = _per_image(samples, lambda image, s: clip.score(image, text[s.prompt]), "CLIPScore", progress)
        scores = three_in_one(prompts, attribute, spatial, clip_scores, *complex_subtypes, samples_per_prompt)
    else:
        scores = _detector_scores(category, samples, detector, nlp, depth, numeracy_objects, False, progress,
                                  protocol.numeracy_parser)
    rows = [{"filename": s.path.name, "question_id": s.counter, "prompt": s.prompt, "score": v}
            for s, v in zip(samples, scores, strict=True)]
    mean = sum(scores) / len(scores) if scores else float("nan")
    return CategoryResult(category, protocol.label(category), mean, rows)
