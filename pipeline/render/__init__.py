"""Headless rendering the core may call: snapshots and report pictures of a scene.

:mod:`.offscreen` (Open3D offscreen renderer; :func:`.offscreen.snapshot_subprocess` runs it in
a child process), :mod:`.views` (patient views in LPS, camera maths), :mod:`.slices` (CT planes),
:mod:`.primitives` (plan records -> shapes) and :mod:`.drawing` (shapes -> Open3D geometry).
The viewer window (``viewer/``) builds on these; nothing here imports ``viewer``.
Importing this package loads neither Open3D nor torch.
"""
