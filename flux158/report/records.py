"""The results the tables are built from: every stage's `metrics.json`, read from disk (or handed over as parsed
JSON, e.g. from W&B artifacts) into one flat record type."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

KINDS = ("evaluate", "latency", "storage", "quantize")


@dataclass(frozen=True)
class Result:
    """One `metrics.json`: which stage wrote it (`kind`), about what, on which machine, and its metrics."""

    kind: str
    model: str
    quant: str
    benchmark: str | None
    metrics: Mapping[str, Any]
    gpu: str | None = None
    config_hash: str | None = None
    source: str = ""
    extra: Mapping[str, Any] = field(default_factory=dict)


def kind_of(obj: Mapping[str, Any]) -> str | None:
    """The stage that wrote a parsed `metrics.json`, or None for JSON that is not one."""
    if not isinstance(obj, Mapping) or "metrics" not in obj or "model" not in obj:
        return None
    if obj.get("benchmark") == "latency":
        return "latency"
    if obj.get("benchmark") == "storage":
        return "storage"
    if "method" in obj and "layers" in obj:
        return "quantize"
    return "evaluate" if obj.get("benchmark") else None


def result_from_json(obj: Mapping[str, Any], source: str = "") -> Result | None:
    kind = kind_of(obj)
    if kind is None:
        return None
    extra = {k: obj[k] for k in ("method", "evaluator", "fidelity_to_bf16", "images_dir", "smoke", "settings",
                                 "weights", "num_images", "measured_at", "intervals", "retention_vs_bf16",
                                 "quant_settings", "quantize_dir", "random_weights", "paper_protocol",
                                 "protocol_deviations", "pairing_key") if k in obj}
    return Result(kind, str(obj["model"]), str(obj.get("quant", "")), obj.get("benchmark"), obj["metrics"],
                  obj.get("gpu"), obj.get("config_hash"), source, extra)


def results_from_json(objects: Iterable[tuple[Mapping[str, Any], str]]) -> list[Result]:
    """Records of the (parsed JSON, where it came from) pairs that are stage metrics; others are skipped."""
    results = []
    for obj, source in objects:
        result = result_from_json(obj, source)
        if result is None:
            log.debug("tables: %s is not a stage metrics.json; skipped", source)
        else:
            results.append(result)
    return results


def collect(root: Path, exclude: Iterable[Path] = ()) -> list[Result]:
    """Every stage `metrics.json` under `root` (sorted by path, so tables are deterministic), except under
    `exclude` directories. Unreadable files are skipped with a warning."""
    excluded = [Path(e).resolve() for e in exclude]
    pairs = []
    for path in sorted(Path(root).rglob("metrics.json")):
        if any(path.resolve().is_relative_to(e) for e in excluded):
            continue
        try:
            pairs.append((json.loads(path.read_text()), str(path)))
        except (OSError, json.JSONDecodeError) as e:
            log.warning("tables: cannot read %s (%s); skipped", path, e)
    return results_from_json(pairs)


def without_random_weights(results: Iterable[Result]) -> tuple[list[Result], list[Result]]:
    """(kept, refused): quality and quantization results of random-weight models (`model=flux_dev_random`, whose
    images are noise) are refused; latency and storage, which depend on the shapes only, are kept."""
    kept, refused = [], []
    for r in results:
        (refused if r.extra.get("random_weights") and r.kind in ("evaluate", "quantize") else kept).append(r)
    return kept, refused
