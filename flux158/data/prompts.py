"""Prompt sets as lists of `PromptItem`: GenEval, T2I-CompBench (val/train), PartiPrompts, the 7,232 calibration set."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flux158.data import sources
from flux158.data.pinned import PinnedFile, fetch

PROMPT_SETS = ("geneval", "t2i_compbench_val", "t2i_compbench_train", "parti", "calibration")


@dataclass(frozen=True)
class PromptItem:
    """One prompt of a benchmark.

    Attributes:
        group: sub-set the prompt belongs to ("" for GenEval and Parti, the category for T2I-CompBench).
        index: 0-based row of the prompt within its group's source file; seeds and file names derive from it.
        prompt: the text given to the model.
        metadata: per-prompt data, e.g. the GenEval metadata record (tag, include, exclude, prompt).
    """

    group: str
    index: int
    prompt: str
    metadata: Mapping[str, Any] = field(default_factory=dict)


def _read_lines(path: Path) -> list[str]:
    """Lines of a text file, CRLF- and trailing-newline-agnostic (several upstream files are CRLF, some lack EOL)."""
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def geneval_prompts_from_records(records: Iterable[Mapping[str, Any]]) -> list[PromptItem]:
    """GenEval-format metadata records (`{"tag", "include", ["exclude"], "prompt"}`) as prompt items."""
    return [PromptItem("", i, str(r["prompt"]), dict(r)) for i, r in enumerate(records)]


def load_geneval(path: Path) -> list[PromptItem]:
    return geneval_prompts_from_records(json.loads(line) for line in _read_lines(path))


def load_parti(path: Path) -> list[PromptItem]:
    """PartiPrompts rows verbatim (10 of them end in a space, kept as in the reference calibration list)."""
    with path.open(encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    return [
        PromptItem("parti", i, row["Prompt"], {"category": row["Category"], "challenge": row["Challenge"]})
        for i, row in enumerate(rows)
    ]


def load_t2i_compbench(paths: Mapping[str, Path], group_prefix: str = "") -> list[PromptItem]:
    """T2I-CompBench prompt files (category -> path), in the given category order.

    Lines are taken as `split("\\t")[0]`, as the upstream generator does.
    """
    return [
        PromptItem(f"{group_prefix}{category}", i, line.split("\t")[0].strip(), {"category": category})
        for category, path in paths.items()
        for i, line in enumerate(_read_lines(path))
    ]


def take_per_group(items: Sequence[PromptItem], limit: int | None) -> list[PromptItem]:
    """The first `limit` prompts of every group, in order (all of them when `limit` is None)."""
    if limit is None:
        return list(items)
    seen: dict[str, int] = {}
    kept = []
    for item in items:
        if seen.get(item.group, 0) < limit:
            kept.append(item)
            seen[item.group] = seen.get(item.group, 0) + 1
    return kept


def load_prompt_set(
    name: str,
    cache_dir: Path,
    mirror_dirs: Sequence[Path] = (),
    categories: Sequence[str] | None = None,
    offline: bool | None = None,
) -> list[PromptItem]:
    """Load a named prompt set, fetching its pinned files into `cache_dir` if needed.

    Args:
        name: one of `PROMPT_SETS`.
        cache_dir: content-addressed cache of pinned files.
        mirror_dirs: local directories searched for the files (by sha256) before downloading.
        categories: T2I-CompBench categories to load (default: all eight, in the canonical order).
        offline: never download (None: follow `HF_HUB_OFFLINE`).

    The `calibration` set is the paper's 7,232 prompts: all 1,632 PartiPrompts in file order, then the eight
    T2I-CompBench train files (700 each) in the order color, shape, texture, spatial, 3d_spatial, non_spatial,
    numeracy, complex. Duplicates are kept, since 1,632 + 5,600 = 7,232 only without de-duplication.
    """

    def get(pinned: PinnedFile) -> Path:
        return fetch(pinned, cache_dir, mirror_dirs, offline=offline)

    def t2i(split: str, cats: Sequence[str], prefix: str = "") -> list[PromptItem]:
        return load_t2i_compbench({c: get(sources.t2i_compbench_file(c, split)) for c in cats}, prefix)

    cats = tuple(categories) if categories else sources.T2I_COMPBENCH_CATEGORIES
    if name == "geneval":
        return load_geneval(get(sources.GENEVAL_METADATA))
    if name in ("t2i_compbench_val", "t2i_compbench_train"):
        return t2i(name.rsplit("_", 1)[1], cats)
    if name == "parti":
        return load_parti(get(sources.PARTI_PROMPTS))
    if name == "calibration":
        parti = load_parti(get(sources.PARTI_PROMPTS))
        return parti + t2i("train", sources.T2I_COMPBENCH_CATEGORIES, prefix="t2i_compbench_train/")
    raise ValueError(f"unknown prompt set {name!r}; choose one of {PROMPT_SETS}")


def load_complex_subtypes(cache_dir: Path, mirror_dirs: Sequence[Path] = (), offline: bool | None = None
                          ) -> tuple[list[str], list[str]]:
    """T2I-CompBench's complex sub-type prompt lists (complex_val_spatial, complex_val_action) for 3-in-1."""
    return tuple(list(_read_lines(fetch(sources.t2i_compbench_complex_subtype_file(kind), cache_dir, mirror_dirs,
                                        offline=offline)))
                 for kind in ("spatial", "action"))

