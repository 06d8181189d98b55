"""Deterministic stand-in case functions for tests and benchmarks (importable by pool and Dask workers).

They honour the case-function contract of :mod:`pipeline.batch.run_case`: write the output
folder, return a dict, raise :class:`~pipeline.errors.SurgitwinError` on bad input.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

from ..errors import DicomError


def _files(input_path: Path) -> list[Path]:
    if input_path.is_file():
        return [input_path]
    return sorted(p for p in input_path.rglob("*") if p.is_file() and not p.name.startswith("."))


def digest_case(input_path, out_dir, *, delay: float = 0.0, counter_dir=None, cpu_iterations: int = 0) -> dict:
    """Hash every input file into ``out_dir/digest.json``; optional sleep / CPU work / completion counter.

    A file whose pixel data is shorter than Rows x Columns x 2 bytes raises DicomError (the
    'truncated file' of the tests). ``counter_dir`` gets one line appended per completed call
    in ``<counter_dir>/<input name>.count`` (O_APPEND: safe across processes), which is how the
    kill/resume test counts executions.
    """
    import pydicom

    input_path, out = Path(input_path), Path(out_dir)
    t0 = time.perf_counter()
    h = hashlib.sha256()
    for f in _files(input_path):
        data = f.read_bytes()
        h.update(f.name.encode())
        h.update(data)
        try:
            ds = pydicom.dcmread(str(f), force=True)
            if "PixelData" in ds and len(ds.PixelData) < int(ds.Rows) * int(ds.Columns) * 2:
                raise DicomError(f"pixel data truncated: {len(ds.PixelData)} bytes, expected "
                                 f"{int(ds.Rows) * int(ds.Columns) * 2}", path=str(f))
        except DicomError:
            raise
        except Exception as e:  # noqa: BLE001 - unreadable: report like a reader would
            raise DicomError(f"unreadable DICOM file ({type(e).__name__})", path=str(f)) from None
    x = 0
    for i in range(int(cpu_iterations)):  # pure-Python CPU load for the scaling benchmark
        x = (x * 1103515245 + i) % 2147483648
    if delay:
        time.sleep(float(delay))
    out.mkdir(parents=True, exist_ok=True)
    (out / "digest.json").write_text(json.dumps({"sha256": h.hexdigest(), "x": x,
                                                 "max_threads": os.environ.get("SURGITWIN_MAX_THREADS")},
                                                sort_keys=True))
    if counter_dir is not None:
        Path(counter_dir).mkdir(parents=True, exist_ok=True)
        fd = os.open(Path(counter_dir) / f"{Path(out_dir).name.split('.staging')[0].lstrip('.')}.count",
                     os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            os.write(fd, f"{os.getpid()}\n".encode())
        finally:
            os.close(fd)
    return {"status": "done", "timings": {"digest": time.perf_counter() - t0}, "versions": {"software": {"fake": "1"}}}


def crash_case(input_path, out_dir, **kw) -> dict:
    """Kill the worker process (as a segfault would) when the input's name contains 'crash'."""
    if "crash" in Path(input_path).name:
        os._exit(139)
    return digest_case(input_path, out_dir, **kw)


def error_case(input_path, out_dir, **kw) -> dict:
    """An unexpected (non-Surgitwin) exception for inputs named '*bug*': an internal error."""
    if "bug" in Path(input_path).name:
        raise ZeroDivisionError("division by zero in a buggy case function")
    return digest_case(input_path, out_dir, **kw)
