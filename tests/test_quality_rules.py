"""PI-QUAL v2 prerequisites on constructed metadata, classical measures with known answers, study rule."""

from __future__ import annotations

import math

import numpy as np
import pytest
from proqual.quality.classical import classical_measures, efc
from proqual.quality.piqual import expected_class, score_to_piqual, study_piqual
from proqual.quality.prerequisites import check_prerequisites, check_study
from proqual.study import Sequence, SeriesRef, Study, TechnicalMetadata


def _meta(**kw):
    return TechnicalMetadata(source="dicom", **kw)


def _by_rule(results):
    return {r.rule: r for r in results}


def test_t2w_thickness():
    ok = _by_rule(check_prerequisites("T2W", _meta(slice_thickness_mm=3.0)))["t2w_slice_thickness"]
    assert ok.status == "pass"
    bad = _by_rule(check_prerequisites("T2W", _meta(slice_thickness_mm=3.6)))["t2w_slice_thickness"]
    assert bad.status == "fail" and bad.reason == "T2W slice thickness 3.6 mm > 3 mm"


def test_thickness_from_geometry_says_so():
    r = check_prerequisites("T2W", TechnicalMetadata(spacing_mm=(0.5, 0.5, 3.0)))[0]
    assert r.status == "pass" and "from the image geometry" in r.reason


def test_dwi_rules():
    res = _by_rule(check_prerequisites("HBV", _meta(slice_thickness_mm=3.0, b_values=[50, 800])))
    assert res["dwi_slice_thickness"].status == "pass"
    assert res["dwi_high_b_value"].status == "fail"
    assert res["dwi_high_b_value"].reason == "DWI high b-value 800 < 1400"
    calc = _by_rule(check_prerequisites("HBV", _meta(b_values=[1400], calculated_b_value=True)))
    assert calc["dwi_high_b_value"].status == "pass" and "(calculated)" in calc["dwi_high_b_value"].reason
    assert calc["dwi_slice_thickness"].status == "unknown"


def test_adc_rules():
    res = _by_rule(check_prerequisites("ADC", _meta(b_values=[50, 400, 800])))
    assert res["adc_b_value_count"].status == "pass" and res["adc_highest_b_value"].status == "pass"
    res = _by_rule(check_prerequisites("ADC", _meta(b_values=[1400])))
    assert res["adc_b_value_count"].status == "fail"
    assert res["adc_highest_b_value"].reason == "ADC highest b-value 1400 > 1000"
    unknown = check_prerequisites("ADC", _meta())
    assert unknown[0].status == "unknown" and unknown[0].reason == "ADC b-values unknown"


def test_dce_rules_and_other():
    res = _by_rule(check_prerequisites("DCE", _meta(slice_thickness_mm=3.0, temporal_resolution_s=20.0)))
    assert res["dce_slice_thickness"].status == "pass"
    assert res["dce_temporal_resolution"].reason == "DCE temporal resolution 20 s > 15 s"
    assert check_prerequisites("OTHER", _meta()) == []


def test_check_study():
    study = Study(
        study_id="s",
        sequences={
            Sequence.T2W: SeriesRef(
                sequence=Sequence.T2W, paths=["x"], metadata=_meta(slice_thickness_mm=4.0)
            )
        },
    )
    assert check_study(study)["T2W"][0].status == "fail"


def test_snr_and_fber_known():
    rng = np.random.default_rng(0)
    img = rng.normal(0, 2.0, (40, 40, 10))
    img[10:30, 10:30, :] += 100.0
    mask = np.zeros(img.shape, bool)
    mask[10:30, 10:30, :] = True
    m = classical_measures(img, mask=mask)
    assert m["snr"] == pytest.approx(100.0 / 2.0, rel=0.05)
    # FBER: E[(100+n)^2] / E[n^2] = (10000 + 4) / 4
    assert m["fber"] == pytest.approx(10004 / 4, rel=0.05)
    # automatic mask finds the same square
    assert classical_measures(img)["snr"] == pytest.approx(50.0, rel=0.08)


def test_cjv_and_cnr_known():
    rng = np.random.default_rng(1)
    img = np.zeros((30, 30, 4))
    t1 = np.zeros(img.shape, bool)
    t2 = np.zeros(img.shape, bool)
    t1[:15] = True
    t2[15:] = True
    img[t1] = rng.normal(100, 5, t1.sum())
    img[t2] = rng.normal(200, 10, t2.sum())
    m = classical_measures(img, mask=np.ones(img.shape, bool), tissue_masks=(t1, t2))
    assert m["cjv"] == pytest.approx((5 + 10) / 100, rel=0.05)
    assert m["cnr"] == pytest.approx(100 / math.sqrt(25 + 100), rel=0.05)  # background empty: std 0 ignored


def test_efc_extremes():
    assert efc(np.ones((8, 8, 8))) == pytest.approx(1.0)
    one = np.zeros((8, 8, 8))
    one[3, 3, 3] = 5
    assert efc(one) == pytest.approx(0.0, abs=1e-9)


def test_undefined_measures_are_nan():
    m = classical_measures(np.ones((5, 5, 5)))
    assert math.isnan(m["snr"]) and math.isnan(m["cjv"]) and m["efc"] == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("seqs", "expected"),
    [
        ({"T2W": 3, "HBV": 3, "ADC": 3}, 3),
        ({"T2W": 3, "HBV": 3, "ADC": 3, "DCE": 2}, 2),
        ({"T2W": 1, "HBV": 3, "ADC": 3}, 1),
        ({"T2W": 3, "HBV": 1, "ADC": 1}, 1),
        ({"T2W": 3, "HBV": 1, "ADC": 3}, 2),
        ({"T2W": 3, "ADC": 3}, 2),  # missing high-b: cannot be optimal
        ({"HBV": 3, "ADC": 3}, 1),  # missing T2W
    ],
)
def test_study_rule(seqs, expected):
    assert study_piqual(seqs) == expected


def test_score_mapping():
    assert [score_to_piqual(s) for s in (0.1, 0.5, 0.9)] == [1, 2, 3]
    assert expected_class([0, 0, 1]) == pytest.approx(3.0)
    assert expected_class([0.5, 0, 0.5]) == pytest.approx(2.0)
