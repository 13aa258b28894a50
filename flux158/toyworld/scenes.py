"""Deterministic synthetic scenes of flat colored shapes, with GenEval-style captions and ground truth.

A scene is drawn from a prompt spec in GenEval's metadata format (`tag`, `include`, optional `exclude`, `prompt`),
so every training caption is true of its image and the held-out set can be scored with GenEval's own rules.
Shapes never touch (a gap of at least `GAP` pixels), so connected components recover them exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (230, 30, 30),
    "yellow": (240, 220, 30),
    "green": (30, 190, 50),
    "blue": (40, 70, 240),
    "purple": (170, 40, 220),
    "white": (245, 245, 245),
}
BACKGROUND = (0, 0, 0)
SHAPES = ("circle", "square", "triangle")
PLURAL = {"circle": "circles", "square": "squares", "triangle": "triangles"}
NUMBERS = {2: "two", 3: "three", 4: "four"}
RELATIONS = ("left of", "right of", "above", "below")
TAGS = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
GAP = 2


@dataclass(frozen=True)
class SceneObject:
    """One rendered shape: class, color name and its pixel box `(x1, y1, x2, y2)`, inclusive-exclusive."""

    shape: str
    color: str
    box: tuple[int, int, int, int]


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def sample_prompt(rng: np.random.Generator, tag: str | None = None) -> dict[str, Any]:
    """A random prompt spec in GenEval's metadata format (the tag is uniform unless given)."""
    tag = tag or str(rng.choice(TAGS))
    shapes, colors = list(SHAPES), list(PALETTE)
    if tag == "single_object":
        s = str(rng.choice(shapes))
        return {"tag": tag, "include": [{"class": s, "count": 1}], "prompt": f"a photo of {_article(s)} {s}"}
    if tag == "two_object":
        a, b = (str(x) for x in rng.choice(shapes, 2, replace=False))
        return {"tag": tag, "include": [{"class": a, "count": 1}, {"class": b, "count": 1}],
                "prompt": f"a photo of {_article(a)} {a} and {_article(b)} {b}"}
    if tag == "counting":
        s, n = str(rng.choice(shapes)), int(rng.integers(2, 5))
        return {"tag": tag, "include": [{"class": s, "count": n}], "exclude": [{"class": s, "count": n + 1}],
                "prompt": f"a photo of {NUMBERS[n]} {PLURAL[s]}"}
    if tag == "colors":
        s, c = str(rng.choice(shapes)), str(rng.choice(colors))
        return {"tag": tag, "include": [{"class": s, "count": 1, "color": c}],
                "prompt": f"a photo of {_article(c)} {c} {s}"}
    if tag == "position":
        a, b = (str(x) for x in rng.choice(shapes, 2, replace=False))
        rel = str(rng.choice(RELATIONS))
        return {"tag": tag, "include": [{"class": b, "count": 1}, {"class": a, "count": 1, "position": [rel, 0]}],
                "prompt": f"a photo of {_article(a)} {a} {rel} {_article(b)} {b}"}
    if tag == "color_attr":
        a, b = (str(x) for x in rng.choice(shapes, 2, replace=False))
        ca, cb = (str(x) for x in rng.choice(colors, 2, replace=False))
        return {"tag": tag, "include": [{"class": a, "count": 1, "color": ca}, {"class": b, "count": 1, "color": cb}],
                "prompt": f"a photo of {_article(ca)} {ca} {a} and {_article(cb)} {cb} {b}"}
    raise ValueError(f"unknown tag {tag!r}; choose one of {TAGS}")


def shape_mask(shape: str, size: int) -> np.ndarray:
    """Boolean `size x size` mask of a shape filling its box (triangles point up)."""
    yy, xx = np.mgrid[0:size, 0:size] + 0.5
    if shape == "square":
        return np.ones((size, size), dtype=bool)
    if shape == "circle":
        r = size / 2
        return (xx - r) ** 2 + (yy - r) ** 2 <= r * r
    if shape == "triangle":
        half_width = xx - size / 2
        return np.abs(half_width) <= yy / 2  # apex at the top centre, base along the bottom row
    raise ValueError(f"unknown shape {shape!r}")


def _fits(box: tuple[int, int, int, int], placed: list[SceneObject]) -> bool:
    x1, y1, x2, y2 = box
    return all(x2 + GAP <= o.box[0] or o.box[2] + GAP <= x1 or y2 + GAP <= o.box[1] or o.box[3] + GAP <= y1
               for o in placed)


