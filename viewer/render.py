"""Headless snapshots: moved to :mod:`pipeline.render.offscreen`.

The core renders snapshots and report pictures without importing the GUI package; this name
stays the same module object (every name, private ones too) for the viewer and older callers.
"""
import sys

from pipeline.render import offscreen as _impl

if __name__ == "__main__":  # python -m viewer.render, as before
    sys.exit(_impl.main())

sys.modules[__name__] = _impl
