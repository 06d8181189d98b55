"""What a batch worker does with one study: the adapter around the single-case function.

:func:`execute` runs in the worker (a pool process, a Dask worker, or in-process) and never
raises: whatever happens, it returns a result dict the coordinator writes to the manifest.

For one task it

1. opens the study's own log (``DIR/logs/<key>.log``, PHI-filtered) and registers the
   study's patient values so no log line or reason can carry them;
2. checks the input holds at least one image series; if it holds only non-image objects
   (SR, PR, SEG, KO, ...) or only localizers the study is ``skipped`` with what it found; image
   series that cannot be used (truncated headers, none the selection rules accept) fail it;
3. with ``--deidentify``, writes a de-identified copy of the input (PS3.15 Basic profile,
   salt shared by the whole run) and processes that;
4. calls the case function ``case_fn(input, staging_dir, **kwargs)`` — by default
   :func:`run_study`, a thin adapter over :func:`pipeline.run.run_case` — into a staging
   folder ``DIR/cases/.<key>.staging-*``;
5. writes ``batch_result.json`` into it and renames it to ``DIR/cases/<key>`` (replacing an
   older result in two renames), so a killed worker never leaves a half case under the
   final name, and a case published just before a kill is adopted by ``--resume``
   instead of being computed again.

A case function is any picklable callable, or a ``"module:function"`` string (what crosses
process boundaries and what ``--case-fn`` takes). It returns a dict (or an object with
``to_dict()``, like :class:`pipeline.run.CaseResult`) with optional keys ``status``
(``done`` / ``skipped``), ``reason``, ``timings``, ``versions``, ``source``; it signals bad
input by raising :class:`pipeline.errors.SurgitwinError`.
"""
from __future__ import annotations

import importlib
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import threading
import time
import traceback
import warnings
from pathlib import Path
from typing import Any, Callable

from ..errors import SurgitwinError
from ..fileio import fsync_dir as _fsync_dir
from ..fileio import replace_dir
from . import phi

RESULT_FILE = "batch_result.json"
DEFAULT_CASE_FN = f"{__name__}:run_study"  # pipeline.batch.run_case:run_study in the source tree
log = logging.getLogger(__name__)


class StudyTimeout(SurgitwinError):
    """A study ran longer than the batch's per-study limit."""


def run_study(input_path, out_dir, *, model: str | None = None, config=None, snapshot: bool = False,
              case_id: str | None = None) -> dict:
    """Adapter: :func:`pipeline.run.run_case` -> the dict the batch records.

    Returns ``{status, timings, source, versions, warnings, structures}``; ``versions``
    is read back from the scene's provenance (software per stage, the segmentation model).
    """
    from ..run import run_case

    res = run_case(input_path, out_dir, model=model, config=config, snapshot=snapshot, case_id=case_id)
    d = res.to_dict() if hasattr(res, "to_dict") else dict(res)
    d["versions"] = scene_versions(Path(out_dir))
    return d


def scene_versions(scene_dir: Path) -> dict:
    """Software and model versions from a scene's provenance chain ({} when there is none)."""
    try:
        scene = json.loads((scene_dir / "scene.json").read_text())
    except (OSError, ValueError):
        return {}
    software: dict[str, str] = {}
    model: dict[str, Any] = {}
    stages = {}
    for rec in scene.get("provenance", []):
        software.update({str(k): str(v) for k, v in (rec.get("software") or {}).items()})
        stages[rec.get("stage", "?")] = rec.get("config_hash", "")
        if rec.get("stage") == "segment":
            for src in (rec.get("inputs") or {}, rec.get("outputs") or {}):
                for k, v in src.items():
                    if "model" in k or k in ("backend", "weights_sha256", "weights", "version"):
                        model[k] = v
    return {"software": software, "model": model, "stage_config_hash": stages}


def resolve_case_fn(fn) -> Callable:
    """A callable from a callable or a ``"package.module:function"`` string.

    ``pipeline.x:f`` also names the installed wheel's ``surgitwin.pipeline.x:f``, so batch
    configs and manifests work with either layout.
    """
    if callable(fn):
        return fn
    mod, _, name = str(fn).partition(":")
    if not mod or not name:
        raise SurgitwinError(f"case function must be 'module:function'; found {fn!r}")
    top = __name__.split(".")[0]
    if top != "pipeline" and mod.split(".")[0] in ("pipeline", "viewer"):  # installed wheel: surgitwin.pipeline...
        mod = f"{top}.{mod}"
    try:
        obj = importlib.import_module(mod)
        for part in name.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as e:
        raise SurgitwinError(f"cannot import case function {fn!r}: {e}") from None
    return obj


