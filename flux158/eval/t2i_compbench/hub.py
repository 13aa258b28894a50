"""Loading the evaluators' Hugging Face models, with one clear error when a repo is neither cached nor reachable."""

from __future__ import annotations

from pathlib import Path

from flux158.eval.errors import WeightsUnavailableError


def from_hub(model_id: str, *classes, revision: str | None = None, cache_dir: Path | None = None) -> list:
    """`cls.from_pretrained(model_id, revision=..., cache_dir=...)` for each of `classes`, in order."""
    try:
        return [cls.from_pretrained(model_id, revision=revision, cache_dir=cache_dir) for cls in classes]
    except OSError as e:  # offline with nothing cached, a missing repo or file
        raise WeightsUnavailableError(f"cannot load {model_id} from the hub or its cache ({e})") from None
