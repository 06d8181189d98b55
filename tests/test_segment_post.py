"""Post-processing and QC on constructed cases with known answers."""
from __future__ import annotations

import numpy as np
import pytest

from pipeline.segment.postprocess import PostprocessConfig, fill_holes_3d, keep_components, postprocess_labels
from pipeline.segment.qc import QCConfig, structure_qc, touching_edge
from pipeline.types import Label, LabelMap, LabelTable, Volume


def _table(**components):
    return LabelTable([Label(i + 1, n, components=c, expected_ml=(1.0, 5.0)) for i, (n, c) in enumerate(components.items())])


def _blobs():
    """Label 1 with components of 1000, 216 and 8 voxels; label 2 a shell with a cavity."""
    a = np.zeros((40, 40, 40), np.uint8)
    a[2:12, 2:12, 2:12] = 1  # 1000
    a[20:26, 2:8, 2:8] = 1  # 216
    a[30:32, 30:32, 30:32] = 1  # 8
    a[14:25, 14:25, 14:25] = 2  # 11^3 = 1331 with a 3^3 cavity
    a[18:21, 18:21, 18:21] = 0
    return a


def test_keep_components_counts():
    m = _blobs() == 1
    kept, n, n_kept = keep_components(m, 1, 0)
    assert (n, n_kept, int(kept.sum())) == (3, 1, 1000)
    kept, _, n_kept = keep_components(m, 2, 0)
    assert (n_kept, int(kept.sum())) == (2, 1216)
    kept, _, n_kept = keep_components(m, 0, 10)  # keep all but islands < 10 voxels
    assert (n_kept, int(kept.sum())) == (2, 1216)
    kept, _, _ = keep_components(m, 0, 5000)  # the largest stays even when small
    assert int(kept.sum()) == 1000


def test_diagonal_touch_is_one_component():
    m = np.zeros((5, 5, 5), bool)
    m[1, 1, 1] = m[2, 2, 2] = True  # corner contact: 26-connected
    assert keep_components(m, 1, 0)[1] == 1


def test_postprocess_known_answer():
    a = _blobs()
    table = _table(organ=1, shell=1)
    out, report = postprocess_labels(a, table, PostprocessConfig(min_island_ml=0.0), voxel_ml=0.001)
    assert int((out == 1).sum()) == 1000
    assert int((out == 2).sum()) == 1331  # cavity of 27 filled
    assert report["organ"]["components_found"] == 3 and report["organ"]["removed_ml"] == pytest.approx(0.224)
    assert report["shell"]["filled_ml"] == pytest.approx(0.027)
    assert a[19, 19, 19] == 0 and out[19, 19, 19] == 2  # input untouched


def test_paired_structure_keeps_two():
    a = _blobs()
    table = _table(organ=2, shell=1)
    out, _ = postprocess_labels(a, table, PostprocessConfig(min_island_ml=0.0), voxel_ml=0.001)
    assert int((out == 1).sum()) == 1216


def test_min_island_drops_small_pieces_of_multi_part_structures():
    a = _blobs()
    table = _table(organ=0, shell=1)  # 0 = keep all components
    out, _ = postprocess_labels(a, table, PostprocessConfig(min_island_ml=0.05), voxel_ml=0.001)  # 50 voxels
    assert int((out == 1).sum()) == 1216


def test_hole_holding_another_label_is_not_overwritten():
    a = np.zeros((20, 20, 20), np.uint8)
    a[4:15, 4:15, 4:15] = 1
    a[8:11, 8:11, 8:11] = 2  # a cyst inside the organ
    a[9, 9, 12] = 0  # and one background voxel in the organ
    table = _table(organ=1, cyst=1)
    out, _ = postprocess_labels(a, table, PostprocessConfig(min_island_ml=0.0), voxel_ml=1.0)
    assert (out[8:11, 8:11, 8:11] == 2).all()
    assert out[9, 9, 12] == 1


def test_fill_holes_3d_touching_border_is_not_a_hole():
    m = np.ones((6, 6, 6), bool)
    m[2:4, 2:4, 2:4] = False
    m[0, 0, 0] = False
    f = fill_holes_3d(m)
    assert f[2:4, 2:4, 2:4].all() and not f[0, 0, 0]


def test_disabled_postprocess_is_identity():
    a = _blobs()
    out, report = postprocess_labels(a, _table(organ=1, shell=1), PostprocessConfig(enabled=False), 0.001)
    assert np.array_equal(out, a) and report == {}


# --- QC -------------------------------------------------------------------------------------

def _qc_case():
    affine = np.diag([2.0, 1.0, 1.0, 1.0])  # 2 ul voxels
    lab = np.zeros((20, 20, 20), np.uint8)
    lab[5:15, 5:15, 5:15] = 1  # 1000 voxels = 2.0 ml, interior
    lab[0:4, 0:5, 0:5] = 2  # 100 voxels touching the edge
    hu = np.zeros(lab.shape, np.float32)
    hu[lab == 1] = np.tile([90.0, 110.0], 500)  # mean 100, sd 10
    hu[lab == 2] = 50.0
    unc = np.zeros(lab.shape, np.float32)
    unc[lab == 1] = 0.5
    table = LabelTable([Label(1, "organ", expected_ml=(1.0, 3.0)), Label(2, "edge", expected_ml=(10.0, 20.0)),
                        Label(3, "absent")])
    vol = Volume(hu, affine)
    return LabelMap(vol.with_array(lab), table), vol, vol.with_array(unc)


def test_qc_known_values():
    lm, img, unc = _qc_case()
    qc = structure_qc(lm, img, unc, QCConfig(uncertainty_high=0.3))
    assert set(qc) == {"organ", "edge"}  # absent structures are not reported
    o = qc["organ"]
    assert o["voxels"] == 1000 and o["volume_ml"] == pytest.approx(2.0)
    assert o["mean_hu"] == pytest.approx(100.0) and o["sd_hu"] == pytest.approx(10.0)
    assert o["in_range"] is True and o["truncated"] is False
    assert o["uncertainty"] == pytest.approx(0.5) and o["uncertainty_level"] == "high"
    assert "high uncertainty" in o["warning"]
    e = qc["edge"]
    assert e["truncated"] is True and e["in_range"] is None  # cut by the scan: no range verdict
    assert e["uncertainty_level"] == "low" and e["warning"] is None


def test_qc_out_of_range_warns():
    lm, img, _ = _qc_case()
    table = LabelTable([Label(1, "organ", expected_ml=(50.0, 100.0)), Label(2, "edge")])
    qc = structure_qc(LabelMap(lm.volume, table), img, None)
    assert qc["organ"]["in_range"] is False and "outside the expected 50-100 ml" in qc["organ"]["warning"]
    assert qc["organ"]["uncertainty"] is None


def test_touching_edge():
    lab = np.zeros((5, 5, 5), np.uint8)
    lab[2, 2, 2] = 1
    lab[4, 1, 1] = 2
    assert touching_edge(lab) == {2}