def fn_name(fn) -> str:
    if isinstance(fn, str):
        return fn
    return f"{getattr(fn, '__module__', '?')}:{getattr(fn, '__qualname__', repr(fn))}"


# -- input checks ----------------------------------------------------------------------------

def survey(input_path: Path, *, selection_config=None, check_selection: bool = False) -> tuple[str, str] | None:
    """Register the input's patient values; say whether there is anything to process.

    Returns None (process it), ``("skipped", reason)`` when the input holds nothing meant for
    processing — only non-image objects (SR, KO, PR, SEG, ...) or only localizers (a scout
    sent on its own to the listener) — or ``("failed", reason)`` when it holds image series
    that cannot be used: image instances whose headers stop before their pixel module
    (truncated files), or, with ``check_selection`` (the default pipeline), image series that
    no selection rule of ``selection_config`` accepts (a 2-slice CT). An unusable image
    series is a failure with its reason, never a skip.
    """
    import pydicom

    from ..ingest import index_folder

    if input_path.is_file() and not input_path.name.lower().endswith((".dcm", ".ima")) and "." in input_path.name:
        return None  # NIfTI/NRRD/...: nothing to survey
    try:
        index = index_folder(input_path)
    except SurgitwinError:
        return None  # let the case function report it with its own words
    for s in index.all_series():
        try:
            ds = pydicom.dcmread(s.files[0], stop_before_pixels=True, force=True,
                                 specific_tags=list(phi.PATIENT_KEYWORDS))
        except Exception:  # noqa: BLE001 - unreadable header: the reader will say so
            continue
        phi.register_dataset(ds)  # PhiError: the study fails rather than run with an unredacted value
    series = index.all_series()
    if not series:
        return None
    from ..ingest._common import is_non_image

    broken = [s for s in series if not s.is_image and not is_non_image(s.modality, s.sop_class)]
    usable = [s for s in series if s.is_image]
    if broken and not usable:
        s = broken[0]
        n = sum(b.n_instances for b in broken)
        return ("failed", f"{n} instance(s) of {s.modality or s.sop_class_name or 'an unknown'} image series have no "
                          f"image pixel module (Rows/Columns): their headers stop early (truncated files?), e.g. "
                          f"{s.files[0]} [rule: image instances carry Rows, Columns and Pixel Data]")
    if not usable:
        kinds: dict[str, int] = {}
        for s in series:
            name = s.modality or s.sop_class_name or "unknown"
            kinds[name] = kinds.get(name, 0) + s.n_instances
        found = ", ".join(f"{n} {k}" for k, n in sorted(kinds.items()))
        return ("skipped", f"no image series to process: the input holds only non-image objects ({found} instances)")
    if check_selection:
        from ..config import load_pipeline_config
        from ..ingest import select_series

        # The same rules run_case gives read_input (None: the reader's defaults).
        rules = (load_pipeline_config(selection_config).get("selection") or {}).get("rules")
        sels = select_series(index, rules)
        if not any(x.selected for x in sels):
            why = "; ".join(f"{x.series.modality} '{x.series.description}' ({x.series.n_frames} slices): "
                            f"{x.reasons[0] if x.reasons else x.status}" for x in sels[:6])
            if all(s.is_localizer for s in usable):
                return ("skipped", f"only localizer images (scouts), nothing to segment: {why}")
            return ("failed", f"no series matches the selection rules: {why}")
    return None


# -- publication -----------------------------------------------------------------------------


class Superseded(SurgitwinError):
    """A newer batch run already published this case; an older run must not replace it."""


def publish(staging: Path, final: Path, epoch: int | None = None) -> None:
    """Replace ``final`` by ``staging`` with renames only (an old result is moved aside first).

    ``epoch`` is the batch run (its run_id) this result belongs to. Under a lock on the folder, a
    published case of a newer run is never replaced by an older one (a worker orphaned by a
    killed coordinator, finishing after the resumed batch published): :class:`Superseded`.
    """
    import fcntl

    fd = os.open(final.parent, os.O_RDONLY)  # flock on the cases folder: publications are renames, short
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        have = (read_marker(final) or {}).get("epoch") if final.exists() else None
        if epoch is not None and isinstance(have, int) and have > epoch:
            raise Superseded(f"case '{final.name}' was published by a newer batch run ({have}) than this one "
                             f"({epoch}); this result is discarded", path=str(final),
                             rule="an older run never overwrites a newer publication")
        replace_dir(staging, final)
        _fsync_dir(final.parent)
    finally:
        os.close(fd)  # releases the lock


