"""Study layouts: PI-CAI (with marksheet labels), flat folders, loose files, and their errors."""

from __future__ import annotations

import numpy as np
import pytest
from proqual.errors import InputError
from proqual.io import Volume, write_volume
from proqual.io.layouts import MARKSHEET_COLUMNS, load_studies
from proqual.study import Sequence


def _vol(seed=0, shape=(8, 8, 4)) -> Volume:
    return Volume(
        np.random.default_rng(seed).random(shape, dtype=np.float32) + 1, (0.5, 0.5, 3.0), (0.0, 0.0, 0.0)
    )


def _write_sheet(path, rows):
    lines = [",".join(MARKSHEET_COLUMNS)]
    for r in rows:
        full = {c: "" for c in MARKSHEET_COLUMNS} | r
        lines.append(
            ",".join(f'"{full[c]}"' if "," in str(full[c]) else str(full[c]) for c in MARKSHEET_COLUMNS)
        )
    path.write_text("\n".join(lines) + "\n")


@pytest.fixture()
def picai(tmp_path):
    for patient, study in [("10000", "1000000"), ("10001", "1000001"), ("10002", "1000002")]:
        for seq in ("t2w", "adc", "hbv"):
            write_volume(_vol(), tmp_path / "images" / patient / f"{patient}_{study}_{seq}.mha")
    write_volume(_vol(), tmp_path / "images" / "10000" / "10000_1000000_sag.mha")
    _write_sheet(
        tmp_path / "marksheet.csv",
        [
            {
                "patient_id": "10000",
                "study_id": "1000000",
                "lesion_PIRADS": "3,5,N/A",
                "lesion_GS": "3+4,4+4,N/A",
                "lesion_ISUP": "2,4,N/A",
                "case_ISUP": "4",
                "case_csPCa": "YES",
            },
            {
                "patient_id": "10001",
                "study_id": "1000001",
                "lesion_PIRADS": "N/A",
                "lesion_GS": "N/A",
                "lesion_ISUP": "N/A",
                "case_ISUP": "0",
                "case_csPCa": "NO",
            },
        ],
    )
    return tmp_path


def test_picai_import_with_labels(picai):
    studies = {s.study_id: s for s in load_studies(picai)}
    assert sorted(studies) == ["10000_1000000", "10001_1000001", "10002_1000002"]
    s = studies["10000_1000000"]
    assert s.patient_id == "10000"
    assert set(s.sequences) == {Sequence.T2W, Sequence.ADC, Sequence.HBV}
    assert s.labels.pirads == 5  # maximum of the lesions, N/A ignored
    assert s.labels.isup == 4 and s.labels.cspca is True
    assert s.labels.lesion_pirads == [3, 5, None]
    assert s.unidentified and "sag" in s.unidentified[0]["reason"]
    meta = s.series("T2W").metadata
    assert meta.matrix == (8, 8, 4) and meta.slice_thickness_mm == pytest.approx(3.0)


def test_picai_all_na_lesions_and_isup0(picai):
    s = {s.study_id: s for s in load_studies(picai)}["10001_1000001"]
    assert s.labels.pirads is None
    assert s.labels.isup == 0 and s.labels.cspca is False


def test_picai_study_without_row_has_no_labels(picai):
    s = {s.study_id: s for s in load_studies(picai)}["10002_1000002"]
    assert s.labels.pirads is None and s.labels.isup is None


def test_picai_bad_marksheet_value_names_file_and_field(picai):
    _write_sheet(
        picai / "marksheet.csv", [{"patient_id": "10000", "study_id": "1000000", "lesion_PIRADS": "7"}]
    )
    with pytest.raises(InputError, match=r"marksheet\.csv: patient 10000 study 1000000: lesion_PIRADS"):
        load_studies(picai)


def test_picai_external_marksheet_missing(picai):
    with pytest.raises(InputError, match="marksheet not found"):
        load_studies(picai, marksheet=picai / "nope.csv")


def test_flat_folder_and_missing_sequence(tmp_path):
    for seq in ("t2w", "adc", "hbv"):
        write_volume(_vol(), tmp_path / f"caseA_{seq}.nii.gz")
    write_volume(_vol(), tmp_path / "caseB_t2w.nrrd")
    write_volume(_vol(), tmp_path / "caseB_adc.nrrd")
    studies = {s.study_id: s for s in load_studies(tmp_path)}
    assert sorted(studies) == ["caseA", "caseB"]
    assert studies["caseA"].has("T2W", "ADC", "HBV")
    assert studies["caseB"].missing("T2W", "ADC", "HBV") == ["HBV"]


def test_loose_files_are_grouped(tmp_path):
    paths = [write_volume(_vol(), tmp_path / f"x1_{seq}.mha") for seq in ("t2w", "hbv")]
    (study,) = load_studies(paths)
    assert study.study_id == "x1" and study.has("T2W", "HBV")


def test_loose_file_with_bad_name(tmp_path):
    p = write_volume(_vol(), tmp_path / "scan.mha")
    with pytest.raises(InputError, match=r"scan\.mha: file name does not follow"):
        load_studies([p])


def test_loose_file_that_is_not_an_image(tmp_path):
    p = tmp_path / "notes_t2w.txt"
    p.write_text("not an image")
    with pytest.raises(InputError, match=r"notes_t2w\.txt: not an image file \(.*\.nhdr\) or folder"):
        load_studies([p])


def test_missing_path(tmp_path):
    with pytest.raises(InputError, match="path not found"):
        load_studies(tmp_path / "nothing")


def test_duplicate_study_ids(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for d in (a, b):
        write_volume(_vol(), d / "same_t2w.mha")
    with pytest.raises(InputError, match="study id same appears twice"):
        load_studies([a, b])


def test_corrupt_header_named(tmp_path):
    (tmp_path / "c_t2w.mha").write_text("garbage")
    with pytest.raises(InputError, match=r"c_t2w\.mha: unreadable image header"):
        load_studies(tmp_path)


def test_committed_sample_data_imports():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "sample-data"
    studies = load_studies([root / "picai", root / "dicom"])
    assert len(studies) == 9
    picai = [s for s in studies if s.patient_id and "_" in s.study_id]
    assert {s.labels.pirads for s in picai} == {2, 3, 4, 5}
    assert {s.labels.isup for s in picai} == {0, 1, 2, 3, 4, 5}
    assert all(s.has("T2W", "ADC", "HBV") for s in studies)
