"""From a rehearsal's measurements to the paper run's resource plan: unit costs, GPU-hours, disk and peak memory.

Every rehearsed stage is measured whole (wall seconds, GPU and host peaks, disk added) and by its own timing of the
work it did (seconds and units, excluding model loading). The extrapolation is linear in the units, with the
load paid once per job:

    GPU-hours = (wall - work + work / units x full units) / 3600,   disk = disk / units x full units.

The block-wise quantizers have two parts, one growing with the calibration rows (block forwards, Hessians) and one
with the configured steps (`distill` training) or fixed (`gptq` solves); `blockwise_plan` scales each by its own count.
GPU peaks do not grow with the units (fixed batch sizes); host peaks of the block-wise methods grow with the rows
they hold (`rows_host_bytes` each).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

GB = 1e9
GIB = 2**30


@dataclass(frozen=True)
class Measured:
    """One rehearsed stage: what it did (`units` of `unit` in `work_seconds`) and what the whole stage cost."""

    name: str
    stage: str
    unit: str
    units: float
    work_seconds: float
    seconds: float
    peak_gpu_bytes: int | None = None
    peak_gpu_reserved_bytes: int | None = None
    peak_host_bytes: int = 0
    disk_bytes: int = 0
    error: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def seconds_per_unit(self) -> float | None:
        return self.work_seconds / self.units if self.units else None

    @property
    def fixed_seconds(self) -> float:
        """The part of the stage that does not grow with the units (loading, set-up, writing metrics)."""
        return max(self.seconds - self.work_seconds, 0.0)


@dataclass(frozen=True)
class Estimate:
    """One stage of the paper run, extrapolated from a `Measured`."""

    name: str
    unit: str
    units: float
    seconds_per_unit: float | None
    gpu_hours: float | None
    disk_gb: float
    peak_gpu_bytes: int | None
    peak_host_bytes: int
    basis: str

    def fits(self, gpu_bytes: float, host_bytes: float) -> bool | None:
        """Whether the measured peaks fit the budgets (None when the GPU peak was not measured)."""
        if self.peak_gpu_bytes is None:
            return None
        return self.peak_gpu_bytes <= gpu_bytes and self.peak_host_bytes <= host_bytes


def linear_plan(measured: Measured, full_units: float, name: str | None = None) -> Estimate:
    """Scale the work linearly to `full_units`; the fixed part is paid once."""
    per_unit = measured.seconds_per_unit
    hours = None if per_unit is None else (measured.fixed_seconds + per_unit * full_units) / 3600
    disk = measured.disk_bytes / measured.units * full_units if measured.units else 0.0
    return Estimate(name or measured.name, measured.unit, full_units, per_unit, hours, disk / GB,
                    measured.peak_gpu_bytes, measured.peak_host_bytes,
                    f"{measured.units:g} {measured.unit}s measured, linear in the {measured.unit}s")


def blockwise_plan(measured: Measured, full_rows: int, rows_host_bytes: int, block_steps: int = 0,
                   e2e_steps: int = 0) -> Estimate:
    """A block-wise quantizer (`distill`, `gptq`) at `full_rows` calibration rows and the method's own step counts.

    `measured.extra` holds the quantize stage's `timings` (blockwise_seconds, blockwise_rows, blocks and, for
    distill, e2e_seconds, e2e_steps) and `blocks` (per block: `train_seconds` and `steps`, or `solve_seconds`).
    Per block: step-proportional (distill training) or fixed (gptq solves) seconds, plus row-proportional
    seconds (the block forwards over every row). Stage 2 scales with its steps. The host holds
    `rows_host_bytes` per row (teacher records and the block-boundary states).
    """
    timings, blocks = measured.extra["timings"], measured.extra["blocks"]
    rows = timings["blockwise_rows"]
    stepped = sum(b.get("train_seconds", 0.0) / b["steps"] * block_steps for b in blocks if b.get("steps"))
    fixed = sum(b.get("solve_seconds", 0.0) for b in blocks)
    measured_steps = sum(b.get("train_seconds", 0.0) for b in blocks)
    per_row = max(timings["blockwise_seconds"] - measured_steps - fixed, 0.0) / rows
    e2e = timings["e2e_seconds"] / timings["e2e_steps"] * e2e_steps if timings.get("e2e_steps") else 0.0
    work = stepped + fixed + per_row * full_rows + e2e
    n_blocks = timings["blocks"]
    host = measured.peak_host_bytes + max(full_rows - rows, 0) * rows_host_bytes
    basis = (f"{rows} rows, {n_blocks} blocks measured; per block {per_row * full_rows / n_blocks:.0f} s of "
             f"row passes at {full_rows} rows" + (f" + {stepped / n_blocks:.0f} s for {block_steps} training steps"
                                                   if block_steps else f" + {fixed / n_blocks:.1f} s of solves")
             + (f"; stage 2: {e2e:.0f} s for {e2e_steps} steps" if e2e_steps else ""))
    return Estimate(measured.name, "block", n_blocks, work / n_blocks, (measured.fixed_seconds + work) / 3600,
                    measured.disk_bytes / GB, measured.peak_gpu_bytes, host, basis)


def block_state_bytes(image_tokens: int, text_tokens: int, inner_dim: int, element_bytes: int = 2) -> int:
    """One calibration row at a block boundary: the image and text streams, plus the conditioning vector."""
    return (image_tokens + text_tokens + 1) * inner_dim * element_bytes


def totals(estimates: Sequence[Estimate]) -> dict[str, float]:
    hours = [e.gpu_hours for e in estimates if e.gpu_hours is not None]
    return {"gpu_hours": sum(hours), "disk_gb": sum(e.disk_gb for e in estimates)}


def _gib(value: float | None) -> str:
    return "-" if value is None else f"{value / GIB:.1f}"


def to_json(measured: Sequence[Measured], estimates: Sequence[Estimate], header: Mapping[str, Any],
            gpu_budget_bytes: float, host_budget_bytes: float) -> dict[str, Any]:
    return {**header, "gpu_budget_bytes": gpu_budget_bytes, "host_budget_bytes": host_budget_bytes,
            "measured": [asdict(m) | {"seconds_per_unit": m.seconds_per_unit} for m in measured],
            "paper_run": [asdict(e) | {"fits": e.fits(gpu_budget_bytes, host_budget_bytes)} for e in estimates],
            "totals": totals(estimates)}


def to_markdown(measured: Sequence[Measured], estimates: Sequence[Estimate], header: Mapping[str, Any],
                gpu_budget_bytes: float, host_budget_bytes: float) -> str:
    """`resources.md`: what was measured, then the paper run's plan, with the GPU named."""
    lines = [f"# Resource plan: {header.get('model')} on {header.get('gpu')}", "",
             f"Commit {header.get('git_commit')}, torch {header.get('torch')}, {header.get('created')}. "
             "Random weights of the real shapes: costs, not quality.", "",
             "## Measured (the rehearsal)", "",
             "| stage | units | s / unit | wall s | peak GPU GiB (alloc / reserved) | peak host GiB | disk MB "
             "| error |",
             "|---|---|---|---|---|---|---|---|"]
    for m in measured:
        per = "-" if m.seconds_per_unit is None else f"{m.seconds_per_unit:.3g}"
        gpu = f"{_gib(m.peak_gpu_bytes)} / {_gib(m.peak_gpu_reserved_bytes)}"
        lines.append(f"| {m.name} | {m.units:g} {m.unit} | {per} | {m.seconds:.1f} | {gpu} | "
                     f"{_gib(m.peak_host_bytes)} | {m.disk_bytes / 1e6:.1f} | {m.error or ''} |")
    budget = f"{gpu_budget_bytes / GB:.0f} GB GPU, {host_budget_bytes / GB:.0f} GB host"
    lines += ["", f"## The paper run (budget: {budget})", "",
              f"| stage | units | s / unit | hours on {header.get('gpu')} | disk GB | peak GPU GiB | peak host GiB "
              "| fits | basis |",
              "|---|---|---|---|---|---|---|---|---|"]
    for e in estimates:
        fits = {True: "yes", False: "**no**", None: "not measured"}[e.fits(gpu_budget_bytes, host_budget_bytes)]
        per = "-" if e.seconds_per_unit is None else f"{e.seconds_per_unit:.3g}"
        hours = "-" if e.gpu_hours is None else f"{e.gpu_hours:.2f}"
        lines.append(f"| {e.name} | {e.units:g} {e.unit} | {per} | {hours} | {e.disk_gb:.1f} | "
                     f"{_gib(e.peak_gpu_bytes)} | {_gib(e.peak_host_bytes)} | {fits} | {e.basis} |")
    total = totals(estimates)
    lines += ["", f"Total: {total['gpu_hours']:.1f} hours on {header.get('gpu')}, {total['disk_gb']:.1f} GB of disk.",
              *(f"\n{note}" for note in header.get("notes", [])), ""]
    return "\n".join(lines)
