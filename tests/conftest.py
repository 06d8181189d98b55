"""Shared test helpers: real-data location, system-tool requirements, rendering env."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SURGITWIN_SHARED", ROOT.parent / "shared"))
REAL = SHARED / "data" / "real"
BUNDLES = SHARED / "data" / "monai_bundles"
REQUIRE_SYSTEM = os.environ.get("SURGITWIN_REQUIRE_SYSTEM") == "1"

os.environ.setdefault("EGL_PLATFORM", "surfaceless")


def real_data(*parts: str) -> Path:
    """Path under ../shared/data/real, or skip the test saying what is missing."""
    p = REAL.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"real data not available: {p} (../shared/data/real is absent in a user's clone)")
    return p


def bundle_data(name: str) -> Path:
    p = BUNDLES / name
    if not p.exists():
        pytest.skip(f"MONAI bundle configs not available: {p}")
    return p


def require_tool(name: str, apt: str | None = None) -> str:
    """Path of an external tool; skip (or fail under SURGITWIN_REQUIRE_SYSTEM=1) if missing."""
    path = shutil.which(name)
    if path:
        return path
    msg = f"system tool '{name}' not installed: sudo apt-get install -y {apt or name}"
    if REQUIRE_SYSTEM:
        pytest.fail(msg + " (SURGITWIN_REQUIRE_SYSTEM=1)")
    pytest.skip(msg)


@pytest.fixture(scope="session")
def real_dir() -> Path:
    if not REAL.exists():
        pytest.skip(f"real data not available: {REAL}")
    return REAL


def start_xvfb(screen: str = "1280x1024x24"):
    """A private Xvfb display (the server picks a free number: -displayfd); yields ":N" and stops
    the server afterwards. Use as ``yield from start_xvfb(...)`` in a fixture, or drive by hand."""
    import subprocess
    import time

    exe = require_tool("Xvfb", "xvfb")
    r, w = os.pipe()
    proc = subprocess.Popen([exe, "-displayfd", str(w), "-screen", "0", screen, "+extension", "GLX",
                             "-nolisten", "tcp"], pass_fds=(w,), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.close(w)
    num, t0 = b"", time.time()
    while not num.endswith(b"\n") and time.time() - t0 < 20:
        chunk = os.read(r, 16)
        if not chunk:
            break
        num += chunk
    os.close(r)
    if not num.strip():
        proc.kill()
        pytest.fail("Xvfb did not start (no display number reported)")
    try:
        yield f":{int(num)}"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
