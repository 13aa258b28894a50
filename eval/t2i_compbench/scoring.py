"""Score one T2I-CompBench category folder: per-image scores with the category's metric, and the category score
(their mean over all images, as upstream).

B-VQA (color, shape, texture) and CLIPScore (non_spatial) run in this environment; spatial, 3d_spatial and
numeracy run through the official runner (upstream's UniDet scripts in their own environment), and complex
(3-in-1) combines B-VQA, CLIPScore without adjectives and the runner's complex-mode 2D scores. The native detector
backend is not implemented yet: without a runner those categories raise `NotImplementedError`. The rules it will
feed are in `rules.py`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image
from tqdm.auto import tqdm

import eval.t2i_compbench.bvqa as vqa
from eval.errors import IncompleteFolderError
from eval.t2i_compbench.bvqa import BlipVQA, questions_from_phrases
from eval.t2i_compbench.clipscore import CLIPScore
from eval.t2i_compbench.complex import three_in_one, without_adjectives
from eval.t2i_compbench.folder import Sample, check_complete, list_samples
from eval.t2i_compbench.official import OfficialRunner

CATEGORIES = ("color", "shape", "texture", "spatial", "3d_spatial", "non_spatial", "numeracy", "complex")
METRICS = {"color": "b-vqa", "shape": "b-vqa", "texture": "b-vqa", "non_spatial": "clipscore",
           "spatial": "unidet-2d", "3d_spatial": "unidet-3d", "numeracy": "unidet-count", "complex": "3-in-1"}
IN_ENVIRONMENT = ("b-vqa", "clipscore")  # the others need the official UniDet runner
# what each metric needs: in-environment models and/or the official runner
NEEDS = {"b-vqa": {"bvqa", "nlp"}, "clipscore": {"clip"}, "unidet-2d": {"official"}, "unidet-3d": {"official"},
         "unidet-count": {"official"}, "3-in-1": {"bvqa", "nlp", "clip", "official"}}


def needs(categories: Sequence[str]) -> set[str]:
    """The models and runner that scoring `categories` needs."""
    return set().union(*(NEEDS[METRICS[c]] for c in categories))


def load_models(needed: set[str], device: str | None = None, cache_dir: Path | None = None,
                bvqa_image_size: int = 480) -> dict:
    """The in-environment models among `needed`, loaded once (the official runner is the caller's)."""
    models = {}
    if "bvqa" in needed:
        models["bvqa"] = vqa.BlipVQA.from_pretrained(image_size=bvqa_image_size, device=device, cache_dir=cache_dir)
        models["nlp"] = vqa.load_spacy()
    if "clip" in needed:
        models["clip"] = CLIPScore.from_pretrained(device=device, cache_dir=cache_dir)
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


def _official(samples: Sequence[Sample], official: OfficialRunner, script_category: str,
              complex_mode: bool = False) -> list[float]:
    by_id = official.run(script_category, samples[0].path.parent.parent, complex_mode)
    missing = [s.counter for s in samples if s.counter not in by_id]
    if missing:
        raise IncompleteFolderError(f"the official {script_category} script scored no image with question_id "
                                    f"{missing[:5]}{' ...' if len(missing) > 5 else ''}")
    return [by_id[s.counter] for s in samples]


def _per_image(samples: Sequence[Sample], score, desc: str, progress: bool) -> list[float]:
    out = []
    for sample in tqdm(samples, desc=desc, unit="img", disable=not progress):
        with Image.open(sample.path) as im:
            out.append(score(im.convert("RGB"), sample.prompt))
    return out


def _bvqa(samples: Sequence[Sample], bvqa: BlipVQA, nlp, progress: bool) -> list[float]:
    questions: dict[str, list[str]] = {}

    def score(image, prompt):
        if prompt not in questions:
            questions[prompt] = questions_from_phrases(c.text for c in nlp(prompt).noun_chunks)
        return bvqa.score(image, questions[prompt])

    return _per_image(samples, score, "B-VQA", progress)


def score_category(category_dir: Path, category: str, prompts: Sequence[str] | None = None,
                   samples_per_prompt: int = 10, *, bvqa: BlipVQA | None = None, nlp=None,
                   clip: CLIPScore | None = None, official: OfficialRunner | None = None,
                   complex_subtypes: tuple[Sequence[str], Sequence[str]] | None = None,
                   progress: bool = True) -> CategoryResult:
    """Score every image of one category folder (refusing an incomplete one) with the category's metric.

    Needs, per metric: B-VQA `bvqa` and `nlp` (spaCy); CLIPScore `clip`; the UniDet categories `official`;
    complex (3-in-1) all of them plus `complex_subtypes` = (complex_val_spatial, complex_val_action) prompts.
    """
    if category not in CATEGORIES:
        raise ValueError(f"unknown T2I-CompBench category {category!r}; choose one of {CATEGORIES}")
    metric = METRICS[category]
    given = {"bvqa": bvqa, "nlp": nlp, "clip": clip, "official": official, "complex_subtypes": complex_subtypes}
    wanted = NEEDS[metric] | ({"complex_subtypes"} if metric == "3-in-1" else set())
    lacking = sorted(name for name in wanted if given[name] is None)
    if "official" in lacking:
        raise NotImplementedError(f"{category} uses {metric}: pass an official runner (a T2I-CompBench checkout "
                                  "with UniDet); the native detector backend is not implemented yet")
    if lacking:
        raise ValueError(f"{category} ({metric}) needs {', '.join(lacking)}")
    prompts = list(prompts) if prompts is not None else prompts_in_folder(category_dir, samples_per_prompt)
    samples = check_complete(category_dir, prompts, samples_per_prompt)
    if metric == "b-vqa":
        scores = _bvqa(samples, bvqa, nlp, progress)
    elif metric == "clipscore":
        scores = _per_image(samples, clip.score, "CLIPScore", progress)
    elif metric == "3-in-1":
        attribute = _bvqa(samples, bvqa, nlp, progress)
        spatial = _official(samples, official, "spatial", complex_mode=True)
        text = {p: without_adjectives([(t.text, t.pos_) for t in nlp(p)]) for p in prompts}
        clip_scores = _per_image(samples, lambda image, p: clip.score(image, text[p]), "CLIPScore", progress)
        scores = three_in_one(prompts, attribute, spatial, clip_scores, *complex_subtypes, samples_per_prompt)
    else:
        scores, metric = _official(samples, official, category), f"{metric} (official)"
    rows = [{"filename": s.path.name, "question_id": s.counter, "prompt": s.prompt, "score": v}
            for s, v in zip(samples, scores, strict=True)]
    return CategoryResult(category, metric, sum(scores) / len(scores) if scores else float("nan"), rows)
