"""Loading the evaluators' Hugging Face models, with one clear error when a repo is neither cached nor reachable."""

from __future__ import annotations

from pathlib import Path

from flux158.eval import pins
from flux158.eval.errors import WeightsUnavailableError


def from_hub(model_id: str, *classes, revision: str | None = None, cache_dir: Path | None = None) -> list:
    """`cls.from_pretrained(model_id, revision=..., cache_dir=...)` for each of `classes`, in order, at `revision`
    or else the repo's pin (`flux158.eval.pins`)."""
    revision = pins.revision(model_id, revision)
    try:
        return [cls.from_pretrained(model_id, revision=revision, cache_dir=cache_dir) for cls in classes]
    except OSError as e:  # offline with nothing cached, a missing repo or file
        at = f" at revision {revision}" if revision else ""
        raise WeightsUnavailableError(f"cannot load {model_id}{at} from the hub or its cache ({e})") from None
