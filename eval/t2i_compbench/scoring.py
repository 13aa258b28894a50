"""Score one T2I-CompBench category folder: per-image scores with the category's metric, and the category score
(their mean over all images, as upstream).

Implemented metrics: B-VQA (color, shape, texture) and CLIPScore (non_spatial). The detector-based categories
(spatial, 3d_spatial, numeracy) and complex (3-in-1 needs 2D spatial) have their rules in `rules.py` / `complex.py`
but no detector backend yet: asking for them raises `NotImplementedError` naming what is missing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image
from tqdm.auto import tqdm

from eval.t2i_compbench.bvqa import BlipVQA, questions_from_phrases
from eval.t2i_compbench.clipscore import CLIPScore
from eval.t2i_compbench.folder import check_complete, list_samples

CATEGORIES = ("color", "shape", "texture", "spatial", "3d_spatial", "non_spatial", "numeracy", "complex")
METRICS = {"color": "b-vqa", "shape": "b-vqa", "texture": "b-vqa", "non_spatial": "clipscore",
           "spatial": "unidet-2d", "3d_spatial": "unidet-3d", "numeracy": "unidet-count", "complex": "3-in-1"}
IMPLEMENTED = ("b-vqa", "clipscore")


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


def score_category(category_dir: Path, category: str, prompts: Sequence[str] | None = None,
                   samples_per_prompt: int = 10, *, bvqa: BlipVQA | None = None, nlp=None,
                   clip: CLIPScore | None = None, progress: bool = True) -> CategoryResult:
    """Score every image of one category folder (refusing an incomplete one) with the category's metric."""
    if category not in CATEGORIES:
        raise ValueError(f"unknown T2I-CompBench category {category!r}; choose one of {CATEGORIES}")
    metric = METRICS[category]
    if metric not in IMPLEMENTED:
        raise NotImplementedError(f"{category} uses {metric}, which needs a detector backend (UniDet, or the "
                                  "native approximation) that is not implemented yet")
    prompts = list(prompts) if prompts is not None else prompts_in_folder(category_dir, samples_per_prompt)
    samples = check_complete(category_dir, prompts, samples_per_prompt)
    if metric == "b-vqa" and (bvqa is None or nlp is None):
        raise ValueError("B-VQA needs a BlipVQA model and a spaCy pipeline (bvqa.load_spacy())")
    if metric == "clipscore" and clip is None:
        raise ValueError("CLIPScore needs a CLIPScore model")
    questions: dict[str, list[str]] = {}
    rows = []
    for sample in tqdm(samples, desc=f"T2I-CompBench {category}", unit="img", disable=not progress):
        with Image.open(sample.path) as im:
            image = im.convert("RGB")
        if metric == "b-vqa":
            if sample.prompt not in questions:
                questions[sample.prompt] = questions_from_phrases(c.text for c in nlp(sample.prompt).noun_chunks)
            score = bvqa.score(image, questions[sample.prompt])
        else:
            score = clip.score(image, sample.prompt)
        rows.append({"filename": sample.path.name, "question_id": sample.counter, "prompt": sample.prompt,
                     "score": score})
    mean = sum(r["score"] for r in rows) / len(rows) if rows else float("nan")
    return CategoryResult(category, metric, mean, rows)
