"""Issue 12: unattended operation — no silent wrong answers, no hangs, complete series.

One test (or a few) per numbered item of the issue; each fails on the code before the fix.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

import dicom_synth as ds_
from pipeline.errors import DicomError, SceneError

pytestmark = pytest.mark.slow  # end-to-end: left out by `make test-fast`


def _ct(folder: Path, n: int = 6, shape=(32, 32), value=None, **kw) -> list[Path]:
    rng = np.random.default_rng(0)
    stored = rng.integers(-1000, 400, size=(n, *shape)).astype(np.int16) if value is None else \
        np.full((n, *shape), value, np.int16)
    pos = np.array([[0.0, 0.0, 2.0 * k] for k in range(n)])
    return ds_.write_series(folder, stored, pos, **kw)


# -- item 1: any Pixel Data length mismatch is refused -------------------------------------------

def test_bits_allocated_8_over_16bit_pixel_data_is_refused(tmp_path):
    import pydicom

    from pipeline.ingest import read_series

    files = _ct(tmp_path / "s")
    for f in files:
        d = pydicom.dcmread(f)
        d.BitsAllocated, d.BitsStored, d.HighBit = 8, 8, 7  # the data stays 16-bit: twice as long
        d.save_as(f)
    with pytest.raises(DicomError) as e:
        read_series(files)
    assert "bytes too many" in str(e.value) and files[0].name in str(e.value)
    assert "len(PixelData) ==" in e.value.rule or "every instance" in e.value.rule


# -- item 2 and item 4 (pixdim 0): NIfTI header checks ---------------------------------------------

def _nifti(path: Path, arr: np.ndarray, pixdim=(2.0, 1.0, 1.0)) -> Path:
    import nibabel as nib

    img = nib.Nifti1Image(arr, np.diag([*pixdim, 1.0]))
    nib.save(img, str(path))
    return path


def test_truncated_nifti_is_refused(tmp_path):
    from pipeline.ingest import read_input

    full = _nifti(tmp_path / "full.nii", np.full((40, 40, 30), -1000, np.int16))
    data = full.read_bytes()
    cut = tmp_path / "cut.nii"
    cut.write_bytes(data[: 352 + (len(data) - 352) // 50])  # 98 % of the voxels missing
    with pytest.raises(DicomError) as e:
        read_input(cut)
    assert e.value.path == str(cut) and "truncated" in str(e.value) and "NIfTI data size" in e.value.rule
    import gzip

    gz = tmp_path / "cut.nii.gz"
    gz.write_bytes(gzip.compress(cut.read_bytes()))
    with pytest.raises(DicomError, match="truncated"):
        read_input(gz)
    assert read_input(full).shape == (30, 40, 40)  # the complete file still reads


def test_nifti_with_pixdim_zero_is_refused(tmp_path):
    import nibabel as nib

    from pipeline.ingest import read_input

    p = _nifti(tmp_path / "pix0.nii.gz", np.zeros((20, 20, 20), np.int16))
    img = nib.load(str(p))
    img.header["pixdim"][3] = 0.0
    nib.save(img, str(p))
    with pytest.raises(DicomError) as e:
        read_input(p)
    assert "pixdim" in e.value.rule and "[3] = 0" in str(e.value)


# -- item 3: scene paths must stay inside the scene folder ---------------------------------------

@pytest.fixture
def two_scenes(tmp_path):
    from tests.test_scene import _scene

    from pipeline.scene import save_scene

    a, b = tmp_path / "a", tmp_path / "b"
    for d in (a, b):
        d.mkdir()
        sc, _ = _scene(d)
        save_scene(sc, d)
    return a, b


def _edit(folder: Path, fn) -> None:
    p = folder / "scene.json"
    d = json.loads(p.read_text())
    fn(d)
    p.write_text(json.dumps(d))


@pytest.mark.parametrize("key", ["image", "labelmap", "mesh", "uncertainty", "snapshot"])
def test_scene_path_outside_the_folder_is_refused(two_scenes, key):
    from pipeline.scene import load_scene

    a, b = two_scenes

    def point_out(d):
        if key == "mesh":
            d["structures"][0]["mesh"] = "../b/" + d["structures"][0]["mesh"]
        elif key == "snapshot":
            d["snapshots"] = [str(b / "image.nii.gz")]  # absolute
        else:
            d[key] = "../b/image.nii.gz"
    _edit(a, point_out)
    with pytest.raises(SceneError) as e:
        load_scene(a)
    assert "outside the scene folder" in str(e.value) and e.value.rule == "every scene path resolves inside the scene folder"
    assert (key if key not in ("mesh", "snapshot") else {"mesh": "structures[0].mesh", "snapshot": "snapshots[0]"}[key]) in str(e.value)


def test_scene_symlink_leaving_the_folder_is_refused(two_scenes):
    from pipeline.scene import load_scene

    a, b = two_scenes
    (a / "image.nii.gz").unlink()
    os.symlink(b / "image.nii.gz", a / "image.nii.gz")
    with pytest.raises(SceneError, match="'image'.*outside the scene folder"):
        load_scene(a)
    # a symlink that stays inside the folder is fine
    (a / "image.nii.gz").unlink()
    shutil.copy(b / "image.nii.gz", a / "real_image.nii.gz")
    os.symlink("real_image.nii.gz", a / "image.nii.gz")
    assert load_scene(a).load_image().shape == (30, 60, 60)


def test_scene_mesh_that_is_not_a_mesh_is_a_scene_error(two_scenes):
    from pipeline.scene import load_scene

    a, _ = two_scenes
    rel = json.loads((a / "scene.json").read_text())["structures"][0]["mesh"]
    (a / rel).write_text("this is not a PLY file\n")
    with pytest.raises(SceneError) as e:
        load_scene(a)
    assert rel in str(e.value) and "mesh" in e.value.rule


# -- item 4: plausibility checks before segmenting ----------------------------------------------

def _vol(arr, spacing=(2.0, 0.7, 0.7), modality="CT"):
    from pipeline.types import Volume

    return Volume(np.asarray(arr), np.diag([*spacing, 1.0]), None, {"modality": modality} if modality else {})


def _body(shape=(20, 64, 64)) -> np.ndarray:
    a = np.full(shape, -1000, np.int16)
    a[:, 16:48, 16:48] = 40
    return a


@pytest.mark.parametrize("case,rule", [
    ("all_air", "tissue"), ("strip_4x4", "field of view"), ("slope_1e30", "Hounsfield"),
    ("nan", "finite"), ("constant", "more than one value"), ("nifti_all_air", "tissue")])
def test_implausible_volumes_are_refused(case, rule):
    from pipeline.ingest.plausible import check_volume

    vol = {
        "all_air": lambda: _vol(np.full((20, 64, 64), -1000, np.int16) + np.random.default_rng(0).integers(-20, 20, (20, 64, 64)).astype(np.int16)),
        "strip_4x4": lambda: _vol(np.random.default_rng(0).integers(-1000, 100, (1000, 4, 4)).astype(np.int16)),
        "slope_1e30": lambda: _vol(_body().astype(np.float32) * 1e30 + 1e30),
        "nan": lambda: _vol(np.where(np.arange(20)[:, None, None] == 3, np.nan, _body()).astype(np.float32)),
        "constant": lambda: _vol(np.zeros((20, 64, 64), np.int16), modality="MR"),
        "nifti_all_air": lambda: _vol(np.full((20, 64, 64), -1024, np.int16).clip(None, None) + (np.arange(64) % 2).astype(np.int16), modality=None),
    }[case]()
    with pytest.raises(DicomError) as e:
        check_volume(vol, "/data/in")
    assert rule in e.value.rule and e.value.path == "/data/in"


def test_plausible_volumes_pass_and_doubtful_ones_warn():
    from pipeline.ingest.plausible import check_volume

    ok = check_volume(_vol(_body()), "x")
    assert ok.warnings == [] and ok.modality == "CT" and 0.2 < ok.tissue_fraction < 0.3
    assert check_volume(_vol(_body(), modality="MR"), "x").tissue_fraction is None  # no HU rules for MR
    slab = check_volume(_vol(_body((3, 64, 64)), spacing=(1.25, 0.8, 0.8)), "x")
    assert any("thin slab" in w for w in slab.warnings)


def test_run_refuses_all_air_scan_and_states_warnings_in_the_scene(tmp_path):
    from pipeline.run import run_case

    air = np.random.default_rng(1).integers(-1010, -990, (12, 64, 64)).astype(np.int16)  # air with noise
    ds_.write_series(tmp_path / "air", air, np.array([[0.0, 0.0, 2.0 * k] for k in range(12)]))
    with pytest.raises(DicomError, match="air only"):
        run_case(tmp_path / "air", tmp_path / "out_air", model="hu_rules", snapshot=False)
    assert not (tmp_path / "out_air").exists()
    # a 4-slice body slab: processed, and the warning is in scene.json and in the result
    stored = np.stack([_body((1, 64, 64))[0]] * 4)
    ds_.write_series(tmp_path / "slab", stored, np.array([[0.0, 0.0, 1.25 * k] for k in range(4)]),
                     spacing=(1.0, 1.0))
    res = run_case(tmp_path / "slab", tmp_path / "out_slab", model="hu_rules", snapshot=False)
    scene = json.loads((tmp_path / "out_slab" / "scene.json").read_text())
    assert any("thin slab" in w for w in scene["input_checks"]["warnings"])
    assert any(w.startswith("input: thin slab") for w in res.warnings)


# -- item 5: an unusable image series is a failure; a named folder is one row ---------------------

def _cut(files, n: int) -> None:
    for f in files:
        f.write_bytes(f.read_bytes()[:n])


@pytest.fixture(scope="module")
def unusable_batch(tmp_path_factory):
    import batch_helpers as bh

    from pipeline.batch.manifest import Manifest
    from pipeline.batch.runner import BatchOptions, run_batch

    root = tmp_path_factory.mktemp("unusable")
    _cut(bh.write_study(root / "header_truncated", 0, shape=(8, 64, 64)), 900)  # CT headers cut before Rows
    bh.write_study(root / "two_slices", 1, shape=(2, 64, 64))
    files = bh.write_study(root / "half_cut", 2, shape=(8, 64, 64))
    _cut(files[4:], 300)  # cut before StudyInstanceUID: used to become a second, 'no_StudyInstanceUID' row
    bh.write_non_image(root / "sr_only", 3)
    out = tmp_path_factory.mktemp("unusable_out") / "b"
    inputs = [str(root / n) for n in ("header_truncated", "two_slices", "half_cut", "sr_only")]
    summary = run_batch(inputs, out, BatchOptions(workers=0, model="hu_rules"))
    with Manifest(out, readonly=True) as m:
        rows = {r["study"]: r for r in m.rows()}
    return summary, rows, root


def test_unusable_image_series_fail_with_their_reason(unusable_batch):
    summary, rows, root = unusable_batch
    assert rows["header_truncated"]["status"] == "failed"
    assert "no image pixel module" in rows["header_truncated"]["reason"] and "IM0001.dcm" in rows["header_truncated"]["reason"]
    assert rows["two_slices"]["status"] == "failed"
    assert "no series matches the selection rules" in rows["two_slices"]["reason"]
    assert rows["sr_only"]["status"] == "skipped"  # nothing meant for processing: still a skip
    assert not summary.ok


def test_named_folder_is_one_manifest_row(unusable_batch):
    summary, rows, root = unusable_batch
    assert set(rows) == {"header_truncated", "two_slices", "half_cut", "sr_only"}
    assert rows["half_cut"]["status"] == "failed"
    # item 6 as seen from the batch: the corrupt file is named as the cause
    assert "IM0005.dcm" in rows["half_cut"]["reason"] and "on_missing" not in rows["half_cut"]["reason"]


# -- item 6: a corrupt file in a series is named as the cause -------------------------------------

@pytest.mark.parametrize("where,damage", [("middle", "cut_header"), ("middle", "garbage"), ("last", "cut_header")])
def test_corrupt_file_in_series_is_named(tmp_path, where, damage):
    import batch_helpers as bh

    from pipeline.ingest import read_input

    files = bh.write_study(tmp_path / "s", 0, shape=(10, 64, 64))
    f = files[5] if where == "middle" else files[-1]
    data = bytearray(f.read_bytes())
    if damage == "cut_header":
        f.write_bytes(bytes(data[:1200]))
    else:
        data[140:400] = bytes(range(256))[:260] * 1 + bytes(4)
        f.write_bytes(bytes(data))
    with pytest.raises(DicomError) as e:
        read_input(tmp_path / "s")
    assert e.value.path == str(f) and f.name in str(e.value)
    assert e.value.rule == "every instance of a series must be readable"
    assert "on_missing" not in str(e.value) and "resample" not in str(e.value)


# -- item 7: FIFOs are never opened; discovery has a time limit per folder ------------------------

def _cli(*args, timeout=120):
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, cwd=root, env=env)


def test_fifo_in_input_folder_does_not_hang_run_or_deid(tmp_path):
    import batch_helpers as bh

    bh.write_study(tmp_path / "s", 0)
    os.mkfifo(tmp_path / "s" / "pipe.dcm")
    r = _cli("run", tmp_path / "s", "--out", tmp_path / "out", "--model", "hu_rules", "--no-snapshot")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "out" / "scene.json").exists()
    r = _cli("run", tmp_path / "s" / "pipe.dcm", "--out", tmp_path / "out2", "--model", "hu_rules", "--no-snapshot")
    assert r.returncode == 1 and "pipe.dcm" in r.stderr and "named pipe (FIFO)" in r.stderr and "Traceback" not in r.stderr
    from pipeline.deid import deidentify_tree

    rep = deidentify_tree(tmp_path / "s", tmp_path / "deid")
    assert len(rep.written) == 32 and any("pipe.dcm" in f and "FIFO" in why for f, why in rep.skipped)


def test_fifo_in_batch_input_and_discovery_time_limit(tmp_path, monkeypatch):
    import threading
    import time

    import batch_helpers as bh

    from pipeline.batch import inputs
    from pipeline.ingest import index_folder

    bh.write_study(tmp_path / "good", 0, shape=(8, 64, 64))
    os.mkfifo(tmp_path / "good" / "fifo")
    items = inputs.discover([str(tmp_path / "good")], tmp_path / "stage", time_limit=30)
    assert [(i.key, i.problem) for i in items] == [("good", None)]
    # the index stops at its deadline with the rule named
    with pytest.raises(DicomError) as e:
        index_folder(tmp_path / "good", deadline=time.monotonic() - 1)
    assert e.value.rule == "discovery finishes within its time limit per input"
    # a folder whose discovery never returns fails alone; the other input goes on
    (tmp_path / "stuck").mkdir()
    stuck = threading.Event()
    real = inputs._from_folder

    def slow(folder, *a, **k):
        if folder.name == "stuck":
            stuck.wait(60)
        return real(folder, *a, **k)
    monkeypatch.setattr(inputs, "_from_folder", slow)
    monkeypatch.setattr(inputs, "DISCOVERY_GRACE_S", 0.2)
    try:
        items = inputs.discover([str(tmp_path / "stuck"), str(tmp_path / "good")], tmp_path / "stage", time_limit=0.1)
    finally:
        stuck.set()
    got = {i.key: i.problem for i in items}
    assert got["good"] is None and "did not finish within 0.1 s" in got["stuck"]



# -- item 8: workers die with their coordinator; an older run never overwrites a newer one -------

def _proc(pid: int) -> tuple[int, str, str] | None:
    """(parent pid, state letter, command line) of a live process from /proc, or None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return None
    rest = stat[stat.rindex(")") + 2:].split()
    return int(rest[1]), rest[0], cmd


