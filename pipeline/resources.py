"""Process memory: peak resident set size per stage (Linux), and what a study is expected to need.

Linux keeps the process's high-water mark of resident memory (``VmHWM`` in /proc/self/status)
and lets a process reset it (writing ``5`` to /proc/self/clear_refs), so the peak of each stage
is measured exactly, not sampled. Elsewhere, or when the reset is refused, the peak is the
process's lifetime maximum (``ru_maxrss``), which is then an upper bound for later stages.
"""
from __future__ import annotations

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


def release_memory(collect: bool = True) -> None:
    """Give freed heap memory back to the system (glibc keeps freed arenas mapped: after the
    network stage of a clinical CT, ~300 MB that later stages would otherwise stack on).
    ``collect=False`` skips the garbage collector's pass (0.2 s with torch loaded) where only
    numpy buffers were freed."""
    import gc

    if collect:
        gc.collect()
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):
            pass


# What one study needs at peak, from measurements (README, benchmarks/bench_e2e.py): about 450 MiB
# of libraries and model (torch, VTK) plus about 13 bytes per voxel of the input (the int16 image,
# labels, float16 uncertainty and the stages' slab-sized temporaries) for a 512x512x300 CT.
STUDY_BASE_MB = 450.0
STUDY_BYTES_PER_VOXEL = 13.0


def study_peak_estimate_mb(input_bytes: int) -> float:
    """Expected peak RSS of one study whose (uncompressed) image data is ``input_bytes`` (int16)."""
    return STUDY_BASE_MB + STUDY_BYTES_PER_VOXEL * (input_bytes / 2.0) / 2**20


def input_bytes(path) -> int:
    """Bytes of the regular files under ``path`` (a study folder or a file); symlinks followed."""
    p = Path(path)
    if p.is_file():
        return p.stat().st_size
    total = 0
    for f in p.rglob("*"):
        try:
            if f.is_file():
                total += f.stat().st_size
        except OSError:
            continue
    return total


def fit_workers(requested: int, per_study_mb: float, available_mb: float | None, headroom: float = 0.8) -> tuple[int, str | None]:
    """Workers whose studies fit in ``headroom`` of the available memory: (n, why it was lowered or None)."""
    if requested <= 1 or not available_mb:
        return requested, None
    fit = max(1, int(headroom * available_mb // max(per_study_mb, 1.0)))
    if fit >= requested:
        return requested, None
    return fit, (f"lowering workers from {requested} to {fit}: each study needs about {per_study_mb:.0f} MiB at peak "
                 f"(largest input), {available_mb:.0f} MiB available ({int(headroom * 100)} % used at most)")
