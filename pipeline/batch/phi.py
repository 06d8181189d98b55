"""Keep protected health information (PHI) out of logs, manifests and error reasons.

The rule (issue 7): no patient name, ID or birth date is ever written to a log or a manifest.
Paths and error messages can carry them (a folder named after the patient, an ingest error
quoting two PatientIDs of a mixed study), so everything that leaves a process as text goes
through :func:`redact`:

* values read from DICOM headers are registered with :func:`register_dataset` /
  :func:`register` (patient name and its components, IDs, birth date in DICOM and ISO form);
* :func:`redact` replaces every registered value (case-insensitive, longest first, whole
  tokens only so UIDs and longer numbers stay intact) and any DICOM person-name-looking token
  (``FAMILY^GIVEN``) with ``[PHI]``;
* :class:`PhiFilter` applies it to log records; :func:`install_filter` puts it on handlers
  (a filter on a *logger* does not see records propagated from child loggers, one on a
  *handler* sees them all).

The registry is per process: batch workers register the values of the study they process.
It is bounded (:data:`MAX_VALUES` spellings, the least recently registered dropped first), so a
listener that runs for months does not grow it, or the cost of each :func:`redact`, without
end; a value registered again (the same patient sending again) counts as recent.

A value that cannot be read from its header is never skipped: its raw bytes are registered
instead, and when not even those can be read :func:`register_dataset` raises :class:`PhiError`
(the study fails with that reason instead of being processed with an unredacted identifier).
"""
from __future__ import annotations

import logging
import re
import threading
from collections import OrderedDict
from typing import Iterable

from ..errors import SurgitwinError

REDACTED = "[PHI]"
# Attributes whose values identify the patient directly (PS3.15 E.1-1 entries with action Z/X
# that are patient identity, not institution/device).
PATIENT_KEYWORDS = ("PatientName", "PatientID", "PatientBirthDate", "OtherPatientIDs", "OtherPatientNames",
                    "PatientBirthName", "PatientMotherBirthName", "PatientAddress", "PatientTelephoneNumbers",
                    "MedicalRecordLocator", "AdmissionID")
# A DICOM PN rendered as text: at least one '^' between word characters (e.g. DOE^JOHN^^DR).
_PN_TOKEN = re.compile(r"[\w'\-\.]+(?:\^[\w'\-\.]*)+", re.UNICODE)
_MIN_COMPONENT = 3  # shorter name components ("LI", "JO") would redact ordinary words

MAX_VALUES = 4096  # spellings kept (about 30 per patient: a few hundred recent patients)

_lock = threading.Lock()
_values: OrderedDict[str, None] = OrderedDict()  # insertion order = least recently registered first
_pattern: re.Pattern | None = None


class PhiError(SurgitwinError):
    """A patient identity value could not be registered for redaction."""


def _variants(value: str) -> set[str]:
    v = value.strip()
    if not v:
        return set()
    out = {v}
    if "^" in v:  # person name: the raw form, "Given Family", and each long component
        parts = [p.strip() for p in v.split("^") if p.strip()]
        out.update(p for p in parts if len(p) >= _MIN_COMPONENT)
        if len(parts) >= 2:
            out.add(f"{parts[1]} {parts[0]}")
            out.add(f"{parts[0]} {parts[1]}")
            out.add(f"{parts[0]}, {parts[1]}")
    if re.fullmatch(r"\d{8}", v):  # DA: also the spellings free text and logs use
        y, m, d = v[:4], v[4:6], v[6:]
        for mm, dd in {(m, d), (m.lstrip("0") or "0", d.lstrip("0") or "0")}:
            out.update({f"{y}-{mm}-{dd}", f"{y}/{mm}/{dd}", f"{y}.{mm}.{dd}", f"{dd}.{mm}.{y}",
                        f"{dd}/{mm}/{y}", f"{mm}/{dd}/{y}", f"{dd}-{mm}-{y}"})
    return {x for x in out if len(x) >= 2}


def register(*values) -> None:
    """Add identifying values (str, pydicom PersonName, multi-values) to this process's registry."""
    global _pattern
    new: set[str] = set()
    for value in values:
        if value is None:
            continue
        if isinstance(value, (list, tuple, set)) or type(value).__name__ == "MultiValue":
            for v in value:
                register(v)
            continue
        new |= _variants(str(value))
    with _lock:
        changed = False
        for v in sorted(new):
            if v in _values:
                _values.move_to_end(v)
            else:
                _values[v] = None
                changed = True
        while len(_values) > MAX_VALUES:
            _values.popitem(last=False)
            changed = True
        if changed:
            _pattern = None


