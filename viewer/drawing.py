"""Open3D geometry of plan primitives: moved to :mod:`pipeline.render.drawing`.

The core renders snapshots and report pictures without importing the GUI package; this name
stays the same module object (every name, private ones too) for the viewer and older callers.
"""
import sys

from pipeline.render import drawing as _impl

sys.modules[__name__] = _impl
