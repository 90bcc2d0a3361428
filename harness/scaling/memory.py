"""Peak memory over a stretch of work: CUDA's allocator peak, or the process's RSS high-water
mark on CPU (reset through ``/proc/self/clear_refs`` after ``malloc_trim``)."""

from __future__ import annotations

import ctypes
import resource

import torch


class PeakMemory:
    """Peak memory over a stretch of work on ``device``: ``reset()``, work, ``read()``.

    ``read`` returns (peak total bytes, peak bytes above the level at ``reset``); ``measure``
    names the source (``cuda_max_allocated`` | ``rss_high_water`` | ``process_max_rss``).
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.baseline = 0
        self._libc = None
        if device.type == "cuda":
            self.measure = "cuda_max_allocated"
            return
        self.measure = "rss_high_water" if self._can_reset_rss() else "process_max_rss"
        try:  # glibc: malloc_trim(0) gives freed heap pages back before each measurement
            self._libc = ctypes.CDLL("libc.so.6")
            self._libc.malloc_trim  # noqa: B018 - raises AttributeError where it is missing
        except (OSError, AttributeError):
            self._libc = None

    @staticmethod
    def _can_reset_rss() -> bool:
        try:
            with open("/proc/self/clear_refs", "w") as handle:
                handle.write("5")
            return True
        except OSError:
            return False

    @staticmethod
    def _status_bytes(field: str) -> int:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
        return 0

    def reset(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.baseline = int(torch.cuda.memory_allocated(self.device))
            return
        if self._libc is not None:
            self._libc.malloc_trim(0)
        if self.measure == "rss_high_water":
            with open("/proc/self/clear_refs", "w") as handle:
                handle.write("5")
            self.baseline = self._status_bytes("VmRSS")
        else:
            self.baseline = int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024

    def read(self) -> tuple[int, int]:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            peak = int(torch.cuda.max_memory_allocated(self.device))
        elif self.measure == "rss_high_water":
            peak = self._status_bytes("VmHWM")
        else:
            peak = int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024
        return peak, max(peak - self.baseline, 0)
