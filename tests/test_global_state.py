"""Issue 16 item 7: module-level state is bounded, and a study leaves the process as it found it."""
from __future__ import annotations

import hashlib
import logging
import os
import warnings

import pytest

from pipeline.batch import phi


@pytest.fixture(autouse=True)
def _clean_registry():
    phi.clear()
    yield
    phi.clear()


def test_phi_registry_is_bounded_and_keeps_the_recent_values(monkeypatch):
    monkeypatch.setattr(phi, "MAX_VALUES", 40)
    phi.register("ZQ0000X")
    for i in range(1, 100):
        phi.register(f"ZQ{i:04d}X")
        if i % 10 == 0:
            phi.register("ZQ0000X")  # the same patient again: stays recent
    assert phi.registered_count() <= 40
    assert phi.redact("ZQ0099X ZQ0000X ZQ0001X") == "[PHI] [PHI] ZQ0001X"


def test_file_hash_cache_is_bounded_and_follows_file_changes(tmp_path):
    from pipeline.planning import records

    files = []
    for i in range(records.HASH_CACHE_SIZE + 40):
        f = tmp_path / f"f{i}.bin"
        f.write_bytes(str(i).encode())
        files.append(f)
        assert records.file_hash(f) == hashlib.sha256(str(i).encode()).hexdigest()[:16]
    assert records._hash_of.cache_info().currsize <= records.HASH_CACHE_SIZE
    files[0].write_bytes(b"changed, and longer")
    assert records.file_hash(files[0]) == hashlib.sha256(b"changed, and longer").hexdigest()[:16]


@pytest.mark.parametrize("before", [None, "7"])
def test_execute_leaves_environment_and_root_logger_as_it_found_them(tmp_path, monkeypatch, before):
    from pipeline.batch import run_case

    if before is None:
        monkeypatch.delenv("SURGITWIN_MAX_THREADS", raising=False)
    else:
        monkeypatch.setenv("SURGITWIN_MAX_THREADS", before)
    root = logging.getLogger()
    handlers, level, showwarning = list(root.handlers), root.level, warnings.showwarning
    seen = {}

    def case(inp, out, **kw):
        seen["threads"] = os.environ.get("SURGITWIN_MAX_THREADS")
        seen["log_handlers"] = len(logging.getLogger().handlers) - len(handlers)
        os.makedirs(out)
        return {"status": "done"}

    (tmp_path / "cases").mkdir()
    task = {"key": "s1", "input": str(tmp_path / "nothing-here"), "cases_dir": str(tmp_path / "cases"),
            "logs_dir": str(tmp_path / "logs"), "work_dir": str(tmp_path / "work"), "case_fn": case,
            "case_kwargs": {}, "threads": 3}
    out = run_case.execute(task)
    assert out["status"] == "done", out
    assert seen == {"threads": "3", "log_handlers": 1}  # the study ran with its limit and its own log
    assert os.environ.get("SURGITWIN_MAX_THREADS") == before
    assert root.handlers == handlers and root.level == level
    assert warnings.showwarning is showwarning
