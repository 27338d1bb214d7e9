"""Reader round trips for every single-file format, and every kind of bad input."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from proqual.errors import InputError
from proqual.io import Volume, read_volume, write_volume


@pytest.fixture()
def volume() -> Volume:
    rng = np.random.default_rng(1)
    direction = np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    return Volume(
        rng.random((9, 7, 5), dtype=np.float32) * 100 + 1, (0.5, 0.6, 3.0), (10.0, -20.0, 5.5), direction
    )


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".mha", ".mhd", ".nrrd"])
def test_round_trip(tmp_path, volume, suffix):
    path = write_volume(volume, tmp_path / f"img{suffix}")
    back = read_volume(path)
    assert back.shape == (9, 7, 5)
    np.testing.assert_allclose(back.array, volume.array, rtol=1e-6)
    np.testing.assert_allclose(back.spacing, volume.spacing, rtol=1e-6)
    np.testing.assert_allclose(back.origin, volume.origin, atol=1e-4)
    np.testing.assert_allclose(back.direction, volume.direction, atol=1e-6)
    # geometry: a voxel maps to the same world point after the round trip
    np.testing.assert_allclose(back.index_to_world([3, 2, 1]), volume.index_to_world([3, 2, 1]), atol=1e-4)
    assert back.source == str(path)


def test_affines_are_consistent(volume):
    lps = volume.affine_lps()
    ras = volume.affine_ras()
    np.testing.assert_allclose(ras[:2], -lps[:2])
    np.testing.assert_allclose(ras[2], lps[2])
    np.testing.assert_allclose(volume.world_to_index(volume.index_to_world([1.5, 2, 3])), [1.5, 2, 3])


def test_atomic_write_leaves_no_temp_file(tmp_path, volume):
    write_volume(volume, tmp_path / "a.nii.gz")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.nii.gz"]


def test_unsupported_suffix(tmp_path, volume):
    with pytest.raises(InputError, match=r"a\.png: unsupported image suffix"):
        write_volume(volume, tmp_path / "a.png")


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match="nope.mha: file not found"):
        read_volume(tmp_path / "nope.mha")


def test_zero_byte_file(tmp_path):
    p = tmp_path / "empty.nii.gz"
    p.write_bytes(b"")
    with pytest.raises(InputError, match=r"empty\.nii\.gz: file is empty"):
        read_volume(p)


def test_corrupt_file(tmp_path):
    p = tmp_path / "junk.nii.gz"
    p.write_bytes(b"this is not an image" * 10)
    with pytest.raises(InputError, match=r"junk\.nii\.gz: unreadable, corrupt or truncated"):
        read_volume(p)


@pytest.mark.parametrize("suffix", [".nii", ".mha", ".nii.gz", ".nrrd"])
def test_truncated_file(tmp_path, volume, suffix):
    p = write_volume(volume, tmp_path / f"t{suffix}", compress=False)
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="unreadable, corrupt or truncated"):
        read_volume(p)


def test_two_dimensional_image(tmp_path):
    p = tmp_path / "slice.mha"
    sitk.WriteImage(sitk.GetImageFromArray(np.ones((4, 5), np.float32)), str(p))
    with pytest.raises(InputError, match=r"slice\.mha: image is 2D, expected 3D"):
        read_volume(p)


def test_four_dimensional_image(tmp_path):
    p = tmp_path / "dwi.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.ones((3, 4, 5, 6), np.float32), isVector=False), str(p))
    with pytest.raises(InputError, match=r"dwi\.nii\.gz: image is 4D with 3 volumes"):
        read_volume(p)


def test_four_dimensional_single_volume_is_accepted(tmp_path):
    p = tmp_path / "one.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.ones((1, 4, 5, 6), np.float32), isVector=False), str(p))
    assert read_volume(p).shape == (6, 5, 4)


def test_vector_image(tmp_path):
    p = tmp_path / "rgb.mha"
    sitk.WriteImage(sitk.GetImageFromArray(np.ones((4, 5, 6, 3), np.float32), isVector=True), str(p))
    with pytest.raises(InputError, match="3 components per voxel"):
        read_volume(p)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_voxels(tmp_path, volume, bad):
    volume.array[1, 2, 3] = bad
    p = write_volume(volume, tmp_path / "nan.mha")
    with pytest.raises(InputError, match=r"nan\.mha: image holds 1 NaN/inf voxel"):
        read_volume(p)


def test_all_zero_image(tmp_path, volume):
    volume.array[:] = 0
    p = write_volume(volume, tmp_path / "zero.nrrd")
    with pytest.raises(InputError, match=r"zero\.nrrd: image is empty \(every voxel is 0\)"):
        read_volume(p)


def test_folder_without_dicom(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(InputError, match="folder holds no DICOM series"):
        read_volume(tmp_path)


def test_dicom_series_with_a_missing_slice(tmp_path):
    from proqual.io.dicom import write_series
    from proqual.study import Sequence

    vol = Volume(np.ones((8, 8, 5), np.float32) * 10, (1.0, 1.0, 3.0), (0.0, 0.0, 0.0))
    files = write_series(
        vol,
        tmp_path / "s",
        sequence=Sequence.T2W,
        patient_id="p",
        study_id="s",
        study_uid="1.2.3",
        series_number=1,
        series_description="t2_tse_tra",
        uid_seed="x",
    )
    files[2].unlink()
    with pytest.raises(InputError, match="slice spacing is not uniform"):
        read_volume([f for f in files if f.exists()])
