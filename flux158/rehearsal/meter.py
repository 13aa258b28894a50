"""What a block of work costs: wall seconds, peak GPU memory (allocated and reserved), peak host memory (resident
set, sampled) and the disk it added to the directories it wrote."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psutil
import torch

from flux158.artifacts import tree_bytes


@dataclass
class Usage:
    """Filled in when the `measure` block ends (also when it raises). GPU peaks are None off CUDA."""

    seconds: float = 0.0
    peak_gpu_bytes: int | None = None
    peak_gpu_reserved_bytes: int | None = None
    peak_host_bytes: int = 0
    disk_bytes: int = 0


class _HostPeak(threading.Thread):
    """Samples this process's resident set size every `interval` seconds until stopped; keeps the maximum."""

    def __init__(self, interval: float) -> None:
        super().__init__(daemon=True)
        self.interval, self.process = interval, psutil.Process()
        self.peak = self.process.memory_info().rss
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(self.interval):
            self.peak = max(self.peak, self.process.memory_info().rss)

    def stop(self) -> int:
        self._stop_event.set()
        self.join()
        return max(self.peak, self.process.memory_info().rss)


@contextmanager
def measure(device: torch.device, disk: Sequence[Path] = (), interval: float = 0.05) -> Iterator[Usage]:
    """Measure the block: wall time, the GPU peaks on `device` (peak statistics reset at entry), the host peak
    (sampled every `interval` s, so a spike shorter than that can be missed) and the bytes added under `disk`."""
    usage = Usage()
    cuda = torch.device(device).type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    disk_before = tree_bytes(disk)
    host = _HostPeak(interval)
    host.start()
    start = time.perf_counter()
    try:
        yield usage
    finally:
        if cuda:
            torch.cuda.synchronize(device)
            usage.peak_gpu_bytes = torch.cuda.max_memory_allocated(device)
            usage.peak_gpu_reserved_bytes = torch.cuda.max_memory_reserved(device)
        usage.seconds = time.perf_counter() - start
        usage.peak_host_bytes = host.stop()
        usage.disk_bytes = tree_bytes(disk) - disk_before
