import pytest

from pipeline.fileio import atomic_write, atomic_write_json, atomic_write_text


def test_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    p = tmp_path / "result.json"
    atomic_write_text(p, "old")

    def broken(tmp):
        tmp.write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(p, broken)
    assert p.read_text() == "old"
    assert sorted(x.name for x in tmp_path.iterdir()) == ["result.json"]


def test_json_with_numpy_values(tmp_path):
    import json

    import numpy as np

    p = atomic_write_json(tmp_path / "sub" / "x.json", {"a": np.float32(1.5), "b": np.arange(3)})
    assert json.loads(p.read_text()) == {"a": 1.5, "b": [0, 1, 2]}


def test_parallel_gzip_nifti_reads_back_everywhere(tmp_path, monkeypatch):
    """A NIfTI gzipped as several members (threads) reads back identically in SimpleITK and nibabel,
    with the geometry unchanged (a left/right flip would show in the affine)."""
    import gzip

    import nibabel as nib
    import numpy as np

    from pipeline import fileio
    from pipeline.geometry import read_image_file, write_image_file
    from pipeline.types import Volume

    import functools

    monkeypatch.setattr(fileio, "gzip_parallel", functools.partial(fileio.gzip_parallel, chunk_mb=1, threads=2))
    rng = np.random.default_rng(0)
    arr = rng.integers(-1000, 1000, (20, 130, 170)).astype(np.int16)  # ~0.9 MB: several 1 MB members
    a = np.diag([2.0, -0.8, 0.7, 1.0])
    a[:3, 3] = [10.0, 50.0, -30.0]
    vol = Volume(arr, a)
    path = tmp_path / "im.nii.gz"
    write_image_file(vol, path)
    with gzip.open(path) as f:
        assert len(f.read()) >= arr.nbytes
    back = read_image_file(path)
    np.testing.assert_array_equal(back.array, arr)
    np.testing.assert_allclose(back.affine, a, atol=1e-5)
    img = nib.load(path)
    np.testing.assert_array_equal(np.asarray(img.dataobj).transpose(2, 1, 0), arr)
    np.testing.assert_allclose(img.affine[:3, 2], [-2.0, 0, 0], atol=1e-5)  # +k runs to the patient's left: RAS -x


def test_gzip_parallel_members(tmp_path):
    import gzip

    from pipeline.fileio import gzip_parallel

    data = bytes(range(256)) * 20000  # 5 MB
    src, dst = tmp_path / "a.bin", tmp_path / "a.gz"
    src.write_bytes(data)
    gzip_parallel(src, dst, chunk_mb=1, threads=2)
    raw = dst.read_bytes()
    assert raw.count(b"\x1f\x8b\x08") >= 5  # one member per MiB
    assert gzip.decompress(raw) == data
