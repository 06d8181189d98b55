"""Batch: statuses on good and broken generated studies with the real pipeline, manifest,
status command, PHI never in logs or manifests, crash/timeout/bug isolation, discovery."""
from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest

import batch_helpers as bh
from pipeline.batch.inputs import discover
from pipeline.batch.manifest import Manifest
from pipeline.batch.runner import BatchOptions, run_batch
from pipeline.errors import SurgitwinError

pytestmark = pytest.mark.slow  # end-to-end: left out by `make test-fast`

GOOD = ["case_a", "case_b", "case_c", "case_d"]


@pytest.fixture(scope="module")
def study_tree(tmp_path_factory) -> Path:
    """10 studies: 4 good, 4 broken, 1 with two stacks in one series, 1 with nothing selectable."""
    root = tmp_path_factory.mktemp("studies")
    for n, name in enumerate(GOOD):
        bh.write_study(root / name, n)
    bh.truncate_one(bh.write_study(root / "truncated", 4))
    bh.remove_middle(bh.write_study(root / "missing_slices", 5), 3)
    bh.write_mixed_series(root / "mixed_stacks", 6)
    bh.write_mixed_phases(root / "mixed_phases", 7)
    bh.write_non_image(root / "non_image_only", 8)
    bh.write_study(root / "two_slices_only", 9, shape=(2, 64, 64), spacing=(7.8, 5.4, 5.4))
    return root


def _patients(k: int = 10) -> list[str]:
    """Names (whole and family part), IDs, birth dates (DICOM and ISO form) of patients 0..k-1."""
    out = []
    for n in range(k):
        name, pid, dob = bh.patient(n)
        out += [name, name.split("^")[0], pid, dob, f"{dob[:4]}-{dob[4:6]}-{dob[6:]}"]
    return out


@pytest.fixture(scope="module")
def real_batch(study_tree, tmp_path_factory):
    base = tmp_path_factory.mktemp("batch")
    (base / "empty_dir").mkdir()  # named on the command line: it must get a row, failed
    out = base / "run"
    summary = run_batch([str(study_tree), str(base / "empty_dir")], out, BatchOptions(workers=2, model="hu_rules", snapshot=False))
    return out, summary


def test_statuses_with_real_pipeline(real_batch):
    out, summary = real_batch
    with Manifest(out, readonly=True) as m:
        rows = {r["study"]: r for r in m.rows()}
    assert set(rows) == set(GOOD) | {"truncated", "missing_slices", "mixed_stacks", "mixed_phases",
                                     "non_image_only", "two_slices_only", "empty_dir"}
    status = {k: r["status"] for k, r in rows.items()}
    for k in GOOD + ["mixed_stacks"]:
        assert status[k] == "done", (k, rows[k]["reason"])
    assert status["truncated"] == "failed" and "truncated" in rows["truncated"]["reason"]
    assert "IM0017.dcm" in rows["truncated"]["reason"]  # names the file
    assert status["missing_slices"] == "failed" and "3 slice(s) missing" in rows["missing_slices"]["reason"]
    assert status["mixed_phases"] == "failed" and "FrameOfReferenceUID" in rows["mixed_phases"]["reason"]
    assert status["non_image_only"] == "skipped"
    assert "non-image" in rows["non_image_only"]["reason"] and "2 SR" in rows["non_image_only"]["reason"]
    # a 2-slice CT is an image series no selection rule accepts: a failure with its reason, not a skip
    assert status["two_slices_only"] == "failed"
    assert "no series matches the selection rules" in rows["two_slices_only"]["reason"]
    assert "NumberOfSlices" in rows["two_slices_only"]["reason"]
    assert status["empty_dir"] == "failed" and "empty" in rows["empty_dir"]["reason"]
    assert summary.totals == {"pending": 0, "running": 0, "interrupted": 0, "done": 5, "failed": 5, "skipped": 1}
    assert not summary.ok
    # done rows: a loadable scene, per-stage timings, versions, the source UIDs
    from pipeline.scene import load_scene

    for k in GOOD + ["mixed_stacks"]:
        r = rows[k]
        scene = load_scene(r["outputs"]["scene"], load_meshes=False)
        assert scene.case_id == k
        assert {"ingest", "segment", "mesh", "scene", "total", "queue"} <= set(r["timings"])
        assert r["versions"]["software"].get("pydicom")
        assert r["study_uid"] and r["series_uids"]
        assert scene.source["series_instance_uid"] in r["series_uids"]
        assert (Path(r["outputs"]["scene"]) / "batch_result.json").exists()
        rss = r["outputs"]["peak_rss_mb"]  # per stage, recorded for capacity planning
        assert {"ingest", "segment", "mesh"} <= set(rss) and all(50 < v < 20000 for v in rss.values())
    # the mixed-stack series was split and its 64x64 stack (not the 48x48 one) processed
    lm = load_scene(rows["mixed_stacks"]["outputs"]["scene"], load_meshes=False).load_labelmap()
    assert lm.volume.shape == bh.SMALL_SHAPE
    # nothing half-written, nothing for failed studies
    cases = sorted(p.name for p in (out / "cases").iterdir())
    assert cases == sorted(GOOD + ["mixed_stacks"])


