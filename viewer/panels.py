"""The viewer's side panel: widgets wired to :class:`viewer.app.ViewerApp` methods.

Returns a dict of the widgets the app updates and the tests read (``ui['records']``,
``ui['cut_result']``, ...). Callbacks that compute (distances, cuts, trajectories) run off the
GUI thread through ``app._background`` so the window stays responsive.
"""
from __future__ import annotations

import threading

from .panel_text import RecordList
from .slices import PLANES, WINDOWS
from .tools import CUT_ORIENTATIONS, MODES
from .views import VIEWS


def _section(gui, em, title, open_=True):
    s = gui.CollapsableVert(title, int(0.25 * em), gui.Margins(int(0.5 * em), 0, 0, 0))
    s.set_is_open(open_)
    return s


def _combo(gui, items, on_change=None):
    c = gui.Combobox()
    for it in items:
        c.add_item(it)
    if on_change is not None:
        c.set_on_selection_changed(lambda text, idx: on_change(text))
    return c


class _Latest:
    """Run ``fn(value)`` in one background thread, always with the newest value (slider drags)."""

    def __init__(self, app, fn):
        self.app, self.fn = app, fn
        self.value = None
        self.busy = False
        self.lock = threading.Lock()

    def __call__(self, value):
        with self.lock:
            self.value = value
            if self.busy:
                return
            self.busy = True
        threading.Thread(target=self._loop, daemon=True).start()

    def _loop(self):
        while True:
            with self.lock:
                v, self.value = self.value, None
                if v is None:
                    self.busy = False
                    return
            try:
                self.fn(v)
            except Exception as e:  # noqa: BLE001 - shown, never raised into the GUI loop
                self.app._on_main(self.app._set_status, f"error: {e}", wait=False)


def build_panel(app) -> dict:
    """The side panel, section by section; returns its widgets by name (``app.ui``)."""
    gui = app.gui
    em = app.window.theme.font_size
    ui: dict = {"rows": {}}
    root = gui.ScrollableVert(int(0.3 * em), gui.Margins(int(0.5 * em), int(0.5 * em), int(0.5 * em), int(0.5 * em)))
    ui["root"] = root
    root.add_child(gui.Label(f"{app.scene.case_id}  ({len(app.scene.meshes)} structures)"))
    if len(getattr(app, "timepoints", ())) > 1:  # near the top: which study is shown matters first
        from .timepoints import build_timepoint_section

        ui.update(build_timepoint_section(app, root, em))
    names = [m.name for m in app.scene.meshes]
    root.add_child(_structures_section(app, gui, em, ui, names))
    root.add_child(_view_section(app, gui, em, ui, names))
    root.add_child(_ct_section(app, gui, em, ui, names))
    root.add_child(_measure_section(app, gui, em, ui, names))
    root.add_child(_rehearse_section(app, gui, em, ui, names))
    root.add_child(_plan_section(app, gui, em, ui, names))
    ui["status"] = gui.Label("Ctrl+click picks; left-drag rotates, wheel zooms")
    root.add_child(ui["status"])
    return ui


def _structures_section(app, gui, em: int, ui: dict, names: list[str]):
    """Legend, visibility, opacity, isolate, QC marks, uncertainty colours."""
    sec = _section(gui, em, "Structures")
    unc = gui.Checkbox("colour by uncertainty")
    unc.enabled = bool(app.scene.uncertainty)
    unc.set_on_checked(lambda on: app._background(app.set_color_by_uncertainty, on))
    ui["uncertainty"] = unc
    top = gui.Horiz(int(0.25 * em))
    top.add_child(unc)
    show_all = gui.Button("show all")
    show_all.set_on_clicked(lambda: app.isolate(None))
    top.add_child(show_all)
    sec.add_child(top)
    ui["colorbar"] = _colorbar_widget(gui, int(14 * em), int(2.6 * em))  # shown with the uncertainty colours
    sec.add_child(ui["colorbar"])
    for name in names:
        st = app.styles[name]
        row = gui.Horiz(int(0.25 * em))
        sw = gui.Button("  ")
        sw.background_color = gui.Color(*(c / 255.0 for c in st.rgb))
        sw.tooltip = f"isolate {name} (click again: show all)"
        sw.set_on_clicked(lambda n=name: app.isolate(None if _only_visible(app) == n else n))
        cb = gui.Checkbox(name.replace("_", " ") + ("  (?)" if st.uncertain else ""))
        cb.checked = st.visible
        if st.uncertain:
            cb.tooltip = f"flagged by QC: {st.qc_note or 'uncertain'}"
        cb.set_on_checked(lambda on, n=name: app.set_visible(n, on))
        op = gui.Slider(gui.Slider.DOUBLE)
        op.set_limits(0.0, 1.0)
        op.double_value = st.opacity
        op.tooltip = "opacity"
        op.set_on_value_changed(lambda v, n=name: app.set_opacity(n, v))
        row.add_child(sw)
        row.add_child(cb)
        row.add_stretch()
        row.add_child(op)
        sec.add_child(row)
        ui["rows"][name] = {"visible": cb, "opacity": op, "swatch": sw}
    return sec


