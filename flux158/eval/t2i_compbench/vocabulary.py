"""The evaluators' word lists: numeracy's `new_objects.txt` ("singular - plural" per line) and UniDet's 722 class
names (one per line, in class-id order)."""

from __future__ import annotations

from pathlib import Path

UNIDET_CLASSES = 722


def read_numeracy_objects(path: Path) -> tuple[list[str], list[str]]:
    """(singular, plural) object names, lowercased as upstream reads them."""
    pairs = [line.lower().split(" - ") for line in Path(path).read_text().splitlines() if line.strip()]
    bad = [p for p in pairs if len(p) != 2]
    if bad:
        raise ValueError(f"{path}: expected 'singular - plural' lines, got {bad[:3]}")
    return [p[0].strip() for p in pairs], [p[1].strip() for p in pairs]


def read_unidet_labels(path: Path) -> list[str]:
    labels = Path(path).read_text().splitlines()
    if len(labels) != UNIDET_CLASSES:
        raise ValueError(f"{path}: expected {UNIDET_CLASSES} UniDet class names, got {len(labels)}")
    return labels
