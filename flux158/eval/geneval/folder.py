"""GenEval's image-folder layout: `<root>/<00000>/metadata.jsonl` and `samples/<0000>.png` (only all-digit PNG
names count, as in the official evaluator), and the completeness check that runs before any scoring."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flux158.eval.errors import BadInputError, IncompleteFolderError
from flux158.eval.images import verify_images

__all__ = ["BadInputError", "IncompleteFolderError", "PromptFolder", "check_complete", "prompt_folders"]


@dataclass(frozen=True)
class PromptFolder:
    index: int
    path: Path
    metadata: dict[str, Any]
    samples: tuple[Path, ...]


def prompt_folders(root: Path) -> Iterator[PromptFolder]:
    """Every prompt folder (all-digit name) in index order, with its metadata and all-digit `.png` samples."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a directory of GenEval images")
    for folder in sorted((p for p in root.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name)):
        meta_file = folder / "metadata.jsonl"
        if not meta_file.exists():
            raise IncompleteFolderError(f"{folder} has no metadata.jsonl")
        metadata = _metadata(meta_file)
        samples = tuple(sorted(p for p in (folder / "samples").glob("*.png") if p.stem.isdigit()))
        yield PromptFolder(int(folder.name), folder, metadata, samples)


def _metadata(meta_file: Path) -> dict[str, Any]:
    """The first line of a prompt folder's `metadata.jsonl`: a JSON object with at least `prompt` and `tag`."""
    try:
        lines = meta_file.read_text(encoding="utf-8").splitlines()
        metadata = json.loads(lines[0]) if lines else None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BadInputError(f"{meta_file} is not JSON lines ({e})") from None
    if not isinstance(metadata, dict) or not {"prompt", "tag"} <= metadata.keys():
        raise BadInputError(f"{meta_file}: the first line must be a JSON object with 'prompt' and 'tag' (GenEval's "
                            "evaluation_metadata.jsonl rows)")
    return metadata


def check_complete(root: Path, prompts: int | Iterable[int], samples_per_prompt: int) -> list[PromptFolder]:
    """All prompt folders, after checking that each expected prompt (0..prompts-1, or the given indices) has
    `samples_per_prompt` images, and that every image verifies.

    Raises:
        IncompleteFolderError: naming the missing prompt indices and the prompts with too few samples.
        BadInputError: naming a metadata file or an image that cannot be read.
    """
    folders = list(prompt_folders(root))
    present = {f.index for f in folders}
    expected = set(range(prompts)) if isinstance(prompts, int) else set(prompts)
    missing = sorted(expected - present)
    folders = [f for f in folders if f.index in expected]  # other folders (e.g. of a larger run) are not scored
    short = [(f.index, len(f.samples)) for f in folders if len(f.samples) < samples_per_prompt]
    if missing or short:
        def head(items: list) -> str:
            return ", ".join(map(str, items[:10])) + (f" ... ({len(items)} in all)" if len(items) > 10 else "")

        parts = []
        if missing:
            parts.append(f"missing prompt folders {head([f'{i:05d}' for i in missing])}")
        if short:
            parts.append(f"too few samples (want {samples_per_prompt}) in {head([f'{i:05d}: {n}' for i, n in short])}")
        raise IncompleteFolderError(f"{root} is incomplete: {'; '.join(parts)}. Finish generation (it resumes) "
                                    "or pass the expected sizes of a smaller run")
    verify_images([p for f in folders for p in f.samples])
    return folders
