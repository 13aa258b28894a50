"""Where a call's time goes: the host's cost of issuing it (Python, dispatch, launches) and the device's kernel time.

A call is launch-bound when `host_us` exceeds `device_us`: the GPU waits for the host, and only CUDA graphs or
compiled code (not a faster kernel) will speed it up.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch


def host_us(fn: Callable[[], object], calls: int = 50) -> float:
    """Mean µs the host spends issuing one call: `calls` calls back to back, timed without waiting for the device
    (the launch queue is far deeper than `calls`, so the host never blocks on the GPU)."""
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    sync()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    elapsed = time.perf_counter() - start
    sync()
    return 1e6 * elapsed / calls


def device_us(fn: Callable[[], object], calls: int = 20) -> float:
    """Mean µs of device time (kernels, memsets, copies) per call, from the profiler's device-side events."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
    # device events only: a CPU op's device time would count its kernels a second time
    return sum(e.device_time_total for e in prof.events() if e.device_type == DeviceType.CUDA) / calls