def _satisfies(rel: str, obj: tuple[int, int, int, int], target: tuple[int, int, int, int]) -> bool:
    """A clear case of `rel` (stricter than GenEval's rule, so ground truth is always judged correct)."""
    (ax1, ay1, ax2, ay2), (bx1, by1, bx2, by2) = obj, target
    dx = (ax1 + ax2 - bx1 - bx2) / 2
    dy = (ay1 + ay2 - by1 - by2) / 2
    if rel in ("left of", "right of"):
        sep = bx1 - ax2 if rel == "left of" else ax1 - bx2
        return sep >= GAP and abs(dy) <= abs(dx) / 3
    sep = by1 - ay2 if rel == "above" else ay1 - by2
    return sep >= GAP and abs(dx) <= abs(dy) / 3


def render_scene(spec: dict[str, Any], rng: np.random.Generator, size: int = 32,
                 min_shape: int = 11, max_shape: int = 15, max_tries: int = 200
                 ) -> tuple[np.ndarray, list[SceneObject]]:
    """Draw an image (`size x size x 3` uint8) that satisfies `spec`, and the objects it holds.

    Unspecified colors are random; objects never overlap; position relations are placed unambiguously. Shape
    sizes are odd numbers of pixels in [min_shape, max_shape] (smaller for counts of 3 and more).
    """
    for _ in range(max_tries):
        placed: list[SceneObject] = []
        ok = True
        for clause in spec["include"]:
            small = clause["count"] >= 3  # keep room for crowds
            for _k in range(clause["count"]):
                color = clause.get("color") or str(rng.choice(list(PALETTE)))
                box = _place(rng, size, min_shape - 2 * small, max_shape - 3 * small, placed, clause, spec)
                if box is None:
                    ok = False
                    break
                placed.append(SceneObject(clause["class"], color, box))
            if not ok:
                break
        if ok:
            image = np.zeros((size, size, 3), dtype=np.uint8)
            image[:] = BACKGROUND
            for obj in placed:
                x1, y1, x2, y2 = obj.box
                mask = shape_mask(obj.shape, x2 - x1)
                image[y1:y2, x1:x2][mask] = PALETTE[obj.color]
            return image, placed
    raise RuntimeError(f"could not place a scene for {spec['prompt']!r}")


def _place(rng, size, lo, hi, placed, clause, spec) -> tuple[int, int, int, int] | None:
    target = None
    if "position" in clause:
        rel, group = clause["position"]
        target_cls = spec["include"][group]["class"]
        target = next(o.box for o in placed if o.shape == target_cls)
    for _ in range(100):
        s = 2 * int(rng.integers(lo // 2, (hi - 1) // 2 + 1)) + 1  # odd sizes: triangles keep a 1-pixel apex
        x1, y1 = int(rng.integers(0, size - s + 1)), int(rng.integers(0, size - s + 1))
        box = (x1, y1, x1 + s, y1 + s)
        if _fits(box, placed) and (target is None or _satisfies(rel, box, target)):
            return box
    return None


def scene_for(spec: dict[str, Any], seed: int, size: int = 32) -> tuple[np.ndarray, list[SceneObject]]:
    """The scene of `spec` under `seed` (deterministic)."""
    return render_scene(spec, np.random.default_rng(seed), size)


def heldout_prompts(per_tag: int = 16, seed: int = 20241224, repeat: bool = False) -> list[dict[str, Any]]:
    """A fixed evaluation set in GenEval's metadata format, tags in order: up to `per_tag` distinct prompts per tag.

    With `repeat`, every tag gets exactly `per_tag` entries: a tag with fewer distinct prompts (single_object has 3,
    two_object 6, counting 9) cycles through them, and each entry draws its own seeds, so every tag weighs the
    same number of images in the score.
    """
    rng = np.random.default_rng(seed)
    out: list[dict[str, Any]] = []
    for tag in TAGS:
        distinct: dict[str, dict[str, Any]] = {}
        for _ in range(10_000):
            if len(distinct) == per_tag:
                break
            spec = sample_prompt(rng, tag)
            distinct.setdefault(spec["prompt"], spec)
        specs = list(distinct.values())
        out.extend(specs[i % len(specs)] for i in range(per_tag) if repeat or i < len(specs))
    return out
