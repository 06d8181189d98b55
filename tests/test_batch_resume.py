"""Batch robustness: SIGKILL mid-run then --resume; adoption of a published-but-unrecorded case."""
from __future__ import annotations

import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

import batch_helpers as bh
from pipeline.batch.manifest import Manifest
from pipeline.batch.runner import BatchOptions, run_batch

pytestmark = pytest.mark.slow  # end-to-end: left out by `make test-fast`

ROOT = Path(__file__).resolve().parents[1]
N_GOOD = 10


def _expected_digest(folder: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(p for p in folder.rglob("*") if p.is_file()):
        h.update(f.name.encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def _counts(counter_dir: Path) -> dict[str, int]:
    return {p.stem: len(p.read_text().split()) for p in counter_dir.glob("*.count")}


def _statuses(out: Path) -> dict[str, str]:
    db = sqlite3.connect(f"file:{out / 'manifest.sqlite'}?mode=ro", uri=True, timeout=10)
    try:
        return dict(db.execute("SELECT study, status FROM studies"))
    except sqlite3.OperationalError:  # the coordinator has not created the table yet
        return {}
    finally:
        db.close()


@pytest.mark.slow
def test_sigkill_mid_run_then_resume_completes_each_study_once(tmp_path):
    root = tmp_path / "in"
    for n in range(N_GOOD):
        bh.write_tiny_series(root / f"good{n:02d}", 4, tag=f"g{n}")
    bh.truncate_one(bh.write_tiny_series(root / "broken", 4, tag="broken"), cut=40)
    out, counter = tmp_path / "out", tmp_path / "counter"
    args = ["--case-fn", "pipeline.batch.testing:digest_case", "--case-arg", "delay=0.4",
            "--case-arg", f"counter_dir={json.dumps(str(counter))}"]
    cmd = [sys.executable, "-m", "pipeline.cli", "batch", str(root), "--out", str(out), "--workers", "2",
           "--progress", "plain", *args]
    proc = subprocess.Popen(cmd, cwd=ROOT, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            st = _statuses(out) if (out / "manifest.sqlite").exists() else {}
            if sum(v == "done" for v in st.values()) >= 3:
                break
            assert proc.poll() is None, proc.stderr.read().decode()
            time.sleep(0.05)
        else:
            raise AssertionError("the batch did not get 3 studies done within 60 s")
        os.killpg(proc.pid, signal.SIGKILL)  # coordinator and its pool workers, mid-way
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    killed = _statuses(out)
    done_before = {k for k, v in killed.items() if v == "done"}
    assert 3 <= len(done_before) < N_GOOD, killed
    assert any(v in ("running", "pending") for v in killed.values())
    # a case folder under its final name is always complete (marker written before the rename)
    for case in (out / "cases").iterdir():
        if not case.name.startswith("."):
            assert (case / "digest.json").exists() and (case / "batch_result.json").exists()

    # resume from the manifest alone (no inputs named)
    s = run_batch([], out, BatchOptions(workers=2, resume=True, case_fn="pipeline.batch.testing:digest_case",
                                        case_kwargs={"delay": 0.4, "counter_dir": str(counter)}))
    final = _statuses(out)
    assert final == {**{f"good{n:02d}": "done" for n in range(N_GOOD)}, "broken": "failed"}
    assert s.already_done + s.adopted >= len(done_before)
    counts = _counts(counter)
    assert set(counts) == {f"good{n:02d}" for n in range(N_GOOD)}
    for k in done_before:  # done before the kill: never run again
        assert counts[k] == 1, (k, counts)
    # at most the studies in flight at the kill (2 workers) ran twice
    assert sum(counts.values()) <= N_GOOD + 2, counts
    for n in range(N_GOOD):
        k = f"good{n:02d}"
        got = json.loads((out / "cases" / k / "digest.json").read_text())["sha256"]
        assert got == _expected_digest(root / k)
    assert sorted(p.name for p in (out / "cases").iterdir()) == sorted(f"good{n:02d}" for n in range(N_GOOD))
    assert not (out / "work").exists() or not any((out / "work").iterdir())
    runs = Manifest(out, readonly=True).runs()
    assert len(runs) == 2 and runs[0]["finished_at"] is None and runs[1]["finished_at"]


def test_resume_adopts_a_case_published_before_the_kill(tmp_path):
    root = tmp_path / "in"
    for n in range(3):
        bh.write_tiny_series(root / f"s{n}", 2, tag=f"a{n}")
    out, counter = tmp_path / "out", tmp_path / "counter"
    opts = dict(workers=0, case_fn="pipeline.batch.testing:digest_case", case_kwargs={"counter_dir": str(counter)})
    run_batch([str(root)], out, BatchOptions(**opts))
    # simulate a kill between the rename of s1's folder and the manifest update
    db = sqlite3.connect(out / "manifest.sqlite")
    db.execute("UPDATE studies SET status = 'running' WHERE study = 's1'")
    db.execute("UPDATE studies SET status = 'pending' WHERE study = 's2'")
    db.commit()
    db.close()
    (out / "cases" / "s2" / "batch_result.json").unlink()  # s2's folder is not a finished publication
    s = run_batch([str(root)], out, BatchOptions(resume=True, **opts))
    rows = {r["study"]: r for r in Manifest(out, readonly=True).rows()}
    assert all(r["status"] == "done" for r in rows.values())
    assert rows["s1"]["reason"].startswith("adopted")
    assert s.adopted == 1
    assert _counts(counter) == {"s0": 1, "s1": 1, "s2": 2}


def test_resume_reruns_a_done_study_whose_result_was_deleted(tmp_path):
    import shutil

    root = tmp_path / "in"
    for n in range(2):
        bh.write_tiny_series(root / f"s{n}", 2, tag=f"del{n}")
    out, counter = tmp_path / "out", tmp_path / "counter"
    opts = dict(workers=0, case_fn="pipeline.batch.testing:digest_case", case_kwargs={"counter_dir": str(counter)})
    run_batch([str(root)], out, BatchOptions(**opts))
    shutil.rmtree(out / "cases" / "s1")
    s = run_batch([], out, BatchOptions(resume=True, **opts))
    assert s.totals["done"] == 2 and (out / "cases" / "s1" / "digest.json").exists()
    assert _counts(counter) == {"s0": 1, "s1": 2}
