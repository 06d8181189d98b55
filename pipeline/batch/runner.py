"""The batch coordinator: discover studies, run them through an executor, keep the manifest.

Layout of a batch folder ``DIR``::

    manifest.sqlite   one row per study (see :mod:`pipeline.batch.manifest`), WAL mode
    manifest.jsonl    the same as JSON Lines, rewritten at the end of every run
    batch.log         the coordinator's log (PHI-filtered)
    cases/<study>/    one scene folder per study that is done (with batch_result.json)
    logs/<study>.log  each study's own log (PHI-filtered): read it when a study failed
    inputs/<study>/   links to the files of studies that share folders with other studies
    work/             de-identified copies while they are processed (removed afterwards)

Guarantees: the coordinator is the only writer of the manifest; a study is marked ``done``
only after its scene folder was published under its final name by a rename; one failing
study (bad input, exception, time limit, even a worker process that dies) never stops the
others; ``--resume`` re-runs everything that is not done — rows left ``running`` by a killed
run included — and first adopts any case that was published but not yet recorded.
"""
from __future__ import annotations

import collections
import fcntl
import hashlib
import json
import logging
import os
import shutil
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ..errors import SurgitwinError
from . import phi
from .executors import WorkerLost, make_executor
from .inputs import StudyItem, discover, hide_uid_key
from .manifest import Manifest
from .progress import NullReporter
from .run_case import DEFAULT_CASE_FN, execute, fn_name, read_marker

log = logging.getLogger(__name__)
POLL_S = 0.25
# a study of a patient who already has a scene becomes a time point of it (docs/FOLLOW_UP.md)
FOLLOW_UP_CASE_FN = f"{__package__.rpartition('.')[0]}.followup.batch:study_or_follow_up"  # pipeline.followup...


@dataclass
class BatchOptions:
    """Everything a batch run needs besides the inputs (CLI flags and ``batch:`` config)."""

    model: str | None = None
    config: str | None = None
    snapshot: bool = False
    workers: int = 1
    scheduler: str | None = None
    resume: bool = False
    deidentify: bool = False
    deid_map: str | None = None
    allow_burned_in: bool = False
    timeout_s: float | None = None
    discovery_timeout_s: float | None = 300.0  # per named input folder
    case_fn: Any = DEFAULT_CASE_FN
    case_kwargs: dict = field(default_factory=dict)
    argv: list[str] = field(default_factory=list)


@dataclass
class BatchSummary:
    out_dir: str
    executor: str
    this_run: dict[str, int]
    totals: dict[str, int]
    elapsed_s: float
    failures: list[tuple[str, str]]
    skipped: list[tuple[str, str]]
    adopted: int = 0
    already_done: int = 0
    interrupted: bool = False

    @property
    def ok(self) -> bool:
        return self.totals.get("failed", 0) == 0 and not self.interrupted

    def to_dict(self) -> dict:
        return dict(self.__dict__)

    def text(self) -> str:
        n = sum(self.this_run.values())
        rate = n / self.elapsed_s * 60 if self.elapsed_s > 0 else 0.0
        t = self.totals
        lines = [f"batch {self.out_dir}: {t['done']} done, {t['failed']} failed, {t['skipped']} skipped"
                 + (f", {t['interrupted']} interrupted" if t.get("interrupted") else "")
                 + (f", {t['pending'] + t['running']} not run" if t["pending"] + t["running"] else "")
                 + f" — this run: {n} studies in {self.elapsed_s:.1f} s ({rate:.1f}/min, {self.executor})"
                 + (f", {self.already_done} already done" if self.already_done else "")
                 + (f", {self.adopted} adopted from a killed run" if self.adopted else "")
                 + (" — INTERRUPTED (run again with --resume)" if self.interrupted else "")]
        for title, rows in (("failed", self.failures), ("skipped", self.skipped)):
            if rows:
                lines.append(f"{title}:")
                lines += [f"  {k}: {r}" for k, r in rows]
        return phi.redact("\n".join(lines))


