"""Turn what the user names on the command line into one work item per study.

Accepted inputs (any mix):

* a **folder** holding one DICOM study (any layout below it) -> one item named after the folder;
* a **DICOM tree** holding many studies -> one item per StudyInstanceUID, found by
  :func:`pipeline.ingest.index_folder` (the ``scan`` machinery). When a study owns a
  folder of its own (``tree/case01/...``) that folder is its input and names it; when studies
  share folders, the study's files are linked into ``DIR/inputs/<key>/`` (symlinks, nothing
  copied) and it is named by its StudyInstanceUID;
* a **CSV** file: a ``path`` column (relative paths are relative to the CSV) and an optional
  ``study`` (or ``id``) column naming the item; without a header, the first column is the path;
* a NIfTI / NRRD / MHA **image file**, or a single DICOM file -> one item.

A path that does not exist, or a folder with nothing readable in it, still becomes an item:
it is recorded as failed with the reason, so every study the user named has a row.
Keys are made filesystem-safe and PHI-redacted (a folder may be named after the patient).
"""
from __future__ import annotations

import csv
import logging
import os
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import SurgitwinError
from ..ingest._common import not_regular
from . import phi

log = logging.getLogger(__name__)
DISCOVERY_GRACE_S = 5.0  # after the time limit, how long a stuck discovery thread is waited for
NO_STUDY_UID = "(no StudyInstanceUID"  # how the index names files without one
IMAGE_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass
class StudyItem:
    """One unit of batch work.

    Attributes
    ----------
    key : manifest key and output folder name (``DIR/cases/<key>``)
    input : path handed to the case function
    origin : the command-line input it came from
    problem : when set, the item cannot run and is recorded failed with this reason
    """

    key: str
    input: str
    origin: str
    study_uid: str | None = None
    series_uids: list[str] = field(default_factory=list)
    n_files: int | None = None
    problem: str | None = None
    reopened: bool = False  # a live series that got late instances: run again, replacing its result


def safe_key(name: str) -> str:
    """Filesystem- and PHI-safe key: redacted, non [A-Za-z0-9._-] runs replaced by '_'."""
    k = _UNSAFE.sub("_", phi.redact(name)).strip("._-")
    return k[:120] or "study"


_UID_KEY = re.compile(r"^([0-9]+(?:\.[0-9]+)+)(-[0-9]+)?$")


def hide_uid_key(key: str) -> str:
    """``study-<16 hex of SHA-256>`` for a key that is a UID (``-n`` suffix kept); others unchanged.

    With ``--deidentify`` output folders are named by keys, and must not carry original UIDs.
    """
    import hashlib

    m = _UID_KEY.match(key)
    if not m:
        return key
    return "study-" + hashlib.sha256(m.group(1).encode()).hexdigest()[:16] + (m.group(2) or "")


def _is_image_file(p: Path) -> bool:
    n = p.name.lower()
    return any(n.endswith(s) for s in IMAGE_SUFFIXES)


def _register_study_phi(files: list[str]) -> None:
    """Read the first header of a study so its patient values are redacted everywhere."""
    import pydicom

    for f in files[:1]:
        try:
            ds = pydicom.dcmread(f, stop_before_pixels=True, force=True,
                                 specific_tags=list(phi.PATIENT_KEYWORDS))
            phi.register_dataset(ds)
        except Exception:  # noqa: BLE001 - an unreadable header is the case function's problem
            pass


def _read_csv(path: Path) -> list[tuple[str | None, str]]:
    """(name or None, path) per row of a CSV list of inputs."""
    text = path.read_text(encoding="utf-8-sig")
    rows = [r for r in csv.reader(text.splitlines()) if r and any(c.strip() for c in r)]
    if not rows:
        return []
    header = [c.strip().lower() for c in rows[0]]
    out = []
    if "path" in header:
        ip = header.index("path")
        iname = next((header.index(n) for n in ("study", "id", "case", "name") if n in header), None)
        body = rows[1:]
    else:
        ip, iname, body = 0, None, rows
    for r in body:
        p = r[ip].strip() if ip < len(r) else ""
        if not p or p.startswith("#"):
            continue
        q = Path(p).expanduser()
        out.append(((r[iname].strip() or None) if iname is not None and iname < len(r) else None,
                    str(q if q.is_absolute() else (path.parent / q))))
    return out


def _stage(files: list[str], folder: Path) -> Path:
    """Link ``files`` into ``folder`` (rebuilt each time, so a resumed run sees the same set)."""
    import shutil

    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    for n, f in enumerate(sorted(files)):
        os.symlink(os.path.abspath(f), folder / f"{n:06d}.dcm")
    return folder


