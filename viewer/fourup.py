"""Four-up panes: they live in :mod:`pipeline.render.fourup` (headless, no GUI import); this name
stays the same module object for the viewer and older callers."""
import sys

from pipeline.render import fourup as _impl

sys.modules[__name__] = _impl
