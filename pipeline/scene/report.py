"""Surgical planning report of a scene: one self-contained HTML file (and PDF via Chromium).

Contents, in the order a surgeon reads it: plan warnings first; 3D pictures (anterior /
left overview and structure close-ups from :mod:`pipeline.render.offscreen`, run in a subprocess, with the
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
from .report_slices import data_uri

TEMPLATE_DIR = Path(__file__).with_name("templates")
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync")


@dataclass
class ReportResult:
    html: Path
    pdf: Path | None = None
    pictures: list[str] = field(default_factory=list)  # captions of the pictures embedded
    notes: list[str] = field(default_factory=list)     # what could not be done, and why


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


PLAN_SECTIONS = ("landmarks", "measurements", "lesions", "segments", "cuts", "trajectories")


# -- numbers -----------------------------------------------------------------------------------
def all_warnings(scene, rows: list[dict], stale: dict[str, list[str]]) -> list[tuple[str, str]]:
    """Every warning the banner lists: scan, structure QC (implausible, out of range, uncertain),
    every plan record's own warnings, and stale numbers."""
    out = [("segmentation", w) for w in (scene.extra or {}).get("scan_warnings", [])]
    out += [(r["name"], "QC: " + "; ".join(r["flags"])) for r in rows if r.get("implausible") or r.get("qc_warning")]
    for sec in PLAN_SECTIONS:
        out += [(rec["id"], w) for rec in scene.plan.get(sec, []) for w in rec.get("warnings", [])]
    out += [(rid, f"computed from an earlier version of {', '.join(s)}: recompute it") for rid, s in stale.items() if s]
    return out


def header_fields(source: dict) -> dict:
    """What the report's header shows: modality and series description without repeated words
    ("CT" + "CT Body" -> "CT Body"); patient ID and study date only when the scene is identified."""
    modality = str(source.get("modality") or "").strip()
    desc = str(source.get("series_description") or "").strip()
    words: list[str] = []
    for w in (modality + " " + desc).split():
        if not words or w.lower() != words[-1].lower():
            words.append(w)
    deid = bool(source.get("deidentified") or source.get("patient_identity_removed"))
    pid = None if deid else source.get("patient_id")
    date = None if deid else source.get("study_date")
    if date and len(str(date)) == 8 and str(date).isdigit():
        date = f"{date[:4]}-{date[4:6]}-{date[6:]}"
    return {"series": " ".join(words) or "?", "patient_id": pid or None, "study_date": date or None,
            "deidentified": deid}


def rules_table(scene) -> list[dict]:
    """The planning rules applied to this scene's structures (configs/planning.yaml)."""
    from ..planning.rules import load_rules

    rules = load_rules()
    out = []
    for m in scene.meshes:
        c = rules.structure_class(m.name, bool(m.label.critical))
        out.append({"name": m.name, **c, "remnant_threshold": rules.remnant_threshold(m.name, "normal"),
                    "remnant_threshold_compromised": rules.remnant_threshold(m.name, "compromised")})
    return out



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
    from .colors import scene_colors

    shown = scene_colors(scene.labels)  # the viewer's and the outlines' colours
    rows = []
    for am in scene.meshes:
        lid = am.label.id
        c = int(counts[lid]) if lid < n else 0
        mean = s1[lid] / c if c else None
        sd = float(np.sqrt(max(s2[lid] / c - mean ** 2, 0.0))) if mean is not None else None
        m = structure_metrics(am.mesh) if am.mesh is not None else {}
        qc = dict(qc_all.get(am.name) or {})
        if isinstance(am.qa.get("qc"), dict):
            qc.update(am.qa["qc"])
        flags = []
        implausible = qc.get("plausible") is False
        if qc.get("warning"):
            flags.append(str(qc["warning"]))
        elif implausible:
            flags.append("implausible: " + "; ".join(qc.get("flags") or []))
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
            "name": am.name, "id": lid, "rgb": "#%02x%02x%02x" % tuple(shown.get(am.name, am.label.rgb)), "critical": am.label.critical,
            "voxel_ml": round(c * labelmap.volume.voxel_volume_ml, 2), "mesh_ml": am.qa.get("volume_ml"),
            "deviation_percent": dev, "area_cm2": round(m["area_mm2"] / 100, 1) if m else None,
            "hu_mean": None if mean is None else round(float(mean), 1), "hu_sd": None if sd is None else round(sd, 1),
            "extents": [m.get("extent_left_right_mm"), m.get("extent_anterior_posterior_mm"),
                        m.get("extent_superior_inferior_mm")] if m else None,
            "diameter_mm": m.get("max_diameter_mm"), "uncertainty": None if u is None else round(float(u), 3),
            "uncertainty_level": qc.get("uncertainty_level"), "flags": flags,
            "implausible": implausible, "qc_warning": bool(qc.get("warning")),
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
    """Overview + close-ups via pipeline.render.offscreen in subprocesses; (pictures, notes)."""
    pics: list[tuple[str, bytes]] = []
    notes: list[str] = []
    try:
        from pipeline.render.offscreen import snapshot_subprocess
    except ImportError as e:
        return pics, [f"3D pictures unavailable: the renderer cannot be imported ({e})"]
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


