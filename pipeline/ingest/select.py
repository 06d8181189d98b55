"""Declarative series selection (after MONAI Deploy's DICOMSeriesSelectorOperator).

A rule is ``{"name": ..., "conditions": {Attribute: matcher, ...}}``; a series matches a rule
when every condition holds. Matchers (values only, nothing in YAML is executed):

- ``"(?i)^CT$"`` a string: regular expression, ``re.search`` on the attribute's text (a
  multi-valued attribute is joined with ``\\``); anchor it for an exact match.
- ``["PRIMARY", "!LOCALIZER"]`` strings: on a multi-valued attribute (ImageType) every plain
  item must be present and no ``!`` item may be; on a single value, the value must be one of the
  plain items (when any) and none of the ``!`` items. Case-insensitive.
- ``[20, ">="]`` a number and an operator (``> >= < <= == !=``); ``[0.5, 3.0]`` an inclusive range.
- ``5`` / ``true`` a number or boolean: equality.

Attributes are :meth:`pipeline.ingest.index.Series.attribute` names: DICOM keywords of the
first instance plus derived ones (NumberOfSlices, Orientation, SliceSpacing, IsLocalizer...).

Every series gets a :class:`Selection` saying 'selected' (one per study: the best match),
'candidate' (matched, not chosen, and why) or 'rejected' (the first failing condition of each
rule, with the value found).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..config import DEFAULT_PIPELINE
from ..errors import ConfigError
from ._common import is_non_image
from .index import Series, Study

DEFAULT_CONFIG = DEFAULT_PIPELINE
_OPS = {">": lambda a, b: a > b, ">=": lambda a, b: a >= b, "<": lambda a, b: a < b,
        "<=": lambda a, b: a <= b, "==": lambda a, b: math.isclose(a, b, abs_tol=1e-6),
        "!=": lambda a, b: not math.isclose(a, b, abs_tol=1e-6)}

# Used when no configs/pipeline.yaml is found (an installed wheel): the same rules as shipped.
DEFAULT_RULES: list[dict] = [
    {"name": "CT axial primary", "conditions": {
        "Modality": "(?i)^CT$", "ImageType": ["PRIMARY", "!LOCALIZER"], "NumberOfSlices": [20, ">="],
        "IsLocalizer": False}},
    {"name": "CT volume", "conditions": {"Modality": "(?i)^CT$", "NumberOfSlices": [3, ">="], "IsLocalizer": False}},
    {"name": "MR volume", "conditions": {"Modality": "(?i)^MR$", "NumberOfSlices": [3, ">="], "IsLocalizer": False}},
]


@dataclass(frozen=True)
class Rule:
    name: str
    conditions: Mapping[str, Any]


@dataclass
class Selection:
    """Outcome of selection for one series.

    status : 'selected' | 'candidate' | 'rejected'
    rule : name of the rule the series matched (None when rejected)
    reasons : why it was rejected (per rule: the failing condition and the value found) or,
        for a candidate, why another series of the study was preferred.
    """

    study_uid: str
    series: Series
    status: str
    rule: str | None = None
    reasons: list[str] = field(default_factory=list)

    @property
    def selected(self) -> bool:
        return self.status == "selected"

    def to_dict(self) -> dict:
        return {"study_uid": self.study_uid, "series": self.series.key, "status": self.status,
                "rule": self.rule, "reasons": list(self.reasons)}


# -- loading and validation ------------------------------------------------------------------

def _check_matcher(where: str, m: Any) -> None:
    if isinstance(m, bool) or isinstance(m, (int, float)):
        return
    if isinstance(m, str):
        try:
            re.compile(m)
        except re.error as e:
            raise ConfigError(f"{where}: regular expression {m!r} does not compile: {e}") from None
        return
    if isinstance(m, (list, tuple)) and m:
        if len(m) == 2 and _is_num(m[0]) and isinstance(m[1], str) and m[1] in _OPS:
            return
        if len(m) == 2 and _is_num(m[0]) and _is_num(m[1]):
            if m[0] > m[1]:
                raise ConfigError(f"{where}: range [min, max] must have min <= max; found {list(m)}")
            return
        if all(isinstance(x, str) for x in m):
            return
    raise ConfigError(f"{where}: matcher must be a regex string, a number, a boolean, a list of strings "
                      f"('!' negates), [number, '>=' etc.] or [min, max]; found {m!r}")


def _is_num(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def parse_rules(items: Any, where: str = "selection.rules") -> list[Rule]:
    """Validate a list of rule dicts (as loaded from YAML/JSON) into :class:`Rule` objects."""
    if not isinstance(items, (list, tuple)) or not items:
        raise ConfigError(f"{where}: must be a non-empty list of rules; found {type(items).__name__}")
    rules = []
    for n, r in enumerate(items):
        w = f"{where}[{n}]"
        if not isinstance(r, Mapping) or not isinstance(r.get("name"), str) or not r.get("name"):
            raise ConfigError(f"{w}: each rule needs a 'name' (string) and 'conditions' (mapping); found {r!r}")
        conds = r.get("conditions")
        if not isinstance(conds, Mapping) or not conds:
            raise ConfigError(f"{w} '{r['name']}': 'conditions' must be a non-empty mapping; found {conds!r}")
        unknown = set(r) - {"name", "conditions"}
        if unknown:
            raise ConfigError(f"{w} '{r['name']}': unknown keys {sorted(unknown)} (allowed: name, conditions)")
        for k, m in conds.items():
            _check_matcher(f"{w}.conditions.{k}", m)
        rules.append(Rule(r["name"], dict(conds)))
    return rules


def load_rules(path=None) -> list[Rule]:
    """Rules from the ``selection.rules`` key of a pipeline YAML (default: configs/pipeline.yaml).

    Falls back to :data:`DEFAULT_RULES` when ``path`` is None and the default file is absent.
    """
    import yaml

    if path is None and not DEFAULT_CONFIG.exists():
        return parse_rules(DEFAULT_RULES)
    p = Path(path) if path is not None else DEFAULT_CONFIG
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except OSError as e:
        raise ConfigError(f"cannot read selection rules: {e.strerror}", path=str(p)) from None
    except yaml.YAMLError as e:
        raise ConfigError(f"selection rules file is not valid YAML: {e}", path=str(p)) from None
    sel = data.get("selection") if isinstance(data, Mapping) else None
    if not isinstance(sel, Mapping) or "rules" not in sel:
        raise ConfigError(f"{p}: needs a 'selection:' section with a 'rules:' list", path=str(p))
    try:
        return parse_rules(sel["rules"])
    except ConfigError as e:
        raise ConfigError(f"{p}: {e}", path=str(p)) from None


# -- matching ---------------------------------------------------------------------------------

def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, (list, tuple)):
        return "\\".join(str(x) for x in v)
    return repr(v) if isinstance(v, str) else str(v)


def check_condition(series: Series, key: str, matcher: Any) -> str | None:
    """None when ``series`` satisfies ``key: matcher``, else why not (with the value found)."""
    value = series.attribute(key)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return f"{key} is absent (rule needs {matcher!r})"
    if isinstance(matcher, bool):
        return None if bool(value) == matcher else f"{key} = {_fmt(value)}, rule needs {matcher}"
    if _is_num(matcher):
        try:
            return None if math.isclose(float(value), matcher, abs_tol=1e-6) else f"{key} = {_fmt(value)}, rule needs {matcher:g}"
        except (TypeError, ValueError):
            return f"{key} = {_fmt(value)} is not a number (rule needs {matcher:g})"
    if isinstance(matcher, str):
        txt = _fmt(value) if isinstance(value, (list, tuple)) else str(value)
        return None if re.search(matcher, txt) else f"{key} = {txt!r} does not match {matcher!r}"
    m = list(matcher)
    if len(m) == 2 and _is_num(m[0]) and (isinstance(m[1], str) and m[1] in _OPS or _is_num(m[1])):
        try:
            v = float(value)
        except (TypeError, ValueError):
            return f"{key} = {_fmt(value)} is not a number (rule needs {m})"
        if isinstance(m[1], str):
            return None if _OPS[m[1]](v, m[0]) else f"{key} = {v:g}, rule needs {m[1]} {m[0]:g}"
        return None if m[0] <= v <= m[1] else f"{key} = {v:g}, rule needs {m[0]:g}..{m[1]:g}"
    want = [x.upper() for x in m if not x.startswith("!")]
    deny = [x[1:].upper() for x in m if x.startswith("!")]
    if isinstance(value, (list, tuple)):
        have = [str(x).upper() for x in value]
        missing = [w for w in want if w not in have]
        present = [d for d in deny if d in have]
        if missing:
            return f"{key} = {_fmt(value)} lacks {missing}"
        if present:
            return f"{key} = {_fmt(value)} contains excluded {present}"
        return None
    v = str(value).upper()
    if want and v not in want:
        return f"{key} = {_fmt(value)} is not one of {want}"
    if v in deny:
        return f"{key} = {_fmt(value)} is excluded by the rule"
    return None


def match_rule(series: Series, rule: Rule) -> list[str]:
    """Failed conditions of ``rule`` for ``series`` (empty list: it matches)."""
    return [why for k, m in rule.conditions.items() if (why := check_condition(series, k, m))]


def _preference(series: Series, rule_index: int) -> tuple:
    gap = series.spacing[0] if series.spacing and series.spacing[0] == series.spacing[0] else math.inf
    return (rule_index, -series.n_frames, gap, -((series.rows or 0) * (series.cols or 0)), series.series_number or 0)


def select_series(studies: Sequence[Study], rules: Sequence[Rule] | Sequence[Mapping] | None = None) -> list[Selection]:
    """Judge every series of every study against ``rules``; pick the best match per study.

    Parameters
    ----------
    studies : list of Study (from :func:`pipeline.ingest.index.index_folder`)
    rules : list of Rule or rule dicts, in priority order; None loads configs/pipeline.yaml.

    Returns
    -------
    list of Selection
        One per series, in index order. Per study at most one is 'selected': the match with the
        highest-priority rule, then most slices, then thinnest slice gap, then largest matrix.
    """
    if rules is None:
        rules = load_rules()
    if not rules:
        raise ConfigError("selection needs at least one rule; found none")
    if not all(isinstance(r, Rule) for r in rules):
        rules = parse_rules([r if not isinstance(r, Rule) else {"name": r.name, "conditions": dict(r.conditions)}
                             for r in rules])
    out: list[Selection] = []
    for study in studies:
        picks: list[tuple[tuple, Selection]] = []
        for s in study.series:
            if not s.is_image:
                if is_non_image(s.modality, s.sop_class):
                    why = f"not an image series (Modality {s.modality or '?'}, {s.sop_class_name or s.sop_class or 'no SOP class'})"
                else:
                    why = f"{s.modality or '?'} series without an image pixel module (Rows/Columns absent)"
                out.append(Selection(study.study_uid, s, "rejected", None, [why]))
                continue
            reasons, chosen = [], None
            for n, rule in enumerate(rules):
                failed = match_rule(s, rule)
                if not failed:
                    chosen = n
                    break
                more = f" (+{len(failed) - 1} more)" if len(failed) > 1 else ""
                reasons.append(f"rule '{rule.name}': {failed[0]}{more}")
            if chosen is None:
                out.append(Selection(study.study_uid, s, "rejected", None, reasons))
            else:
                sel = Selection(study.study_uid, s, "candidate", rules[chosen].name, [])
                picks.append((_preference(s, chosen), sel))
                out.append(sel)
        if picks:
            picks.sort(key=lambda p: p[0])
            best_key, best = picks[0]
            best.status = "selected"
            for key, sel in picks[1:]:
                sel.reasons.append(_why_not(key, best_key, best))
    return out


def _why_not(key: tuple, best_key: tuple, best: Selection) -> str:
    b = best.series
    if key[0] != best_key[0]:
        why = f"series {b.series_number} matched the higher-priority rule '{best.rule}'"
    elif key[1] != best_key[1]:
        why = f"series {b.series_number} has more slices ({-best_key[1]} vs {-key[1]})"
    elif key[2] != best_key[2]:
        why = f"series {b.series_number} has thinner slices ({best_key[2]:.3g} vs {key[2]:.3g} mm)"
    else:
        why = f"series {b.series_number} has a larger matrix or comes first"
    return f"not chosen: {why}"


def selected(selections: Sequence[Selection]) -> list[Selection]:
    """The 'selected' entries (one per study that has a match)."""
    return [s for s in selections if s.selected]