def test_manifest_json_and_status_command(real_batch, capsys):
    from pipeline.cli import main

    out, _ = real_batch
    assert main(["batch", "status", str(out), "--json"]) == 0
    recs = json.loads(capsys.readouterr().out)
    assert all({"study", "status", "reason", "outputs"} <= set(r) for r in recs)
    lines = [json.loads(l) for l in (out / "manifest.jsonl").read_text().splitlines()]
    assert [r["study"] for r in lines] == [r["study"] for r in recs]
    assert main(["batch", "status", str(out)]) == 0
    text = capsys.readouterr().out
    assert "truncated" in text and "failed" in text and "done: 5" in text
    # SQLite is in WAL mode and readable by plain sqlite3
    db = sqlite3.connect(out / "manifest.sqlite")
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("SELECT COUNT(*) FROM studies").fetchone()[0] == 11


def _scene_arrays(case: Path) -> dict:
    import trimesh

    from pipeline.geometry import read_image_file

    scene = json.loads((case / "scene.json").read_text())
    out = {"structures": [(s["name"], s["label"], s["n_faces"]) for s in scene["structures"]],
           "source": scene["source"]["series_instance_uid"]}
    for name in ("image.nii.gz", "labels.nii.gz"):
        v = read_image_file(case / name)
        out[name] = (v.array, v.affine)
    for s in scene["structures"]:
        m = trimesh.load_mesh(str(case / s["mesh"]), process=False)
        out[s["name"]] = (np.asarray(m.vertices), np.asarray(m.faces))
    return out


@pytest.mark.slow
def test_dask_local_cluster_gives_identical_outputs(real_batch, study_tree, tmp_path):
    """The same studies on a Dask LocalCluster (2 worker processes): same statuses, same reasons,
    identical images, label maps and meshes as the process-pool run."""
    pytest.importorskip("distributed")
    out, _ = real_batch
    names = ["case_a", "case_b", "truncated"]
    s = run_batch([str(study_tree / n) for n in names], tmp_path / "dask",
                  BatchOptions(workers=2, scheduler="local", model="hu_rules"))
    assert "Dask (LocalCluster)" in s.executor
    a = {r["study"]: r for r in Manifest(out, readonly=True).rows() if r["study"] in names}
    b = {r["study"]: r for r in Manifest(tmp_path / "dask", readonly=True).rows()}
    assert {k: r["status"] for k, r in a.items()} == {k: r["status"] for k, r in b.items()}
    assert a["truncated"]["reason"] == b["truncated"]["reason"]
    for k in ("case_a", "case_b"):
        x = _scene_arrays(Path(a[k]["outputs"]["scene"]))
        y = _scene_arrays(Path(b[k]["outputs"]["scene"]))
        assert x.keys() == y.keys()
        for key in x:
            if isinstance(x[key], tuple):
                for u, v in zip(x[key], y[key]):
                    np.testing.assert_array_equal(u, v, err_msg=f"{k}/{key}")
            else:
                assert x[key] == y[key]