def _raw_values(ds, kw: str) -> list[str]:
    """The element's stored bytes as text (backslash-separated values), for a value pydicom cannot convert."""
    elem = ds.get_item(kw)
    raw = getattr(elem, "value", None)
    if isinstance(raw, (bytes, bytearray)):
        text = bytes(raw).decode("latin-1").replace("\x00", " ")
    elif raw is None:
        return []
    else:
        text = str(raw)
    return [v.strip() for v in text.split("\\") if v.strip()]


def register_dataset(ds) -> None:
    """Register the patient-identity values of a pydicom Dataset (missing ones are ignored).

    A value pydicom cannot convert (a wrong VR, a bad length) is registered from its raw bytes;
    one that cannot be read at all raises :class:`PhiError`, never a silent skip.
    """
    for kw in PATIENT_KEYWORDS:
        try:
            v = ds.get(kw)
        except Exception as e:  # noqa: BLE001 - any conversion error: fall back to the raw bytes
            try:
                v = _raw_values(ds, kw)
            except Exception:  # noqa: BLE001 - reported as PhiError below
                raise PhiError(f"the patient identity attribute {kw} can be neither read ({type(e).__name__}) "
                               f"nor taken as raw bytes, so it could not be registered for redaction",
                               rule="every patient identity value is registered before the study is processed") \
                    from None
        if v not in (None, ""):
            register(v)


def registered_count() -> int:
    return len(_values)


def clear() -> None:
    """Forget every registered value (tests; the registry is bounded by :data:`MAX_VALUES` anyway)."""
    global _pattern
    with _lock:
        _values.clear()
        _pattern = None


def _compiled() -> re.Pattern | None:
    global _pattern
    with _lock:
        if _pattern is None and _values:
            alts = sorted(_values, key=len, reverse=True)
            # Whole tokens only: not inside a longer word or number, and not a component of a
            # dotted UID (a numeric patient ID "1001" must not eat part of "1.2.1001.5").
            # "_" counts as a separator, so a folder "DOE_JOHN" is still caught.
            _pattern = re.compile(r"(?<![^\W_])(?<!\d\.)(?:" + "|".join(re.escape(a) for a in alts)
                                  + r")(?![^\W_])(?!\.\d)", re.IGNORECASE)
        return _pattern


def redact(text) -> str:
    """``text`` with every registered identifier and PN-looking token replaced by ``[PHI]``."""
    if text is None:
        return ""
    s = _PN_TOKEN.sub(REDACTED, str(text))
    pat = _compiled()
    return s if pat is None else pat.sub(REDACTED, s)


def redact_obj(obj):
    """Redact every string inside a JSON-like structure (dict keys included)."""
    if isinstance(obj, str):
        return redact(obj)
    if isinstance(obj, dict):
        return {redact_obj(k) if isinstance(k, str) else k: redact_obj(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [redact_obj(v) for v in obj]
    return obj


class PhiFilter(logging.Filter):
    """Logging filter that rewrites each record's message (and traceback text) through :func:`redact`."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            msg = record.getMessage()
        except Exception:  # noqa: BLE001 - a broken %-format must still be logged, redacted
            msg = f"{record.msg!r} {record.args!r}"
        record.msg, record.args = redact(msg), None
        if record.exc_info:
            # Format the traceback now so the handler cannot re-render the raw exception text.
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        elif record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


def install_filter(handlers: Iterable[logging.Handler] | None = None) -> None:
    """Attach one :class:`PhiFilter` to each handler (default: the root logger's handlers)."""
    for h in (logging.getLogger().handlers if handlers is None else handlers):
        if not any(isinstance(f, PhiFilter) for f in h.filters):
            h.addFilter(PhiFilter())


def file_handler(path, level=logging.INFO) -> logging.Handler:
    """A FileHandler with the PHI filter and a timestamped format (the batch and study logs)."""
    h = logging.FileHandler(str(path), encoding="utf-8")
    h.setLevel(level)
    h.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    h.addFilter(PhiFilter())
    return h
