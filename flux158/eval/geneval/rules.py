"""GenEval's scoring rules (djghosh13/geneval @af4902f, `evaluation/evaluate_images.py`) as pure functions.

Implemented from the protocol, not copied. Behaviours kept on purpose because the official numbers depend on them:
strict `>` thresholds compared in float32; the 0.9 threshold applies to every class of a `counting` prompt; at most
16 detections per class; only the top-`count` detections of a class are judged; `exclude` counts every kept
detection; relative position uses the centre offset shrunk by 0.1 x (sum of box sizes) and divided by the
*original* offset norm, with strict 0.5 thresholds.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

THRESHOLD = 0.3
COUNTING_THRESHOLD = 0.9
MAX_OBJECTS = 16
NMS_MAX_OVERLAP = 1.0  # the official setting: an IoU can never exceed it, so nothing is suppressed
POSITION_THRESHOLD = 0.1


@dataclass(frozen=True)
class Detection:
    """One detected object: box `(x1, y1, x2, y2)` in pixels, confidence, optional boolean mask (H x W)."""

    box: tuple[float, float, float, float]
    score: float
    mask: np.ndarray | None = None


def _iou_plus_one(a: Sequence[float], b: Sequence[float]) -> float:
    """IoU with the inclusive-pixel (+1) convention of mmdet 2.x-era code."""
    iw = min(a[2], b[2]) - max(a[0], b[0]) + 1
    ih = min(a[3], b[3]) - max(a[1], b[1]) + 1
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    area = lambda r: (r[2] - r[0] + 1) * (r[3] - r[1] + 1)  # noqa: E731
    return inter / (area(a) + area(b) - inter)


def filter_detections(
    raw: Mapping[str, Sequence[Detection]],
    tag: str,
    threshold: float = THRESHOLD,
    counting_threshold: float = COUNTING_THRESHOLD,
    max_objects: int = MAX_OBJECTS,
    max_overlap: float = NMS_MAX_OVERLAP,
) -> dict[str, list[Detection]]:
    """Keep, per class, the detections GenEval judges: score > threshold (float32), best first, at most 16.

    Args:
        raw: detections per class name.
        tag: the prompt's tag; `counting` raises the threshold to `counting_threshold` for every class.
        max_overlap: greedy NMS IoU limit; the official 1.0 keeps every box.

    Returns:
        class name -> kept detections sorted by descending score (classes with none kept are absent).
    """
    limit = np.float32(counting_threshold if tag == "counting" else threshold)
    out: dict[str, list[Detection]] = {}
    for cls, dets in raw.items():
        scores = np.asarray([d.score for d in dets], dtype=np.float32)
        # best first; equal scores come out in reverse input order, as `np.argsort(scores)[::-1]` gives
        order = sorted(range(len(dets)), key=lambda i: (scores[i], i), reverse=True)
        order = [i for i in order if scores[i] > limit][:max_objects]
        kept: list[Detection] = []
        for i in order:
            if all(_iou_plus_one(dets[i].box, k.box) <= max_overlap for k in kept):
                kept.append(dets[i])
        if kept:
            out[cls] = kept
    return out


def relative_position(obj: Detection, target: Detection) -> set[str]:
    """The relations that hold of `obj` with respect to `target` ("left of", "right of", "above", "below")."""
    a, b = np.asarray(obj.box, dtype=np.float64), np.asarray(target.box, dtype=np.float64)
    center_a, center_b = (a[:2] + a[2:]) / 2, (b[:2] + b[2:]) / 2
    dim_a, dim_b = a[2:] - a[:2], b[2:] - b[:2]
    offset = center_a - center_b
    revised = np.maximum(np.abs(offset) - POSITION_THRESHOLD * (dim_a + dim_b), 0) * np.sign(offset)
    if np.all(np.abs(revised) < 1e-3):
        return set()
    dx, dy = revised / np.linalg.norm(offset)
    rels = set()
    if dx < -0.5:
        rels.add("left of")
    if dx > 0.5:
        rels.add("right of")
    if dy < -0.5:
        rels.add("above")
    if dy > 0.5:
        rels.add("below")
    return rels


def judge(
    metadata: Mapping[str, Any],
    detected: Mapping[str, Sequence[Detection]],
    color_of: Callable[[Detection], str],
) -> tuple[bool, str]:
    """Is one image correct for its GenEval prompt? Returns `(correct, reason)`; reason is "" when correct.

    Args:
        metadata: the prompt's record (`include` clauses with class, count, optional color and position; optional
            `exclude` clauses).
        detected: the output of `filter_detections`.
        color_of: the color name of a detection (GenEval: CLIP ViT-L-14 zero-shot on the masked crop).
    """
    correct = True
    reasons: list[str] = []
    groups: list[list[Detection] | None] = []
    for req in metadata.get("include", []):
        cls, count = req["class"], req["count"]
        found = list(detected.get(cls, []))[:count]
        matched = len(found) >= count
        if not matched:
            reasons.append(f"expected {cls}>={count}, found {len(found)}")
        else:
            if "color" in req:
                colors = [color_of(d) for d in found]
                if colors.count(req["color"]) < count:
                    matched = False
                    seen = ", ".join(f"{colors.count(c)} {c}" for c in dict.fromkeys(colors))
                    reasons.append(f"expected {req['color']} {cls}>={count}, found "
                                   f"{colors.count(req['color'])} {req['color']}; and {seen}")
            if "position" in req and matched:
                rel, group = req["position"]
                targets = groups[group]
                if targets is None:
                    matched = False
                    reasons.append(f"no target for {cls} to be {rel}")
                else:
                    matched = _all_related(found, targets, rel, cls, reasons)
        correct &= matched
        groups.append(found if matched else None)
    for req in metadata.get("exclude", []):
        cls = req["class"]
        n = len(detected.get(cls, []))
        if n >= req["count"]:
            correct = False
            reasons.append(f"expected {cls}<{req['count']}, found {n}")
    return correct, "\n".join(reasons)


def _all_related(found: Sequence[Detection], targets: Sequence[Detection], rel: str, cls: str,
                 reasons: list[str]) -> bool:
    for obj in found:
        for target in targets:
            rels = relative_position(obj, target)
            if rel not in rels:
                reasons.append(f"expected {cls} {rel} target, found {' and '.join(sorted(rels))} target")
                return False
    return True


def summarize(rows: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """GenEval's score: per-tag accuracy over images, and `overall` = unweighted mean over the tags present."""
    per_tag: dict[str, list[bool]] = {}
    for row in rows:
        per_tag.setdefault(row["tag"], []).append(bool(row["correct"]))
    scores = {tag: float(np.mean(v)) for tag, v in per_tag.items()}
    scores["overall"] = float(np.mean(list(scores.values()))) if scores else float("nan")
    return scores