def _view_section(app, gui, em: int, ui: dict, names: list[str]):
    """The six patient views, reset, orientation marker."""
    sec = _section(gui, em, "View")
    grid = gui.VGrid(3, int(0.25 * em))
    for v in VIEWS:
        b = gui.Button(v)
        b.set_on_clicked(lambda v=v: app.set_view(v))
        grid.add_child(b)
    sec.add_child(grid)
    row = gui.Horiz(int(0.25 * em))
    reset = gui.Button("reset view")
    reset.set_on_clicked(app.reset_view)
    marker = gui.Checkbox("orientation marker")
    marker.checked = True
    marker.set_on_checked(app.show_marker)
    row.add_child(reset)
    row.add_child(marker)
    sec.add_child(row)
    return sec


def _ct_section(app, gui, em: int, ui: dict, names: list[str]):
    """The three CT planes: on/off, a slider each, the window."""
    sec = _section(gui, em, "CT planes", open_=False)
    on = gui.Checkbox("show axial / coronal / sagittal planes")
    on.set_on_checked(lambda v: app._background(app.show_slices, v))
    ui["slices_on"] = on
    sec.add_child(on)
    ui["slice_sliders"] = {}
    try:
        from .slices import plane_array_axes

        vol_shape, vol_affine = _image_grid(app)
        axes = plane_array_axes(vol_affine)
    except Exception:  # noqa: BLE001 - no image in the scene: the planes stay disabled
        vol_shape, axes = None, None
    for p in PLANES:
        row = gui.Horiz(int(0.25 * em))
        row.add_child(gui.Label(f"{p:<9}"))
        sl = gui.Slider(gui.Slider.INT)
        if vol_shape is not None:
            sl.set_limits(0, vol_shape[axes[p]] - 1)
            sl.int_value = vol_shape[axes[p]] // 2
        else:
            sl.enabled = False
        mover = _Latest(app, lambda v, p=p: app.set_slice(p, int(v)))
        sl.set_on_value_changed(mover)
        row.add_child(sl)
        sec.add_child(row)
        ui["slice_sliders"][p] = sl
    win = _combo(gui, list(WINDOWS), lambda t: app._background(app.set_window, t))
    ui["window"] = win
    row = gui.Horiz(int(0.25 * em))
    row.add_child(gui.Label("window"))
    row.add_child(win)
    sec.add_child(row)
    on.enabled = vol_shape is not None
    return sec