class LiveSource(Protocol):
    """Items that arrive while the batch runs (the PACS listener's completed series)."""

    def poll(self) -> list[StudyItem]: ...
    def wait(self, timeout: float) -> None: ...
    @property
    def closed(self) -> bool: ...


class _DirLock:
    """One coordinator per batch folder (flock: released by the kernel if the process dies)."""

    def __init__(self, folder: Path):
        self.path = folder / ".lock"
        self.fd = None

    def __enter__(self):
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self.fd)
            raise SurgitwinError("another batch or listener is already working in this folder", path=str(self.path.parent)) from None
        return self

    def __exit__(self, *exc):
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)


def _fingerprint(item_input: str, opts: BatchOptions) -> str:
    blob = json.dumps([item_input, fn_name(opts.case_fn), opts.case_kwargs, opts.model, opts.deidentify,
                       opts.snapshot], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _clean_leftovers(out: Path) -> int:
    """Remove staging/temp folders a killed run left (all dot-names under cases/, work/)."""
    n = 0
    cases = out / "cases"
    if cases.is_dir():
        for p in cases.iterdir():
            if p.name.startswith("."):
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
                n += 1
    shutil.rmtree(out / "work", ignore_errors=True)
    return n


def study_threads(executor) -> int | None:
    """Compute threads one study may use so that concurrent studies do not oversubscribe the
    cores: the machine's cores shared by the process pool's slots; 1 on Dask (one single-threaded
    process per study, as the cluster is set up); None (no cap) when studies run in this process."""
    name = getattr(executor, "name", "")
    if name == "dask":
        return 1
    if name == "processes":
        return max(1, (os.cpu_count() or 1) // max(1, executor.slots))
    return None


class _Coordinator:
    def __init__(self, out: Path, opts: BatchOptions, manifest: Manifest, reporter, run_id: int):
        self.out, self.opts, self.m, self.rep, self.run_id = out, opts, manifest, reporter, run_id
        self.this_run = {"done": 0, "failed": 0, "skipped": 0}
        self.threads: int | None = None  # per-study thread cap, set once the executor is known
        self.inflight: dict = {}
        self.deferred: dict[str, StudyItem] = {}  # newer versions of live studies in flight
        self.deid_salt = None
        self.deid = None
        if opts.deidentify:
            from ..deid import Deidentifier, load_mapping

            saved = load_mapping(opts.deid_map) if opts.deid_map else None
            self.deid = Deidentifier.from_mapping(saved) if saved else Deidentifier()
            self.deid_salt = self.deid.salt
        self.case_kwargs = dict(opts.case_kwargs)
        if opts.case_fn in (DEFAULT_CASE_FN, FOLLOW_UP_CASE_FN):
            self.case_kwargs.setdefault("model", opts.model)  # None: segment.model of the config
            self.case_kwargs.setdefault("snapshot", opts.snapshot)
            if opts.config:
                self.case_kwargs.setdefault("config", str(opts.config))

    def task(self, item: StudyItem) -> dict:
        kw = dict(self.case_kwargs)
        if self.opts.case_fn == DEFAULT_CASE_FN:
            kw.setdefault("case_id", item.key)
        return {
            "key": item.key, "input": item.input, "cases_dir": str(self.out / "cases"),
            "logs_dir": str(self.out / "logs"), "work_dir": str(self.out / "work"),
            "case_fn": self.opts.case_fn, "case_kwargs": kw, "timeout_s": self.opts.timeout_s,
            "fingerprint": _fingerprint(item.input, self.opts), "threads": self.threads, "epoch": self.run_id,
            "deid": None if not self.opts.deidentify else {
                "salt": self.deid_salt, "allow_burned_in": self.opts.allow_burned_in,
                "return_map": bool(self.opts.deid_map)},
        }

    def record(self, key: str, res: dict) -> None:
        status = res.get("status", "failed")
        if res.get("deid_map") and self.deid is not None:
            self.deid.merge(res.pop("deid_map"))
        row = self.m.get(key) or {}
        queued = row.get("started_at")
        timings = dict(res.get("timings") or {})
        if queued and res.get("started_at"):
            timings["queue"] = round(max(0.0, res["started_at"] - queued), 3)
        self.m.finish(key, status, reason=res.get("reason", ""), timings=timings, outputs=res.get("outputs") or {},
                      versions=res.get("versions") or {}, worker=res.get("worker", ""), run_id=self.run_id)
        self.this_run[status] = self.this_run.get(status, 0) + 1
        log.info("study %s %s%s", key, status, f": {res.get('reason')}" if res.get("reason") else "")
        self.rep.finished(key, status, res.get("reason", ""), float(timings.get("total", 0.0)))

    def fail(self, item: StudyItem, reason: str) -> None:
        self.record(item.key, {"status": "failed", "reason": reason, "timings": {"total": 0.0}})

    def run(self, executor, queue: collections.deque, live: LiveSource | None) -> None:
        quarantine: collections.deque = collections.deque()
        inflight: dict = self.inflight  # future -> (item, alone); what Ctrl-C marks interrupted
        crashes: collections.Counter = collections.Counter()
        needs_restart = False
        while True:
            if live is not None:
                for it in live.poll():
                    if self.opts.deidentify:
                        it.key = hide_uid_key(it.key)
                    self.add_item(it)
                    if it.reopened:
                        self.m.reopen(it.key, it.input, it.n_files, "re-opened by late instances: processing it again whole")
                    self.rep.add_total(1)
                    if it.problem:
                        self.fail(it, it.problem)
                    elif any(x.key == it.key for x, _ in inflight.values()):
                        self.deferred[it.key] = it  # runs when the older version finishes (never two at once)
                    else:
                        for q in (queue, quarantine):  # a newer version replaces one still waiting
                            for old in [x for x in q if x.key == it.key]:
                                q.remove(old)
                        queue.append(it)
            if needs_restart and not inflight:
                executor.restart()
                needs_restart = False
            while not needs_restart and (quarantine or queue):
                if quarantine:
                    if inflight:
                        break  # a suspect of a worker crash runs alone, so a second crash is its own
                    item, alone = quarantine.popleft(), True
                elif len(inflight) < executor.slots:
                    item, alone = queue.popleft(), False
                else:
                    break
                try:
                    fut = executor.submit(execute, self.task(item))
                except WorkerLost:  # the pool broke (another study's worker died): this one never started
                    (quarantine if alone else queue).appendleft(item)
                    needs_restart = True
                    break
                self.m.mark_running(item.key, self.run_id)
                self.rep.started(item.key)
                inflight[fut] = (item, alone)
                if alone:
                    break
            if not inflight:
                if queue or quarantine:
                    continue
                if live is not None and not live.closed:
                    live.wait(POLL_S)
                    continue
                return
            for fut in executor.wait(list(inflight), POLL_S):
                item, alone = inflight[fut]
                try:
                    res = executor.result(fut)  # KeyboardInterrupt here leaves the item in flight
                except WorkerLost as e:
                    del inflight[fut]
                    crashes[item.key] += 1
                    if alone or crashes[item.key] >= 2 or executor.name == "dask":
                        self.fail(item, f"{e}: the study crashed its worker (segfault or out of memory?); "
                                        "see its log")
                    else:
                        log.warning("worker died with %s in flight: re-running it alone", item.key)
                        quarantine.append(item)
                    if item.key in self.deferred:  # a newer version supersedes the crashed one
                        if item in quarantine:
                            quarantine.remove(item)
                        queue.append(self.deferred.pop(item.key))
                    needs_restart = needs_restart or executor.name == "processes"
                    continue
                except Exception as e:  # noqa: BLE001 - executor-level failure of one task
                    res = {"status": "failed", "reason": f"executor error {type(e).__name__}: {e}"}
                del inflight[fut]
                self.record(item.key, res)
                if item.key in self.deferred:
                    queue.append(self.deferred.pop(item.key))

    def interrupted(self, why: str) -> list[str]:
        """Mark every study in flight ``interrupted`` (Ctrl-C / SIGTERM); returns their keys."""
        keys = [item.key for item, _ in self.inflight.values()]
        for k in keys:
            self.m.mark_interrupted(k, why)
        self.inflight.clear()
        return keys

    def add_item(self, it: StudyItem) -> None:
        self.m.add(it.key, it.input, origin=it.origin, study_uid=it.study_uid, series_uids=it.series_uids,
                   n_files=it.n_files)


def _adopt(out: Path, m: Manifest, coord: _Coordinator, items: dict[str, StudyItem]) -> int:
    """Mark done the studies a killed run published but did not record (same fingerprint)."""
    n = 0
    for row in m.rows():
        if row["status"] == "done" or row["study"] not in items:
            continue
        case = out / "cases" / row["study"]
        marker = read_marker(case)
        if marker and marker.get("fingerprint") == _fingerprint(items[row["study"]].input, coord.opts):
            m.finish(row["study"], "done", timings=marker.get("timings"), versions=marker.get("versions"),
                     outputs={"scene": str(case), "log": str(out / "logs" / f"{row['study']}.log")},
                     reason="adopted: published by an interrupted run")
            n += 1
    return n


def _recheck_done(m: Manifest) -> int:
    """A done study whose scene folder (or its batch_result.json) is gone is run again."""
    n = 0
    for row in m.rows("done"):
        scene = (row["outputs"] or {}).get("scene")
        if scene and read_marker(Path(scene)) is None:
            log.warning("study %s was done but %s is missing or incomplete: running it again", row["study"], scene)
            m.reset(row["study"], "result folder missing at resume")
            n += 1
    return n


def _items_from_manifest(m: Manifest, known: dict[str, StudyItem]) -> list[StudyItem]:
    """Rows of the manifest not among ``known`` (the inputs named this time), as items to resume."""
    items = []
    for r in m.rows():
        if r["study"] in known:
            continue
        if phi.REDACTED in r["input"]:
            if r["status"] == "done":
                continue
            raise SurgitwinError(f"study '{r['study']}': its input path was redacted in the manifest (it holds patient "
                                 "identifiers); name its input again on the command line with --resume", path=str(m.dir))
        items.append(StudyItem(r["study"], r["input"], r["origin"], r["study_uid"], r["series_uids"], r["n_files"]))
    return items


def _memory_fit(opts: BatchOptions, items, rep) -> int:
    """The process-pool size, lowered (and said) when that many studies at once would not fit in
    memory: the estimate is the largest study's (see :func:`pipeline.resources.study_peak_estimate_mb`)."""
    from ..resources import available_memory_mb, fit_workers, input_bytes, study_peak_estimate_mb

    if opts.scheduler or opts.workers <= 1 or not items:
        return opts.workers
    largest = max(input_bytes(it.input) for it in items)
    n, why = fit_workers(opts.workers, study_peak_estimate_mb(largest), available_memory_mb())
    if why:
        log.warning(why)
        rep.message(why)
    return n


def run_batch(inputs: list[str], out_dir, options: BatchOptions | None = None, *, reporter=None,
              live: LiveSource | None = None) -> BatchSummary:
    """Run every study in ``inputs`` into ``out_dir`` (see module doc); returns the summary.

    ``inputs`` may be empty with ``resume=True`` (the manifest's inputs are reused) or when a
    ``live`` source feeds studies. Raises SurgitwinError for unusable arguments (a manifest
    exists and ``resume`` is off, another coordinator holds the folder).
    """
    opts = options or BatchOptions()
    rep = reporter or NullReporter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for sub in ("cases", "logs"):
        (out / sub).mkdir(exist_ok=True)
    handler = phi.file_handler(out / "batch.log")
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(min(old_level or logging.WARNING, logging.INFO))
    logging.captureWarnings(True)  # warnings quote values (names too): route them through the PHI filter
    t_start = time.time()
    interrupted = False
    executor = None
    try:
        with _DirLock(out), Manifest(out) as m:
            existing = m.counts()
            if sum(existing.values()) and not opts.resume and live is None:
                raise SurgitwinError(f"a batch manifest with {sum(existing.values())} studies is already here; "
                                     "use --resume to continue it or choose an empty --out folder", path=str(out))
            left = _clean_leftovers(out)
            reset = m.reset_unfinished()
            if left or reset:
                log.info("resume: removed %d temporary folders, %d studies were left running by a killed run", left, reset)
            items = discover(inputs, out / "inputs", hide_uids=opts.deidentify,
                             time_limit=opts.discovery_timeout_s) if inputs else []
            if opts.resume:  # the batch is everything in the manifest plus what is named now
                items += _items_from_manifest(m, {it.key: it for it in items})
            by_key = {it.key: it for it in items}
            workers = _memory_fit(opts, items, rep)
            executor = make_executor(workers, opts.scheduler)
            run_id = m.start_run(argv=opts.argv, executor=executor.describe(), workers=executor.slots,
                                 software=_software())
            coord = _Coordinator(out, opts, m, rep, run_id)
            coord.threads = study_threads(executor)
            for it in items:
                coord.add_item(it)
            if opts.resume:
                _recheck_done(m)
            adopted = _adopt(out, m, coord, by_key) if opts.resume else 0
            todo = [it for it in items if (m.get(it.key) or {}).get("status") != "done"]
            already = len(items) - len(todo) - adopted
            log.info("batch %s: %d studies, %d to run, %s", out, len(items), len(todo), executor.describe())
            rep.start(len(items), len(items) - len(todo))
            queue: collections.deque = collections.deque()
            for it in todo:
                if it.problem:
                    coord.fail(it, it.problem)
                else:
                    queue.append(it)
            restore = _sigterm_as_interrupt()
            try:
                coord.run(executor, queue, live)
            except KeyboardInterrupt:
                interrupted = True
                executor.close(cancel=True)
                executor = None
                keys = coord.interrupted("interrupted (Ctrl-C or SIGTERM) while running; --resume runs it again")
                log.warning("batch interrupted: %d studies in flight marked interrupted (%s); --resume re-runs them",
                            len(keys), ", ".join(keys) or "none")
            finally:
                restore()
            if coord.deid is not None and opts.deid_map:
                from ..deid import save_mapping

                save_mapping(opts.deid_map, coord.deid.mapping())
            rows = m.rows()
            summary = BatchSummary(
                str(out), executor.describe() if executor else "interrupted", dict(coord.this_run), m.counts(),
                round(time.time() - t_start, 3),
                [(r["study"], r["reason"]) for r in rows if r["status"] == "failed"],
                [(r["study"], r["reason"]) for r in rows if r["status"] == "skipped"],
                adopted, already, interrupted)
            m.end_run(run_id, {k: v for k, v in summary.to_dict().items() if k not in ("failures", "skipped")})
            m.export_jsonl()
            log.info("%s", summary.text())
            return summary
    finally:
        if executor is not None:
            executor.close()
        rep.close()
        root.removeHandler(handler)
        root.setLevel(old_level)
        handler.close()


def _sigterm_as_interrupt():
    """SIGTERM behaves like Ctrl-C in the coordinator (clean stop, manifest consistent)."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def _handler(signum, frame):
        raise KeyboardInterrupt
    old = signal.signal(signal.SIGTERM, _handler)
    return lambda: signal.signal(signal.SIGTERM, old)


def _software() -> dict:
    from ..config import software_versions

    return software_versions("pydicom", "SimpleITK", "dask", "distributed", "pynetdicom")