def _from_folder(folder: Path, origin: str, stage_root: Path, deadline: float | None = None) -> list[StudyItem]:
    from ..ingest import index_folder

    index = index_folder(folder, deadline=deadline)
    if not index:
        images = sorted(p for p in folder.rglob("*") if p.is_file() and _is_image_file(p))
        if images:
            return [StudyItem(p.name.split(".")[0], str(p), origin) for p in images]
        why = (f"no DICOM instance or image file found ({len(index.skipped)} files not DICOM, "
               f"e.g. {Path(index.skipped[0][0]).name}: {index.skipped[0][1]})" if index.skipped
               else "folder is empty")
        return [StudyItem(folder.name, str(folder), origin, problem=why)]
    if index.skipped:
        log.info("%s: %d files are not DICOM instances and were left out", folder, len(index.skipped))
    # Files whose header has no StudyInstanceUID (cut short before it, or blanked) are no study
    # of their own: with at most one real study the named folder is one item under its name.
    real = [st for st in index if not st.study_uid.startswith(NO_STUDY_UID)]
    if len(real) <= 1:
        files = [f for st in index for s in st.series for f in s.files]
        _register_study_phi(files)
        st = real[0] if real else index[0]
        return [StudyItem(folder.name, str(folder), origin, None if not real else st.study_uid,
                          sorted({s.series_uid for s in st.series if s.series_uid}), len(files))]
    items = []
    study_files = {st.study_uid: [f for s in st.series for f in s.files] for st in index}
    for st in index:
        files = study_files[st.study_uid]
        _register_study_phi(files)
        common = Path(os.path.commonpath(files))
        if common.is_file():
            common = common.parent
        others = [f for uid, fs in study_files.items() if uid != st.study_uid for f in fs]
        exclusive = common != folder and not any(Path(f).is_relative_to(common) for f in others)
        no_uid = st.study_uid.startswith(NO_STUDY_UID)
        if exclusive:
            key, inp = common.name, str(common)
        else:
            key = f"{folder.name}_no_StudyInstanceUID" if no_uid else st.study_uid
            inp = str(_stage(files, stage_root / safe_key(key)))
        items.append(StudyItem(key, inp, origin, None if no_uid else st.study_uid,
                               sorted({s.series_uid for s in st.series if s.series_uid}), len(files)))
    return items


def _folder_items(folder: Path, origin: str, stage_root: Path, time_limit: float | None) -> list[StudyItem]:
    """:func:`_from_folder` under a time limit; any failure fails this input only (one row).

    The index checks the deadline between files; a thread that is stuck in one system call
    (a hung network mount) is abandoned (daemon) and the input reported failed.
    """
    box: dict = {}

    def work():
        try:
            deadline = None if time_limit is None else time.monotonic() + time_limit
            box["items"] = _from_folder(folder, origin, stage_root, deadline)
        except Exception as e:  # noqa: BLE001 - reported as this input's failure
            box["error"] = e

    t = threading.Thread(target=work, name=f"discover-{folder.name}", daemon=True)
    t.start()
    t.join(None if time_limit is None else time_limit + DISCOVERY_GRACE_S)
    if t.is_alive():
        why = f"discovery did not finish within {time_limit:g} s (a file or mount that does not answer?)"
    elif "error" in box:
        e = box["error"]
        why = str(e) if isinstance(e, SurgitwinError) else f"discovery failed: {type(e).__name__}: {e}"
    else:
        return box["items"]
    log.warning("%s: %s", folder, why)
    return [StudyItem(folder.name, str(folder), origin, problem=why)]


def discover(inputs: list[str], stage_root, *, hide_uids: bool = False,
             time_limit: float | None = None) -> list[StudyItem]:
    """One :class:`StudyItem` per study found in ``inputs``; keys unique and stable across runs.

    Parameters
    ----------
    inputs : folders, CSV files, image files or DICOM files (see module doc)
    stage_root : folder for linked inputs of studies that share folders (``DIR/inputs``)
    hide_uids : rename keys that are UIDs to ``study-<16 hex of the UID's SHA-256>``
        (``--deidentify``: output folder names must not carry original UIDs)
    time_limit : seconds discovery may take per named folder; past it (or on any error) the
        folder is one failed item with the reason, and the other inputs go on
    """
    stage_root = Path(stage_root)
    raw: list[StudyItem] = []
    for given in inputs:
        p = Path(given).expanduser()
        if not p.exists():
            raw.append(StudyItem(p.name or str(p), str(p), given, problem="input does not exist"))
        elif p.is_file() and p.suffix.lower() == ".csv":
            for name, path in _read_csv(p):
                q = Path(path)
                if not q.exists():
                    raw.append(StudyItem(name or q.name, path, given, problem="input listed in the CSV does not exist"))
                else:
                    raw.append(StudyItem(name or q.name.split(".")[0] if q.is_file() else name or q.name, path, given))
        elif not p.is_dir() and not_regular(p):
            raw.append(StudyItem(p.name.split(".")[0] or p.name, str(p), given, problem=f"input is {not_regular(p)}"))
        elif p.is_file():
            raw.append(StudyItem(p.name.split(".")[0], str(p), given))
        else:
            raw.extend(_folder_items(p, given, stage_root, time_limit))
    if hide_uids:
        for it in raw:
            it.key = hide_uid_key(it.key)
    seen: dict[str, int] = {}
    for it in raw:
        k = safe_key(it.key)
        n = seen.get(k, 0) + 1
        seen[k] = n
        it.key = k if n == 1 else f"{k}-{n}"
    return raw
