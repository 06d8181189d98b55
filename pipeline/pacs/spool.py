"""Durable spool for received instances, and the idle rule that declares a series complete.

Layout under the listener's folder ``DIR/spool``::

    incoming/<StudyUID>/<SeriesUID>/<SOPInstanceUID>.dcm   instances as they arrive
    ready/<SeriesUID>[.vN]/<SOPInstanceUID>.dcm            series handed to the batch machinery

Each instance is written to a temporary name, fsync'ed, renamed, and the folder fsync'ed
before the C-STORE is acknowledged, so an acknowledged instance survives the process (or the
machine) dying. Re-sending an instance replaces it (same SOP Instance UID, same file): no
duplicates within a series. A series is complete when no instance arrived for
``idle_s`` seconds; it is then moved to ``ready/`` with one rename and becomes a batch item
keyed by its SeriesInstanceUID (:meth:`Spool.poll`). Instances of that series arriving later
re-open it, like Orthanc's stable-series event: once they are idle too, ``ready/<SeriesUID>.vN``
holds the whole series (earlier instances hard-linked) and the same key is processed again,
replacing the earlier result. After a restart, series found in ``incoming/`` get a fresh idle
period.

Concurrency: the C-STORE handlers (one thread per association) and the coordinator share one
lock per series, held while an instance is written and while its folder is moved, so a
folder is never moved away under a writer. Different series are written concurrently.
"""
from __future__ import annotations

import logging
import os
import re
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from ..batch import phi
from ..fileio import fsync_dir as _fsync_dir
from ..batch.inputs import StudyItem

log = logging.getLogger(__name__)
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
_VERSION = re.compile(r"(\.v[0-9]+)?")  # ready/<SeriesUID> then <SeriesUID>.v2, .v3 ... (re-opened)


def _safe_uid(uid: str, what: str) -> str:
    """UIDs become folder names: accept only digits and dots (no path tricks from the network)."""
    uid = str(uid or "").strip().rstrip("\x00")
    if not _UID.match(uid) or len(uid) > 64:
        raise ValueError(f"{what} must be a DICOM UID (digits and dots, <= 64 characters); found {uid[:80]!r}")
    return uid


@dataclass
class _SeriesState:
    study: str
    series: str
    last: float
    count: int


