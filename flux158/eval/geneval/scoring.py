"""Score a GenEval image folder: detector -> `filter_detections` -> `judge` (colors from the CLIP classifier), one
row per image as the official `results.jsonl`, and the GenEval score (`rules.summarize`)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps
from tqdm.auto import tqdm

from flux158.eval.geneval.colors import ColorClassifier
from flux158.eval.geneval.detector import Detector
from flux158.eval.geneval.folder import check_complete
from flux158.eval.geneval.rules import (
    COUNTING_THRESHOLD,
    MAX_OBJECTS,
    THRESHOLD,
    Detection,
    filter_detections,
    judge,
    summarize,
)

ColorFn = Callable[[np.ndarray, str, Sequence[Detection]], list[str]]


def load_image(path: Path) -> np.ndarray:
    """As the official evaluator reads images: EXIF orientation applied, RGB."""
    with Image.open(path) as im:
        return np.asarray(ImageOps.exif_transpose(im).convert("RGB"))


@dataclass
class GenEvalScorer:
    """The official protocol with a pluggable detector and color classifier."""

    detector: Detector
    colors: ColorClassifier | ColorFn
    threshold: float = THRESHOLD
    counting_threshold: float = COUNTING_THRESHOLD
    max_objects: int = MAX_OBJECTS
    description: dict[str, str] = field(default_factory=dict)  # which models, for metrics.json

    def _classify(self, image: np.ndarray, cls: str, dets: Sequence[Detection]) -> list[str]:
        if isinstance(self.colors, ColorClassifier):
            return self.colors.classify(image, cls, dets)
        return self.colors(image, cls, dets)

    def score_image(self, image: np.ndarray, metadata: Mapping[str, Any]) -> tuple[bool, str, dict]:
        """(correct, reason, kept detections as {class: [[x1, y1, x2, y2, score], ...]}) for one image."""
        detected = filter_detections(self.detector(image), metadata["tag"], self.threshold, self.counting_threshold,
                                     self.max_objects)
        class_of = {id(d): cls for cls, dets in detected.items() for d in dets}
        memo: dict[int, str] = {}

        def color_of(det: Detection) -> str:
            if id(det) not in memo:
                memo[id(det)] = self._classify(image, class_of[id(det)], [det])[0]
            return memo[id(det)]

        correct, reason = judge(metadata, detected, color_of)
        details = {cls: [[*d.box, d.score] for d in dets] for cls, dets in detected.items()}
        return correct, reason, details

    def score_folder(self, root: Path, prompts: int | Iterable[int] = 553, samples_per_prompt: int = 4,
                     progress: bool = True) -> list[dict[str, Any]]:
        """Rows of the official `results.jsonl` for every image; first refuses a folder that lacks any of the
        expected prompts (0..prompts-1, or the given indices) or samples."""
        folders = check_complete(root, prompts, samples_per_prompt)
        items = [(f, path) for f in folders for path in f.samples]
        rows = []
        for folder, path in tqdm(items, desc="GenEval", unit="img", disable=not progress):
            correct, reason, details = self.score_image(load_image(path), folder.metadata)
            rows.append({"filename": str(path.relative_to(root)), "tag": folder.metadata["tag"],
                         "prompt": folder.metadata["prompt"], "correct": correct, "reason": reason,
                         "metadata": json.dumps(folder.metadata), "details": json.dumps(details)})
        return rows


def write_results(rows: Sequence[Mapping[str, Any]], out_dir: Path) -> dict[str, float]:
    """`results.jsonl` (one row per image) and `scores.json` (per tag and overall) into `out_dir`; the scores."""
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / "results.jsonl.partial"
    tmp.write_text("".join(json.dumps(dict(r)) + "\n" for r in rows))
    tmp.rename(out_dir / "results.jsonl")
    scores = summarize(rows)
    (out_dir / "scores.json").write_text(json.dumps(scores, indent=2))
    return scores
