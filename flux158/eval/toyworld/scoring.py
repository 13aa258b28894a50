"""Score toy-world images in GenEval's layout with the toy detector and GenEval's rules."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from flux158.eval.geneval.folder import prompt_folders
from flux158.eval.geneval.rules import filter_detections, judge
from flux158.eval.images import verify_images
from flux158.eval.toyworld.detector import ToyDetector


def score_image(detector: ToyDetector, image: np.ndarray, metadata: Mapping[str, Any],
                threshold: float, counting_threshold: float) -> tuple[bool, str]:
    """Verdict for one image, exactly as GenEval decides it but with toy detections and segmented colors."""
    detected = filter_detections(detector.detect(image), metadata["tag"], threshold, counting_threshold)
    return judge(metadata, detected, lambda det: detector.color_of(image, det))


def score_folder(detector: ToyDetector, root: Path, threshold: float = 0.3,
                 counting_threshold: float = 0.9) -> list[dict[str, Any]]:
    """One row per image of a GenEval-layout folder: filename, tag, prompt, correct, reason (as `results.jsonl`)."""
    folders = list(prompt_folders(root))
    verify_images([p for f in folders for p in f.samples])
    rows = []
    for folder in folders:
        for path in folder.samples:
            image = np.asarray(Image.open(path).convert("RGB"))
            correct, reason = score_image(detector, image, folder.metadata, threshold, counting_threshold)
            rows.append({"filename": str(path.relative_to(root)), "tag": folder.metadata["tag"],
                         "prompt": folder.metadata["prompt"], "correct": correct, "reason": reason})
    return rows
