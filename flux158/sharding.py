"""Work splitting and seeds that make every shard split produce the same images."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import TypeVar

from flux158.errors import ConfigError

T = TypeVar("T")


def seed_for(base_seed: int, prompt_index: int, sample_index: int) -> int:
    """The generator seed of one image: a function of (base seed, prompt index, sample index) only.

    It does not depend on the model, the shard split or the batch, so BF16 and quantized runs start from the same
    noise. Hashing (rather than e.g. `base + 1000 * p + s`) keeps seeds of neighbouring images unrelated.
    """
    digest = hashlib.sha256(f"flux158/{base_seed}/{prompt_index}/{sample_index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def combine_shards(index: int, count: int, process_index: int = 0, num_processes: int = 1) -> tuple[int, int]:
    """Fold a job-level shard (`shard.index`/`shard.count`) and a process rank into one global shard."""
    if count < 1 or not 0 <= index < count:
        raise ConfigError(f"shard.index={index} must be in [0, shard.count={count}) and shard.count >= 1")
    if not 0 <= process_index < num_processes:
        raise ValueError(f"process index {process_index} must be in [0, {num_processes})")
    return index * num_processes + process_index, count * num_processes


def shard(items: Sequence[T], index: int, count: int) -> list[T]:
    """Round-robin share `index` of `count`: shards are disjoint, cover every item and are balanced."""
    if not 0 <= index < count:
        raise ValueError(f"shard index {index} must be in [0, {count})")
    return list(items[index::count])
