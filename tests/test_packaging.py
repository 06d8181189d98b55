"""Item 16.4: where configs and models come from, and a wheel that carries them under one namespace.

`make wheel-demo` (run by .ci/run) installs the wheel into a fresh venv and runs `surgitwin
demo` from another directory; these tests check the pieces it relies on, fast: the lookup order
of configs, the build-time import rewrite (setup.py) and the namespaced tree it produces.
"""
import ast
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def _setup_module():
    """setup.py's build helpers, without running setup()."""
    spec = importlib.util.spec_from_file_location("surgitwin_setup", ROOT / "setup.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


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


def test_working_directory_configs_come_after_surgitwin_home_and_before_the_checkout(tmp_path):
    project = tmp_path / "project"
    shutil.copytree(ROOT / "configs", project / "configs")
    cfg = yaml.safe_load((project / "configs" / "pipeline.yaml").read_text())
    cfg["segment"]["model"] = "hu_rules"
    (project / "configs" / "pipeline.yaml").write_text(yaml.safe_dump(cfg))
    env = {k: v for k, v in os.environ.items() if k != "SURGITWIN_HOME"}
    code = ("import pipeline.config as c; from pipeline.configuration import load_config; "
            "print(c.ROOT); print(load_config().segment.model); print(c.find_data('sample_scans/phantom_ct'))")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=project,
                       env={**env, "PYTHONPATH": str(ROOT)}, timeout=60)
    assert p.returncode == 0, p.stderr
    root, model, sample = p.stdout.split()
    assert Path(root) == project.resolve() and model == "hu_rules"
    assert Path(sample) == ROOT / "sample_scans" / "phantom_ct"  # what the project lacks comes from further down
    p = _py("from pipeline.configuration import load_config; print(load_config().segment.model)",
            {"SURGITWIN_HOME": str(ROOT)}, project)
    assert p.returncode == 0 and p.stdout.strip() != "hu_rules", p.stdout + p.stderr  # SURGITWIN_HOME first
    (project / "configs" / "pipeline.yaml").unlink()  # a folder merely named configs/ is not a project
    p = subprocess.run([sys.executable, "-c", "import pipeline.config as c; print(c.ROOT)"], capture_output=True,
                       text=True, cwd=project, env={**env, "PYTHONPATH": str(ROOT)}, timeout=60)
    assert p.returncode == 0 and Path(p.stdout.strip()) == ROOT, p.stdout + p.stderr


def test_models_export_never_writes_into_the_packaged_configs(tmp_path, monkeypatch):
    """Installed from the wheel with no SURGITWIN_HOME and no project folder, the root is the copy
    inside site-packages: `surgitwin models export` refuses instead of writing there."""
    from pipeline import config
    from pipeline.errors import ModelError
    from pipeline.train import export

    packaged = config.packaged_root()
    monkeypatch.setattr(export, "ROOT", packaged)
    monkeypatch.setattr(export, "CONFIG_DIR", packaged / "configs")
    with pytest.raises(ModelError, match="SURGITWIN_HOME") as e:
        export.export_model(tmp_path / "train")
    assert e.value.rule and not packaged.exists()
    with pytest.raises(ModelError, match="model.json missing"):  # given folders: the export goes on as before
        export.export_model(tmp_path / "train", models_dir=tmp_path / "m", configs_dir=tmp_path / "c")


def test_import_rewrite_moves_only_the_packages_absolute_imports():
    rewrite = _setup_module().rewrite_imports
    src = ("import os, pipeline.config as cfg  # pipeline.config\n"
           "from pipeline.types import (Volume,\n    Mesh)\n"
           "from . import pipeline_like\n"
           "from .viewer import x\n"
           "from pipelines import y\n"
           "def f():\n"
           "    s = 'from pipeline.x import y'  # é\n"
           "    from viewer.render import snapshot; from pipeline import errors\n"
           "    raise ValueError() from None\n")
    out = rewrite(src)
    assert out == src.replace("import os, pipeline.config", "import os, surgitwin.pipeline.config") \
        .replace("from pipeline.types", "from surgitwin.pipeline.types") \
        .replace("from viewer.render", "from surgitwin.viewer.render") \
        .replace("; from pipeline import", "; from surgitwin.pipeline import")
    assert rewrite("import numpy as np\n") == "import numpy as np\n"
    with pytest.raises(ValueError, match="line|:1:"):
        rewrite("import pipeline.config\n", filename="m.py")  # would bind `surgitwin`, not `pipeline`


