"""Grab an X window's pixels with libX11 through ctypes (XGetImage).

ImageMagick's ``import`` takes ~4 s per grab here (start-up, not pixels); this takes
milliseconds, which matters because a window screenshot grabs until two grabs agree.
Works on any X server, including Xvfb (no compositor: the window's pixels are on screen).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os

import numpy as np

from pipeline.errors import SurgitwinError

_c_ulong, _c_int, _c_void_p = ctypes.c_ulong, ctypes.c_int, ctypes.c_void_p


class _XWindowAttributes(ctypes.Structure):
    _fields_ = [("x", _c_int), ("y", _c_int), ("width", _c_int), ("height", _c_int), ("border_width", _c_int),
                ("depth", _c_int), ("visual", _c_void_p), ("root", _c_ulong), ("class_", _c_int),
                ("bit_gravity", _c_int), ("win_gravity", _c_int), ("backing_store", _c_int),
                ("backing_planes", _c_ulong), ("backing_pixel", _c_ulong), ("save_under", _c_int),
                ("colormap", _c_ulong), ("map_installed", _c_int), ("map_state", _c_int),
                ("all_event_masks", ctypes.c_long), ("your_event_mask", ctypes.c_long),
                ("do_not_propagate_mask", ctypes.c_long), ("override_redirect", _c_int), ("screen", _c_void_p)]


class _XImage(ctypes.Structure):
    pass


_DESTROY = ctypes.CFUNCTYPE(_c_int, ctypes.POINTER(_XImage))


class _Funcs(ctypes.Structure):
    _fields_ = [("create_image", _c_void_p), ("destroy_image", _DESTROY), ("get_pixel", _c_void_p),
                ("put_pixel", _c_void_p), ("sub_image", _c_void_p), ("add_pixel", _c_void_p)]


_XImage._fields_ = [("width", _c_int), ("height", _c_int), ("xoffset", _c_int), ("format", _c_int),
                    ("data", ctypes.POINTER(ctypes.c_ubyte)), ("byte_order", _c_int), ("bitmap_unit", _c_int),
                    ("bitmap_bit_order", _c_int), ("bitmap_pad", _c_int), ("depth", _c_int),
                    ("bytes_per_line", _c_int), ("bits_per_pixel", _c_int), ("red_mask", _c_ulong),
                    ("green_mask", _c_ulong), ("blue_mask", _c_ulong), ("obdata", _c_void_p), ("f", _Funcs)]

_ZPIXMAP = 2
_ERROR_HANDLER = ctypes.CFUNCTYPE(_c_int, _c_void_p, _c_void_p)
# Xlib's default error handler exits the process (e.g. on BadMatch from XGetImage while a
# window is being unmapped); a failed grab must raise instead.
_ignore_errors = _ERROR_HANDLER(lambda display, event: 0)
_ALL_PLANES = _c_ulong(0xFFFFFFFF)


def _lib():
    name = ctypes.util.find_library("X11") or "libX11.so.6"
    try:
        x = ctypes.cdll.LoadLibrary(name)
    except OSError as e:
        raise SurgitwinError(f"window capture needs libX11 ({e})") from None
    x.XOpenDisplay.restype = _c_void_p
    x.XOpenDisplay.argtypes = [ctypes.c_char_p]
    x.XCloseDisplay.argtypes = [_c_void_p]
    x.XDefaultRootWindow.restype = _c_ulong
    x.XDefaultRootWindow.argtypes = [_c_void_p]
    x.XGetWindowAttributes.argtypes = [_c_void_p, _c_ulong, ctypes.POINTER(_XWindowAttributes)]
    x.XGetImage.restype = ctypes.POINTER(_XImage)
    x.XGetImage.argtypes = [_c_void_p, _c_ulong, _c_int, _c_int, ctypes.c_uint, ctypes.c_uint, _c_ulong, _c_int]
    x.XSetErrorHandler.restype = _c_void_p
    x.XSetErrorHandler.argtypes = [_ERROR_HANDLER]
    return x


def can_open_display(display: str) -> bool | None:
    """True/False whether an X connection to ``display`` opens; None if libX11 is missing."""
    try:
        x = _lib()
    except SurgitwinError:
        return None
    dpy = x.XOpenDisplay(display.encode())
    if not dpy:
        return False
    x.XCloseDisplay(dpy)
    return True


def screen_size(display: str | None = None) -> tuple[int, int] | None:
    """(width, height) of the X display's default screen; None when it cannot be asked."""
    try:
        x = _lib()
    except SurgitwinError:
        return None
    x.XDefaultScreen.argtypes = [_c_void_p]
    x.XDisplayWidth.argtypes = x.XDisplayHeight.argtypes = [_c_void_p, _c_int]
    dpy = x.XOpenDisplay((display or os.environ.get("DISPLAY", "")).encode())
    if not dpy:
        return None
    try:
        n = x.XDefaultScreen(dpy)
        return int(x.XDisplayWidth(dpy, n)), int(x.XDisplayHeight(dpy, n))
    finally:
        x.XCloseDisplay(dpy)


