"""The one module that talks to Weights & Biases. Disk is the source of truth; W&B mirrors it.

One run per (stage, shard), `group=experiment_name`, `job_type=stage`, the resolved config at init. Offline by
default (no account or network needed; `wandb sync <dir>` uploads later). `logger=none` turns it off.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)


# Open `observed()` blocks: each receives the (stage, summary) pairs stages report, whether or not W&B is on.
_observers: list[list[tuple[str, dict]]] = []


@contextmanager
def observed() -> Iterator[list[tuple[str, dict]]]:
    """Collect the summaries every stage reports while the block runs (the rehearsal reads its unit counts and
    work seconds from them), in order, as (stage, values)."""
    seen: list[tuple[str, dict]] = []
    _observers.append(seen)
    try:
        yield seen
    finally:
        _observers.remove(seen)


class Tracker:
    """Thin handle over a W&B run; every method is a no-op when tracking is disabled (summaries still reach any
    `observed()` block)."""

    def __init__(self, run: Any | None = None, stage: str = "") -> None:
        self.run = run
        self.stage = stage

    @property
    def enabled(self) -> bool:
        return self.run is not None

    def log(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        if self.run is not None:
            self.run.log(dict(metrics), step=step)

    def log_image(self, key: str, path: Path, step: int | None = None, caption: str | None = None) -> None:
        if self.run is not None:
            import wandb

            self.run.log({key: wandb.Image(str(path), caption=caption)}, step=step)

    def summary(self, values: Mapping[str, Any]) -> None:
        for seen in _observers:
            seen.append((self.stage, dict(values)))
        if self.run is not None:
            self.run.summary.update(dict(values))

    def table(self, key: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        """Log a plain `wandb.Table` (e.g. per-layer statistics)."""
        if self.run is None or not rows:
            return
        import wandb

        self.run.log({key: wandb.Table(columns=list(columns), data=[list(r) for r in rows])})

    def image_table(self, key: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], image_column: str) -> None:
        """Log a `wandb.Table`; the cell in `image_column` is a path to an image file."""
        if self.run is None or not rows:
            return
        import wandb

        idx = list(columns).index(image_column)
        table = wandb.Table(columns=list(columns))
        for row in rows:
            cells = list(row)
            cells[idx] = wandb.Image(str(cells[idx]))
            table.add_data(*cells)
        self.run.log({key: table})

    def artifact(self, path: Path, name: str, type: str, metadata: Mapping[str, Any] | None = None) -> None:
        """Log a file or directory as a W&B artifact (by reference to its content)."""
        if self.run is None:
            return
        import wandb

        art = wandb.Artifact(name, type=type, metadata=dict(metadata or {}))
        (art.add_dir if Path(path).is_dir() else art.add_file)(str(path))
        self.run.log_artifact(art)


@contextmanager
def track(cfg: DictConfig, stage: str, shard_label: str = "") -> Iterator[Tracker]:
    """Open one W&B run for `stage` (closed even when the stage fails) and yield its `Tracker`."""
    if not cfg.logger.get("enabled", False):
        yield Tracker(stage=stage)
        return
    import wandb

    out = Path(cfg.paths.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    name = "-".join(p for p in (stage, cfg.model.name, cfg.quant.name, shard_label) if p)
    run = wandb.init(
        project=cfg.logger.project,
        entity=cfg.logger.get("entity"),
        group=cfg.experiment_name,
        job_type=stage,
        name=name,
        tags=list(cfg.logger.get("tags") or []),
        dir=str(out),
        mode=cfg.logger.mode,
        config=OmegaConf.to_container(cfg, resolve=True),
        reinit="finish_previous",
    )
    log.info("W&B run %s (%s) in %s", name, cfg.logger.mode, Path(run.dir).parent)
    exit_code = 1
    try:
        yield Tracker(run, stage)
        exit_code = 0
    finally:
        run.finish(exit_code=exit_code)


def results_from_wandb(path: str, api: Any | None = None) -> list[tuple[dict, str]]:
    """Every `metrics.json` logged as a `results` artifact by the runs of `path` ("entity/project"), with where it
    came from; each artifact is downloaded once (W&B's artifact cache)."""
    if api is None:
        import wandb

        api = wandb.Api()
    found, seen = [], set()
    for run in api.runs(path):
        for artifact in run.logged_artifacts():
            if artifact.type != "results" or artifact.name in seen:
                continue
            seen.add(artifact.name)
            for file in sorted(Path(artifact.download()).rglob("metrics.json")):
                found.append((json.loads(file.read_text()), f"wandb:{path}/{run.id}/{artifact.name}"))
    log.info("tables: %d metrics.json from W&B %s", len(found), path)
    return found
