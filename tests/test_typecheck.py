"""Issue 16 item 9: the typed contracts (core types, scene contract and its report and plausibility
checks, configuration) pass mypy.

`make lint` runs the same check; both skip where mypy is not installed (it is in the dev extra).
"""
from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _mypy_files() -> list[str]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mypy"]["files"]


def test_the_type_checked_modules_exist():
    files = _mypy_files()
    assert "pipeline/types.py" in files and "pipeline/scene/schema.py" in files and "pipeline/configuration.py" in files
    assert {"pipeline/scene/report.py", "pipeline/scene/report_slices.py", "pipeline/scene/plausibility.py"} <= set(files)
    assert all((ROOT / f).is_file() for f in files)


@pytest.mark.slow
def test_typed_contracts_pass_mypy(tmp_path, monkeypatch):
    api = pytest.importorskip("mypy.api")
    monkeypatch.chdir(ROOT)
    out, err, rc = api.run(["--cache-dir", str(tmp_path / "mypy-cache")])
    assert rc == 0, out + err
