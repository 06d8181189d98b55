"""The batch manifest: one row per study, in ``DIR/manifest.sqlite`` (exported to JSON Lines).

Format
------
SQLite in WAL mode, written by exactly one process, the coordinator (workers return results;
they never open the database), so there is no write contention and a reader
(``surgitwin batch status``) never blocks it. Table ``studies``:

============  ==================================================================================
study         key of the study (folder name, CSV id or StudyInstanceUID); primary key
input         path handed to the case function (a folder, a file, or a staged folder of links)
origin        what the user named on the command line (folder, CSV, DICOM tree, PACS)
study_uid     StudyInstanceUID when the input is DICOM; ``series_uids``: JSON list
status        ``pending`` | ``running`` | ``interrupted`` (in flight at Ctrl-C / SIGTERM; --resume
              re-runs it) | ``done`` | ``failed`` | ``skipped``
reason        why a study failed or was skipped ("" when done); redacted, never PHI
timings       JSON {stage: seconds} from the case function plus ``total`` and ``queue``
outputs       JSON {name: path}: ``scene`` (the scene folder), ``log`` (the study's log)
versions      JSON {software: {...}, model: {...}} as recorded by the case
attempts      how many times the study was started; ``worker``: host/pid of the last attempt
run_id        the run (table ``runs``) that last touched the row; times are epoch seconds
============  ==================================================================================

Table ``runs`` records each invocation (argv, executor, workers, software, summary).
``manifest.jsonl`` holds one JSON object per study (same fields, times in ISO 8601); it is
rewritten atomically at the end of every run and by :meth:`Manifest.export_jsonl`.

Every text value passes through :func:`pipeline.batch.phi.redact` on its way in.
"""
from __future__ import annotations

import json
import os
import socket
import sqlite3
import time
from pathlib import Path
from typing import Any, Iterable

from ..errors import SurgitwinError
from . import phi

