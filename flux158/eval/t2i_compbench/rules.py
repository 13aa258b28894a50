"""The detector-based T2I-CompBench scores as pure functions: 2D spatial, 3D spatial and numeracy.

Inputs are detections (label, box in the detector's 479-px image space, score) in descending score order, the
objects and locality parsed from the prompt, and for 3D an inverse-depth map. Upstream behaviours kept on purpose,
because the published numbers depend on them:
- 2D matches labels exactly and takes the best-scoring detection of each; 3D matches by substring and keeps the
  *last* match of each object until both are found.
- 2D floors scores below 0.5 to 0; 3D has no floor.
- 3D reads the depth map with x as the row index (the upstream transposition).
- "on top of" has no 2D rule (position 0).
- numeracy relabels, in place, every detection whose label contains an unmatched object name.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

SPATIAL_LOCALITIES = ("on side of", "next to", "near", "on the left of", "on the right of", "on the bottom of",
                      "on the top of", "on top of")
DEPTH_LOCALITIES = ("in front of", "behind", "hidden")
PERSON_WORDS = {"girl": "person", "boy": "person", "man": "person", "woman": "person"}
NUMERACY_ALIASES = {**PERSON_WORDS, "ship": "boat", "telivision": "tv", "goldfish": "fish", "painting": "picture"}
NUMBER_WORDS = ("a", "an", "one", "two", "three", "four", "five", "six", "seven", "eight")
_NUMBER_VALUES = {w: i + 1 for i, w in enumerate(NUMBER_WORDS[2:])}  # what word2number returns for these words


@dataclass(frozen=True)
class Detection:
    label: str
    box: tuple[float, float, float, float]  # x1, y1, x2, y2
    score: float


def locality(prompt: str, localities: Sequence[str]) -> str | None:
    """The first phrase of `localities` (in list order) that occurs in the prompt."""
    return next((phrase for phrase in localities if phrase in prompt), None)


def iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of xyxy boxes, continuous areas (no +1 pixel)."""
    iw, ih = min(a[2], b[2]) - max(a[0], b[0]), min(a[3], b[3]) - max(a[1], b[1])
    inter = max(iw, 0.0) * max(ih, 0.0)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _center(box: Sequence[float]) -> tuple[float, float]:
    return (box[0] + box[2]) / 2, (box[1] + box[3]) / 2


def position_2d(where: str | None, box1: Sequence[float], box2: Sequence[float], iou_threshold: float = 0.1,
                distance_threshold: float = 150) -> float:
    """How well object 1 (box1) stands `where` relative to object 2 (box2), in [0, 1]."""
    (x1, y1), (x2, y2) = _center(box1), _center(box2)
    dx, dy = x2 - x1, y2 - y1
    overlap = iou(box1, box2)
    if where in ("next to", "on side of", "near"):
        return 1.0 if abs(dx) < distance_threshold or abs(dy) < distance_threshold else (
            distance_threshold / max(abs(dx), abs(dy)))
    sides = {"on the right of": (dx < 0, abs(dx) > abs(dy)), "on the left of": (dx > 0, abs(dx) > abs(dy)),
             "on the bottom of": (dy < 0, abs(dy) > abs(dx)), "on the top of": (dy > 0, abs(dy) > abs(dx))}
    if where not in sides:
        return 0.0  # includes "on top of", which upstream never scores
    direction, dominant = sides[where]
    if not (direction and dominant):
        return 0.0
    return 1.0 if overlap < iou_threshold else iou_threshold / overlap


def _normalise(name: str | None) -> str | None:
    return PERSON_WORDS.get(name, name) if name is not None else None


def _combine(conf1: float | None, conf2: float | None, pos: float) -> float:
    if conf1 is not None and conf2 is not None:
        return 0.25 * conf1 + 0.25 * conf2 + 0.5 * pos
    if conf1 is not None or conf2 is not None:
        return 0.25 * (conf1 if conf1 is not None else conf2)
    return 0.0


def score_2d(obj1: str | None, obj2: str | None, where: str | None, detections: Sequence[Detection]) -> float:
    """2D-spatial score of one image: exact label match, best detection of each object, floor at 0.5."""
    labels = [d.label for d in detections]
    obj1, obj2 = _normalise(obj1), _normalise(obj2)
    d1 = detections[labels.index(obj1)] if obj1 in labels else None
    d2 = detections[labels.index(obj2)] if obj2 in labels else None
    pos = position_2d(where, d1.box, d2.box) if d1 and d2 else 0.0
    score = _combine(d1.score if d1 else None, d2.score if d2 else None, pos)
    return 0.0 if score < 0.5 else score