def test_dask_tcp_scheduler_address(real_batch, study_tree, tmp_path):
    """--scheduler tcp://HOST:PORT (a scheduler someone else started, as on a cluster): the batch
    connects as a client, gets the same statuses and label maps, and leaves the cluster running."""
    distributed = pytest.importorskip("distributed")
    out, _ = real_batch
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                                  host="127.0.0.1", dashboard_address=None) as cluster:
        addr = cluster.scheduler_address
        assert addr.startswith("tcp://127.0.0.1:")
        s = run_batch([str(study_tree / n) for n in ("case_c", "missing_slices")], tmp_path / "tcp",
                      BatchOptions(scheduler=addr, model="hu_rules", snapshot=False))
        assert addr in s.executor
        with distributed.Client(addr, timeout=10) as c:  # still up: the batch only disconnected
            assert len(c.scheduler_info()["workers"]) == 1
    a = {r["study"]: r for r in Manifest(out, readonly=True).rows()}
    b = {r["study"]: r for r in Manifest(tmp_path / "tcp", readonly=True).rows()}
    assert b["case_c"]["status"] == "done" and b["missing_slices"]["status"] == "failed"
    assert a["missing_slices"]["reason"] == b["missing_slices"]["reason"]
    x = _scene_arrays(Path(a["case_c"]["outputs"]["scene"]))
    y = _scene_arrays(Path(b["case_c"]["outputs"]["scene"]))
    for key in x:
        if isinstance(x[key], tuple):
            for u, v in zip(x[key], y[key]):
                np.testing.assert_array_equal(u, v, err_msg=key)


def test_unreachable_dask_scheduler_is_a_clear_error(tmp_path):
    pytest.importorskip("distributed")
    from pipeline.batch.executors import DaskExecutor, make_executor

    with pytest.raises(SurgitwinError, match="cannot reach the Dask scheduler at tcp://127.0.0.1:9"):
        DaskExecutor("tcp://127.0.0.1:9", connect_timeout=2.0)
    with pytest.raises(SurgitwinError, match="must be 'local' or an address"):
        make_executor(scheduler="127.0.0.1:8786")


def test_no_phi_in_logs_or_manifest(real_batch, study_tree):
    out, _ = real_batch
    needles = _patients()
    assert len(bh.grep_tree(study_tree, needles)) >= 20  # they are in the inputs, so a leak would show
    hits = bh.grep_tree(out / "logs", needles)
    for f in [out / "manifest.sqlite", out / "manifest.jsonl", out / "batch.log", *out.glob("manifest.sqlite-*")]:
        hits += bh.grep_tree(f, needles)
    assert hits == []


def test_second_run_without_resume_is_refused(real_batch, study_tree):
    out, _ = real_batch
    with pytest.raises(SurgitwinError, match="--resume"):
        run_batch([str(study_tree)], out, BatchOptions(workers=0))