def read_marker(case_dir: Path) -> dict | None:
    try:
        return json.loads((case_dir / RESULT_FILE).read_text())
    except (OSError, ValueError):
        return None


def _write_marker(folder: Path, data: dict) -> None:
    tmp = folder / f".tmp-{RESULT_FILE}"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1, sort_keys=True, default=str)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, folder / RESULT_FILE)


# -- the worker entry point ------------------------------------------------------------------

class _Alarm:
    """Per-study time limit via SIGALRM (only where it is allowed: a process's main thread)."""

    def __init__(self, seconds: float | None, key: str):
        self.seconds, self.key = seconds, key
        self.armed = False

    def __enter__(self):
        if self.seconds and threading.current_thread() is threading.main_thread() and hasattr(signal, "SIGALRM"):
            def _raise(signum, frame):
                raise StudyTimeout(f"study '{self.key}' exceeded the per-study time limit of {self.seconds:g} s")
            self._old = signal.signal(signal.SIGALRM, _raise)
            # Fire again every second until the block exits: code that catches and swallows
            # the first StudyTimeout (a broad except in a library) still gets stopped.
            signal.setitimer(signal.ITIMER_REAL, float(self.seconds), 1.0)
            self.armed = True
        return self

    def __exit__(self, *exc):
        if self.armed:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, self._old)


def _normalise(res: Any) -> dict:
    if res is None:
        return {}
    if hasattr(res, "to_dict"):
        return res.to_dict()
    if isinstance(res, dict):
        return res
    raise SurgitwinError(f"case function must return a dict or an object with to_dict(); found {type(res).__name__}")


THREADS_ENV = "SURGITWIN_MAX_THREADS"


class _ProcessState:
    """What :func:`execute` changes in the worker process for one study, put back afterwards.

    The thread limit (``SURGITWIN_MAX_THREADS``), the study's log handler on the root logger, the
    root level and the capture of library warnings into logging: a pool or listener process runs
    study after study, and none of them may inherit the previous study's limit, level or log file.
    """

    def __init__(self, threads, handler: logging.Handler):
        self.root = logging.getLogger()
        self.env = os.environ.get(THREADS_ENV)
        self.level = self.root.level
        self.showwarning = warnings.showwarning
        self.handler = handler
        if threads:  # the coordinator's share of the cores for this study (torch, BLAS)
            os.environ[THREADS_ENV] = str(int(threads))
        self.root.addHandler(handler)
        self.root.setLevel(min(self.level or logging.WARNING, logging.INFO))
        # Library warnings (pydicom quotes invalid values, names included) go through the filtered
        # log instead of straight to stderr.
        logging.captureWarnings(True)

    def restore(self) -> None:
        self.root.removeHandler(self.handler)
        self.root.setLevel(self.level)
        if self.showwarning is not getattr(logging, "_showwarning", None):
            logging.captureWarnings(False)  # it was off before this study
            warnings.showwarning = self.showwarning
        if self.env is None:
            os.environ.pop(THREADS_ENV, None)
        else:
            os.environ[THREADS_ENV] = self.env


def execute(task: dict) -> dict:
    """Run one study (see module doc). Never raises; returns the manifest update.

    ``task`` keys: key, input, cases_dir, logs_dir, work_dir, case_fn, case_kwargs,
    fingerprint, epoch (the batch run_id: checked at publication), deid (None or {salt, allow_burned_in, return_map}), timeout_s, threads (None or
    the most threads the study may use: exported as SURGITWIN_MAX_THREADS for the segment stage,
    and restored afterwards with the root logger, see :class:`_ProcessState`).
    """
    key = task["key"]
    started = time.time()
    worker = f"{socket.gethostname()}:{os.getpid()}"
    cases_dir, logs_dir = Path(task["cases_dir"]), Path(task["logs_dir"])
    logs_dir.mkdir(parents=True, exist_ok=True)
    log_path = logs_dir / f"{key}.log"
    handler = phi.file_handler(log_path, logging.INFO)
    state = _ProcessState(task.get("threads"), handler)
    out: dict[str, Any] = {"key": key, "worker": worker, "started_at": started, "timings": {},
                           "outputs": {"log": str(log_path)}, "versions": {}}
    staging = cases_dir / f".{key}.staging-{os.getpid()}-{secrets.token_hex(3)}"
    deid_dir = None
    try:
        if task.get("deid"):
            deid_dir = Path(task["work_dir"]) / f"{key}.deid-{os.getpid()}"
        _run_study(task, out, staging, deid_dir)
    except SurgitwinError as e:
        out.update(status="failed", reason=f"{type(e).__name__}: {e}")
        log.error("study %s failed: %s", key, out["reason"])
    except MemoryError:
        out.update(status="failed", reason="MemoryError: the study did not fit in this worker's memory")
        log.error("study %s failed: out of memory", key)
    except Exception as e:  # noqa: BLE001 - one bad study must never stop the batch
        out.update(status="failed", reason=f"internal error {type(e).__name__}: {e} (traceback in {log_path.name})")
        log.error("study %s failed with an internal error:\n%s", key, traceback.format_exc())
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
        if deid_dir is not None:
            shutil.rmtree(deid_dir, ignore_errors=True)
        out["finished_at"] = time.time()
        out["timings"]["total"] = round(out["finished_at"] - started, 3)
        out["reason"] = phi.redact(out.get("reason", ""))
        state.restore()
        handler.close()
    return out


