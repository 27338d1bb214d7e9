"""DICOM: writer round trip, sequence identification, folder import with grouping and localizers."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from proqual.errors import InputError
from proqual.io import Volume, read_volume
from proqual.io.dicom import identify_sequence, import_dicom_folder, technical_metadata, write_series
from proqual.io.layouts import load_studies
from proqual.phantom import write_picai
from proqual.study import Sequence
from pydicom.dataset import Dataset


def _vol(values=None) -> Volume:
    rng = np.random.default_rng(0)
    arr = rng.uniform(0, 3500, (12, 10, 4)).astype(np.float32) if values is None else values
    direction = np.array([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]])
    return Volume(arr, (0.7, 0.6, 3.0), (-20.0, 15.0, -40.0), direction)


def _write(tmp_path, vol, **kw):
    args = dict(
        sequence=Sequence.ADC,
        patient_id="p1",
        study_id="s1",
        study_uid="1.2.3.4",
        series_number=2,
        series_description="ep2d_diff_tra_ADC",
        uid_seed="seed",
    )
    args.update(kw)
    return write_series(vol, tmp_path, **args)


def test_writer_round_trip_fractional_values(tmp_path):
    vol = _vol()
    files = _write(tmp_path / "adc", vol)
    assert len(files) == 4
    back = read_volume(tmp_path / "adc")
    assert np.abs(back.array - vol.array).max() <= 1.0  # rescale rounding
    np.testing.assert_allclose(back.spacing, vol.spacing, atol=1e-5)
    np.testing.assert_allclose(back.origin, vol.origin, atol=1e-4)
    np.testing.assert_allclose(back.direction, vol.direction, atol=1e-6)
    ds = pydicom.dcmread(files[0])
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.4" and ds.Modality == "MR"
    assert list(ds.ImageType) == ["DERIVED", "PRIMARY", "ADC"]


def test_writer_is_deterministic(tmp_path):
    a = _write(tmp_path / "a", _vol())
    b = _write(tmp_path / "b", _vol())
    assert [f.read_bytes() for f in a] == [f.read_bytes() for f in b]


def _ds(desc="", image_type=None, b=None, manufacturer="SIEMENS"):
    ds = Dataset()
    ds.SeriesDescription = desc
    ds.Manufacturer = manufacturer
    if image_type:
        ds.ImageType = image_type
    if b is not None:
        ds.add_new(0x00189087, "FD", b)
    return ds


@pytest.mark.parametrize(
    ("desc", "kw", "expected"),
    [
        ("t2_tse_tra", {}, Sequence.T2W),
        ("T2W_TSE_ax", {"manufacturer": "Philips"}, Sequence.T2W),
        ("Ax T2 FRFSE", {"manufacturer": "GE MEDICAL SYSTEMS"}, Sequence.T2W),
        ("t2_tse_sag", {}, Sequence.OTHER),
        ("ep2d_diff_b50_800_tra_ADC", {}, Sequence.ADC),
        ("dADC", {"manufacturer": "Philips"}, Sequence.ADC),
        ("Apparent Diffusion Coefficient (mm2/s)", {}, Sequence.ADC),
        ("anything", {"image_type": ["DERIVED", "PRIMARY", "ADC"]}, Sequence.ADC),
        ("ep2d_diff_b50_800_tra_CALC_BVAL", {"b": 1400.0}, Sequence.HBV),
        ("DWI_b1400", {"manufacturer": "Philips"}, Sequence.HBV),
        ("Ax DWI b2000", {}, Sequence.HBV),
        ("ep2d_diff_tra_TRACEW", {"b": 800.0}, Sequence.DWI),
        ("ep2d_diff_tra", {}, Sequence.DWI),
        ("dyn_vibe_tra", {}, Sequence.DCE),
        ("something else", {}, Sequence.OTHER),
    ],
)
def test_identification_table(desc, kw, expected):
    seq, reason = identify_sequence(_ds(desc, **kw))
    assert seq is expected, reason


def test_localizer_and_reasons():
    assert identify_sequence(_ds("localizer")) == (None, "localizer, ignored")
    assert identify_sequence(_ds("x", image_type=["ORIGINAL", "PRIMARY", "LOCALIZER"]))[0] is None
    assert "no pattern matched" in identify_sequence(_ds("xyz"))[1]


def test_identification_from_dicomweb_json():
    meta = {
        "0008103E": {"vr": "LO", "Value": ["ep2d_diff_b1500"]},
        "00189087": {"vr": "FD", "Value": [1500.0]},
        "00080070": {"vr": "LO", "Value": ["SIEMENS"]},
    }
    seq, _ = identify_sequence(Dataset.from_json(meta))
    assert seq is Sequence.HBV


def test_technical_metadata(tmp_path):
    files = _write(
        tmp_path / "hbv",
        _vol(),
        sequence=Sequence.HBV,
        series_description="ep2d_diff_CALC_BVAL",
        b_value=1400.0,
        b_values_used=[50.0, 800.0],
    )
    m = technical_metadata(pydicom.dcmread(files[0], stop_before_pixels=True), files=len(files))
    assert m.slice_thickness_mm == 3.0 and m.b_values == [50.0, 800.0, 1400.0] and m.calculated_b_value
    assert m.matrix == (12, 10, 4) and m.field_strength_t == 3.0 and m.source == "dicom"
    assert m.spacing_mm == pytest.approx((0.7, 0.6, 3.0))


def test_phantom_dicom_two_studies_and_a_localizer(tmp_path):
    write_picai(tmp_path, n=2, seed=0, preset="test", dicom=True)
    studies_uid = sorted(
        {
            pydicom.dcmread(f, stop_before_pixels=True).StudyInstanceUID
            for f in (tmp_path / "dicom").rglob("IM0001.dcm")
        }
    )
    loc = Volume(np.ones((16, 16, 3), np.float32) * 100, (2.0, 2.0, 5.0), (0.0, 0.0, 0.0))
    write_series(
        loc,
        tmp_path / "dicom" / "extra" / "loc",
        sequence=Sequence.OTHER,
        patient_id="10000",
        study_id="1000000",
        study_uid=studies_uid[0],
        series_number=99,
        series_description="localizer",
        uid_seed="loc",
    )
    (tmp_path / "dicom" / "notes.txt").write_text("not dicom")
    studies = {s.patient_id: s for s in import_dicom_folder(tmp_path / "dicom")}
    assert sorted(studies) == ["10000", "10001"]
    for s in studies.values():
        assert set(s.sequences) == {Sequence.T2W, Sequence.ADC, Sequence.HBV}
    loc_rows = [u for s in studies.values() for u in s.unidentified]
    assert loc_rows == [
        {
            "series_uid": loc_rows[0]["series_uid"],
            "description": "localizer",
            "files": 3,
            "reason": "localizer, ignored",
        }
    ]
    # the DICOM volumes equal the phantom's MetaImage files
    mha = {s.patient_id: s for s in load_studies(tmp_path)}
    a = read_volume(studies["10001"].series("T2W").paths)
    b = read_volume(mha["10001"].series("T2W").path)
    np.testing.assert_array_equal(a.array, b.array)
    np.testing.assert_allclose(a.origin, b.origin, atol=1e-3)
    # the generic loader dispatches DICOM folders too
    assert len(load_studies(tmp_path / "dicom")) == 2


def test_duplicate_series_are_reported(tmp_path):
    vol = _vol()
    kw = dict(sequence=Sequence.T2W, patient_id="p", study_id="s", study_uid="1.2.3", uid_seed="a")
    write_series(vol, tmp_path / "a", series_number=1, series_description="t2_tse_tra", **kw)
    write_series(
        vol, tmp_path / "b", series_number=5, series_description="t2_tse_tra_repeat", **dict(kw, uid_seed="b")
    )
    (study,) = import_dicom_folder(tmp_path)
    assert study.series("T2W").description == "t2_tse_tra_repeat"
    assert "second T2W series" in study.unidentified[0]["reason"]


def test_truncated_slice_is_named(tmp_path):
    files = _write(tmp_path / "s", _vol())
    data = files[2].read_bytes()
    files[2].write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="IM0003.dcm|unreadable"):
        read_volume(files)


def test_folder_without_dicom(tmp_path):
    (tmp_path / "a.txt").write_text("x")
    with pytest.raises(InputError, match="folder holds no DICOM series"):
        import_dicom_folder(tmp_path)
