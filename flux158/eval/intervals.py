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
    return pooled_comparison([rows], [reference], resamples, level, seed, value)


def pooled_comparison(runs: Sequence[Sequence[Mapping[str, Any]]],
                      reference_runs: Sequence[Sequence[Mapping[str, Any]]], resamples: int = 10_000,
                      level: float = 0.95, seed: int = 0, value: Callable[[Mapping[str, Any]], float] = _correct
                      ) -> dict[str, dict[str, Interval]]:
    """Two methods, each run several times (e.g. quantizer seeds), on the same images: the difference and the
    retention of their scores averaged over runs, with intervals that count the run-to-run spread as well.

    Each bootstrap draw resamples the prompt entries (one draw shared by every run, as in `paired_comparison`)
    and, for each method on its own, its runs with replacement (one pick shared by every tag: a run is one
    model). With one run per side this is `paired_comparison`. With few runs the run-level resampling
    understates their spread somewhat (by the factor (n - 1) / n in variance).

    Raises ValueError if any run was not scored on the same prompt entries, tags and image counts.
    """
    if not runs or not reference_runs:
        raise ValueError("pooled_comparison needs at least one run per side")
    tables = [[_per_tag(rows, value) for rows in side] for side in (runs, reference_runs)]
    layout = {t: (e, n.tolist()) for t, (e, _, n) in tables[0][0].items()}
    if any({t: (e, n.tolist()) for t, (e, _, n) in table.items()} != layout for side in tables for table in side):
        raise ValueError("the result sets were not scored on the same prompt entries, tags and image counts")
    if not layout:
        return {}
    draws = _draws(tables[0][0], resamples, seed)
    rng = np.random.default_rng([seed, 1])
    picks = [rng.integers(0, len(side), size=(resamples, len(side))) for side in tables]
    out: dict[str, dict[str, Interval]] = {}
    boots: list[list[np.ndarray]] = [[], []]
    points: list[list[float]] = [[], []]
    for tag, d in draws.items():
        for k, (side, pick) in enumerate(zip(tables, picks, strict=True)):
            per_run = np.stack([_resampled_scores(t[tag][1], t[tag][2], d) for t in side], axis=1)
            boots[k].append(np.take_along_axis(per_run, pick, axis=1).mean(axis=1))
            points[k].append(float(np.mean([t[tag][1].sum() / t[tag][2].sum() for t in side])))
        (a, b), (pa, pb) = (boots[0][-1], boots[1][-1]), (points[0][-1], points[1][-1])
        out[tag] = {"retention": _interval(float(_ratio(pa, pb)), _ratio(a, b), level),
                    "difference": _interval(pa - pb, a - b, level)}
    a, b = np.mean(boots[0], axis=0), np.mean(boots[1], axis=0)
    pa, pb = float(np.mean(points[0])), float(np.mean(points[1]))
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