def _children(pid: int) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            info = _proc(int(d.name))
            if info and info[0] == pid:
                out.append(int(d.name))
    return out


def _running(pid: int) -> bool:
    info = _proc(pid)
    return info is not None and info[1] != "Z"


@pytest.mark.slow
def test_workers_die_with_a_killed_coordinator(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    import batch_helpers as bh

    root = tmp_path / "in"
    for n in range(4):
        bh.write_tiny_series(root / f"s{n}", 2, tag=f"orphan{n}")
    counter = tmp_path / "counter"
    cmd = [sys.executable, "-m", "pipeline.cli", "batch", str(root), "--out", str(tmp_path / "out"), "--workers", "2",
           "--progress", "none", "--case-fn", "pipeline.batch.testing:digest_case", "--case-arg", "delay=8",
           "--case-arg", f"counter_dir={json.dumps(str(counter))}"]
    proc = subprocess.Popen(cmd, cwd=Path(__file__).resolve().parents[1], start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    workers: list[int] = []
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(workers) < 2:
            time.sleep(0.2)
            workers = [p for p in _children(proc.pid) if "spawn_main" in ((_proc(p) or (0, "", ""))[2])]
        assert len(workers) >= 2, "the pool workers did not start"
        time.sleep(1.0)  # they are inside a study now (8 s each)
        os.kill(proc.pid, signal.SIGKILL)  # the coordinator only, not its process group
        proc.wait(timeout=10)
        gone_by = time.monotonic() + 10
        while time.monotonic() < gone_by and any(_running(w) for w in workers):
            time.sleep(0.1)
        alive = [w for w in workers if _running(w)]
        assert not alive, f"workers outlived their coordinator: {alive}"
        assert not list(counter.glob("*.count"))  # and none finished its study
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_older_run_never_overwrites_a_newer_publication(tmp_path):
    from pipeline.batch.run_case import RESULT_FILE, Superseded, publish

    cases = tmp_path / "cases"

    def staged(run: int) -> Path:
        d = cases / f".s.staging-{run}"
        d.mkdir(parents=True)
        (d / RESULT_FILE).write_text(json.dumps({"epoch": run}))
        return d

    publish(staged(2), cases / "s", 2)
    with pytest.raises(Superseded) as e:
        publish(staged(1), cases / "s", 1)  # the orphan of the killed run 1 finishes late
    assert e.value.rule == "an older run never overwrites a newer publication"
    assert json.loads((cases / "s" / RESULT_FILE).read_text())["epoch"] == 2
    publish(staged(3), cases / "s", 3)  # a newer run replaces it
    assert json.loads((cases / "s" / RESULT_FILE).read_text())["epoch"] == 3


# -- item 9: Ctrl-C marks the in-flight study interrupted; `status | head` is quiet --------------

def ctrl_c_case(input_path, out_dir, **kw):
    if Path(input_path).name == "s1":
        raise KeyboardInterrupt
    from pipeline.batch.testing import digest_case

    return digest_case(input_path, out_dir, **kw)


def test_ctrl_c_marks_the_study_in_flight_interrupted(tmp_path):
    import batch_helpers as bh

    from pipeline.batch.manifest import Manifest
    from pipeline.batch.runner import BatchOptions, run_batch

    root = tmp_path / "in"
    for n in range(3):
        bh.write_tiny_series(root / f"s{n}", 2, tag=f"int{n}")
    out = tmp_path / "out"
    s = run_batch([str(root)], out, BatchOptions(workers=0, case_fn=ctrl_c_case))
    assert s.interrupted
    with Manifest(out, readonly=True) as m:
        st = {r["study"]: (r["status"], r["reason"]) for r in m.rows()}
    assert {st["s0"][0], st["s2"][0]} <= {"done", "pending"}  # before / after the interrupted one
    assert st["s1"][0] == "interrupted" and "--resume" in st["s1"][1]
    assert "1 interrupted" in s.text()
    s = run_batch([], out, BatchOptions(workers=0, resume=True, case_fn="pipeline.batch.testing:digest_case"))
    assert s.totals["done"] == 3 and s.totals["interrupted"] == 0


def test_old_manifest_gains_the_interrupted_status(tmp_path):
    import sqlite3

    from pipeline.batch.manifest import Manifest

    db = sqlite3.connect(tmp_path / "manifest.sqlite")
    from pipeline.batch import manifest as mf

    db.executescript(mf._SCHEMA.replace("'running','interrupted',", "'running',"))
    db.execute("INSERT INTO studies (study, input, status, added_at, seq) VALUES ('a', '/x', 'running', 0, 1)")
    db.commit()
    db.close()
    with Manifest(tmp_path) as m:
        m.mark_interrupted("a", "stopped")
        assert m.get("a")["status"] == "interrupted"


def test_batch_status_into_a_closed_pipe_is_quiet(tmp_path):
    import subprocess
    import sys

    from pipeline.batch.manifest import Manifest

    with Manifest(tmp_path / "b") as m:
        for n in range(3000):
            m.db.execute("INSERT INTO studies (study, input, status, added_at, seq) VALUES (?, ?, 'pending', 0, ?)",
                         (f"study{n:05d}", f"/data/in/{n}", n))
    p = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "batch", "status", str(tmp_path / "b"), "--json"],
                         cwd=Path(__file__).resolve().parents[1], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p.stdout.readline()
    p.stdout.close()  # what `| head -1` does
    err = p.stderr.read().decode()
    p.wait(timeout=60)
    assert "Traceback" not in err and "BrokenPipeError" not in err, err
    assert p.returncode == 141


# -- item 16: the same answer for any storage layout ----------------------------------------------

def test_reorientation_is_exact_and_keeps_patient_space():
    from pipeline.geometry import orientation_code
    from pipeline.ingest.canonical import Reorientation
    from pipeline.types import Volume

    rng = np.random.default_rng(3)
    arr = rng.integers(0, 1000, (5, 6, 7)).astype(np.int16)
    a = np.zeros((4, 4))
    a[:3, 0], a[:3, 1], a[:3, 2] = [0, -0.7, 0], [0, 0, -2.0], [-0.9, 0, 0]  # stored 'AIR'
    a[:3, 3], a[3, 3] = [10, 20, 30], 1
    vol = Volume(arr, a)
    ro = Reorientation.of(vol)
    can = ro.forward(vol)
    assert orientation_code(vol.affine) == "AIR" and orientation_code(can.affine) == "SPL"
    np.testing.assert_array_equal(ro.backward_array(can.array), arr)
    # every voxel sits at the same point in patient space (a left/right flip would move it)
    for idx in [(0, 0, 0), (4, 5, 6), (1, 2, 3)]:
        p = (a @ [*idx, 1])[:3]
        cidx = np.rint(np.linalg.solve(can.affine, [*p, 1])[:3]).astype(int)
        assert np.allclose((can.affine @ [*cidx, 1])[:3], p)
        assert can.array[tuple(cidx)] == arr[idx]


def _write_layout(src_files, folder: Path, *, flip_cols=False, flip_rows=False, transpose=False, renumber=False):
    import pydicom
    from pydicom.uid import ExplicitVRLittleEndian

    folder.mkdir(parents=True)
    n = len(src_files)
    for k, f in enumerate(src_files):
        d = pydicom.dcmread(f)
        arr = d.pixel_array
        row, col = np.array(d.ImageOrientationPatient[:3], float), np.array(d.ImageOrientationPatient[3:], float)
        ps = [float(x) for x in d.PixelSpacing]  # (between rows, between columns)
        ipp = np.array(d.ImagePositionPatient, float)
        if flip_cols:
            ipp, row, arr = ipp + row * ps[1] * (arr.shape[1] - 1), -row, arr[:, ::-1]
        if flip_rows:
            ipp, col, arr = ipp + col * ps[0] * (arr.shape[0] - 1), -col, arr[::-1, :]
        if transpose:
            row, col, arr, ps = col, row, arr.T, ps[::-1]
        d.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        d.ImageOrientationPatient = [*map(float, row), *map(float, col)]
        d.ImagePositionPatient = [float(x) for x in ipp]
        d.PixelSpacing = ps
        d.Rows, d.Columns = arr.shape
        d.PixelData = np.ascontiguousarray(arr).tobytes()
        d["PixelData"].VR = "OW"
        d.save_as(folder / f"IM{(n - k if renumber else k + 1):04d}.dcm", enforce_file_format=True)


@pytest.mark.real
def test_real_ct_in_four_layouts_gives_the_same_labels(tmp_path):
    from scipy import ndimage

    from conftest import real_data
    from pipeline.geometry import resample_like
    from pipeline.ingest import read_input
    from pipeline.ingest.canonical import Reorientation
    from pipeline.run import segment_in_canonical_order
    from pipeline.segment import resolve_model, segment

    src = sorted(p for p in real_data("ct_thorax_abdomen_dicom_j2k", "series").iterdir() if p.is_file())
    layouts = {"stored": {}, "columns_reversed_renumbered": {"flip_cols": True, "renumber": True},
               "rows_reversed": {"flip_rows": True}, "transposed_columns_reversed": {"transpose": True, "flip_cols": True}}
    spec = resolve_model("hu_rules")
    ref_img = ref = None
    for name, kw in layouts.items():
        _write_layout(src, tmp_path / name, **kw)
        vol = read_input(tmp_path / name)
        seg = segment_in_canonical_order(vol, Reorientation.of(vol), lambda v: segment(v, spec, {}))
        assert np.allclose(seg.labelmap.volume.affine, vol.affine)  # results on the stored grid
        if ref is None:
            ref_img, ref = vol, seg.labelmap.array
            assert Reorientation.of(vol).identity
            continue
        assert not Reorientation.of(vol).identity
        # the layouts are the same physical image: identical in patient space
        np.testing.assert_array_equal(resample_like(vol, ref_img, order=0).array, ref_img.array)
        lab = resample_like(seg.labelmap.volume, ref_img, order=0).array
        diff = lab != ref
        edge = np.zeros_like(diff)
        for u in np.unique(ref):
            m = ref == u
            edge |= ndimage.binary_dilation(m) & ~ndimage.binary_erosion(m)
        assert not (diff & ~edge).any(), f"{name}: {int((diff & ~edge).sum())} voxels differ away from a boundary"
        assert diff.sum() == 0, f"{name}: {int(diff.sum())} boundary voxels differ"


# -- item 15: de-identification of real data, refusals, type 1 dummies, dates in free text ------

@pytest.mark.real
def test_deid_real_jpeg2000_series_writes_valid_files(tmp_path, capsys):
    import pydicom

    from conftest import real_data
    from pipeline.cli import main
    from pipeline.ingest import read_input

    src = real_data("ct_thorax_abdomen_dicom_j2k", "series")
    assert main(["deid", str(src), str(tmp_path / "out")]) == 0
    files = sorted((tmp_path / "out").rglob("*.dcm"))
    assert len(files) == 20
    for f in files:
        d = pydicom.dcmread(f)  # a valid Part-10 file: no force needed
        assert d.file_meta.MediaStorageSOPInstanceUID == d.SOPInstanceUID != ""
        assert d.file_meta.MediaStorageSOPClassUID == d.SOPClassUID
        assert d.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.90"  # pixels untouched
    vol = read_input(tmp_path / "out")  # the blank study/series UIDs became one study, one series
    assert vol.shape == (20, 512, 512)


def test_deid_refused_file_is_listed_and_exit_code_says_so(tmp_path, capsys):
    import pydicom

    import batch_helpers as bh
    from pipeline.cli import main

    files = bh.write_tiny_series(tmp_path / "in", 3, tag="refuse", patient_n=60)
    d = pydicom.dcmread(files[1])
    d.SOPInstanceUID = ""
    del d.file_meta.MediaStorageSOPInstanceUID
    d.save_as(files[1], enforce_file_format=False)
    rc = main(["deid", str(tmp_path / "in"), str(tmp_path / "out")])
    out = capsys.readouterr().out
    assert rc == 1 and "1 of them DICOM instances refused" in out and "SOPInstanceUID" in out
    assert len(list((tmp_path / "out").rglob("*.dcm"))) == 2  # the others were written


def test_deid_type1_dummies_keep_seg_valid_and_dates_in_text_are_redacted(tmp_path):
    import subprocess

    import pydicom

    import batch_helpers as bh
    from conftest import require_tool
    from pipeline.cli import main
    from pipeline.deid import deidentify_tree
    from pipeline.run import run_case

    files = bh.write_study(tmp_path / "src", 61, shape=(12, 64, 64))
    dob = bh.patient(61)[2]
    dotted = f"{dob[6:]}.{dob[4:6]}.{dob[:4]}"
    for f in files:
        d = pydicom.dcmread(f)
        d.CommentsOnRadiationDose = f"patient born {dotted}, scanned 2024-03-05"  # LT, kept by the table
        d.ConvolutionKernel = "B30f"
        d.save_as(f)
    scene = run_case(tmp_path / "src", tmp_path / "scene", model="hu_rules", snapshot=False)
    rep = deidentify_tree(tmp_path / "src", tmp_path / "deid", map_path=tmp_path / "map.json")
    d = pydicom.dcmread(rep.written[0])
    assert dotted not in d.CommentsOnRadiationDose and "2024-03-05" not in d.CommentsOnRadiationDose
    assert d.ConvolutionKernel == "B30f"
    seg = tmp_path / "seg.dcm"
    assert main(["export", str(scene.scene_path), "--format", "dicom-seg", "--out", str(seg),
                 "--deidentify", "--deid-map", str(tmp_path / "map.json")]) == 0
    tool = require_tool("dciodvfy", "dicom3tools")
    p = subprocess.run([tool, str(seg)], capture_output=True, text=True)
    assert [l for l in (p.stdout + p.stderr).splitlines() if l.startswith("Error")] == []
    s = pydicom.dcmread(seg)
    assert s.ContentDate == "19000101" and s.DeviceSerialNumber == "ANONYMIZED"


def test_deid_uids_do_not_depend_on_the_process():
    from pipeline.deid import Deidentifier

    a, b = Deidentifier(salt="s"), Deidentifier(salt="s")
    assert a.uid("1.2.3") == b.uid("1.2.3") != Deidentifier(salt="t").uid("1.2.3")


def test_birth_date_spellings_are_redacted_from_logs():
    from pipeline.batch import phi

    phi.register("19010203")
    for s in ("03.02.1901", "3.2.1901", "1901-02-03", "02/03/1901", "03/02/1901", "1901/02/03"):
        assert phi.redact(f"born {s}.") == f"born {phi.REDACTED}.", s


# -- item 14: listener hygiene ------------------------------------------------------------------

def test_listener_logs_rejected_ae_and_idle_connections_cannot_hold_every_slot(tmp_path, caplog):
    import logging
    import socket
    import time

    import pacs_helpers as ph
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification

    from pipeline.pacs.listener import ListenerOptions, StoreSCP
    from pipeline.pacs.spool import Spool

    opts = ListenerOptions(port=ph.free_port(), allowed_calling_aets=["STORESCU"], acse_timeout_s=1.0)
    scp = StoreSCP(Spool(tmp_path / "spool"), opts)
    port = scp.start()

    def echo(calling="STORESCU", host="127.0.0.1") -> bool:
        ae = AE(ae_title=calling)
        ae.add_requested_context(Verification)
        ae.acse_timeout = 5
        assoc = ae.associate("127.0.0.1", port, ae_title="SURGITWIN", bind_address=(host, 0))
        ok = assoc.is_established and assoc.send_c_echo().Status == 0
        if assoc.is_established:
            assoc.release()
        return ok

    idle = []
    try:
        with caplog.at_level(logging.WARNING, logger="pipeline.pacs.listener"):
            assert not echo("INTRUDER")
            assert any("rejected AE INTRUDER from 127.0.0.1:" in r.getMessage() for r in caplog.records), caplog.text
            # 16 idle TCP connections (no A-ASSOCIATE-RQ) from one host
            for _ in range(16):
                s = socket.create_connection(("127.0.0.1", port), timeout=10)
                idle.append(s)
            deadline = time.monotonic() + 10.0  # the listener's threads refuse the surplus; slower under load
            while True:
                time.sleep(0.3)
                held = sum(1 for a in scp.server.active_associations if a.requestor.address == "127.0.0.1")
                if held <= opts.max_associations_per_peer or time.monotonic() > deadline:
                    break
            assert held <= opts.max_associations_per_peer
            assert echo(host="127.0.0.2")  # another host still gets in at once
            assert any(f"limit {opts.max_associations_per_peer} per host" in r.getMessage() for r in caplog.records)
        # the idle ones are dropped by the ACSE timeout: then this host gets in again
        for s in idle:
            assert s.recv(1) == b""  # closed by the listener (blocks at most until its timeout)
        assert echo()
    finally:
        for s in idle:
            s.close()
        scp.stop()


# -- item 10: series completeness in listen ------------------------------------------------------

def test_late_instances_reopen_their_series_and_it_is_processed_whole(tmp_path):
    import threading
    import time

    import batch_helpers as bh
    import pacs_helpers as ph
    import pydicom

    from pipeline.batch.manifest import Manifest
    from pipeline.batch.runner import BatchOptions
    from pipeline.pacs.listener import ListenerOptions, listen

    files = bh.write_study(tmp_path / "study", 62, shape=(12, 64, 64))
    series_uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID)
    first, second = tmp_path / "first", tmp_path / "second"
    for d, part in ((first, files[:6]), (second, files[6:])):
        d.mkdir()
        for f in part:
            os.link(f, d / f.name)
    out, port = tmp_path / "listen", ph.free_port()
    ready, stop = threading.Event(), threading.Event()
    opts = ListenerOptions(port=port, allowed_calling_aets=["STORESCU"], series_idle_s=0.5)
    bopts = BatchOptions(workers=0, case_fn="pipeline.batch.testing:digest_case", case_kwargs={"delay": 1.0})
    t = threading.Thread(target=lambda: listen(out, opts, bopts, ready=ready, stop=stop), daemon=True)
    t.start()
    assert ready.wait(20)

    def row():
        with Manifest(out, readonly=True) as m:
            return m.rows()

    def wait_for(pred, what, limit=60):
        end = time.monotonic() + limit
        while time.monotonic() < end:
            if (out / "manifest.sqlite").exists() and pred():
                return
            time.sleep(0.1)
        raise AssertionError(f"{what}: {row() if (out / 'manifest.sqlite').exists() else 'no manifest'}")
    try:
        assert ph.storescu(port, [first]).returncode == 0
        wait_for(lambda: any(r["status"] in ("running", "done") for r in row()), "first half not picked up")
        assert ph.storescu(port, [second]).returncode == 0  # 'the other half', while the first runs
        wait_for(lambda: [(r["status"], r["n_files"]) for r in row()] == [("done", 12)], "not reprocessed whole")
        time.sleep(1.5)  # nothing else may be queued behind it
    finally:
        stop.set()
        t.join(60)
    (r,) = row()
    assert r["study"] == series_uid and r["n_files"] == 12 and r["attempts"] == 2
    digest = json.loads((out / "cases" / series_uid / "digest.json").read_text())["sha256"]
    import hashlib

    h = hashlib.sha256()
    for f in sorted(Path(r["input"]).iterdir()):
        h.update(f.name.encode())
        h.update(f.read_bytes())
    assert len(list(Path(r["input"]).iterdir())) == 12 and digest == h.hexdigest()