def _measure_section(app, gui, em: int, ui: dict, names: list[str]):
    """Tools (Ctrl+click), minimum distance, the records."""
    sec = _section(gui, em, "Measure")
    mode = gui.RadioButton(gui.RadioButton.VERT)  # in one row the seven tools ran off the panel
    mode.set_items(list(MODES))
    mode.set_on_selection_changed(lambda idx: app.set_mode(MODES[idx]))
    ui["mode"] = mode
    sec.add_child(gui.Label("tool (Ctrl+click on surfaces):"))
    sec.add_child(mode)
    ui["pending"] = gui.Label("")
    sec.add_child(ui["pending"])
    row = gui.Horiz(int(0.25 * em))
    a, b = _combo(gui, names), _combo(gui, names)
    if len(names) > 1:
        b.selected_index = 1
    md = gui.Button("min distance between them")  # its own row: beside two combos it was cut to "mi"
    md.set_on_clicked(lambda: app._background(app.min_distance, a.selected_text, b.selected_text))
    row.add_child(a)
    row.add_child(b)
    sec.add_child(row)
    sec.add_child(md)
    ui["min_a"], ui["min_b"] = a, b
    lst = gui.ListView()
    lst.set_max_visible_items(10)  # wrapped records take more lines
    ui["records"] = lst
    ui["record_list"] = RecordList(lst)  # long records wrap onto indented lines (viewer.panel_text)
    sec.add_child(lst)
    dele = gui.Button("delete selected")
    dele.set_on_clicked(lambda: _delete_selected(app, lst))
    sec.add_child(dele)
    return sec


def _rehearse_section(app, gui, em: int, ui: dict, names: list[str]):
    """Cutting plane and trajectory."""
    sec = _section(gui, em, "Rehearse")
    _cut_controls(app, gui, em, ui, names, sec)
    _trajectory_controls(app, gui, em, ui, sec)
    return sec


def _cut_controls(app, gui, em: int, ui: dict, names: list[str], sec) -> None:
    """A cutting plane: structure, margin, orientation, offset and tilts, wedge, commit."""
    sec.add_child(gui.Label("cutting plane"))
    cs = _combo(gui, names)
    mt = _combo(gui, ["(no margin)"] + names)
    tumour = next((n for n in names if "tumo" in n or "lesion" in n), None)
    organ = next((n for n in names if tumour and n != tumour and tumour.startswith(n)), None)
    if organ:
        cs.selected_index = names.index(organ)
    if tumour:
        mt.selected_index = names.index(tumour) + 1
    orient = _combo(gui, list(CUT_ORIENTATIONS))
    for label, w in (("structure", cs), ("margin to", mt), ("orientation", orient)):
        row = gui.Horiz(int(0.25 * em))
        row.add_child(gui.Label(label))
        row.add_child(w)
        sec.add_child(row)

    def margin_choice():
        return None if mt.selected_index == 0 else mt.selected_text

    place = gui.Button("place plane")
    place.set_on_clicked(lambda: app._background(lambda: app.start_cut(cs.selected_text, orientation=orient.selected_text,
                                                                       margin_to=margin_choice())))
    mover = _Latest(app, lambda v: app.move_cut(offset_mm=v) if app.session.cut else None)
    offset = gui.Slider(gui.Slider.DOUBLE)
    offset.set_limits(-150.0, 150.0)
    offset.set_on_value_changed(mover)
    ui["cut_offset"] = offset
    tilts = []
    tilter = _Latest(app, lambda v: app.move_cut(tilt_deg=v) if app.session.cut else None)
    for _ in range(2):
        t = gui.Slider(gui.Slider.DOUBLE)
        t.set_limits(-60.0, 60.0)
        t.set_on_value_changed(lambda v: tilter((tilts[0].double_value, tilts[1].double_value)))
        tilts.append(t)
    ui["cut_tilts"] = tilts
    orient.set_on_selection_changed(lambda text, idx: app._background(app.move_cut, None, None, text) if app.session.cut else None)
    mt.set_on_selection_changed(lambda text, idx: app._background(lambda: app.move_cut(margin_to=margin_choice()))
                                if app.session.cut else None)
    for label, w in (("offset mm", offset), ("tilt 1 °", tilts[0]), ("tilt 2 °", tilts[1])):
        row = gui.Horiz(int(0.25 * em))
        row.add_child(gui.Label(label))
        row.add_child(w)
        sec.add_child(row)
    row = gui.Horiz(int(0.25 * em))
    wedge = gui.Button("+ plane")  # fix this plane, add another: a wedge
    wedge.set_on_clicked(lambda: app._background(app.add_cut_plane) if app.session.cut else None)
    commit = gui.Button("commit cut")
    commit.set_on_clicked(lambda: app._background(app.commit_cut))
    clear = gui.Button("clear")
    clear.set_on_clicked(app.clear_cut)
    for w in (place, wedge, commit, clear):
        row.add_child(w)
    sec.add_child(row)
    ui["cut_result"] = gui.Label("")
    sec.add_child(ui["cut_result"])


