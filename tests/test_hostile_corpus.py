"""Hostile inputs (issue 12): `surgitwin run` on each case of tests/hostile_corpus.py.

Every case ends in exit 1 with a message naming the file and the rule broken, or in exit 0 with
a correct scene; never a traceback, never a hang (each case runs under a time limit), never exit
0 with a wrong scene.
"""
from __future__ import annotations

import json
import signal

import pytest

import hostile_corpus
from pipeline.cli import main

TIME_LIMIT_S = 90


class Hang(Exception):
    pass


def _alarm(signum, frame):
    raise Hang(f"the case did not finish within {TIME_LIMIT_S} s")


@pytest.mark.parametrize("name", hostile_corpus.names())
def test_hostile_input(name, tmp_path, capsys):
    (case,) = hostile_corpus.build(tmp_path / "corpus", only=name)
    out = tmp_path / "scene"
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(TIME_LIMIT_S)
    try:
        rc = main(["run", str(case.input), "--out", str(out), "--model", "hu_rules", "--no-snapshot"])
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    if case.expect == "ok":
        assert rc == 0, err
        scene = json.loads((out / "scene.json").read_text())
        case.check(scene)
        assert "input_checks" in scene
    else:
        assert rc == 1, f"exit {rc} (expected 1): {err[-2000:]}"
        assert not out.exists()
        msg = err.strip().splitlines()[-1]
        assert msg.startswith("surgitwin run: error:"), err
        assert case.names in msg, f"message does not name {case.names!r}: {msg}"
        assert case.rule.lower() in msg.lower(), f"message does not state the rule {case.rule!r}: {msg}"
