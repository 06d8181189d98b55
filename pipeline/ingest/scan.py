"""``surgitwin scan DIR [--json]``: what is in a folder and which series would be used, and why.

:func:`scan_command` is the importable function behind the CLI command; it returns the text
(a table per study) or a JSON document, and prints nothing itself.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from .index import Series, index_folder
from .select import load_rules, select_series


def _spacing(s: Series) -> str:
    if not s.spacing:
        return "-"
    k, j, i = s.spacing
    slice_txt = f"{k:.3g}" if k == k else "?"  # NaN: single slice without thickness
    return f"{j:.3g}x{i:.3g}x{slice_txt}"


def _orient(s: Series) -> str:
    if s.orientation in ("unknown",) or (isinstance(s.obliquity_deg, float) and math.isnan(s.obliquity_deg)):
        return s.orientation
    return s.orientation if s.obliquity_deg < 0.5 else f"{s.orientation} ({s.obliquity_deg:.1f}deg)"


def scan_command(path, rules_path=None, as_json: bool = False) -> str:
    """Index ``path``, judge every series against the selection rules, and report.

    Parameters
    ----------
    path : folder (or file) to scan
    rules_path : YAML with a ``selection.rules`` list (default: configs/pipeline.yaml)
    as_json : return a JSON document (studies, series, selection, skipped files) instead of text

    Returns
    -------
    str
        Text: per study a table of series (number, modality, description, slices, orientation,
        spacing in mm as row x column x slice) with SELECTED / candidate / rejected and why.
    """
    studies = index_folder(path)
    rules = load_rules(rules_path)
    sels = {id(s.series): s for s in select_series(studies, rules)}
    if as_json:
        doc = {"root": str(Path(path)), "rules": [r.name for r in rules],
               "studies": [], "skipped": [{"path": p, "reason": r} for p, r in studies.skipped]}
        for st in studies:
            d = st.to_dict()
            for sd, s in zip(d["series"], st.series):
                sd.pop("files", None)  # the file list can be long; n_instances says how many
                sd["selection"] = sels[id(s)].to_dict()
            doc["studies"].append(d)
        return json.dumps(doc, indent=2, default=str)

    lines = [f"{path}: {len(studies)} stud{'y' if len(studies) == 1 else 'ies'}, "
             f"{sum(len(st.series) for st in studies)} series, {len(studies.skipped)} file(s) skipped "
             f"(rules: {', '.join(r.name for r in rules)})"]
    for st in studies:
        lines.append("")
        lines.append(f"study {st.study_uid}  patient {st.patient_id or '?'}  date {st.study_date or '?'}  "
                     f"{st.description}".rstrip())
        lines.append(f"  {'#':>5} {'mod':6} {'description':32} {'slices':>6} {'orientation':18} {'spacing mm':18} decision")
        for s in st.series:
            sel = sels[id(s)]
            num = "" if s.series_number is None else str(s.series_number)
            if s.stack:
                num += f".{s.stack}"
            decision = {"selected": f"SELECTED (rule '{sel.rule}')", "candidate": f"candidate (rule '{sel.rule}')",
                        "rejected": "rejected"}[sel.status]
            desc = (s.description or "-")[:32]
            lines.append(f"  {num:>5} {s.modality[:6]:6} {desc:32} {s.n_frames:>6} {_orient(s)[:18]:18} "
                         f"{_spacing(s)[:18]:18} {decision}")
            for why in sel.reasons:
                lines.append(f"  {'':>5}   - {why}")
            for note in s.notes:
                lines.append(f"  {'':>5}   note: {note}")
    if studies.skipped:
        lines.append("")
        lines.append(f"skipped {len(studies.skipped)} file(s):")
        for p, why in studies.skipped[:20]:
            lines.append(f"  {p}: {why}")
        if len(studies.skipped) > 20:
            lines.append(f"  ... and {len(studies.skipped) - 20} more (use --json for all)")
    return "\n".join(lines)
