"""Who does what when `accelerate launch`/torchrun starts several processes on one config.

Three kinds of work, and the rule for each:
- a share: every rank takes `shard(items, rank, world)` (generate, encode, calibrate), then all ranks meet at a
  barrier before anyone reads what all wrote;
- data-parallel work: every rank computes, the collectives keep them in step (distill's stages);
- work done once: the main process does it while the others wait (quantize's checkpoint, evaluate, tables, ...).

A branch every rank must take the same way is decided on the main process and broadcast (`main_decides`), never
by each rank reading the disk at its own moment. Barriers wait `barrier_timeout_hours` (the slowest shard, or the
main process's evaluation), not torch's 30-minute default.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import TypeVar

import torch

T = TypeVar("T")
DEFAULT_TIMEOUT_HOURS = 24.0


def start(cpu: bool = False, timeout_hours: float = DEFAULT_TIMEOUT_HOURS):
    """Join the process group (a no-op in a single process) with the barrier timeout; returns accelerate's state.
    The first call wins: later `state()` calls return the same object."""
    from accelerate import PartialState

    return PartialState(cpu=cpu or not torch.cuda.is_available(), timeout=timedelta(hours=timeout_hours))


def state():
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())


def process() -> tuple[int, int, torch.device]:
    """(process index, number of processes, device), so `accelerate launch` shards work."""
    s = state()
    return s.process_index, s.num_processes, s.device


def num_processes() -> int:
    return state().num_processes


def is_main_process() -> bool:
    return state().is_main_process


def wait_for_everyone() -> None:
    state().wait_for_everyone()


def main_decides(decide: Callable[[], T]) -> T:
    """`decide()` on the main process, its answer on every rank (one broadcast; no collective in one process)."""
    if num_processes() == 1:
        return decide()
    from accelerate.utils import broadcast_object_list

    answer = [decide() if is_main_process() else None]
    broadcast_object_list(answer, from_process=0)
    return answer[0]


def finish() -> None:
    """Leave the process group cleanly at the end of a multi-process run."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
