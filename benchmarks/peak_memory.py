"""Peak memory of a stretch of code, measured the same way for every arm of a benchmark.

- GPU: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``, less what was
  allocated when the stretch began.
- CPU: the kernel's resident-set high-water mark (``VmHWM`` in /proc/self/status, reset through
  /proc/self/clear_refs), less the resident set when the stretch began. Before each stretch the
  garbage is collected and glibc hands its free heap back to the kernel (``malloc_trim``), so memory
  an earlier arm freed does not hide this arm's use. (``tracemalloc`` would not see torch's
  allocations at all.) It counts what the process touched, allocator slack included, like the
  GPU allocator's reserved memory rather than its allocated bytes.
"""
from __future__ import annotations

import ctypes
import gc
from pathlib import Path

import torch

GiB = 1024**3


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def _give_back_free_heap() -> None:
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:  # not glibc: freed memory may stay resident and the next arm reads low
        pass


class PeakMemory:
    """``with PeakMemory(device) as pm: ...`` then ``pm.peak_bytes`` / ``pm.gib``."""

    def __init__(self, device: torch.device | str):
        self.device = torch.device(device)
        self.peak_bytes = 0
        self._base = 0

    @property
    def source(self) -> str:
        if self.device.type == "cuda":
            return "torch.cuda.max_memory_allocated above the allocation at the start"
        return "RSS high-water (VmHWM, reset via /proc/self/clear_refs) above the RSS at the start, after malloc_trim"

    def __enter__(self) -> "PeakMemory":
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
        else:
            _give_back_free_heap()
            Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
            self._base = _status("VmRSS")
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_bytes = torch.cuda.max_memory_allocated(self.device) - self._base
        else:
            self.peak_bytes = _status("VmHWM") - self._base

    @property
    def gib(self) -> float:
        return self.peak_bytes / GiB
