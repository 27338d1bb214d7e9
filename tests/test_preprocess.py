"""ProFound preprocessing: output shape, spacing, orientation, channel order, centring, bad geometry."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from proqual.errors import InputError, MissingSequenceError
from proqual.io import Volume, write_volume
from proqual.preprocess import PROFOUND_ROI, lps_ordered_axes, preprocess_study, profound_transforms
from proqual.study import Sequence, SeriesRef, Study

ROI = (16, 32, 32)  # (D, H, W), small for speed
SPACING = (1.0, 0.5, 0.5)


def _blob_volume(shape, spacing, origin, centre_lps, value, *, direction=None, background=10.0, radius=2.0):
    vol = Volume(
        np.full(shape, background, np.float32), spacing, origin, np.eye(3) if direction is None else direction
    )
    idx = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), -1).reshape(-1, 3)
    world = idx @ (vol.affine_lps()[:3, :3]).T + vol.affine_lps()[:3, 3]
    inside = np.linalg.norm(world - np.asarray(centre_lps), axis=1) <= radius
    vol.array.reshape(-1)[inside] = value
    return vol


def _inputs(centre_lps=(1.0, 2.0, 3.0), **kw):
    # T2W 0.5 x 0.5 x 3 mm; ADC/HBV 2 x 2 x 3 mm; same field of view (about 24 x 24 x 27 mm)
    t2w = _blob_volume((48, 48, 9), (0.5, 0.5, 3.0), (-12.0, -12.0, -12.0), centre_lps, 100.0, **kw)
    adc = _blob_volume(
        (12, 12, 9), (2.0, 2.0, 3.0), (-11.25, -11.25, -12.0), centre_lps, 300.0, background=1500.0
    )
    hbv = _blob_volume(
        (12, 12, 9), (2.0, 2.0, 3.0), (-11.25, -11.25, -12.0), centre_lps, 50.0, background=5.0
    )
    return {"t2w": t2w, "adc": adc, "hbv": hbv}


def _expected_dhw(centre_lps, fov_centre_lps):
    """Where a world point lands in the (D, H, W) output: axes L, P, S from the field-of-view centre."""
    offset = np.asarray(centre_lps) - np.asarray(fov_centre_lps)  # LPS mm
    d = (ROI[0] - 1) / 2 + offset[2] / SPACING[0]
    h = (ROI[1] - 1) / 2 + offset[1] / SPACING[1]
    w = (ROI[2] - 1) / 2 + offset[0] / SPACING[2]
    return np.array([d, h, w])


def _argmax_dhw(channel: torch.Tensor) -> np.ndarray:
    mask = channel >= channel.max() - 1e-3
    return np.argwhere(mask.numpy()).mean(0)


def test_shape_dtype_and_zscore():
    out = profound_transforms(roi=ROI, spacing=SPACING)(_inputs())
    img = out["image"]
    assert tuple(img.shape) == (3, *ROI)
    assert img.dtype == torch.float32
    for c in range(3):
        nz = img[c][img[c] != 0]
        assert abs(float(nz.mean())) < 1e-3
        assert abs(float(nz.std()) - 1) < 1e-2


def test_channel_order_is_t2w_hbv_adc():
    data = _inputs()
    out = profound_transforms(roi=ROI, spacing=SPACING)(data)["image"]
    centre = tuple(int(round(v)) for v in _expected_dhw((1.0, 2.0, 3.0), (-0.25, -0.25, 0.0)))
    # the blob is bright on T2W (100 vs 10) and HBV (50 vs 5), dark on ADC (300 vs 1500)
    assert out[0][centre] > 1.0
    assert out[1][centre] > 1.0
    assert out[2][centre] < -1.0


def test_orientation_and_spacing_map_world_points():
    fov_centre = (-0.25, -0.25, 0.0)  # centre of the T2W voxel centres
    for point in [(1.0, 2.0, 3.0), (-4.0, 3.0, -6.0)]:
        out = profound_transforms(roi=ROI, spacing=SPACING)(_inputs(point))["image"]
        np.testing.assert_allclose(_argmax_dhw(out[0]), _expected_dhw(point, fov_centre), atol=1.0)


def test_flipped_acquisition_gives_same_output():
    """An image stored with flipped x/y axes describes the same anatomy: the output must not change."""
    point = (1.0, 2.0, 3.0)
    plain = _inputs(point)
    flip = np.diag([-1.0, -1.0, 1.0])
    t2 = plain["t2w"]
    flipped = Volume(t2.array[::-1, ::-1].copy(), t2.spacing, tuple(t2.index_to_world([47, 47, 0])), flip)
    a = profound_transforms(roi=ROI, spacing=SPACING)(plain)["image"]
    b = profound_transforms(roi=ROI, spacing=SPACING)({**plain, "t2w": flipped})["image"]
    torch.testing.assert_close(a[0], b[0], atol=1e-4, rtol=1e-4)


def test_lps_axes_of_oblique_image():
    angle = np.deg2rad(10)
    rot = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    ras = np.eye(4)
    ras[:3, :3] = np.diag([-1.0, -1.0, 1.0]) @ rot @ np.diag([0.5, 0.5, 3.0])
    axes = lps_ordered_axes(ras)
    assert axes[0, 0] < -0.9 and axes[1, 1] < -0.9 and axes[2, 2] > 0.99  # L, P, S in RAS
    np.testing.assert_allclose(axes.T @ axes, np.eye(3), atol=1e-9)


def test_centre_key_recentres_crop():
    point = (4.0, -3.0, 2.0)
    data = _inputs(point)
    data["centre_ras"] = np.array([-point[0], -point[1], point[2]])
    out = profound_transforms(roi=ROI, spacing=SPACING)(data)["image"]
    np.testing.assert_allclose(_argmax_dhw(out[0]), np.array(ROI) / 2 - 0.5, atol=1.0)


def test_non_overlapping_geometry_is_an_error():
    data = _inputs()
    adc = data["adc"]
    data["adc"] = Volume(adc.array, adc.spacing, (500.0, 0.0, 0.0), adc.direction, source="far_adc.mha")
    with pytest.raises(InputError, match=r"far_adc\.mha: ADC covers 0% of the T2W field of view"):
        profound_transforms(roi=ROI, spacing=SPACING)(data)


def _write_study(tmp_path, data) -> Study:
    seqs = {}
    for key, vol in data.items():
        p = write_volume(vol, tmp_path / f"s1_{key}.nii.gz")
        seqs[Sequence(key.upper())] = SeriesRef(sequence=Sequence(key.upper()), paths=[str(p)])
    return Study(study_id="s1", sequences=seqs, source=str(tmp_path))


def test_preprocess_study_from_files(tmp_path):
    study = _write_study(tmp_path, _inputs())
    img = preprocess_study(study, roi=ROI, spacing=SPACING)
    assert tuple(img.shape) == (3, *ROI)
    assert PROFOUND_ROI == (64, 224, 224)


def test_preprocess_study_missing_sequence(tmp_path):
    data = _inputs()
    del data["hbv"]
    study = _write_study(tmp_path, data)
    with pytest.raises(MissingSequenceError, match="study s1: missing sequence\\(s\\) HBV"):
        preprocess_study(study, roi=ROI, spacing=SPACING)


def test_preprocess_study_bad_file_names_it(tmp_path):
    study = _write_study(tmp_path, _inputs())
    bad = tmp_path / "s1_adc.nii.gz"
    bad.write_bytes(b"\x1f\x8b" + b"junk" * 20)
    with pytest.raises(InputError, match="s1_adc.nii.gz"):
        preprocess_study(study, roi=ROI, spacing=SPACING)