def position_3d(where: str | None, box1: Sequence[float], box2: Sequence[float], depth: np.ndarray,
                iou_threshold: float = 0.5) -> float:
    """Object 1 `where` ("in front of", "behind", "hidden") object 2, from their overlap and mean inverse depth
    (larger = closer). The depth map is indexed [x, y], as upstream does."""
    def mean_depth(b: Sequence[float]) -> float:
        region = depth[int(b[0]):int(b[2]), int(b[1]):int(b[3])]
        return float(region.mean()) if region.size else float("nan")

    diff = mean_depth(box1) - mean_depth(box2)
    overlap = iou(box1, box2)
    if where == "in front of":
        ordered = diff > 0
    elif where in ("behind", "hidden"):
        ordered = diff < 0
    else:
        return 0.0
    if overlap > iou_threshold:
        return 1.0 if ordered else 0.0
    if 0 < overlap < iou_threshold:
        return overlap / iou_threshold if ordered else 0.0
    return 0.0


def score_3d(obj1: str | None, obj2: str | None, where: str | None, detections: Sequence[Detection],
             depth: np.ndarray) -> float:
    """3D-spatial score of one image: substring match (the last match of each until both are found), no floor."""
    obj1, obj2 = _normalise(obj1), _normalise(obj2)
    p1 = p2 = None
    for i, d in enumerate(detections):
        if obj1 is not None and obj1 in d.label:
            p1 = i
        if obj2 is not None and obj2 in d.label:
            p2 = i
        if p1 is not None and p2 is not None:
            break
    d1 = detections[p1] if p1 is not None else None
    d2 = detections[p2] if p2 is not None else None
    pos = position_3d(where, d1.box, d2.box, depth) if d1 and d2 else 0.0
    return _combine(d1.score if d1 else None, d2.score if d2 else None, pos)


def _overlap_plus_one(a: Sequence[float], b: Sequence[float]) -> tuple[float, float, float]:
    """(IoU, intersection / area a, intersection / area b) with inclusive-pixel (+1) areas."""
    iw = min(a[2], b[2]) - max(a[0], b[0]) + 1
    ih = min(a[3], b[3]) - max(a[1], b[1]) + 1
    inter = max(iw, 0.0) * max(ih, 0.0)
    area_a = (a[2] - a[0] + 1) * (a[3] - a[1] + 1)
    area_b = (b[2] - b[0] + 1) * (b[3] - b[1] + 1)
    return inter / (area_a + area_b - inter), inter / area_a, inter / area_b


def deduplicate(detections: Sequence[Detection], threshold: float = 0.9) -> list[str]:
    """Labels of the detections kept in score order, dropping one that overlaps an already kept detection of the
    same label by IoU, or by intersection over either area, above `threshold`."""
    kept: list[Detection] = []
    for d in detections:
        if not any(k.label == d.label and max(_overlap_plus_one(d.box, k.box)) > threshold for k in kept):
            kept.append(d)
    return [k.label for k in kept]


NUMERACY_PARSERS = ("2024-11", "2025-01")


