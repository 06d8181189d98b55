"""Open3D viewer and headless snapshots of scene bundles.

:mod:`viewer.render` (headless, crash-safe snapshots), :mod:`viewer.views` (patient views in
LPS, camera maths), :mod:`viewer.app` (the GUI window), :mod:`viewer.tools` (interaction state
over :mod:`pipeline.planning`). Nothing here imports torch or MONAI; Open3D is imported only
where something is drawn.
"""