def test_worker_crash_bug_and_timeout_are_isolated(tmp_path):
    """A study that kills its worker, one that hits a bug, one over its time limit: the rest finish."""
    root = tmp_path / "in"
    for name in ("ok1", "crash_me", "ok2", "bug_here", "ok3"):
        bh.write_tiny_series(root / name, 3, tag=name)
    out = tmp_path / "out"
    s = run_batch([str(root)], out, BatchOptions(workers=2, case_fn="pipeline.batch.testing:crash_case"))
    rows = {r["study"]: r for r in Manifest(out, readonly=True).rows()}
    assert {k: r["status"] for k, r in rows.items()} == {
        "ok1": "done", "crash_me": "failed", "ok2": "done", "bug_here": "done", "ok3": "done"}
    assert "worker process died" in rows["crash_me"]["reason"]
    assert s.totals["done"] == 4

    out2 = tmp_path / "out2"  # in-process executor: the same isolation without a pool
    run_batch([str(root / "ok1"), str(root / "bug_here")], out2,
              BatchOptions(workers=0, case_fn="pipeline.batch.testing:error_case"))
    rows = {r["study"]: r for r in Manifest(out2, readonly=True).rows()}
    assert rows["ok1"]["status"] == "done"
    assert rows["bug_here"]["status"] == "failed"
    assert "internal error ZeroDivisionError" in rows["bug_here"]["reason"]
    assert "Traceback" in (out2 / "logs" / "bug_here.log").read_text()

    out3 = tmp_path / "out3"
    run_batch([str(root / "ok1"), str(root / "ok2")], out3,
              BatchOptions(workers=0, timeout_s=0.5, case_fn="pipeline.batch.testing:digest_case",
                           case_kwargs={"delay": 3.0}))
    rows = Manifest(out3, readonly=True).rows()
    assert [r["status"] for r in rows] == ["failed", "failed"]
    assert all("time limit of 0.5 s" in r["reason"] for r in rows)
    assert not any((out3 / "cases").iterdir())


def test_discovery_tree_csv_and_shared_folders(tmp_path):
    """One folder holding two interleaved studies is split; a CSV names items; missing paths get rows."""
    shared = tmp_path / "shared"
    bh.write_tiny_series(shared, 4, tag="s1", patient_n=1)
    tmp2 = tmp_path / "t2"
    for f in bh.write_tiny_series(tmp2, 3, tag="s2", patient_n=2):
        f.rename(shared / f"z_{f.name}")
    bh.write_tiny_series(tmp_path / "own" / "x", 2, tag="s3")
    csv = tmp_path / "list.csv"
    csv.write_text("study,path\nalpha,own/x\nbeta,does/not/exist\n")
    items = discover([str(shared), str(csv), str(tmp_path / "nope")], tmp_path / "stage")
    by_key = {it.key: it for it in items}
    split = [it for it in items if it.origin == str(shared)]
    assert len(split) == 2 and sorted(it.n_files for it in split) == [3, 4]
    for it in split:  # staged as links because the studies share one folder
        assert Path(it.input).parent == tmp_path / "stage"
        assert all(p.is_symlink() for p in Path(it.input).iterdir())
        assert it.key == it.study_uid
    assert by_key["alpha"].input.endswith("own/x") and by_key["alpha"].problem is None
    assert "does not exist" in by_key["beta"].problem
    assert "does not exist" in by_key["nope"].problem
    hidden = discover([str(shared)], tmp_path / "stage2", hide_uids=True)  # --deidentify: no UIDs in names
    assert sorted(it.study_uid for it in hidden) == sorted(it.study_uid for it in split)
    assert all(it.key.startswith("study-") and it.study_uid not in it.key for it in hidden)


def test_keys_are_phi_redacted(tmp_path):
    from pipeline.batch import phi

    name, pid, dob = bh.patient(11)
    folder = tmp_path / f"{name.split('^')[0]}_{pid}"
    bh.write_tiny_series(folder, 2, tag="phi", patient_n=11)
    items = discover([str(folder)], tmp_path / "stage")
    assert len(items) == 1
    assert name.split("^")[0].lower() not in items[0].key.lower() and pid.lower() not in items[0].key.lower()
    assert phi.redact(f"error in {name} ({pid}, born {dob})").count(phi.REDACTED) == 3