def _literal_prefix(node) -> str | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr) and node.values and isinstance(node.values[0], ast.Constant):
        return str(node.values[0].value)
    return None


def hard_coded_module_names(source: str) -> list[tuple[int, str]]:
    """Module names spelled as strings that break under the wheel's namespace: ``-m pipeline.x``
    in a command line, ``import_module("pipeline.x")``, ``"pipeline.x:function"``."""
    own = re.compile(r"^(pipeline|viewer)(\.|$)")
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.List, ast.Tuple)):
            for a, b in zip(node.elts, node.elts[1:]):
                if _literal_prefix(a) == "-m" and own.match(_literal_prefix(b) or ""):
                    found.append((b.lineno, f"-m {_literal_prefix(b)}"))
        elif isinstance(node, ast.Call) and node.args and getattr(node.func, "attr", getattr(node.func, "id", "")) \
                == "import_module" and own.match(_literal_prefix(node.args[0]) or ""):
            found.append((node.lineno, f"import_module({_literal_prefix(node.args[0])!r})"))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) \
                and re.fullmatch(r"(pipeline|viewer)(\.\w+)+:\w+(\.\w+)*", node.value):
            found.append((node.lineno, node.value))
    return found


def test_module_names_given_as_strings_follow_the_package():
    """In the wheel the packages are surgitwin.pipeline/surgitwin.viewer: a module named by string
    must come from __package__/__name__ (e.g. f"{__package__}.offscreen"), as the build-time import
    rewrite does not touch strings."""
    assert hard_coded_module_names('cmd = [exe, "-m", "pipeline.render.offscreen"]\n'
                                   'importlib.import_module(f"pipeline.commands.{n}")\nF = "pipeline.batch.x:run"\n'
                                   'ok = [exe, "-m", f"{__package__}.offscreen"]\nprov = "pipeline.planning.cut.cut_record"\n') \
        == [(1, "-m pipeline.render.offscreen"), (2, "import_module('pipeline.commands.')"), (3, "pipeline.batch.x:run")]
    bad = {str(f.relative_to(ROOT)): found for d in ("pipeline", "viewer") for f in sorted((ROOT / d).rglob("*.py"))
           if (found := hard_coded_module_names(f.read_text(encoding="utf-8")))}
    assert not bad, bad


def test_console_script_points_into_the_namespace_and_back_for_an_editable_install():
    ns = _setup_module().namespace_entry_points
    src = "[console_scripts]\nsurgitwin = pipeline.cli:main\nother = pipelines.x:main\nv = viewer.app:run\n"
    wheel = ns(src)
    assert wheel == ("[console_scripts]\nsurgitwin = surgitwin.pipeline.cli:main\nother = pipelines.x:main\n"
                     "v = surgitwin.viewer.app:run\n")
    assert ns(wheel, undo=True) == src and ns(src, undo=True) == src


