"""Surgical planning report of a scene: one self-contained HTML file (and PDF via Chromium).

Contents, in the order a surgeon reads it: plan warnings first; 3D pictures (anterior /
left overview and structure close-ups from :mod:`viewer.render`, run in a subprocess, with the
plan drawn as in the viewer) and
patient-aligned slice pictures with outlines and the plan drawn on them; the structure table
(volumes from voxels and mesh, HU, extents, QC and uncertainty flags); measurements; cuts;
trajectories with their clearance tables; and the provenance chain from the source series
UIDs through every pipeline stage and file hash to every plan number. A plan record whose
input files changed since it was computed is marked stale.

Pictures are embedded as data URIs, so the HTML is one file that can be mailed or archived.
Without a working renderer the report says so and keeps the slice pictures.
"""
from __future__ import annotations

import base64
import html
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import SurgitwinError

TEMPLATE_DIR = Path(__file__).with_name("templates")
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync")


@dataclass
class ReportResult:
    html: Path
    pdf: Path | None = None
    pictures: list[str] = field(default_factory=list)  # captions of the pictures embedded
    notes: list[str] = field(default_factory=list)     # what could not be done, and why


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def chromium_path() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        p = shutil.which(name)
        if p:
            return p
    return None


def run_chromium(args: list[str], timeout: float = 120.0) -> subprocess.CompletedProcess:
    """Headless Chromium with the flags that keep it offline and quiet (see ENVIRONMENT.md)."""
    exe = chromium_path()
    if exe is None:
        raise SurgitwinError("chromium is not installed: sudo apt-get install -y chromium")
    with tempfile.TemporaryDirectory(prefix="surgitwin-chromium-") as profile:
        return subprocess.run([exe, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
                              capture_output=True, text=True, timeout=timeout)


def html_to_pdf(html_path: Path, pdf_path: Path) -> Path:
    tmp = pdf_path.with_name(f".tmp-{os.getpid()}-{pdf_path.name}")
    p = run_chromium(["--no-pdf-header-footer", f"--print-to-pdf={tmp}", Path(html_path).resolve().as_uri()])
    if p.returncode != 0 or not tmp.exists() or tmp.stat().st_size == 0:
        tmp.unlink(missing_ok=True)
        raise SurgitwinError(f"PDF not written: chromium exited with {p.returncode}: {(p.stderr or '')[-400:]}")
    os.replace(tmp, pdf_path)
    return pdf_path


# -- numbers -----------------------------------------------------------------------------------
def structure_rows(scene, image, labelmap, uncertainty=None) -> list[dict]:
    """One row per structure: volumes, HU statistics (one bincount pass), extents, QC flags."""
    from ..planning.measure import structure_metrics

    lab = labelmap.array.astype(np.int64).ravel()
    n = int(lab.max()) + 1 if lab.size else 1
    counts = np.bincount(lab, minlength=n)
    img = image.array.astype(np.float64).ravel()
    s1 = np.bincount(lab, weights=img, minlength=n)
    s2 = np.bincount(lab, weights=img * img, minlength=n)
    unc = np.bincount(lab, weights=uncertainty.array.astype(np.float64).ravel(), minlength=n) if uncertainty is not None else None
    qc_all = scene.extra.get("qc") or {}
    rows = []
    for am in scene.meshes:
        lid = am.label.id
        c = int(counts[lid]) if lid < n else 0
        mean = s1[lid] / c if c else None
        sd = float(np.sqrt(max(s2[lid] / c - mean ** 2, 0.0))) if c else None
        m = structure_metrics(am.mesh) if am.mesh is not None else {}
        qc = dict(qc_all.get(am.name) or {})
        if isinstance(am.qa.get("qc"), dict):
            qc.update(am.qa["qc"])
        flags = []
        if qc.get("warning"):
            flags.append(str(qc["warning"]))
        if qc.get("in_range") is False:
            flags.append("volume outside the expected range")
        if qc.get("truncated"):
            flags.append("cut by the edge of the scan")
        if am.qa.get("watertight") is False:
            flags.append("surface not closed")
        dev = am.qa.get("deviation_percent")
        if dev is not None and abs(dev) > 5:
            flags.append(f"mesh and voxel volumes differ by {dev:+.1f}%")
        u = float(unc[lid] / c) if (unc is not None and c) else qc.get("uncertainty")
        rows.append({
            "name": am.name, "id": lid, "rgb": "#%02x%02x%02x" % tuple(am.label.rgb), "critical": am.label.critical,
            "voxel_ml": round(c * labelmap.volume.voxel_volume_ml, 2), "mesh_ml": am.qa.get("volume_ml"),
            "deviation_percent": dev, "area_cm2": round(m["area_mm2"] / 100, 1) if m else None,
            "hu_mean": None if mean is None else round(float(mean), 1), "hu_sd": None if sd is None else round(sd, 1),
            "extents": [m.get("extent_left_right_mm"), m.get("extent_anterior_posterior_mm"),
                        m.get("extent_superior_inferior_mm")] if m else None,
            "diameter_mm": m.get("max_diameter_mm"), "uncertainty": None if u is None else round(float(u), 3),
            "uncertainty_level": qc.get("uncertainty_level"), "flags": flags,
        })
    return rows


def file_hashes(scene) -> dict[str, str]:
    from ..planning.plan import file_hash

    rels = [scene.image, scene.labelmap, scene.uncertainty] + [m.qa.get("mesh_path", f"meshes/{m.name}.ply") for m in scene.meshes]
    out = {}
    for rel in rels:
        if rel and (Path(scene.root) / rel).exists():
            out[rel] = file_hash(Path(scene.root) / rel)
    return out


def stale_inputs(record: dict, hashes: dict[str, str]) -> list[str]:
    """Inputs of a plan record whose file changed (or vanished) since it was computed."""
    ins = (record.get("provenance") or {}).get("inputs") or {}
    return [rel for rel, h in ins.items() if rel in hashes and hashes[rel] != h]


def focus_point(scene) -> tuple[np.ndarray, str]:
    """Where the slice pictures cut: first trajectory target, else first cut's structure
    centre, else a structure named like a lesion, else the centre of all structures."""
    plan = scene.plan
    if plan.get("trajectories"):
        return np.asarray(plan["trajectories"][0]["target"], float), f"target of trajectory {plan['trajectories'][0]['id']}"
    names = scene.structure_names
    from ..export.dicom_seg import TUMOUR_WORDS

    lesion = [n for n in names if any(w in n for w in TUMOUR_WORDS)]
    pick = lesion[0] if lesion else (plan["cuts"][0]["structure"] if plan.get("cuts") else None)
    if pick and pick in names:
        return np.asarray(scene.mesh(pick).mesh.vertices).mean(0), f"centre of {pick}"
    lo, hi = _bounds(scene)
    return (lo + hi) / 2, "centre of all structures"


def _bounds(scene, image=None) -> tuple[np.ndarray, np.ndarray]:
    """LPS box of all structures (or of the image when the scene has none)."""
    if scene.meshes:
        v = np.concatenate([np.asarray(m.mesh.vertices) for m in scene.meshes])
    else:
        image = image if image is not None else scene.load_image()
        corners = np.array([[a, b, c] for a in (0, image.shape[0] - 1) for b in (0, image.shape[1] - 1)
                            for c in (0, image.shape[2] - 1)], float)
        v = image.index_to_lps(corners)
    return v.min(0), v.max(0)


# -- pictures ----------------------------------------------------------------------------------
def render_3d(scene, workdir: Path, closeups: list[str], timeout: float) -> tuple[list[tuple[str, bytes]], list[str]]:
    """Overview + close-ups via viewer.render in subprocesses; (pictures, notes)."""
    pics, notes = [], []
    try:
        from viewer.render import snapshot_subprocess
    except ImportError as e:
        return pics, [f"3D pictures unavailable: the viewer package cannot be imported ({e})"]
    jobs = [("Overview: anterior and left views", "overview.png", (), ("anterior", "left"))]
    for n in closeups:
        jobs.append((f"Close-up: {n}", f"closeup_{n}.png", tuple(x for x in scene.structure_names if x != n), ("anterior", "left")))
    for caption, fname, hide, views in jobs:
        try:
            out = snapshot_subprocess(scene.root, workdir / fname, views=views, size=(1200, 520), hide=hide,
                                      timeout=timeout, plan=True)
            pics.append((caption, Path(out).read_bytes()))
        except (SurgitwinError, OSError) as e:
            notes.append(f"3D pictures unavailable: {str(e).splitlines()[0]}")
            break  # the renderer will fail the same way for the others
    return pics, notes


def slice_pictures(scene, image, labelmap) -> tuple[list[tuple[str, bytes]], str]:
    from .report_slices import slice_picture

    focus, why = focus_point(scene)
    lo, hi = _bounds(scene, image)
    lo, hi = lo - 15, hi + 15
    modality = (scene.source or {}).get("modality", "CT")
    pics = []
    for plane in ("axial", "coronal", "sagittal"):
        png = slice_picture(image, labelmap, plane, focus, lo, hi, plan=scene.plan, modality=modality)
        pics.append((f"{plane.capitalize()} slice through the {why} ({'xyz'[{'axial': 2, 'coronal': 1, 'sagittal': 0}[plane]]}"
                     f" = {focus[{'axial': 2, 'coronal': 1, 'sagittal': 0}[plane]]:.1f} mm LPS)", png))
    return pics, why


def closeup_names(scene, limit: int) -> list[str]:
    """Structures worth a close-up: trajectory targets, cut structures and margin structures,
    lesions, then critical structures near a trajectory."""
    from ..export.dicom_seg import TUMOUR_WORDS

    want = []
    for t in scene.plan.get("trajectories", []):
        want += [t.get("target_structure")]
    for c in scene.plan.get("cuts", []):
        want += [(c.get("margin") or {}).get("structure"), c.get("structure")]
    want += [n for n in scene.structure_names if any(w in n for w in TUMOUR_WORDS)]
    names = scene.structure_names
    return [n for n in dict.fromkeys(w for w in want if w) if n in names][:limit]


# -- the report --------------------------------------------------------------------------------
def build_report(scene_path, out_html=None, *, render: bool = True, closeups: int = 2, pdf: bool = False,
                 render_timeout: float = 180.0) -> ReportResult:
    """Write the HTML report (atomically) and optionally a PDF next to it.

    Parameters
    ----------
    scene_path : scene folder or scene.json
    out_html : default ``<scene>/report/report.html``
    render : try 3D pictures (subprocess); False leaves them out with a note
    closeups : maximum number of structure close-ups
    pdf : also print ``report.pdf`` with headless Chromium
    """
    import jinja2

    from ..planning.plan import Planner
    from . import load_scene

    t0 = time.perf_counter()
    scene = load_scene(scene_path)
    out_html = Path(out_html) if out_html else Path(scene.root) / "report" / "report.html"
    out_html.parent.mkdir(parents=True, exist_ok=True)
    image, labelmap, unc = scene.load_image(), scene.load_labelmap(), scene.load_uncertainty()
    notes: list[str] = []
    pictures3d: list[tuple[str, bytes]] = []
    if render:
        with tempfile.TemporaryDirectory(prefix="surgitwin-report-") as wd:
            pictures3d, n3 = render_3d(scene, Path(wd), closeup_names(scene, closeups), render_timeout)
            notes += n3
    else:
        notes.append("3D pictures were not rendered (rendering switched off for this report)")
    slices, _ = slice_pictures(scene, image, labelmap)
    hashes = file_hashes(scene)
    plan = scene.plan
    stale = {r["id"]: stale_inputs(r, hashes) for sec in ("landmarks", "measurements", "cuts", "trajectories")
             for r in plan.get(sec, [])}
    warnings = [("segmentation", w) for w in (scene.extra or {}).get("scan_warnings", [])]
    warnings += [(t["id"], w) for t in plan.get("trajectories", []) for w in t.get("warnings", [])]
    warnings += [(c["id"], w) for c in plan.get("cuts", []) for w in c.get("warnings", [])]
    warnings += [(rid, f"computed from an earlier version of {', '.join(s)}: recompute it") for rid, s in stale.items() if s]
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATE_DIR)), autoescape=True,
                             undefined=jinja2.ChainableUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["num"] = _num
    env.filters["pt"] = lambda p: "—" if p is None else "(" + ", ".join(f"{x:.1f}" for x in p) + ")"
    env.filters["side"] = _side
    text = env.get_template("report.html.j2").render(
        scene=scene, source=scene.source or {}, rows=structure_rows(scene, image, labelmap, unc),
        plan=plan, stale=stale, warnings=warnings, hashes=hashes,
        provenance=[p.to_dict() for p in scene.provenance],
        pictures3d=[(c, data_uri(b)) for c, b in pictures3d], slices=[(c, data_uri(b)) for c, b in slices],
        notes=notes, generated=time.strftime("%Y-%m-%d %H:%M:%S %Z"), software=Planner.__module__,
        versions=_versions(), grid={"shape": list(image.shape), "spacing": [round(float(s), 3) for s in image.spacing]},
        changes=_change_section(scene),
    )
    tmp = out_html.with_name(f".tmp-{os.getpid()}-{out_html.name}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, out_html)
    result = ReportResult(out_html, None, [c for c, _ in pictures3d] + [c for c, _ in slices], notes)
    if pdf:
        try:
            result.pdf = html_to_pdf(out_html, out_html.with_suffix(".pdf"))
        except (SurgitwinError, subprocess.TimeoutExpired) as e:
            result.notes.append(f"PDF not written: {e}")
    result.notes.append(f"report built in {time.perf_counter() - t0:.1f} s")
    return result


def _change_section(scene):
    """The "What changed" section for scenes with time points (pipeline.followup), else None."""
    from ..followup.report import change_section

    return change_section(scene)


def _versions() -> dict:
    from ..config import software_versions

    return software_versions("numpy", "trimesh", "manifold3d", "highdicom", "open3d-cpu")


def _num(x, digits: int = 1) -> str:
    if x is None:
        return "—"
    try:
        return f"{float(x):.{digits}f}"
    except (TypeError, ValueError):
        return html.escape(str(x))


def _side(normal) -> str:
    """Plain words for the side a plane normal points to (dominant LPS axis)."""
    n = np.asarray(normal, float)
    ax = int(np.argmax(np.abs(n)))
    return [("patient left", "patient right"), ("posterior", "anterior"), ("superior", "inferior")][ax][0 if n[ax] > 0 else 1]