MANIFEST_FILE = "manifest.sqlite"
JSONL_FILE = "manifest.jsonl"
SCHEMA_VERSION = "1"
STATUSES = ("pending", "running", "interrupted", "done", "failed", "skipped")
FINAL = frozenset({"done", "failed", "skipped"})
_JSON_COLS = ("series_uids", "timings", "outputs", "versions")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS studies (
    study TEXT PRIMARY KEY, input TEXT NOT NULL, origin TEXT NOT NULL DEFAULT '',
    study_uid TEXT, series_uids TEXT NOT NULL DEFAULT '[]', n_files INTEGER,
    status TEXT NOT NULL CHECK (status IN ('pending','running','interrupted','done','failed','skipped')),
    reason TEXT NOT NULL DEFAULT '', timings TEXT NOT NULL DEFAULT '{}',
    outputs TEXT NOT NULL DEFAULT '{}', versions TEXT NOT NULL DEFAULT '{}',
    attempts INTEGER NOT NULL DEFAULT 0, worker TEXT NOT NULL DEFAULT '', run_id INTEGER,
    added_at REAL NOT NULL, started_at REAL, finished_at REAL, seq INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS studies_status ON studies(status);
CREATE TABLE IF NOT EXISTS runs (
    run_id INTEGER PRIMARY KEY AUTOINCREMENT, started_at REAL NOT NULL, finished_at REAL,
    host TEXT, pid INTEGER, argv TEXT, executor TEXT, workers INTEGER, software TEXT, summary TEXT);
"""


def _iso(t: float | None) -> str | None:
    return None if t is None else time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(t))


def _dumps(v: Any, redact: bool = True) -> str:
    return json.dumps(phi.redact_obj(v) if redact else v, sort_keys=True, default=str)


class Manifest:
    """Open (creating if needed) the manifest of batch folder ``out_dir``.

    Parameters
    ----------
    out_dir : path of the batch output folder (holds ``manifest.sqlite``)
    readonly : open without creating or writing (``batch status``); raises SurgitwinError
        naming the folder when there is no manifest.
    """

    def __init__(self, out_dir, *, readonly: bool = False):
        self.dir = Path(out_dir)
        self.path = self.dir / MANIFEST_FILE
        self.readonly = readonly
        if readonly:
            if not self.path.exists():
                raise SurgitwinError(f"no batch manifest here: expected {MANIFEST_FILE}", path=str(self.dir))
            # mode=ro still lets SQLite read a WAL written by a live coordinator.
            self.db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=30)
        else:
            self.dir.mkdir(parents=True, exist_ok=True)
            self.db = sqlite3.connect(str(self.path), timeout=30, isolation_level=None)
            self.db.execute("PRAGMA journal_mode=WAL")
            # FULL: a row marked done survives power loss once the call returns.
            self.db.execute("PRAGMA synchronous=FULL")
            self.db.executescript(_SCHEMA)
            self._migrate()
            self.db.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (SCHEMA_VERSION,))
        self.db.row_factory = sqlite3.Row

    def _migrate(self) -> None:
        """Manifests written before 'interrupted' existed: widen the status CHECK (table rebuilt once)."""
        sql = self.db.execute("SELECT sql FROM sqlite_master WHERE name = 'studies'").fetchone()[0]
        if "'interrupted'" in sql:
            return
        self.db.execute("BEGIN IMMEDIATE")
        try:
            self.db.execute("ALTER TABLE studies RENAME TO studies_old")
            self.db.execute(_SCHEMA.split("CREATE INDEX")[0].split(";", 1)[1].strip().rstrip(";"))
            self.db.execute("INSERT INTO studies SELECT * FROM studies_old")
            self.db.execute("DROP TABLE studies_old")
            self.db.execute("CREATE INDEX IF NOT EXISTS studies_status ON studies(status)")
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise

    def close(self) -> None:
        self.db.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- writing (coordinator only) -------------------------------------------------------
    def _write(self, sql: str, args: Iterable = ()) -> sqlite3.Cursor:
        if self.readonly:
            raise SurgitwinError("manifest opened read-only", path=str(self.path))
        return self.db.execute(sql, tuple(args))

    def add(self, study: str, input: str, *, origin: str = "", study_uid: str | None = None,
            series_uids: Iterable[str] = (), n_files: int | None = None) -> bool:
        """Insert a pending row; an existing row keeps its status. Returns True when inserted."""
        seq = self.db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM studies").fetchone()[0]
        cur = self._write(
            "INSERT OR IGNORE INTO studies (study, input, origin, study_uid, series_uids, n_files, status, added_at, seq)"
            " VALUES (?, ?, ?, ?, ?, ?, 'pending', ?, ?)",
            (study, phi.redact(input), phi.redact(origin), study_uid, _dumps(list(series_uids), redact=False), n_files,
             time.time(), seq))
        if cur.rowcount == 0:  # known study: refresh where it comes from (paths may have moved)
            self._write("UPDATE studies SET input = ?, origin = ? WHERE study = ? AND status != 'done'",
                        (phi.redact(input), phi.redact(origin), study))
        return cur.rowcount == 1

    def reopen(self, study: str, input: str, n_files: int | None, why: str) -> None:
        """A study whose input grew (late instances of a series): pending again with the new input."""
        self._write("UPDATE studies SET input = ?, n_files = ?, status = CASE WHEN status = 'running' THEN status"
                    " ELSE 'pending' END, reason = ? WHERE study = ?", (phi.redact(input), n_files, phi.redact(why), study))

    def mark_running(self, study: str, run_id: int | None) -> None:
        self._write("UPDATE studies SET status = 'running', reason = '', attempts = attempts + 1, run_id = ?,"
                    " started_at = ?, finished_at = NULL WHERE study = ?", (run_id, time.time(), study))

    def finish(self, study: str, status: str, *, reason: str = "", timings: dict | None = None,
               outputs: dict | None = None, versions: dict | None = None, worker: str = "",
               run_id: int | None = None, started_at: float | None = None) -> None:
        """Record a study's final status (done / failed / skipped) in one transaction."""
        if status not in FINAL:
            raise SurgitwinError(f"manifest: final status must be one of {sorted(FINAL)}; found {status!r}")
        self._write(
            "UPDATE studies SET status = ?, reason = ?, timings = ?, outputs = ?, versions = ?, worker = ?,"
            " run_id = COALESCE(?, run_id), started_at = COALESCE(?, started_at), finished_at = ? WHERE study = ?",
            (status, phi.redact(reason), _dumps(timings or {}), _dumps(outputs or {}), _dumps(versions or {}),
             phi.redact(worker), run_id, started_at, time.time(), study))

    def reset(self, study: str, why: str) -> None:
        """Put a study back to ``pending`` (its recorded result can no longer be trusted)."""
        self._write("UPDATE studies SET status = 'pending', reason = ? WHERE study = ?", (phi.redact(why), study))

    def mark_interrupted(self, study: str, why: str) -> None:
        """A study that was in flight when the run was stopped (Ctrl-C, SIGTERM)."""
        self._write("UPDATE studies SET status = 'interrupted', reason = ?, finished_at = ? WHERE study = ?"
                    " AND status = 'running'", (phi.redact(why), time.time(), study))

    def reset_unfinished(self) -> int:
        """Rows left ``running`` by a killed run, or ``interrupted``, go back to ``pending``; returns how many."""
        return self._write("UPDATE studies SET status = 'pending' WHERE status IN ('running', 'interrupted')").rowcount

    def start_run(self, *, argv: list[str], executor: str, workers: int, software: dict) -> int:
        cur = self._write(
            "INSERT INTO runs (started_at, host, pid, argv, executor, workers, software) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (time.time(), socket.gethostname(), os.getpid(), _dumps(argv), executor, workers, _dumps(software)))
        return int(cur.lastrowid)

    def end_run(self, run_id: int, summary: dict) -> None:
        self._write("UPDATE runs SET finished_at = ?, summary = ? WHERE run_id = ?", (time.time(), _dumps(summary), run_id))

    # -- reading --------------------------------------------------------------------------
    @staticmethod
    def _row(r: sqlite3.Row) -> dict:
        d = dict(r)
        for k in _JSON_COLS:
            d[k] = json.loads(d[k]) if d.get(k) else ({} if k != "series_uids" else [])
        return d

    def get(self, study: str) -> dict | None:
        r = self.db.execute("SELECT * FROM studies WHERE study = ?", (study,)).fetchone()
        return None if r is None else self._row(r)

    def rows(self, status: str | None = None) -> list[dict]:
        if status is None:
            cur = self.db.execute("SELECT * FROM studies ORDER BY seq")
        else:
            cur = self.db.execute("SELECT * FROM studies WHERE status = ? ORDER BY seq", (status,))
        return [self._row(r) for r in cur.fetchall()]

    def counts(self) -> dict[str, int]:
        out = {s: 0 for s in STATUSES}
        for status, n in self.db.execute("SELECT status, COUNT(*) FROM studies GROUP BY status"):
            out[status] = n
        return out

    def runs(self) -> list[dict]:
        rows = [dict(r) for r in self.db.execute("SELECT * FROM runs ORDER BY run_id")]
        for r in rows:
            for k in ("argv", "software", "summary"):
                r[k] = json.loads(r[k]) if r.get(k) else None
        return rows

    def records(self) -> list[dict]:
        """Public form of every row (``batch status --json``; one line each in manifest.jsonl)."""
        out = []
        for r in self.rows():
            out.append({
                "study": r["study"], "status": r["status"], "reason": r["reason"], "outputs": r["outputs"],
                "input": r["input"], "origin": r["origin"], "study_uid": r["study_uid"],
                "series_uids": r["series_uids"], "n_files": r["n_files"], "timings": r["timings"],
                "versions": r["versions"], "attempts": r["attempts"], "worker": r["worker"], "run_id": r["run_id"],
                "started_at": _iso(r["started_at"]), "finished_at": _iso(r["finished_at"]),
            })
        return out

    def export_jsonl(self, path=None) -> Path:
        """Write all records as JSON Lines, atomically (temp name, fsync, rename)."""
        path = Path(path) if path else self.dir / JSONL_FILE
        tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
        with open(tmp, "w", encoding="utf-8") as f:
            for rec in self.records():
                f.write(json.dumps(rec, sort_keys=True) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        return path
