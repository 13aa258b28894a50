"""T2I-CompBench's image layout, one folder per category: `samples/<prompt>_<NNNNNN>.png`, the 6-digit counter
global over the category and prompt-major (prompt i, image k -> 10 i + k), since upstream evaluators align results
by that order. The prompt is recovered from the file name, which holds exactly one `_`."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from flux158.eval.errors import IncompleteFolderError
from flux158.eval.images import verify_images

_NAME = re.compile(r"^(?P<prompt>[^_/]+)_(?P<counter>\d{6})\.png$")


@dataclass(frozen=True)
class Sample:
    path: Path
    prompt: str
    counter: int


def list_samples(category_dir: Path) -> list[Sample]:
    """The category's images in counter order (files not named `<prompt>_<NNNNNN>.png` are ignored)."""
    samples_dir = Path(category_dir) / "samples"
    if not samples_dir.is_dir():
        raise FileNotFoundError(f"{samples_dir} does not exist: expected <category>/samples/<prompt>_<NNNNNN>.png")
    found = []
    for path in samples_dir.glob("*.png"):
        match = _NAME.match(path.name)
        if match:
            found.append(Sample(path, match["prompt"], int(match["counter"])))
    return sorted(found, key=lambda s: s.counter)


def check_complete(category_dir: Path, prompts: Sequence[str], samples_per_prompt: int = 10) -> list[Sample]:
    """All samples, after checking that prompt i has images `samples_per_prompt * i + k` for every k, named with
    its text, and that every image verifies.

    Raises:
        IncompleteFolderError: naming the missing (or misnamed) file names.
        BadInputError: naming an image that cannot be read.
    """
    samples = list_samples(category_dir)
    have = {(s.counter, s.prompt) for s in samples}
    missing = [f"{prompt}_{samples_per_prompt * i + k:06d}.png" for i, prompt in enumerate(prompts)
               for k in range(samples_per_prompt) if (samples_per_prompt * i + k, prompt) not in have]
    if missing:
        shown = ", ".join(missing[:5]) + (f" ... ({len(missing)} in all)" if len(missing) > 5 else "")
        raise IncompleteFolderError(f"{category_dir} is incomplete: missing {shown}")
    wanted = {(samples_per_prompt * i + k, p) for i, p in enumerate(prompts) for k in range(samples_per_prompt)}
    samples = [s for s in samples if (s.counter, s.prompt) in wanted]
    verify_images([s.path for s in samples])
    return samples