def _run_study(task: dict, out: dict, staging: Path, deid_dir: Path | None) -> None:
    """The study's steps inside :func:`execute`: survey, de-identification, the case function,
    publication; ``out`` is filled as they go (exceptions are execute's to record)."""
    key = task["key"]
    t0 = time.perf_counter()
    inp = Path(task["input"])
    log.info("study %s: input %s (worker %s)", key, inp, out["worker"])
    default_fn = task["case_fn"] == DEFAULT_CASE_FN
    verdict = survey(inp, selection_config=(task.get("case_kwargs") or {}).get("config"),
                     check_selection=default_fn) if inp.exists() else None
    if verdict:
        log.info("study %s %s: %s", key, *verdict)
        out.update(status=verdict[0], reason=verdict[1])
        return
    with _Alarm(task.get("timeout_s"), key):
        if deid_dir is not None:
            inp = _deidentify(task["deid"], inp, deid_dir, out)
        fn = resolve_case_fn(task["case_fn"])
        res = _normalise(fn(str(inp), str(staging), **(task.get("case_kwargs") or {})))
    status = res.get("status", "done")
    out["timings"].update({k: round(float(v), 3) for k, v in (res.get("timings") or {}).items()})
    if res.get("peak_rss_mb"):  # per stage, MiB (the pipeline measures it exactly on Linux)
        out["outputs"]["peak_rss_mb"] = {k: round(float(v), 1) for k, v in res["peak_rss_mb"].items()}
    out["versions"] = res.get("versions") or {}
    if status == "skipped":
        out.update(status="skipped", reason=str(res.get("reason") or "skipped by the case function"))
        return
    if status != "done":
        raise SurgitwinError(f"case function returned status {status!r}: {res.get('reason', '')}")
    _publish_case(task, staging, out, res.get("warnings") or [])
    log.info("study %s done in %.2f s", key, time.perf_counter() - t0)


def _deidentify(deid: dict, inp: Path, deid_dir: Path, out: dict) -> Path:
    """De-identify ``inp`` into ``deid_dir`` (the case function reads that copy); its timing and,
    when asked, the pseudonym map (PHI: the coordinator writes it only to --deid-map) go to ``out``."""
    from ..deid import Deidentifier, deidentify_tree

    td = time.perf_counter()
    shutil.rmtree(deid_dir, ignore_errors=True)
    d = Deidentifier(salt=deid["salt"], allow_burned_in=deid.get("allow_burned_in", False))
    rep = deidentify_tree(inp, deid_dir, deid=d)
    if not rep.written:
        raise SurgitwinError(f"de-identification wrote no instance ({len(rep.skipped)} refused or not DICOM"
                             + (f"; first: {rep.skipped[0][1]}" if rep.skipped else "") + ")")
    out["timings"]["deid"] = round(time.perf_counter() - td, 3)
    if deid.get("return_map"):
        out["deid_map"] = d.mapping()
    return deid_dir


def _publish_case(task: dict, staging: Path, out: dict, warnings: list) -> None:
    """Mark the staged case done and publish it as ``cases_dir/key``."""
    key = task["key"]
    if not staging.is_dir():
        raise SurgitwinError("case function reported done but wrote no output folder")
    final = Path(task["cases_dir"]) / key
    _write_marker(staging, {"study": key, "fingerprint": task.get("fingerprint"), "status": "done",
                            "epoch": task.get("epoch"), "timings": out["timings"], "versions": out["versions"],
                            "finished_at": time.time()})
    publish(staging, final, task.get("epoch"))
    out["outputs"]["scene"] = str(final)
    out.update(status="done", reason="")
    if warnings:
        out["reason"] = "done with warnings: " + "; ".join(str(w) for w in warnings)[:2000]
