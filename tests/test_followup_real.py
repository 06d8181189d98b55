"""Follow-up on a real CT: a known rigid motion and a lesion grown by a known volume.

The baseline is the real thorax-abdomen CT of ``ct_thorax_abdomen_dicom_j2k`` (JPEG 2000,
read through the project's reader) with a hypodense spherical lesion (20 HU, radius 7 mm)
painted into the liver (found from the reference labels, compared in patient space). The
follow-up is the same CT with the lesion grown to 10 mm, moved rigidly (turned 2 degrees about
the patient's long axis and 0.5 about left-right, shifted (4, -3, 1.5) mm) by resampling onto a
scan range 6 mm shorter at each end. Both
are segmented by the HU rules (body, bone, lungs: the real path); the lesion's label is added
from its known sphere (no model here segments lesions).
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import real_data
from pipeline.followup.register import RegistrationConfig
from pipeline.followup.synthetic import rigid_motion
from pipeline.types import Label, LabelMap, LabelTable, StageRecord, Volume

LESION = Label(250, "liver_lesion", (144, 238, 144), "4147007")
R0, R1 = 7.0, 10.0


def _paint(vol: Volume, centre, radius, hu=20.0) -> tuple[np.ndarray, np.ndarray]:
    k, j, i = np.indices(vol.shape)
    pts = vol.index_to_lps(np.stack([k, j, i], -1).reshape(-1, 3)).reshape(*vol.shape, 3)
    ball = np.linalg.norm(pts - np.asarray(centre), axis=-1) <= radius
    arr = vol.array.copy()
    arr[ball] = hu
    return arr, ball


def _segment(vol: Volume, ball: np.ndarray):
    from pipeline.segment import segment

    seg = segment(vol, "hu_rules", {"uncertainty": False})
    table = LabelTable([*seg.labelmap.labels, LESION])
    arr = seg.labelmap.array.astype(np.uint16)
    arr[ball] = LESION.id
    rec = StageRecord("segment", {"surgitwin": "test"}, inputs={"model": "hu_rules+known_lesion"})
    return LabelMap(vol.with_array(arr), table), None, {}, rec


@pytest.mark.slow
def test_real_ct_follow_up_recovers_motion_and_lesion_growth(tmp_path):
    import SimpleITK as sitk

    from pipeline.geometry import read_image_file, resample_like, volume_from_sitk, volume_to_sitk, write_image_file
    from pipeline.ingest import read_input
    from pipeline.mesh import MeshConfig, labelmap_to_meshes
    from pipeline.planning import Planner
    from pipeline.scene import Scene, save_scene
    from pipeline.followup.register import affine_to_sitk
    from pipeline.followup.run import follow_up
    from scipy import ndimage

    folder = real_data("ct_thorax_abdomen_dicom_j2k")
    ct = read_input(folder / "series")
    ct = ct.with_array(ct.array.astype(np.int16))
    names = json.loads((folder / "class_map_total.json").read_text())["total"]
    liver_id = int([k for k, v in names.items() if v == "liver"][0])
    ref = read_image_file(folder / "labels_reference.nii.gz")
    liver = resample_like(ref.with_array(np.rint(ref.array).astype(np.int16)), ct, order=0).array == liver_id
    depth = ndimage.distance_transform_edt(liver, sampling=ct.spacing)
    mid = ct.shape[0] // 2
    depth[: mid - 1] = 0  # the lesion in the middle of the 40 mm slab, inside both scan ranges
    depth[mid + 1:] = 0
    centre = ct.index_to_lps(np.array(np.unravel_index(np.argmax(depth), depth.shape), float)[None])[0]
    assert depth.max() > R1 + 2, "the liver in this slab must hold the grown lesion"

    base_arr, base_ball = _paint(ct, centre, R0)
    base = ct.with_array(base_arr)
    lm0 = _segment(base, base_ball)[0]
    scene_dir = tmp_path / "scene"
    scene_dir.mkdir()
    write_image_file(base, scene_dir / "image.nii.gz")
    write_image_file(lm0.volume, scene_dir / "labels.nii.gz")
    meshes = labelmap_to_meshes(lm0, MeshConfig(), names={"liver_lesion", "bone"})
    save_scene(Scene("real_ct", {"study_instance_uid": "1.2.3", "modality": "CT", "study_date": "20240101"},
                     lm0.labels, meshes, provenance=[StageRecord("segment", {}, inputs={"model": "hu_rules"})]),
               scene_dir)
    # a path planned 6 mm anterior to the lesion, left to right
    entry = centre + np.array([-60.0, -(R0 + 7.0), 0.0])
    target = centre + np.array([40.0, -(R0 + 7.0), 0.0])
    Planner(scene_dir).add_trajectory(entry, target, 1.0, structures=["liver_lesion"], save=True)

    motion = rigid_motion((0.5, 0.0, 2.0), (4.0, -3.0, 1.5), centre_lps=ct.center_lps())
    grown_arr, _ = _paint(ct, centre, R1)
    # the follow-up's scan range is 3 slices shorter at each end, so every voxel of it saw anatomy
    # (a grid as large as the baseline's would end in invented air where the motion left the slab)
    shorter = np.eye(4)
    shorter[0, 3] = 3
    grid = Volume(ct.array[3:-3], ct.affine @ shorter)
    img = sitk.Resample(volume_to_sitk(ct, grown_arr), volume_to_sitk(grid), affine_to_sitk(np.linalg.inv(motion)),
                        sitk.sitkLinear, -1024.0, sitk.sitkInt16)
    fu = volume_from_sitk(img, {"study_date": "20240601", "study_instance_uid": "1.2.4", "modality": "CT"})
    fu = Volume(fu.array, fu.affine, None, fu.source)
    _, fu_ball = _paint(fu, motion[:3, :3] @ centre + motion[:3, 3], R1)

    res = follow_up(scene_dir, fu, segmenter=lambda v: _segment(v, fu_ball),
                    registration=RegistrationConfig(deformable=False))
    m = np.array(res.registration["rigid_baseline_to_timepoint"])
    body = lm0.array > 0
    surface = ct.index_to_lps(np.argwhere(body & ~ndimage.binary_erosion(body))[::97])
    err = np.linalg.norm(surface @ m[:3, :3].T + m[:3, 3] - (surface @ motion[:3, :3].T + motion[:3, 3]), axis=1)
    assert err.max() < 1.0, f"body-surface error {err.max():.2f} mm"
    r = m[:3, :3] @ motion[:3, :3].T
    assert np.degrees(np.arccos(np.clip((np.trace(r) - 1) / 2, -1, 1))) < 0.5
    row = {r["name"]: r for r in res.change["structures"]}["liver_lesion"]
    true_growth = (fu_ball.sum() * fu.voxel_volume_ml) - (base_ball.sum() * ct.voxel_volume_ml)
    assert row["volume_change_ml"] == pytest.approx(true_growth, rel=0.10)
    assert row["centroid_shift_mm"] < 1.0
    assert row["surface"]["mean_mm"] == pytest.approx(R1 - R0, abs=0.8)
    assert res.change["recist"]["category"] == "progressive_disease"  # 14 -> 20 mm: +43 %, +6 mm
    traj = [c for c in res.carried if c["kind"] == "trajectory"][0]
    clr = [c for c in traj["changes"] if c["what"] == "clearance to liver_lesion"][0]
    assert clr["before"] == pytest.approx(6.0, abs=1.0)
    assert clr["after"] == pytest.approx(6.0 - (R1 - R0), abs=1.0) and clr["flag"]
