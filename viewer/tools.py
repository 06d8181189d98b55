"""Interaction state between the viewer and :mod:`pipeline.planning` (no GUI, no rendering).

Every number comes from :class:`pipeline.planning.Planner`; this module only keeps what the
surgeon is doing (mode, pending picks, the live cutting plane) and turns plan records into
drawing primitives and panel text. It is usable, and tested, without a display.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from pipeline.errors import PlanningError

from pipeline.render.primitives import (  # noqa: F401 - re-exported: the viewer's names since 0.1
    BODY_NAMES, COLOURS, Primitive, _fmt, marker_scale, record_primitives, superseded_pieces)

MODES = ("navigate", "landmark", "distance", "angle", "trajectory", "cut", "lesion")
POINTS_NEEDED = {"landmark": 1, "distance": 2, "angle": 3, "trajectory": 2, "cut": 1, "lesion": 1}
CUT_ORIENTATIONS = {  # plane normal for each preset (the resected side is where it points)
    "axial (cut above)": (0.0, 0.0, 1.0),
    "axial (cut below)": (0.0, 0.0, -1.0),
    "sagittal (cut left)": (1.0, 0.0, 0.0),
    "sagittal (cut right)": (-1.0, 0.0, 0.0),
    "coronal (cut anterior)": (0.0, -1.0, 0.0),
    "coronal (cut posterior)": (0.0, 1.0, 0.0),
}


def record_text(rec: dict) -> str:
    """One line for the measurement list, e.g. ``M2 angle 90.0°``."""
    kind, rid = rec.get("kind"), rec.get("id", "?")
    s = rec.get("structures") or []
    if kind == "landmark":
        on = f" on {rec['snapped_to']}" if rec.get("snapped_to") else ""
        return f"{rid} landmark '{rec.get('name')}'{on}"
    if kind == "distance":
        return f"{rid} distance {_fmt(rec.get('value'), 'mm')}"
    if kind == "angle":
        return f"{rid} angle {_fmt(rec.get('value'), 'deg')}"
    if kind == "structure_distance":
        return f"{rid} {s[0]} <-> {s[1]}: {_fmt(rec.get('value'), 'mm')}" + (" (overlap)" if rec.get("overlap") else "")
    if kind == "volume":
        return f"{rid} {s[0]} volume {_fmt(rec.get('value'), 'ml')}"
    if kind == "extents":
        return f"{rid} {s[0]} max diameter {_fmt(rec.get('value'), 'mm')}"
    if kind == "cut":
        return f"{rid} {cut_summary(rec)}"
    if kind == "segments":
        return f"{rid} Couinaud segments of {rec.get('structure')} ({_fmt(rec.get('total_ml'), 'ml')})"
    if kind == "segments_resection":
        return (f"{rid} resect segments {', '.join(rec.get('segments', []))}: remnant "
                f"{_fmt(rec.get('remnant_percent'), '%')}")
    if kind == "lesion":
        return (f"{rid} lesion {rec.get('name')} in {rec.get('within') or '-'}: {_fmt(rec.get('volume_ml'), 'ml')}, "
                f"RECIST {_fmt(rec.get('long_axis_mm'), 'mm')} x {_fmt(rec.get('short_axis_mm'), 'mm')}")
    if kind == "trajectory":
        warn = f" !! {len(rec['warnings'])} warning(s)" if rec.get("warnings") else ""
        return f"{rid} trajectory {_fmt(rec.get('length_mm'), 'mm')} -> {rec.get('target_structure') or 'target'}{warn}"
    return f"{rid} {kind} {_fmt(rec.get('value'), rec.get('unit', ''))}"


def cut_summary(rec: dict) -> str:
    txt = (f"cut {rec['structure']}: resected {_fmt(rec['resected_ml'], 'ml')} ({_fmt(rec['resected_percent'], '%')}), "
           f"remnant {_fmt(rec['remnant_ml'], 'ml')} ({_fmt(rec['remnant_percent'], '%')})")
    m = rec.get("margin")
    if m:
        txt += f"; margin to {m['structure']} {_fmt(m['margin_mm'], 'mm')}" + (" CROSSED" if m.get("crossed") else "")
    return txt


def clearance_lines(rec: dict, rows: int = 8) -> list[str]:
    """The clearance table of a trajectory record, closest structures first."""
    out = [f"{'structure':<20}{'clearance':>10}  at depth"]
    for r in rec.get("clearance", [])[:rows]:
        flag = " CROSSED" if r["crossed"] else ""
        flag += " (target)" if r.get("target") else (" critical" if r.get("critical") else "")
        out.append(f"{r['structure'][:20]:<20}{r['distance_mm']:>8.1f} mm  {r['at_depth_mm']:.0f} mm{flag}")
    return out


@dataclass
class CutState:
    """The live cutting plane: through ``anchor`` + ``offset_mm`` along the normal, the preset
    normal tilted by ``tilt_deg`` (about the two axes perpendicular to it). ``fixed`` holds the
    planes already set for a wedge: the resected part is the intersection of all half-spaces
    (see :mod:`pipeline.planning.cut`)."""

    structure: str
    anchor: np.ndarray
    orientation: str = "axial (cut above)"
    tilt_deg: tuple[float, float] = (0.0, 0.0)
    offset_mm: float = 0.0
    margin_to: str | None = None
    fixed: list = field(default_factory=list)

    def normal(self) -> np.ndarray:
        n = np.asarray(CUT_ORIENTATIONS[self.orientation], dtype=float)
        a = np.cross(n, [0.0, 0.0, 1.0] if abs(n[2]) < 0.9 else [0.0, 1.0, 0.0])
        a /= np.linalg.norm(a)
        b = np.cross(n, a)
        t1, t2 = np.radians(self.tilt_deg)
        v = n * np.cos(t1) + a * np.sin(t1)
        v = v * np.cos(t2) + b * np.sin(t2)
        return v / np.linalg.norm(v)

    def live_plane(self) -> dict:
        n = self.normal()
        return {"point": (np.asarray(self.anchor, dtype=float) + self.offset_mm * n).tolist(), "normal": n.tolist()}

    def planes(self) -> list[dict]:
        """The fixed planes, then the live one."""
        return [dict(p) for p in self.fixed] + [self.live_plane()]


@dataclass
class PlanSession:
    """The viewer's planning state over one :class:`pipeline.planning.Planner`."""

    planner: object
    mode: str = "navigate"
    pending: list = field(default_factory=list)  # [(point (3,), structure name or None)]
    cut: CutState | None = None
    tool_radius_mm: float = 1.0
    safety_margin_mm: float = 5.0
    last_preview: dict | None = None

    @classmethod
    def open(cls, scene):
        from pipeline.planning import Planner

        return cls(Planner(scene))

    @property
    def scene(self):
        return self.planner.scene

    @property
    def plan(self) -> dict:
        return self.scene.plan

    def records(self) -> list[dict]:
        return [r for sec in ("landmarks", "measurements", "lesions", "segments", "cuts", "trajectories")
                for r in self.plan.get(sec, [])]

    def set_mode(self, mode: str) -> None:
        if mode not in MODES:
            raise PlanningError(f"mode must be one of {list(MODES)}; found {mode!r}")
        self.mode = mode
        self.pending = []

    def add_point(self, point, structure: str | None = None) -> dict | None:
        """Feed a picked surface point to the current mode; returns the record once complete."""
        if self.mode == "navigate":
            return None
        self.pending.append((np.asarray(point, dtype=float), structure))
        if len(self.pending) < POINTS_NEEDED[self.mode]:
            return None
        pts = [p for p, _ in self.pending]
        names = [s for _, s in self.pending]
        self.pending = []
        if self.mode == "landmark":
            n = sum(1 for _ in self.plan.get("landmarks", [])) + 1
            return self.planner.add_landmark(f"landmark {n}", pts[0], snap_to=names[0])
        if self.mode == "distance":
            return self.planner.measure_distance(pts[0], pts[1])
        if self.mode == "angle":
            return self.planner.measure_angle(pts[0], pts[1], pts[2])
        if self.mode == "trajectory":
            return self.planner.add_trajectory(pts[0], pts[1], self.tool_radius_mm, safety_margin_mm=self.safety_margin_mm)
        if self.mode == "lesion":  # a seed inside the lesion: Ctrl+click on a CT plane
            return self.planner.add_lesion(pts[0])
        if self.mode == "cut":
            if names[0] is None:
                raise PlanningError("cut: pick a point on the structure to cut")
            margin_to = self.cut.margin_to if self.cut else None
            self.start_cut(names[0], pts[0], margin_to=margin_to)
            return None
        return None

    # -- cutting plane ---------------------------------------------------------------------
    def start_cut(self, structure: str, anchor=None, *, orientation: str | None = None, margin_to: str | None = None):
        if anchor is None:
            anchor = np.asarray(self.planner.mesh(structure).vertices).mean(axis=0)
        prev = self.cut
        self.cut = CutState(structure, np.asarray(anchor, dtype=float),
                            orientation or (prev.orientation if prev else "axial (cut above)"),
                            margin_to=margin_to)
        return self.cut

    def preview_cut(self) -> dict:
        """Resected/remnant volumes and margin for the live plane (not stored in the plan)."""
        from pipeline.planning.cut import cut_record

        if self.cut is None:
            raise PlanningError("no cutting plane: choose a structure and place the plane first")
        c = self.cut
        self.last_preview = cut_record(self.planner, c.structure, c.planes(), margin_to=c.margin_to, save_meshes=False)
        return self.last_preview

    def add_cut_plane(self, orientation: str | None = None) -> CutState:
        """Fix the live plane and start another one through the same anchor (a wedge: the
        resected part is what lies beyond every plane). ``orientation``: preset of the new one."""
        if self.cut is None:
            raise PlanningError("no cutting plane: choose a structure and place the plane first")
        c = self.cut
        if len(c.fixed) >= 5:
            raise PlanningError("a cut takes at most 6 planes")
        if orientation is not None and orientation not in CUT_ORIENTATIONS:
            raise PlanningError(f"orientation must be one of {list(CUT_ORIENTATIONS)}; found {orientation!r}")
        c.fixed.append(c.live_plane())
        c.orientation = orientation or c.orientation
        c.offset_mm, c.tilt_deg = 0.0, (0.0, 0.0)
        return c

    def resected_vertex_mask(self) -> np.ndarray:
        """(n_vertices,) bool: vertices of the cut structure on the resected side of the live plane."""
        from pipeline.planning.cut import normalise_planes, signed_depth

        v = np.asarray(self.planner.mesh(self.cut.structure).vertices)
        return signed_depth(v, normalise_planes(self.cut.planes())) > 0

    def commit_cut(self) -> dict:
        c = self.cut
        if c is None:
            raise PlanningError("no cutting plane to commit")
        return self.planner.add_cut(c.structure, c.planes(), margin_to=c.margin_to, save_meshes=True)

    def remove(self, record_id: str) -> dict:
        from pipeline.planning import remove_record

        return remove_record(self.plan, record_id)