class Spool:
    """The spool folder plus the per-series idle bookkeeping (also the batch's live source)."""

    def __init__(self, root, idle_s: float = 10.0, origin: str = "pacs"):
        self.root = Path(root)
        self.incoming = self.root / "incoming"
        self.ready = self.root / "ready"
        for d in (self.incoming, self.ready):
            d.mkdir(parents=True, exist_ok=True)
        self.idle_s = float(idle_s)
        self.origin = origin
        self._lock = threading.Lock()
        self._series_locks: dict[tuple[str, str], threading.Lock] = {}
        self._state: dict[tuple[str, str], _SeriesState] = {}
        self._closed = threading.Event()
        self._arrived = threading.Event()
        self.stored = 0
        self._recover()

    # -- restart ----------------------------------------------------------------------------
    def _recover(self) -> None:
        """Series left in incoming/ by an earlier process get a fresh idle period."""
        now = time.monotonic()
        for study in sorted(p for p in self.incoming.iterdir() if p.is_dir()):
            for series in sorted(p for p in study.iterdir() if p.is_dir()):
                n = sum(1 for f in series.iterdir() if f.suffix == ".dcm" and not f.name.startswith("."))
                for tmp in series.glob(".tmp-*"):
                    tmp.unlink(missing_ok=True)  # never acknowledged: the sender got no success
                if n:
                    self._state[(study.name, series.name)] = _SeriesState(study.name, series.name, now, n)
                    log.info("spool: recovered series %s with %d instances", series.name, n)

    def _series_lock(self, key: tuple[str, str]) -> threading.Lock:
        with self._lock:
            lk = self._series_locks.get(key)
            if lk is None:
                lk = self._series_locks[key] = threading.Lock()
            return lk

    # -- writing (C-STORE handler threads) --------------------------------------------------
    def store(self, study_uid: str, series_uid: str, sop_uid: str, data: bytes, first_header=None) -> Path:
        """Durably write one encoded instance (DICOM file bytes); returns its path.

        Raises ValueError for UIDs that cannot name files, OSError when the disk fails.
        """
        study, series, sop = (_safe_uid(study_uid, "StudyInstanceUID"), _safe_uid(series_uid, "SeriesInstanceUID"),
                              _safe_uid(sop_uid, "SOPInstanceUID"))
        key = (study, series)
        with self._series_lock(key):
            folder = self.incoming / study / series
            if not folder.is_dir():
                folder.mkdir(parents=True, exist_ok=True)
                _fsync_dir(folder.parent)
                _fsync_dir(self.incoming)
                if first_header is not None:
                    phi.register_dataset(first_header)
            target = folder / f"{sop}.dcm"
            tmp = folder / f".tmp-{threading.get_ident()}-{secrets.token_hex(4)}"
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
            _fsync_dir(folder)
            with self._lock:
                st = self._state.get(key)
                if st is None:
                    st = self._state[key] = _SeriesState(study, series, 0.0, 0)
                st.last = time.monotonic()
                st.count += 1
                self.stored += 1
        self._arrived.set()
        return target

    # -- LiveSource for the batch coordinator -----------------------------------------------
    def poll(self) -> list[StudyItem]:
        """Series idle for ``idle_s``: moved to ready/ and returned as batch items."""
        now = time.monotonic()
        with self._lock:
            due = [k for k, st in self._state.items() if now - st.last >= self.idle_s]
        items = []
        for key in due:
            with self._series_lock(key):
                with self._lock:
                    st = self._state.get(key)
                    if st is None or time.monotonic() - st.last < self.idle_s:
                        continue  # an instance arrived meanwhile
                    del self._state[key]
                item = self._hand_over(st)
            if item is not None:
                items.append(item)
        return items

    def _latest(self, series: str) -> Path | None:
        """The newest handed-over version of ``series`` in ready/ (``S``, ``S.v2``, ``S.v3``...)."""
        versions = [p for p in self.ready.glob(f"{series}*") if p.is_dir() and _VERSION.fullmatch(p.name[len(series):])]
        return max(versions, key=lambda p: int(p.name[len(series) + 2:] or 1) if p.name != series else 1,
                   default=None)

    def _hand_over(self, st: _SeriesState) -> StudyItem | None:
        src = self.incoming / st.study / st.series
        if not src.is_dir():
            return None
        prev = self._latest(st.series)
        late = 0
        if prev is None:
            dst = self.ready / st.series
            os.replace(src, dst)
        else:
            # Late instances re-open the series: the next version holds the earlier instances
            # (hard links, nothing copied) plus the new ones (a re-sent instance replaces its
            # older copy), and the series is processed again, whole, under the same key.
            n = 2 if prev.name == st.series else int(prev.name[len(st.series) + 2:]) + 1
            dst = self.ready / f"{st.series}.v{n}"
            tmp = self.ready / f".{dst.name}.tmp"
            if tmp.exists():
                import shutil

                shutil.rmtree(tmp)
            tmp.mkdir()
            for f in prev.iterdir():
                if f.suffix == ".dcm" and not (src / f.name).exists():
                    os.link(f, tmp / f.name)
            for f in src.iterdir():
                if f.suffix == ".dcm" and not f.name.startswith("."):
                    late += 1
                    os.replace(f, tmp / f.name)
            _fsync_dir(tmp)
            os.replace(tmp, dst)
            import shutil

            shutil.rmtree(src, ignore_errors=True)
        _fsync_dir(self.ready)
        _fsync_dir(src.parent)
        try:
            src.parent.rmdir()  # the study folder, when this was its last series
        except OSError:
            pass
        files = sum(1 for f in dst.iterdir() if f.suffix == ".dcm")
        if late:
            log.info("spool: series %s re-opened by %d late instance(s): processed again whole (%d instances)",
                     st.series, late, files)
        else:
            log.info("spool: series %s complete (%d instances, idle %.1f s)", st.series, files, self.idle_s)
        return StudyItem(st.series, str(dst), self.origin, st.study, [st.series], files, reopened=bool(late))

    def wait(self, timeout: float) -> None:
        self._arrived.wait(timeout)
        self._arrived.clear()

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    def close(self) -> None:
        self._closed.set()
        self._arrived.set()

    def pending(self) -> dict[str, int]:
        """Series still receiving (SeriesInstanceUID -> instances so far)."""
        with self._lock:
            return {st.series: st.count for st in self._state.values()}
