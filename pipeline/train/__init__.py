"""Training: nnU-Net-layout datasets, SynthSeg-style synthesis, MONAI training, evaluation, export.

Nothing heavy is imported here; torch/MONAI load inside the functions that need them.
"""
