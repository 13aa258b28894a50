"""95 % confidence intervals for GenEval-style scores: a stratified bootstrap over prompts.

A GenEval-style score is a per-tag accuracy over images and `overall`, the unweighted mean of the tags. The images
of one prompt share its text, so they are not independent: the unit of resampling is the prompt entry (its folder,
`<index>/samples/<k>.png`), drawn with replacement within its tag (the number of prompts per tag is fixed by the
benchmark's design). Two models scored on the same prompts and seeds are compared *paired*: one draw of prompts
serves both, which cancels the prompt difficulty they share, so a retention ratio is far tighter than the ratio of
two independent intervals. Percentile intervals, `resamples` draws from a fixed seed (deterministic).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

import numpy as np

OVERALL = "overall"
METHOD = "stratified bootstrap over prompt entries (percentile)"


@dataclass(frozen=True)
class Interval:
    """A point estimate and its confidence interval `[low, high]`."""

    estimate: float
    low: float
    high: float

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2

    def as_dict(self) -> dict[str, float]:
        return {"estimate": self.estimate, "low": self.low, "high": self.high}


def prompt_entry(row: Mapping[str, Any]) -> str:
    """The prompt entry an image row belongs to: its folder in GenEval's layout (else its prompt text)."""
    filename = row.get("filename")
    return PurePosixPath(str(filename)).parts[0] if filename else str(row["prompt"])


def _per_tag(rows: Sequence[Mapping[str, Any]], value: Callable[[Mapping[str, Any]], float]
             ) -> dict[str, tuple[list[str], np.ndarray, np.ndarray]]:
    """tag -> (prompt entries, sum of values per entry, images per entry), entries in first-seen order."""
    sums: dict[str, dict[str, float]] = {}
    counts: dict[str, dict[str, int]] = {}
    for row in rows:
        tag, entry = str(row["tag"]), prompt_entry(row)
        sums.setdefault(tag, {}).setdefault(entry, 0.0)
        counts.setdefault(tag, {}).setdefault(entry, 0)
        sums[tag][entry] += value(row)
        counts[tag][entry] += 1
    return {tag: (list(s), np.fromiter(s.values(), float), np.fromiter(counts[tag].values(), float))
            for tag, s in sums.items()}


def _correct(row: Mapping[str, Any]) -> float:
    return float(bool(row["correct"]))


def _draws(tables: Mapping[str, tuple[list[str], np.ndarray, np.ndarray]], resamples: int, seed: int
           ) -> dict[str, np.ndarray]:
    """tag -> (resamples, entries) indices of resampled prompt entries (one draw shared by every model scored)."""
    rng = np.random.default_rng(seed)
    return {tag: rng.integers(0, len(entries), size=(resamples, len(entries)))
            for tag, (entries, _, _) in sorted(tables.items())}


def _resampled_scores(sums: np.ndarray, counts: np.ndarray, draws: np.ndarray) -> np.ndarray:
    return sums[draws].sum(axis=1) / counts[draws].sum(axis=1)


def _interval(estimate: float, samples: np.ndarray, level: float) -> Interval:
    finite = samples[np.isfinite(samples)]
    if finite.size == 0:
        return Interval(estimate, float("nan"), float("nan"))
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(finite, [tail, 100 - tail])
    return Interval(estimate, float(low), float(high))


def score_intervals(rows: Sequence[Mapping[str, Any]], resamples: int = 10_000, level: float = 0.95,
                    seed: int = 0, value: Callable[[Mapping[str, Any]], float] = _correct) -> dict[str, Interval]:
    """Each tag's score and `overall` (unweighted mean of the tags), with bootstrap intervals."""
    tables = _per_tag(rows, value)
    if not tables:
        return {}
    draws = _draws(tables, resamples, seed)
    out, boot = {}, []
    for tag, d in draws.items():
        _, sums, counts = tables[tag]
        samples = _resampled_scores(sums, counts, d)
        out[tag] = _interval(float(sums.sum() / counts.sum()), samples, level)
        boot.append(samples)
    out[OVERALL] = _interval(float(np.mean([i.estimate for i in out.values()])), np.mean(boot, axis=0), level)
    return out


def _ratio(a: np.ndarray | float, b: np.ndarray | float) -> np.ndarray | float:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.divide(a, b)


def paired_comparison(rows: Sequence[Mapping[str, Any]], reference: Sequence[Mapping[str, Any]],
                      resamples: int = 10_000, level: float = 0.95, seed: int = 0,
                      value: Callable[[Mapping[str, Any]], float] = _correct) -> dict[str, dict[str, Interval]]:
    """`rows` against `reference` on the same images (same prompt entries and seeds): per tag and overall, the
    retention (score / reference score) and the difference (score - reference score), each with a paired interval.

    Raises ValueError if the two were not scored on the same prompt entries and tags.
    """
    mine, theirs = _per_tag(rows, value), _per_tag(reference, value)
    if {t: (e, n.tolist()) for t, (e, _, n) in mine.items()} != {t: (e, n.tolist()) for t, (e, _, n) in theirs.items()}:
        raise ValueError("the two result sets were not scored on the same prompt entries, tags and image counts")
    if not mine:
        return {}
    draws = _draws(mine, resamples, seed)
    out: dict[str, dict[str, Interval]] = {}
    boot_a, boot_b = [], []
    for tag, d in draws.items():
        (_, sa, n), (_, sb, _) = mine[tag], theirs[tag]
        a, b = _resampled_scores(sa, n, d), _resampled_scores(sb, n, d)
        pa, pb = float(sa.sum() / n.sum()), float(sb.sum() / n.sum())
        out[tag] = {"retention": _interval(float(_ratio(pa, pb)), _ratio(a, b), level),
                    "difference": _interval(pa - pb, a - b, level)}
        boot_a.append(a)
        boot_b.append(b)
    a, b = np.mean(boot_a, axis=0), np.mean(boot_b, axis=0)
    pa = float(np.mean([mine[t][1].sum() / mine[t][2].sum() for t in draws]))
    pb = float(np.mean([theirs[t][1].sum() / theirs[t][2].sum() for t in draws]))
    out[OVERALL] = {"retention": _interval(float(_ratio(pa, pb)), _ratio(a, b), level),
                    "difference": _interval(pa - pb, a - b, level)}
    return out


def as_json(intervals: Mapping[str, Interval], resamples: int, level: float) -> dict[str, Any]:
    """The `intervals` block of `metrics.json`: `{tag: [low, high], ..., "level", "method", "resamples"}`."""
    return {**{k: [i.low, i.high] for k, i in intervals.items()}, "level": level, "method": METHOD,
            "resamples": resamples}


def comparison_json(comparison: Mapping[str, Mapping[str, Interval]], resamples: int, level: float
                    ) -> dict[str, Any]:
    """`{tag: {"retention": {estimate, low, high}, "difference": {...}}, ..., "level", "method", "resamples"}`."""
    return {**{tag: {k: i.as_dict() for k, i in parts.items()} for tag, parts in comparison.items()},
            "level": level, "method": f"paired {METHOD}", "resamples": resamples}
