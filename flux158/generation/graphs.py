"""The pipeline's transformer replayed from CUDA graphs: each distinct call (tensor shapes and dtypes, the other
arguments) is captured once (`flux158.latency.GraphedStep`) and every later step and image replays it, so a
denoising step pays no per-kernel host launches (what the launch-bound small-M ternary linears need).

Outputs are copied out of the graph's static buffers, so a caller may hold two calls' results at once (true CFG).
Calls with gradients enabled or positional arguments run eagerly.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from flux158.latency import GraphedStep

log = logging.getLogger(__name__)


def call_signature(kwargs: dict) -> tuple:
    """What a captured graph is valid for: each tensor's shape, dtype and device, every other argument's value."""
    return tuple(sorted((key, (tuple(v.shape), v.dtype, v.device) if torch.is_tensor(v) else repr(v))
                        for key, v in kwargs.items()))


@dataclass
class GraphStats:
    """Graphs captured (one per call signature), calls replayed, and calls that ran eagerly."""

    captured: int = 0
    replayed: int = 0
    eager: int = 0
    failures: list[str] = field(default_factory=list)


def _copied(out):
    """The graph's outputs copied out of its static buffers (a tuple, a diffusers output, or a tensor)."""
    if torch.is_tensor(out):
        return out.clone()
    if isinstance(out, tuple):
        return tuple(_copied(o) for o in out)
    if isinstance(out, dict):  # diffusers' BaseOutput
        return type(out)(**{k: _copied(v) for k, v in out.items()})
    return out


@contextmanager
def cuda_graphed(transformer: torch.nn.Module, fall_back: bool = True) -> Iterator[GraphStats]:
    """Within the block, calls of `transformer` (on a CUDA device) replay CUDA graphs.

    With `fall_back`, a signature whose capture fails runs eagerly from then on (logged once, in `failures`);
    otherwise the error propagates.
    """
    if not next(transformer.parameters()).is_cuda:
        raise ValueError("CUDA graphs need the transformer on a CUDA device")
    original = transformer.forward  # the bound method: capture must not re-enter the patched one
    graphs: dict[tuple, GraphedStep | None] = {}
    stats = GraphStats()

    def forward(*args, **kwargs):
        if args or torch.is_grad_enabled():
            stats.eager += 1
            return original(*args, **kwargs)
        key = call_signature(kwargs)
        if key not in graphs:
            try:
                graphs[key] = GraphedStep(original, kwargs)
                stats.captured += 1
            except Exception as err:  # noqa: BLE001 - any capture failure: eager is always correct
                if not fall_back:
                    raise
                graphs[key] = None
                stats.failures.append(f"{type(err).__name__}: {err}")
                log.warning("CUDA graph capture failed (%s: %s); this call shape runs eagerly", type(err).__name__,
                            err)
        step = graphs[key]
        if step is None:
            stats.eager += 1
            return original(**kwargs)
        stats.replayed += 1
        return _copied(step(**kwargs))

    transformer.forward = forward
    try:
        yield stats
    finally:
        del transformer.forward  # the class's forward again
        graphs.clear()
