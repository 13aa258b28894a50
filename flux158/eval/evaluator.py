"""One interface for every benchmark's evaluator: build it once from plain settings, then `score(folder)` gives the
rows of `results.jsonl`, `summarize(rows)` the scores, and `description` says what scored (models, revisions,
protocol choices) for `metrics.json`. The evaluate stage and each benchmark's CLI build the same object."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from flux158.eval.geneval.rules import summarize as pass_fail_summary

if TYPE_CHECKING:
    from flux158.eval.toyworld.detector import ToyDetector


class Evaluator(Protocol):
    description: dict[str, Any]

    def score(self, folder: Path) -> list[dict[str, Any]]: ...

    def summarize(self, rows: list[dict[str, Any]]) -> dict[str, float]: ...


def metrics_record(evaluator: Evaluator, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """What every `metrics.json` of an evaluation holds, whoever wrote it: images, scores, the evaluator."""
    return {"num_images": len(rows), "metrics": evaluator.summarize(rows), "evaluator": evaluator.description}


@dataclass
class GenEvalEvaluator:
    """GenEval's protocol over a folder in its layout, holding the expected prompt indices (`GenEvalScorer`)."""

    scorer: Any  # flux158.eval.geneval.scoring.GenEvalScorer
    prompts: int | Sequence[int] = 553
    samples_per_prompt: int = 4

    @property
    def description(self) -> dict[str, Any]:
        return {"evaluator": "geneval", **self.scorer.description}

    def score(self, folder: Path) -> list[dict[str, Any]]:
        return self.scorer.score_folder(folder, self.prompts, self.samples_per_prompt)

    def summarize(self, rows: list[dict[str, Any]]) -> dict[str, float]:
        return pass_fail_summary(rows)


@dataclass
class ToyWorldEvaluator:
    """The toy world's exact detector under GenEval's rules. The scene palette and background come from the caller
    (the evaluators sit below the library and cannot import the toy world's scene definitions)."""

    palette: dict[str, tuple[int, int, int]]
    background: tuple[int, int, int]
    threshold: float = 0.3
    counting_threshold: float = 0.9
    min_area: int | None = None  # the detector's smallest object in pixels; None: its default

    @property
    def description(self) -> dict[str, Any]:
        return {"evaluator": "toyworld (exact detector)", "min_area": self.detector().min_area}

    def detector(self) -> ToyDetector:
        """The toy detector at this evaluator's `min_area`."""
        from flux158.eval.toyworld.detector import ToyDetector

        extra = {} if self.min_area is None else {"min_area": self.min_area}
        return ToyDetector(self.palette, self.background, **extra)

    def score(self, folder: Path) -> list[dict[str, Any]]:
        from flux158.eval.toyworld.scoring import score_folder

        return score_folder(self.detector(), folder, self.threshold, self.counting_threshold)

    def summarize(self, rows: list[dict[str, Any]]) -> dict[str, float]:
        return pass_fail_summary(rows)
