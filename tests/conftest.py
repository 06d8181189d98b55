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