def _trajectory_controls(app, gui, em: int, ui: dict, sec) -> None:
    """A trajectory's tool radius and safety margin; its clearance and warnings."""
    sec.add_child(gui.Label("trajectory (tool: trajectory, Ctrl+click entry then target)"))
    row = gui.Horiz(int(0.25 * em))
    rad = gui.NumberEdit(gui.NumberEdit.DOUBLE)
    rad.set_limits(0.0, 20.0)
    rad.double_value = app.session.tool_radius_mm
    rad.set_on_value_changed(lambda v: setattr(app.session, "tool_radius_mm", float(v)))
    safety = gui.NumberEdit(gui.NumberEdit.DOUBLE)
    safety.set_limits(0.0, 50.0)
    safety.double_value = app.session.safety_margin_mm
    safety.set_on_value_changed(lambda v: setattr(app.session, "safety_margin_mm", float(v)))
    for label, w in (("radius mm", rad), ("safety mm", safety)):
        row.add_child(gui.Label(label))
        row.add_child(w)
    sec.add_child(row)
    ui["clearance"] = gui.Label("")
    ui["warnings"] = gui.Label("")
    ui["warnings"].text_color = gui.Color(1.0, 0.35, 0.3)
    sec.add_child(ui["clearance"])
    sec.add_child(ui["warnings"])



def _plan_section(app, gui, em: int, ui: dict, names: list[str]):
    """Save the plan, screenshot, report."""
    sec = _section(gui, em, "Plan")
    row = gui.Horiz(int(0.25 * em))
    save = gui.Button("save plan")
    save.set_on_clicked(lambda: app._background(app.save_plan))
    shot = gui.Button("screenshot")
    shot.set_on_clicked(lambda: app._background(_screenshot_to_scene, app))
    rep = gui.Button("open report")
    rep.set_on_clicked(lambda: app._background(app.open_report))
    for w in (save, shot, rep):
        row.add_child(w)
    sec.add_child(row)
    return sec


def _colorbar_widget(gui, width: int, height: int):
    """The uncertainty colour scale as an image (hidden until colour by uncertainty is on)."""
    import numpy as np
    import open3d as o3d

    from .render import colorbar_image

    w = gui.ImageWidget(o3d.geometry.Image(np.ascontiguousarray(np.asarray(colorbar_image(width, height)))))
    w.visible = False
    return w


def _image_grid(app):
    """(shape, affine) of the scene's image from its header only (the voxels load when the
    planes are first shown); same axis mapping as :func:`pipeline.geometry.volume_from_sitk`."""
    import numpy as np
    import SimpleITK as sitk

    r = sitk.ImageFileReader()
    r.SetFileName(str(app.scene.path(app.scene.image)))
    r.ReadImageInformation()
    sp, d = np.array(r.GetSpacing()), np.array(r.GetDirection()).reshape(3, 3)
    aff = np.eye(4)
    aff[:3, 2], aff[:3, 1], aff[:3, 0] = d[:, 0] * sp[0], d[:, 1] * sp[1], d[:, 2] * sp[2]  # sitk (x, y, z) = (i, j, k)
    aff[:3, 3] = r.GetOrigin()
    return tuple(int(n) for n in r.GetSize()[::-1]), aff


def _only_visible(app):
    vis = [n for n, s in app.styles.items() if s.visible]
    return vis[0] if len(vis) == 1 else None


def _delete_selected(app, lst):
    rid = app.ui["record_list"].record_id(lst.selected_index)  # any line of a wrapped record
    if rid and rid[0] in "LMCT" and rid[1:].isdigit():
        app._background(app.remove_record, rid)


def _screenshot_to_scene(app):
    import time

    path = app.scene.root / "snapshots" / f"viewer-{time.strftime('%Y%m%d-%H%M%S')}.png"
    app.screenshot(path)
    app._on_main(app._set_status, f"screenshot saved: {path}")