@pytest.mark.parametrize("workers,scheduler", [(0, None), (2, None), (2, "local")])
def test_concurrent_studies_share_the_cores(tmp_path, workers, scheduler):
    """Each of N process-pool workers gets cores // N threads for torch/VTK (SURGITWIN_MAX_THREADS),
    so 2 studies on 2 cores do not run 2 x 2 threads; Dask workers get 1; in-process runs keep
    the configured threads."""
    import os

    if scheduler:
        pytest.importorskip("distributed")
    for n in range(2):
        bh.write_tiny_series(tmp_path / "in" / f"s{n}", 2, tag=f"thr{n}", patient_n=n)
    out = tmp_path / "out"
    run_batch([str(tmp_path / "in")], out, BatchOptions(workers=workers, scheduler=scheduler,
                                                        case_fn="pipeline.batch.testing:digest_case"))
    rows = Manifest(out, readonly=True).rows()
    assert [r["status"] for r in rows] == ["done", "done"]
    seen = {json.loads((Path(r["outputs"]["scene"]) / "digest.json").read_text())["max_threads"] for r in rows}
    want = None if workers == 0 else "1" if scheduler else str(max(1, (os.cpu_count() or 1) // 2))
    assert seen == {want}


def test_workers_lowered_when_studies_would_not_fit_in_memory(tmp_path, monkeypatch):
    """N workers x the per-study peak must fit: the coordinator lowers N and says so."""
    from pipeline import resources
    from pipeline.batch import runner

    assert resources.fit_workers(2, 1500, 24000) == (2, None)
    n, why = resources.fit_workers(4, 1500, 3000)
    assert n == 1 and "lowering workers from 4 to 1" in why and "1500 MiB" in why
    # a 512x512x300 int16 series (150 MiB) is estimated near the measured 1.47 GB
    assert 1300 < resources.study_peak_estimate_mb(512 * 512 * 300 * 2) < 1700
    msgs = []

    class Rep:
        def message(self, text):
            msgs.append(text)

    monkeypatch.setattr(resources, "available_memory_mb", lambda: 2000.0)
    study = tmp_path / "s1"
    study.mkdir()
    (study / "a.dcm").write_bytes(b"\0" * (200 * 2**20))  # a 200 MiB study: ~1.75 GB at peak
    item = type("It", (), {"input": str(study)})()
    opts = runner.BatchOptions(workers=3)
    assert runner._memory_fit(opts, [item], Rep()) == 1
    assert msgs and "lowering workers from 3 to 1" in msgs[0]


def test_a_pool_that_broke_before_a_submit_requeues_that_study(tmp_path, monkeypatch):
    """A worker dies; before the coordinator sees it, it submits the next study and the pool says
    'broken': that study never started, so it is queued again (not failed, not counted as a
    crash) and the batch goes on (was: BrokenProcessPool ended the whole batch)."""
    from pipeline.batch import executors, runner

    class BreaksOnce(executors.InlineExecutor):
        name = "processes"

        def __init__(self):
            super().__init__()
            self.calls, self.restarts = 0, 0

        def submit(self, fn, task):
            self.calls += 1
            if self.calls == 2:
                raise executors.WorkerLost("the process pool broke before this study started (test)")
            return super().submit(fn, task)

        def restart(self):
            self.restarts += 1

    ex = BreaksOnce()
    monkeypatch.setattr(runner, "make_executor", lambda workers, scheduler: ex)
    root = tmp_path / "in"
    for name in ("a1", "a2", "a3"):
        bh.write_tiny_series(root / name, 3, tag=name)
    s = run_batch([str(root)], tmp_path / "out", BatchOptions(workers=1, case_fn="pipeline.batch.testing:digest_case"))
    rows = {r["study"]: r["status"] for r in Manifest(tmp_path / "out", readonly=True).rows()}
    assert rows == {"a1": "done", "a2": "done", "a3": "done"} and s.totals["done"] == 3
    assert ex.restarts == 1 and ex.calls == 4


def test_process_executor_submit_on_a_broken_pool_raises_worker_lost():
    import concurrent.futures as cf

    from pipeline.batch.executors import ProcessExecutor, WorkerLost

    ex = ProcessExecutor(1)
    try:
        class Broken:
            def submit(self, *a, **k):
                raise cf.process.BrokenProcessPool("a child process terminated abruptly")

            def shutdown(self, *a, **k):
                pass

        ex._pool = Broken()
        with pytest.raises(WorkerLost, match="broke before this study started"):
            ex.submit(print, {})
    finally:
        ex._pool = ex._new()
        ex.close()
