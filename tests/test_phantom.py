"""The digital phantom: determinism, label schedule, contrasts, geometry, PI-CAI output, CLI."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from proqual.cli import main
from proqual.errors import ValidationError
from proqual.io import read_volume
from proqual.io.layouts import MARKSHEET_COLUMNS, load_studies
from proqual.phantom import LABEL_SCHEDULE, PRESETS, make_study, write_picai
from proqual.study import Sequence


def test_same_arguments_same_arrays():
    a, b = make_study(3, seed=7), make_study(3, seed=7)
    for seq in a.volumes:
        np.testing.assert_array_equal(a.volumes[seq].array, b.volumes[seq].array)
    assert a.labels == b.labels and a.lesions == b.lesions
    c = make_study(3, seed=8)
    assert not np.array_equal(a.volumes[Sequence.T2W].array, c.volumes[Sequence.T2W].array)


def test_files_are_byte_identical(tmp_path):
    write_picai(tmp_path / "a", n=2, seed=1)
    write_picai(tmp_path / "b", n=2, seed=1)
    files_a = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*") if p.is_file())
    assert files_a == files_b and len(files_a) == 2 * 7 + 1
    for rel in files_a:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel


def test_schedule_covers_pirads_and_isup():
    for start in range(8):
        labels = [make_study(i, seed=0).labels for i in range(start, start + 8)]
        assert {lab.pirads for lab in labels} >= {2, 3, 4, 5}
        assert {lab.isup for lab in labels} == {0, 1, 2, 3, 4, 5}
        assert all(lab.cspca == (lab.isup >= 2) for lab in labels)
    assert len(LABEL_SCHEDULE) == 8


def test_grids_follow_preset():
    s = make_study(0, seed=0, preset="test")
    p = PRESETS["test"]
    assert s.volumes[Sequence.T2W].shape == p.t2w_size and s.volumes[Sequence.T2W].spacing == (0.5, 0.5, 3.0)
    assert s.volumes[Sequence.ADC].shape == p.dwi_size and s.volumes[Sequence.HBV].spacing == p.dwi_spacing
    for m in s.masks.values():
        assert m.shape == p.t2w_size


@pytest.mark.parametrize("index", [3, 5])  # PI-RADS 5 studies
def test_contrasts(index):
    s = make_study(index, seed=0, preset="test", pirads=5)
    m = {k: v.array > 0 for k, v in s.masks.items()}
    t2 = s.volumes[Sequence.T2W].array
    pz_only = m["pz"] & ~m["lesion"]
    tz_only = m["tz"] & ~m["lesion"]
    assert t2[pz_only].mean() > t2[tz_only].mean() > t2[m["lesion"]].mean()
    # on the low-resolution grid: compare values at the lesion centre and at a PZ point
    adc, hbv = s.volumes[Sequence.ADC], s.volumes[Sequence.HBV]
    lesion_idx = np.round(adc.world_to_index(s.lesions[0]["centre_lps"])).astype(int)
    pz_pts = np.argwhere(pz_only)
    pz_world = s.volumes[Sequence.T2W].index_to_world(pz_pts[len(pz_pts) // 2])
    pz_idx = np.round(adc.world_to_index(pz_world)).astype(int)
    assert adc.array[tuple(lesion_idx)] < adc.array[tuple(pz_idx)] - 300
    assert hbv.array[tuple(lesion_idx)] > hbv.array[tuple(pz_idx)] * 1.5


def test_adc_and_t2w_are_aligned():
    s = make_study(1, seed=0, preset="test")
    t2, adc = s.volumes[Sequence.T2W], s.volumes[Sequence.ADC]
    # both grids are centred on the same point
    np.testing.assert_allclose(
        t2.index_to_world((np.array(t2.shape) - 1) / 2),
        adc.index_to_world((np.array(adc.shape) - 1) / 2),
        atol=1e-4,
    )
    gland_t2 = t2.index_to_world(np.argwhere(s.masks["gland"].array > 0).mean(0))
    np.testing.assert_allclose(gland_t2, s.gland_centre_lps, atol=1.5)


def test_write_picai_layout_and_marksheet(tmp_path):
    write_picai(tmp_path, n=3, seed=0)
    with open(tmp_path / "marksheet.csv", newline="") as fh:
        reader = csv.DictReader(fh)
        assert tuple(reader.fieldnames) == MARKSHEET_COLUMNS
        rows = list(reader)
    assert [r["patient_id"] for r in rows] == ["10000", "10001", "10002"]
    assert rows[0]["case_csPCa"] in ("YES", "NO")
    studies = load_studies(tmp_path)
    assert len(studies) == 3 and all(s.has("T2W", "ADC", "HBV") for s in studies)
    assert studies[2].labels.pirads == LABEL_SCHEDULE[2][0] and studies[2].labels.isup == LABEL_SCHEDULE[2][1]
    assert "gland" in studies[0].masks
    t2 = read_volume(studies[0].series("T2W").path)
    assert t2.shape == PRESETS["test"].t2w_size
    assert not list(tmp_path.glob(".tmp-*"))


def test_bad_arguments():
    with pytest.raises(ValidationError, match="unknown phantom preset 'huge'"):
        make_study(0, seed=0, preset="huge")
    with pytest.raises(ValidationError, match="pirads: must be 1..5"):
        make_study(0, seed=0, pirads=9)


def test_cli(tmp_path, capsys):
    out = tmp_path / "ph"
    assert main(["phantom", "--out", str(out), "--n", "2", "--seed", "3", "--preset", "test"]) == 0
    assert "[2/2]" in capsys.readouterr().out
    assert len(load_studies(out)) == 2
    assert main(["phantom", "--out", str(out), "--n", "1", "--preset", "test"]) == 1
    assert "output folder is not empty" in capsys.readouterr().err
    assert main(["inspect", str(out)]) == 0
    assert "2 studies" in capsys.readouterr().out
