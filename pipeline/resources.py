"""Process memory: peak resident set size per stage (Linux), and what a study is expected to need.

Linux keeps the process's high-water mark of resident memory (``VmHWM`` in /proc/self/status)
and lets a process reset it (writing ``5`` to /proc/self/clear_refs), so the peak of each stage
is measured exactly, not sampled. Elsewhere, or when the reset is refused, the peak is the
process's lifetime maximum (``ru_maxrss``), which is then an upper bound for later stages.
"""
from __future__ import annotations

import os
import resource
import sys
from pathlib import Path

_STATUS = Path("/proc/self/status")
_CLEAR = Path("/proc/self/clear_refs")


def reset_peak() -> bool:
    """Start a new peak measurement; False where the platform cannot."""
    try:
        _CLEAR.write_text("5")
        return True
    except OSError:
        return False


def _status_kb(field: str) -> int | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def peak_rss_mb() -> float:
    """Peak resident memory since the last :func:`reset_peak` (else since the process began), MiB."""
    kb = _status_kb("VmHWM")
    if kb is None:
        ru = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        kb = ru // 1024 if sys.platform == "darwin" else ru
    return round(kb / 1024.0, 1)


def current_rss_mb() -> float:
    kb = _status_kb("VmRSS")
    return round((kb or 0) / 1024.0, 1)


class StagePeaks:
    """Peak RSS per stage: ``with peaks.stage("mesh"): ...`` then ``peaks.mb`` = {stage: MiB}."""

    def __init__(self):
        self.mb: dict[str, float] = {}

    def stage(self, name: str):
        return _Stage(self, name)


class _Stage:
    def __init__(self, owner: StagePeaks, name: str):
        self.owner, self.name = owner, name

    def __enter__(self):
        reset_peak()
        return self

    def __exit__(self, *exc):
        self.owner.mb[self.name] = peak_rss_mb()
        return False


def available_memory_mb() -> float | None:
    """Memory the machine can still give (MemAvailable), MiB; None where unknown."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 1024.0
    except (OSError, ValueError, IndexError):
        return None
    return None


def total_memory_mb() -> float | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20
    except (ValueError, OSError, AttributeError):
        return None


def release_memory() -> None:
    """Give freed heap memory back to the system (glibc keeps freed arenas mapped: after the
    network stage of a clinical CT, ~300 MB that later stages would otherwise stack on)."""
    import gc

    gc.collect()
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):
            pass
