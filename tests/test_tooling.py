"""Issue 16 item 9: `noqa: BLE001` means something.

ruff's BLE rule is on (`make lint`), so a blind ``except Exception`` is either narrowed or carries
``# noqa: BLE001 - <why>``; the reason is required here, since ruff accepts a bare noqa.
"""
from __future__ import annotations

import io
import re
import subprocess
import sys
import tokenize
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOQA = re.compile(r"noqa:\s*BLE001(?P<rest>.*)")


def _ruff_lint() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["ruff"]["lint"]


def unjustified_noqa(source: str) -> list[int]:
    """Lines whose ``noqa: BLE001`` comment gives no reason (``- why`` after the code)."""
    bad = []
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        m = NOQA.search(tok.string) if tok.type == tokenize.COMMENT else None
        if m and not re.match(r"\s*-\s*\w", m.group("rest")):
            bad.append(tok.start[0])
    return bad


def test_the_reason_check_finds_a_bare_noqa():
    src = ("try:\n    x = 1\nexcept Exception:  # noqa: BLE001\n    pass\n"
           "try:\n    x = 2\nexcept Exception:  # noqa: BLE001 - a reason\n    pass\ns = '# noqa: BLE001'\n")
    assert unjustified_noqa(src) == [3]


def test_blind_excepts_are_checked_and_every_noqa_gives_its_reason():
    assert "BLE" in _ruff_lint()["select"]
    bad = {str(f.relative_to(ROOT)): lines for d in ("pipeline", "viewer", "tests", "benchmarks")
           for f in sorted((ROOT / d).rglob("*.py"))
           if "BLE001" in (text := f.read_text(encoding="utf-8")) and (lines := unjustified_noqa(text))}
    assert not bad, f"noqa: BLE001 without a reason: {bad}"


def test_ruff_passes_with_the_blind_except_rule():
    pytest.importorskip("ruff")
    p = subprocess.run([sys.executable, "-m", "ruff", "check", "--select", "BLE", "--no-cache", "pipeline", "viewer",
                        "tests", "benchmarks", "setup.py"], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