def fit_to_screen(size, screen) -> tuple[tuple[int, int], str | None]:
    """``size`` shrunk to fit ``screen`` (a window larger than the screen cannot be captured:
    XGetImage fails on its off-screen part), keeping the aspect ratio; and a note when shrunk."""
    w, h = int(size[0]), int(size[1])
    if not screen or (w <= screen[0] and h <= screen[1]):
        return (w, h), None
    k = min(screen[0] / w, screen[1] / h)
    fitted = (max(320, int(w * k)), max(240, int(h * k)))
    return fitted, (f"window {w}x{h} is larger than the X screen {screen[0]}x{screen[1]}: "
                    f"opened at {fitted[0]}x{fitted[1]}")


def grab_window(window_id: int | None = None, display: str | None = None) -> np.ndarray:
    """(height, width, 3) uint8 RGB of an X window (the root window when ``window_id`` is None)."""
    x = _lib()
    dpy = x.XOpenDisplay((display or os.environ.get("DISPLAY", "")).encode())
    if not dpy:
        raise SurgitwinError(f"cannot open X display {display or os.environ.get('DISPLAY')!r} to capture the window")
    previous = x.XSetErrorHandler(_ignore_errors)  # process-wide in Xlib: restored below
    try:
        wid = int(window_id) if window_id else x.XDefaultRootWindow(dpy)
        attr = _XWindowAttributes()
        if not x.XGetWindowAttributes(dpy, wid, ctypes.byref(attr)):
            raise SurgitwinError(f"X window {wid:#x} does not exist")
        img = x.XGetImage(dpy, wid, 0, 0, attr.width, attr.height, _ALL_PLANES, _ZPIXMAP)
        if not img:
            raise SurgitwinError(f"XGetImage failed for window {wid:#x} (is it mapped and on screen?)")
        try:
            im = img.contents
            if im.bits_per_pixel != 32 or im.depth not in (24, 32):
                raise SurgitwinError(f"window capture supports 24/32-bit TrueColor screens; found depth {im.depth}, "
                                     f"{im.bits_per_pixel} bits per pixel")
            buf = np.ctypeslib.as_array(im.data, shape=(im.height * im.bytes_per_line,)).copy()
            px = buf.reshape(im.height, im.bytes_per_line)[:, : im.width * 4].reshape(im.height, im.width, 4)
            shifts = [int(m).bit_length() - 8 for m in (im.red_mask, im.green_mask, im.blue_mask)]
            word = px.view("<u4")[..., 0] if im.byte_order == 0 else px.view(">u4")[..., 0]
            rgb = np.stack([(word >> s) & 0xFF for s in shifts], axis=-1).astype(np.uint8)
        finally:
            im.f.destroy_image(img)
        return rgb
    finally:
        x.XCloseDisplay(dpy)
        x.XSetErrorHandler(ctypes.cast(previous, _ERROR_HANDLER) if previous else _ERROR_HANDLER())
