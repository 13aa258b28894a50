"""Export a trained toy-world model into a folder (such as the committed `flux158/toyworld/weights`), safely.

The model is copied beside the target and swapped in by two renames, so an interruption leaves either the old export
or the new one, never a half-copied folder. A target that exists and is not an earlier export (no
`training_config.yaml`) is refused: the export never deletes a folder it did not make.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from flux158.artifacts import atomic_write_text, fsync_path, partial_path, remove_stale_partials
from flux158.errors import Flux158Error

EXPORT_RECORD = "training_config.yaml"  # written into every export: how the model was made


def check_export_target(target: Path) -> None:
    """Refuse, before any work, a target that is a file or a non-empty folder other than an earlier export."""
    target = Path(target)
    if target.exists() and (not target.is_dir()
                            or (any(target.iterdir()) and not (target / EXPORT_RECORD).exists())):
        raise Flux158Error(f"toyworld.export_to={target} exists and is not an earlier toy-world export (it has no "
                           f"{EXPORT_RECORD}); the export replaces only its own folders: pick a new or empty path")


def export_model(model_dir: Path, target: Path, record: str) -> Path:
    """Copy `model_dir` to `target` with `record` as its `training_config.yaml`; replaces an earlier export."""
    target = Path(target)
    check_export_target(target)
    remove_stale_partials(target)
    tmp = partial_path(target)
    try:
        shutil.copytree(model_dir, tmp)
        atomic_write_text(tmp / EXPORT_RECORD, record)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    replaced = None
    if target.exists():
        replaced = partial_path(target.with_name(target.name + ".replaced"))
        target.rename(replaced)
    tmp.rename(target)
    fsync_path(target.parent)
    if replaced is not None:
        shutil.rmtree(replaced)
    return target
