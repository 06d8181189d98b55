"""Item 16.4 (part): where configs and models come from, and a wheel that carries them.

`make wheel-demo` (run by .ci/run) installs the wheel into a fresh venv and runs `surgitwin
demo` from another directory; these tests check the two pieces it relies on, fast.
"""
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def _py(code: str, env: dict, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, "PYTHONPATH": str(ROOT), **env}, timeout=120)


def test_checkout_reads_its_own_configs(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "SURGITWIN_HOME"}
    p = subprocess.run([sys.executable, "-c", "import pipeline.config as c; print(c.CONFIG_DIR)"], capture_output=True,
                       text=True, cwd=tmp_path, env={**env, "PYTHONPATH": str(ROOT)}, timeout=60)
    assert p.returncode == 0 and Path(p.stdout.strip()) == ROOT / "configs", p.stdout + p.stderr


def test_surgitwin_home_comes_before_the_packaged_configs(tmp_path):
    home = tmp_path / "site"
    shutil.copytree(ROOT / "configs", home / "configs")
    cfg = yaml.safe_load((home / "configs" / "pipeline.yaml").read_text())
    cfg["segment"]["model"] = "hu_rules"
    (home / "configs" / "pipeline.yaml").write_text(yaml.safe_dump(cfg))
    p = _py("from pipeline.configuration import load_config; print(load_config().segment.model)",
            {"SURGITWIN_HOME": str(home)}, tmp_path)
    assert p.returncode == 0 and p.stdout.strip() == "hu_rules", p.stdout + p.stderr
    p = _py("from pipeline.configuration import load_config; load_config()", {"SURGITWIN_HOME": str(tmp_path / "nothing")},
            tmp_path)
    assert p.returncode != 0 and "config file not found" in p.stderr and str(tmp_path / "nothing") in p.stderr


@pytest.mark.slow
def test_wheel_carries_configs_model_and_sample_scan(tmp_path):
    build = tmp_path / "src"
    shutil.copytree(ROOT, build, ignore=shutil.ignore_patterns(".venv", ".git", "out", "build", "dist", "__pycache__",
                                                                ".pytest_cache", ".ruff_cache"))
    p = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                        str(tmp_path / "dist"), str(build)], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    (whl,) = (tmp_path / "dist").glob("surgitwin-*.whl")
    names = set(zipfile.ZipFile(whl).namelist())
    for must in ("pipeline/_data/configs/pipeline.yaml", "pipeline/_data/configs/models/abdomen_unet_3mm.yaml",
                 "pipeline/_data/models/abdomen_unet_3mm/model.safetensors",
                 "pipeline/_data/sample_scans/phantom_ct/ground_truth_labels.nii.gz",
                 "pipeline/scene/templates/report.html.j2", "pipeline/render/offscreen.py"):
        assert must in names, must
    assert any(n.startswith("pipeline/_data/sample_scans/phantom_ct/dicom/") for n in names)