# -- item 11: modality and body region checked against the model's declaration ------------------

@pytest.mark.real
def test_head_ct_is_refused_by_the_abdominal_model_naming_one_that_fits(tmp_path):
    from conftest import real_data
    from pipeline.run import run_case

    head = real_data("ct_head_gantry_tilt_ge", "series")
    with pytest.raises(DicomError) as e:
        run_case(head, tmp_path / "out", model="abdomen_unet_3mm", snapshot=False)
    assert e.value.rule == "the scan's modality and body region match the model's declaration"
    assert "this scan shows the head" in str(e.value) and "Models that fit: hu_rules" in str(e.value)
    assert not (tmp_path / "out").exists()


def test_mr_series_is_refused_before_segmenting_and_a_fitting_scan_is_stated(tmp_path):
    from pipeline.run import run_case

    rng = np.random.default_rng(5)
    stored = rng.integers(0, 800, (24, 64, 64)).astype(np.int16)
    ds_.write_series(tmp_path / "mr", stored, np.array([[0.0, 0.0, 3.0 * k] for k in range(24)]),
                     modality="MR", spacing=(1.0, 1.0))
    with pytest.raises(DicomError) as e:
        run_case(tmp_path / "mr", tmp_path / "out", model="abdomen_unet_3mm", snapshot=False)
    assert "segments CT; this series is MR" in str(e.value) and e.value.path == str(tmp_path / "mr")
    # a CT that fits: the check is stated in the scene
    import batch_helpers as bh

    bh.write_study(tmp_path / "ct", 63, shape=(12, 64, 64))
    run_case(tmp_path / "ct", tmp_path / "scene", model="hu_rules", snapshot=False)
    fit = json.loads((tmp_path / "scene" / "scene.json").read_text())["input_checks"]["model_fit"]
    assert fit.startswith("model fits: modality CT, body region abdomen")


def test_body_region_words():
    from pipeline.ingest.region import regions_from_text

    assert regions_from_text("HEAD") == {"head"}
    assert regions_from_text("", "CT ABDOMEN PELVIS W CONTRAST") == {"abdomen", "pelvis"}
    assert regions_from_text("CHEST") == {"chest"} and regions_from_text("PARTIALBODY") == set()
