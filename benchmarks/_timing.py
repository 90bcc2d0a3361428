"""Wall-clock timing shared by the benchmark scripts (imported as ``_timing``: a script's own
folder is first on ``sys.path`` when it is run as ``python benchmarks/<script>.py``)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch


def synchronize(device: torch.device | None) -> None:
    """Wait for queued CUDA work on ``device`` (no-op elsewhere), so a timer reads finished work."""
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)


def seconds_per_call(
    fn: Callable[[], object], calls: int, device: torch.device | None = None
) -> float:
    """Mean wall-clock seconds of ``fn()`` over ``calls`` consecutive calls (CUDA synchronised)."""
    synchronize(device)
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    synchronize(device)
    return (time.perf_counter() - start) / calls


def median_seconds(
    fn: Callable[[], object], repeats: int, device: torch.device | None = None
) -> float:
    """One warm-up call, then the median over ``repeats`` separately timed calls."""
    fn()
    return statistics.median(seconds_per_call(fn, 1, device) for _ in range(repeats))
