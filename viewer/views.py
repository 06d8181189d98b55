"""Patient views and camera maths: moved to :mod:`pipeline.render.views`.

The core renders snapshots and report pictures without importing the GUI package; this name
stays the same module object (every name, private ones too) for the viewer and older callers.
"""
import sys

from pipeline.render import views as _impl

sys.modules[__name__] = _impl
