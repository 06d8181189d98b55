"""Item 16.2: one validated configuration (pipeline/configuration.py).

A typo in any section is reported before any work starts (ingest is never reached), naming the
file and the dotted key; every problem of every section is reported at once; the shipped
configuration is valid; `surgitwin run` exits 1 with the list and no traceback.
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline.configuration import PipelineConfig, batch_and_pacs, load_config
from pipeline.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "sample_scans" / "phantom_ct"

# one typo per section: (section body, the dotted key the error must name)
TYPOS = {
    "ingest": ({"on_tilt": "rotate"}, "ingest.on_tilt"),
    "selection": ({"rulez": []}, "selection.rulez"),
    "segment": ({"devise": "cpu"}, "segment.devise"),
    "mesh": ({"smothing_iterations": 3}, "mesh.smothing_iterations"),
    "batch": ({"wokers": 2}, "batch.wokers"),
    "pacs": ({"port": "eleven"}, "pacs.port"),
}


def _config(tmp_path, **sections) -> Path:
    base = yaml.safe_load((ROOT / "configs" / "pipeline.yaml").read_text())
    base.update(sections)
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump(base))
    return p


def test_shipped_configuration_is_valid():
    cfg = load_config()
    assert isinstance(cfg, PipelineConfig)
    assert cfg.segment.model == yaml.safe_load((ROOT / "configs" / "pipeline.yaml").read_text())["segment"]["model"]
    assert cfg.mesh.smoothing_iterations == 20 and cfg.ingest["on_missing"] == "error" and len(cfg.selection) == 3


@pytest.mark.parametrize("section", sorted(TYPOS))
def test_a_typo_in_any_section_stops_the_run_before_ingest(tmp_path, monkeypatch, section):
    import pipeline.ingest
    from pipeline.run import run_case

    def no_ingest(*a, **k):
        raise AssertionError("ingest started with an invalid configuration")

    monkeypatch.setattr(pipeline.ingest, "read_input", no_ingest)
    body, key = TYPOS[section]
    cfg = _config(tmp_path, **{section: body})
    out = tmp_path / "out"
    with pytest.raises(ConfigError) as e:
        run_case(SAMPLE, out, config=cfg, snapshot=False)
    assert key in str(e.value) and e.value.path == str(cfg), str(e.value)
    assert not out.exists()


def test_every_error_of_every_section_at_once(tmp_path):
    cfg = _config(tmp_path, **{name: body for name, (body, _) in TYPOS.items()}, mseh={})
    with pytest.raises(ConfigError) as e:
        load_config(cfg)
    msg = str(e.value)
    assert "7 configuration error(s)" in msg
    for _, key in TYPOS.values():
        assert key in msg, (key, msg)
    assert "mseh: unknown section (did you mean 'mesh'?)" in msg
    assert str(cfg) in msg and "configs/pipeline.yaml" in e.value.rule


def test_sections_of_other_tools_are_left_alone(tmp_path):
    load_config(_config(tmp_path, followup={"anything": 1}))


def test_batch_and_pacs_commands_check_every_section(tmp_path):
    cfg = _config(tmp_path, mesh={"target_faces": 5})
    with pytest.raises(ConfigError, match=r"mesh\.target_faces"):
        batch_and_pacs(cfg)
    batch, pacs = batch_and_pacs(_config(tmp_path, batch={"workers": 3}))
    assert batch.workers == 3 and pacs.port == 11112


@pytest.mark.slow
def test_cli_reports_all_errors_exit_1_no_traceback(tmp_path):
    cfg = _config(tmp_path, segment={"devise": "cpu"}, mesh={"smothing_iterations": 3})
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    p = subprocess.run([sys.executable, "-m", "pipeline.cli", "run", str(SAMPLE), "--out", str(tmp_path / "out"),
                        "--config", str(cfg)], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)
    assert p.returncode == 1, p.stdout + p.stderr
    assert "segment.devise" in p.stderr and "mesh.smothing_iterations" in p.stderr and str(cfg) in p.stderr
    assert "Traceback" not in p.stderr and not (tmp_path / "out").exists()
