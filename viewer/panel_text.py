"""The panel's record list with every record shown whole: long records wrap onto indented
continuation lines that fit the list's width, measured with the window's own font metrics.

Open3D's :class:`gui.ListView` draws one line per item and clips what does not fit, so
"C1 liver: remnant 54.2 % (...), margin 6.8 mm to liver_tumour" lost its end at the default
window width. :class:`RecordList` keeps the records' texts, wraps them with
:func:`wrap_to_width` whenever the list's width (or a record) changes, and maps any selected
line back to its record (for "delete selected").
"""
from __future__ import annotations

import re
from typing import Callable, Sequence

INDENT = "    "
NBSP = "\u00a0"
_UNIT = re.compile(r"(\d) (mm|ml|cm|%|°|HU)\b")  # a number stays on the line of its unit


def _split_word(word: str, width: float, measure: Callable[[str], float], prefix: str) -> list[str]:
    """A word wider than a line, cut into pieces that fit (the first after ``prefix``)."""
    out, cur = [], ""
    for ch in word:
        if cur and measure(prefix + cur + ch) > width:
            out.append(cur)
            cur, prefix = "", INDENT
        cur += ch
    return out + [cur]


def wrap_to_width(text: str, width: float, measure: Callable[[str], float], indent: str = INDENT) -> list[str]:
    """Lines of ``text`` each at most ``width`` wide by ``measure`` (pixels); lines after the
    first start with ``indent``. Joining the lines' words gives the text back."""
    words = [w.replace(NBSP, " ") for w in _UNIT.sub(lambda m: m.group(1) + NBSP + m.group(2), str(text)).split(" ") if w]
    if not words:
        return [""]
    lines: list[str] = []
    cur = ""
    for w in words:
        prefix = indent if lines else ""
        cand = f"{cur} {w}" if cur else w
        if measure(prefix + cand) <= width:
            cur = cand
            continue
        if cur:
            lines.append(prefix + cur)
            prefix = indent
        if measure(prefix + w) <= width:
            cur = w
        else:  # one word longer than a line: cut it
            pieces = _split_word(w, width, measure, prefix)
            lines += [(prefix if i == 0 else indent) + p for i, p in enumerate(pieces[:-1])]
            cur = pieces[-1]
    lines.append((indent if lines else "") + cur)
    return lines


class RecordList:
    """The records shown in a ListView, wrapped to its width."""

    def __init__(self, listview, empty: str = "(no measurements yet)"):
        self.listview = listview
        self.empty = empty
        self.texts: list[str] = []
        self.ids: list[str] = []
        self.items: list[str] = []
        self.owner: list[int] = []  # item -> index of its record (-1: the empty line)
        self.width = 0.0

    def set_records(self, texts: Sequence[str], ids: Sequence[str], measure=None, width: float | None = None):
        self.texts, self.ids = [str(t) for t in texts], [str(i) for i in ids]
        self.wrap(measure, width)

    def wrap(self, measure=None, width: float | None = None) -> bool:
        """Wrap again (``measure``: text -> pixels; default 8 px a character); True if the
        shown lines changed."""
        if width is not None:
            self.width = float(width)
        measure = measure or (lambda s: 8.0 * len(s))
        items, owner = [], []
        for n, t in enumerate(self.texts):
            lines = wrap_to_width(t, self.width, measure) if self.width > 0 else [t]
            items += lines
            owner += [n] * len(lines)
        if not items:
            items, owner = [self.empty], [-1]
        if items == self.items:
            return False
        self.items, self.owner = items, owner
        self.listview.set_items(items)
        return True

    def record_id(self, index: int) -> str | None:
        """Id of the record a list line belongs to (any of its wrapped lines), or None."""
        if 0 <= index < len(self.owner) and self.owner[index] >= 0:
            return self.ids[self.owner[index]]
        return None


def fit_records(app, ctx) -> None:
    """Wrap the panel's records to the list's current width with the window's font (called from
    the window's layout, where the font metrics are known)."""
    rl = app.ui.get("record_list")
    if rl is None:
        return
    gui = app.gui
    em = app.window.theme.font_size
    lv = app.ui["records"]
    root = app.ui["root"].frame
    width = (lv.frame.width if lv.frame.width > 0 else root.width - 2 * em) - 1.5 * em  # item padding, scrollbar
    probe = app.ui.setdefault("_probe", gui.Label(""))
    cache: dict[str, float] = {}

    def measure(s: str) -> float:
        if s not in cache:
            probe.text = s
            cache[s] = float(probe.calc_preferred_size(ctx, gui.Widget.Constraints()).width)
        return cache[s]

    if rl.wrap(measure, max(width, 4 * em)):
        app.window.set_needs_layout()
    # the panel is checked once its widgets have been laid out (their frames are set after this
    # callback: the first pass sees none), then again only when its size or the records change
    if not all(c.frame.width > 0 for c in app.ui["root"].get_children() if c.visible):
        app.app.post_to_main_thread(app.window, app.window.set_needs_layout)  # a request made in here is dropped
        app.ui["record_fit"] = {"key": None, "width": rl.width, "widths": [], "overflow": None}
        return
    key = (root.width, root.height, lv.frame.width, tuple(rl.items))
    if (app.ui.get("record_fit") or {}).get("key") != key:
        app.ui["record_fit"] = {"key": key, "width": rl.width, "widths": [measure(s) for s in rl.items],
                                "overflow": panel_overflow(app, ctx)}


def panel_overflow(app, ctx) -> list[dict]:
    """Widgets of the side panel that do not show whole at the current size: a button, check box
    or label whose own text needs more width than its frame has, or any widget that reaches past
    the panel's right edge (sections that are closed are skipped). Empty when nothing is cut."""
    gui = app.gui
    root = app.ui["root"]
    right = root.frame.get_right()
    out: list[dict] = []

    def visit(w):
        if not w.visible:
            return
        if isinstance(w, gui.CollapsableVert) and not w.get_is_open():
            return
        f = w.frame
        if f.width > 0 and not isinstance(w, (gui.Vert, gui.Horiz, gui.VGrid, gui.ScrollableVert)):
            need = w.calc_preferred_size(ctx, gui.Widget.Constraints()).width
            # widgets that clip what does not fit (a label wraps instead; sliders and images
            # scale); a preferred width includes ImGui's frame padding (about 4 px a side),
            # which a grid may trim by a pixel or two without touching the text
            clips = isinstance(w, (gui.Button, gui.Checkbox, gui.RadioButton, gui.Combobox, gui.ListView))
            if f.get_right() > right + 1 or (clips and need > f.width + 4):
                out.append({"widget": type(w).__name__, "text": getattr(w, "text", None) or getattr(w, "selected_text", None),
                            "frame": [f.x, f.y, f.width, f.height], "needs": int(need), "panel_right": int(right)})
        for c in w.get_children():
            visit(c)

    visit(root)
    return out