@pytest.mark.slow
def test_namespaced_tree_runs_without_the_top_level_packages(tmp_path):
    """The wheel's tree (built by setup.py's hook, not installed): the CLI, the case functions named by
    string and a process-pool worker all resolve inside surgitwin.*, never a top-level pipeline/viewer."""
    setup = _setup_module()
    lib = tmp_path / "lib"
    for pkg in ("pipeline", "viewer"):
        shutil.copytree(ROOT / pkg, lib / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    ns = setup.build_namespaced(lib, ROOT)
    assert sorted(p.name for p in lib.iterdir()) == ["surgitwin"]
    assert (ns / "pipeline" / "_data" / "configs" / "pipeline.yaml").is_file()
    out = tmp_path / "batch"
    code = f"""
import sys
from surgitwin.pipeline import cli, config
from surgitwin.pipeline.batch.run_case import DEFAULT_CASE_FN, resolve_case_fn
from surgitwin.pipeline.batch.runner import FOLLOW_UP_CASE_FN
assert cli.COMMANDS == "surgitwin.pipeline.commands", cli.COMMANDS
assert DEFAULT_CASE_FN == "surgitwin.pipeline.batch.run_case:run_study", DEFAULT_CASE_FN
assert FOLLOW_UP_CASE_FN.startswith("surgitwin.pipeline.followup.batch:"), FOLLOW_UP_CASE_FN
assert config.ROOT == config.data_roots()[-1] and config.ROOT.parent.name == "pipeline", config.ROOT
cli.build_parser()
sample = config.find_data("sample_scans/phantom_ct/dicom")
rc = cli.main([ "batch", str(sample), "--out", {str(out)!r}, "--workers", "1", "--progress", "none",
               "--case-fn", "pipeline.batch.testing:digest_case"])
from surgitwin.pipeline.render import offscreen
seen = []
offscreen.subprocess.run = lambda cmd, **kw: seen.append((cmd, kw["env"]["PYTHONPATH"])) or sys.exit(3)
try:
    offscreen.snapshot_subprocess("scene.json", "out.png")
except SystemExit:
    pass
(cmd, path), = seen
assert cmd[1:3] == ["-m", "surgitwin.pipeline.render.offscreen"] and path.split(":")[0] == {str(lib)!r}, (cmd, path)
bad = sorted(m for m in sys.modules if m.split(".")[0] in ("pipeline", "viewer"))
assert rc == 0 and not bad, (rc, bad)
"""
    env = {k: v for k, v in os.environ.items() if k not in ("SURGITWIN_HOME", "PYTHONPATH")}
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                       env={**env, "PYTHONPATH": str(lib)}, timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
    assert (out / "cases" / "dicom" / "digest.json").is_file()  # the spawned worker imported surgitwin.pipeline


@pytest.mark.slow
def test_wheel_installs_one_namespace_with_configs_model_and_sample_scan(tmp_path):
    build = tmp_path / "src"
    shutil.copytree(ROOT, build, ignore=shutil.ignore_patterns(".venv", ".git", "out", "build", "dist", "__pycache__",
                                                                ".pytest_cache", ".ruff_cache", ".mypy_cache"))
    p = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                        str(tmp_path / "dist"), str(build)], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    (whl,) = (tmp_path / "dist").glob("surgitwin-*.whl")
    z = zipfile.ZipFile(whl)
    names = set(z.namelist())
    assert {n.split("/")[0] for n in names} == {"surgitwin", "surgitwin-0.1.0.dist-info"}  # no pipeline/, viewer/
    for must in ("surgitwin/pipeline/_data/configs/pipeline.yaml",
                 "surgitwin/pipeline/_data/configs/models/abdomen_unet_3mm.yaml",
                 "surgitwin/pipeline/_data/models/abdomen_unet_3mm/model.safetensors",
                 "surgitwin/pipeline/_data/sample_scans/phantom_ct/ground_truth_labels.nii.gz",
                 "surgitwin/pipeline/scene/templates/report.html.j2", "surgitwin/pipeline/render/offscreen.py",
                 "surgitwin/viewer/app.py"):
        assert must in names, must
    assert any(n.startswith("surgitwin/pipeline/_data/sample_scans/phantom_ct/dicom/") for n in names)
    eps = z.read("surgitwin-0.1.0.dist-info/entry_points.txt").decode()
    assert "surgitwin = surgitwin.pipeline.cli:main" in eps, eps
    assert z.read("surgitwin-0.1.0.dist-info/top_level.txt").decode().split() == ["surgitwin"]
    assert "from surgitwin.pipeline.render import offscreen" in z.read("surgitwin/viewer/render.py").decode()
