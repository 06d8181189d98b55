"""Screen labels that read on any background and never overlap (pure numpy + PIL).

A label is dark text on a light, nearly opaque box with a thin dark border: the box carries the
contrast, so the text reads the same on the white background, on a dark CT plane and on a
saturated organ (black text straight on dark CT was unreadable). A record with its own colour
(a cut) shows it as the box's tint and border.

:func:`place_boxes` lays labels out in screen pixels: each box starts at its anchor and, when it
would cover a box already placed, moves up or down in whole box heights to the nearest free
slot (top to bottom, up first). The headless snapshots (:mod:`.offscreen`) and the viewer
window (:mod:`viewer.screen_labels`) both use it, so the two agree.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

LABEL_TEXT = (20, 20, 20)
LABEL_BOX = (250, 250, 246)
LABEL_BORDER = (40, 40, 40)
BOX_ALPHA = 0.9  # the box hides 90 % of what is under it


def _overlap(a, b) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def place_boxes(anchors_px, sizes, *, bounds: tuple[float, float] | None = None, gap: float = 2.0,
                max_steps: int = 12) -> np.ndarray:
    """(n, 2) top-left corners of boxes of ``sizes`` (n, 2: width, height) anchored (left,
    vertically centred) at ``anchors_px`` (n, 2), none overlapping another (when a free slot lies
    within ``max_steps`` box heights up or down, or one or two box widths aside).
    ``bounds`` (width, height): boxes are kept inside it."""
    xy = np.asarray(anchors_px, float).reshape(-1, 2)
    wh = np.asarray(sizes, float).reshape(-1, 2)
    out = np.zeros_like(xy)
    placed: list[tuple] = []
    rows = [0] + [s for k in range(1, max_steps + 1) for s in (-k, k)]  # up first (screen y grows down)
    for i in np.argsort(xy[:, 1], kind="stable"):
        w, h = wh[i]
        # nearest slot first: straight up/down, then beside the anchor (right before left)
        cands = sorted(((dx, s) for dx in (0, 1, -1, 2, -2) for s in rows),
                       key=lambda c: (abs(c[0]) * (w + gap)) ** 2 + (c[1] * (h + gap)) ** 2)
        box = None
        for dx, s in cands:
            x0, y0 = xy[i, 0] + dx * (w + gap), xy[i, 1] - h / 2 + s * (h + gap)
            if bounds is not None:
                x0 = float(np.clip(x0, 0, max(bounds[0] - w, 0)))
                if y0 < 0 or y0 + h > bounds[1]:
                    continue
            cand = (x0, y0, x0 + w, y0 + h)
            if not any(_overlap(cand, b) for b in placed):
                box = cand
                break
        if box is None:  # no free slot: stay on the anchor (inside the bounds)
            x0, y0 = xy[i, 0], xy[i, 1] - h / 2
            if bounds is not None:
                x0 = float(np.clip(x0, 0, max(bounds[0] - w, 0)))
                y0 = float(np.clip(y0, 0, max(bounds[1] - h, 0)))
            box = (x0, y0, x0 + w, y0 + h)
        placed.append(box)
        out[i] = box[:2]
    return out


def font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 without sized default fonts
        return ImageFont.load_default()


def box_colours(rgb=None) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """(fill, border) of a label box: light and dark neutral, or tinted by a record's ``rgb``
    (the fill stays light enough for dark text: 80 % white)."""
    if rgb is None:
        return LABEL_BOX, LABEL_BORDER
    c = np.asarray(rgb, float)
    fill = tuple(int(v) for v in np.rint(0.8 * np.asarray(LABEL_BOX) + 0.2 * c))
    border = tuple(int(v) for v in np.rint(0.75 * c))  # darker than the colour: visible on white
    return fill, border


def label_size(text: str, size: int) -> tuple[int, int]:
    """(width, height) in pixels of a boxed label."""
    from PIL import Image, ImageDraw

    d = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    x0, y0, x1, y1 = d.textbbox((0, 0), text, font=font(size), anchor="lm")
    pad = max(2, size // 4)
    return int(x1 - x0 + 2 * pad + 2), int(size + 2 * pad)


def draw_label(img, xy, text: str, size: int, rgb=None):
    """Draw one boxed label with its top-left corner at ``xy`` on a PIL RGB image (in place)."""
    from PIL import Image, ImageDraw

    w, h = label_size(text, size)
    x, y = int(round(xy[0])), int(round(xy[1]))
    fill, border = box_colours(rgb)
    over = Image.new("RGBA", img.size, (0, 0, 0, 0))
    d = ImageDraw.Draw(over)
    r = max(2, h // 5)
    d.rounded_rectangle([x, y, x + w - 1, y + h - 1], radius=r, fill=(*fill, int(255 * BOX_ALPHA)),
                        outline=(*border, 255), width=1 if rgb is None else 2)
    base = img.convert("RGBA")
    base.alpha_composite(over)
    img.paste(base.convert("RGB"))
    ImageDraw.Draw(img).text((x + max(2, size // 4) + 1, y + h / 2), text, font=font(size), fill=LABEL_TEXT,
                             anchor="lm")
    return (x, y, w, h)


def draw_labels(img, anchors_px, texts: Sequence[str], size: int, colours: Sequence | None = None) -> list[tuple]:
    """Lay out and draw boxed labels on ``img`` (in place); returns their boxes (x, y, w, h).

    Anchors outside the picture are left out."""
    anchors = np.asarray(anchors_px, float).reshape(-1, 2)
    colours = list(colours) if colours is not None else [None] * len(texts)
    W, H = img.size
    keep = [i for i in range(len(texts)) if texts[i] and np.all(np.isfinite(anchors[i]))
            and 0 <= anchors[i, 0] < W and 0 <= anchors[i, 1] < H]
    if not keep:
        return []
    sizes = [label_size(texts[i], size) for i in keep]
    pos = place_boxes(anchors[keep] + [size * 0.6, 0], sizes, bounds=(W, H))
    return [draw_label(img, p, texts[i], size, colours[i]) for i, p in zip(keep, pos)]


def contrast_ratio(rgb1, rgb2) -> float:
    """WCAG contrast ratio (1..21) of two sRGB 0..255 colours."""
    def lum(c):
        c = np.asarray(c, float) / 255.0
        c = np.where(c <= 0.03928, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
        return float(c @ [0.2126, 0.7152, 0.0722])
    a, b = sorted((lum(rgb1), lum(rgb2)), reverse=True)
    return (a + 0.05) / (b + 0.05)