def segment_pictures(scene, image) -> list[tuple[str, bytes]]:
    """Axial slices above and below the portal plane and a coronal slice of the latest Couinaud
    segments record, each segment tinted in its colour (radiological convention)."""
    from ..planning.plan import Planner
    from ..planning.segments import segment_labelmap
    from .report_slices import slice_picture

    recs = scene.plan.get("segments") or []
    if not recs:
        return []
    rec = recs[-1]
    try:
        seg_lm = segment_labelmap(Planner(scene), rec)
    except SurgitwinError:
        return []
    portal, ivc = np.asarray(rec["landmarks"]["portal"], float), np.asarray(rec["landmarks"]["ivc"], float)
    idx = np.argwhere(seg_lm.array > 0)
    pts = seg_lm.volume.index_to_lps(idx[:: max(1, len(idx) // 20000)])
    lo, hi = pts.min(0) - 15, pts.max(0) + 15
    out = []
    for plane, focus, what in (("axial", (ivc + portal) / 2 + [0, 0, (ivc[2] - portal[2]) / 4], "above the portal plane"),
                               ("axial", portal - [0, 0, 20], "below the portal plane"),
                               ("coronal", portal, "through the portal bifurcation")):
        png = slice_picture(image, seg_lm, plane, focus, lo, hi, modality=(scene.source or {}).get("modality", "CT"))
        axis = {"axial": 2, "coronal": 1}[plane]
        out.append((f"Couinaud segments ({rec['id']}): {plane} slice {what} ({'xyz'[axis]} = {focus[axis]:.1f} mm LPS)", png))
    return out


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
    assert scene.root is not None  # load_scene sets it
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
    seg_pics = segment_pictures(scene, image)
    hashes = file_hashes(scene)
    plan = scene.plan
    stale = {r["id"]: stale_inputs(r, hashes) for sec in PLAN_SECTIONS for r in plan.get(sec, [])}
    rows = structure_rows(scene, image, labelmap, unc)
    warnings = all_warnings(scene, rows, stale)
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATE_DIR)), autoescape=True,
                             undefined=jinja2.ChainableUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["num"] = _num
    env.filters["pt"] = lambda p: "—" if p is None else "(" + ", ".join(f"{x:.1f}" for x in p) + ")"
    env.filters["side"] = _side
    text = env.get_template("report.html.j2").render(
        scene=scene, source=scene.source or {}, rows=rows, header=header_fields(scene.source or {}),
        rules=rules_table(scene), plan=plan, stale=stale, warnings=warnings, hashes=hashes,
        provenance=[p.to_dict() for p in scene.provenance],
        pictures3d=[(c, data_uri(b)) for c, b in pictures3d], slices=[(c, data_uri(b)) for c, b in slices],
        segment_pictures=[(c, data_uri(b)) for c, b in seg_pics],
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
