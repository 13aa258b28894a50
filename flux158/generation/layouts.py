"""On-disk image layouts of the official evaluators, so their scripts can read our images unchanged.

GenEval (djghosh13/geneval):
    <root>/<00000>/metadata.jsonl        that prompt's metadata line, verbatim JSON
    <root>/<00000>/samples/<0000>.png    one file per sample
T2I-CompBench (Karine-Huang/T2I-CompBench), one folder per category:
    <root>/<category>/samples/<prompt>_<NNNNNN>.png   NNNNNN = prompt_index * samples_per_prompt + sample,
    a contiguous, prompt-major counter; the evaluators recover the prompt with `name.split("_")[0]`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from flux158.data.prompts import PromptItem
from flux158.errors import LayoutError


@dataclass(frozen=True)
class GenEvalLayout:
    root: Path

    def prompt_dir(self, item: PromptItem) -> Path:
        return self.root / f"{item.index:05d}"

    def image_path(self, item: PromptItem, sample: int) -> Path:
        return self.prompt_dir(item) / "samples" / f"{sample:04d}.png"

    def sidecar_files(self, item: PromptItem) -> dict[Path, str]:
        if not item.metadata:
            raise LayoutError(f"GenEval layout needs per-prompt metadata; prompt {item.index} has none")
        return {self.prompt_dir(item) / "metadata.jsonl": json.dumps(dict(item.metadata))}


@dataclass(frozen=True)
class T2ICompBenchLayout:
    root: Path
    samples_per_prompt: int

    def image_path(self, item: PromptItem, sample: int) -> Path:
        if "_" in item.prompt or "/" in item.prompt:
            raise LayoutError(f"T2I-CompBench file names cannot hold '_' or '/': {item.prompt!r}")
        if not item.group:
            raise LayoutError("T2I-CompBench layout needs a category (PromptItem.group)")
        counter = item.index * self.samples_per_prompt + sample
        return self.root / item.group / "samples" / f"{item.prompt}_{counter:06d}.png"

    def sidecar_files(self, item: PromptItem) -> dict[Path, str]:
        return {}


ImageLayout = GenEvalLayout | T2ICompBenchLayout
LAYOUTS = ("geneval", "t2i_compbench")


def make_layout(name: str, root: Path, samples_per_prompt: int) -> ImageLayout:
    if name == "geneval":
        return GenEvalLayout(root)
    if name == "t2i_compbench":
        return T2ICompBenchLayout(root, samples_per_prompt)
    raise ValueError(f"unknown image layout {name!r}; choose one of {LAYOUTS}")