def parse_counts(tokens: Sequence[str], singular: Sequence[str], plural: Sequence[str],
                 parser: str = "2024-11") -> list[tuple[str, int]]:
    """(object, count) pairs read from the prompt's tokens, as upstream's `numeracy_eval.py` reads them.

    A number word followed by a known one- or two-word object (from `new_objects.txt`, singular and plural lists)
    gives a pair; a plural maps to the singular at its first position in the lists. The parsers:
    - `2024-11` (commit 33d6305, the paper's era): a word of the singular list always counts 1, whatever number
      precedes it, so a noun whose singular and plural forms are the same ("three sheep") counts 1; a two-word
      plural counts its number word.
    - `2025-01` (commit 01835fe, 2025-01-04): "a"/"an"/"one" give 1 and any other number word its value, also
      before a same-form noun ("three sheep" -> 3).
    A count that word2number cannot read ("a"/"an" before a plural-only noun; upstream stops in pdb in 2024 and
    misaligns its lists in 2025) drops the pair.
    """
    if parser not in NUMERACY_PARSERS:
        raise ValueError(f"unknown numeracy parser {parser!r}; choose one of {NUMERACY_PARSERS}")
    to_singular: dict[str, str] = {}
    for p, s in zip(plural, singular, strict=True):
        to_singular.setdefault(p, s)  # upstream: object_s[object_p.index(word)]
    singulars, known = set(singular), set(singular) | set(plural)
    guarded = parser == "2025-01"
    pairs: list[tuple[str, int]] = []
    for i, word in enumerate(tokens):
        if word not in NUMBER_WORDS:
            continue
        bigram = f"{tokens[i + 1]} {tokens[i + 2]}" if i < len(tokens) - 2 else None
        if bigram in known:
            if bigram in to_singular and not (guarded and word in ("a", "an", "one")):
                obj, count = to_singular[bigram], _NUMBER_VALUES.get(word)
            else:
                obj, count = bigram, 1
        elif i + 1 < len(tokens) and tokens[i + 1] in known:
            noun = tokens[i + 1]
            if noun in singulars and (not guarded or word in ("a", "an", "one")):
                obj, count = noun, 1
            else:
                obj, count = to_singular.get(noun, noun), _NUMBER_VALUES.get(word)
        else:
            continue
        if count is not None:
            pairs.append((obj, count))
    return pairs


def score_numeracy(pairs: Sequence[tuple[str, int]], labels: Sequence[str]) -> float:
    """Half credit per object present, half for its exact count, over the deduplicated labels.

    Raises:
        ValueError: no object was parsed from the prompt (upstream divides by zero).
    """
    if not pairs:
        raise ValueError("no counted object was parsed from the prompt")
    weight, found, score = 1 / len(pairs), list(labels), 0.0
    for obj, count in pairs:
        obj = NUMERACY_ALIASES.get(obj, obj)
        if obj not in found:  # relabel partial matches ("red apple" -> "apple"), persistently
            found = [obj if obj in label else label for label in found]
        if obj in found:
            score += 0.5 * weight
            if found.count(obj) == count:
                score += 0.5 * weight
    return score


def first_and_last_noun(tokens: Sequence[tuple[str, str]]) -> tuple[str, str]:
    """The spatial categories' objects (simple mode): the first and the last token tagged NOUN, from spaCy's
    (text, pos_) pairs. Upstream crashes on a prompt without a noun; this raises ValueError."""
    nouns = [text for text, pos in tokens if pos == "NOUN"]
    if not nouns:
        raise ValueError(f"no noun in {' '.join(t for t, _ in tokens)!r}")
    return nouns[0], nouns[-1]


COMPLEX_PREPOSITIONS = ("on top of", "on bottom of", "on the left", "on the right", "next to", "on side of", "near")


def objects_around_prepositions(tokens: Sequence[tuple[str, str]]) -> tuple[str | None, str | None]:
    """The 2D objects of a complex prompt (3-in-1's complex mode), from spaCy's (text, pos_) pairs.

    At every preposition of `COMPLEX_PREPOSITIONS` (matched as a 3-, 2- or 1-token span): the nearest NOUN or PROPN
    before it, and after it the first NOUN, or when no NOUN follows, the first PROPN not followed by another PROPN
    (never the last token). Exactly two objects over the whole prompt give (obj1, obj2); anything else (None, None).
    """
    texts = [t for t, _ in tokens]
    pos = [p for _, p in tokens]
    objects: list[str] = []
    for i in range(len(tokens)):
        width = next((k for k in (3, 2, 1) if " ".join(texts[i:i + k]) in COMPLEX_PREPOSITIONS), None)
        if width is None:
            continue
        before = next((texts[j] for j in range(i - 1, -1, -1) if pos[j] in ("NOUN", "PROPN")), None)
        if before is not None:
            objects.append(before)
        after = next((texts[j] for j in range(i + width, len(tokens)) if pos[j] == "NOUN"), None)
        if after is None:
            after = next((texts[j] for j in range(i + width, len(tokens) - 1)
                          if pos[j] == "PROPN" and pos[j + 1] != "PROPN"), None)
        if after is not None:
            objects.append(after)
    return (objects[0], objects[1]) if len(objects) == 2 else (None, None)
