"""Study layouts on disk: PI-CAI folders, flat folders, single files, DICOM folders.

``load_studies(path)`` looks at what a path holds and picks the right importer:

- PI-CAI: ``images/<patient>/<patient>_<study>_{t2w,adc,hbv}.mha`` (optional ``_sag``/``_cor``) with
  a ``marksheet.csv`` (in the folder, or given with ``marksheet=``);
- flat: ``<study>_{t2w,adc,hbv}.{nii.gz,nii,mha,mhd,nrrd}`` side by side in one folder;
- DICOM: any other folder holding DICOM files (see :mod:`proqual.io.dicom`);
- single image files given together are grouped by the flat naming rule.
"""

from __future__ import annotations

import csv
import logging
import re
from collections.abc import Iterable
from pathlib import Path

import SimpleITK as sitk

from proqual.errors import InputError, ValidationError
from proqual.io.readers import IMAGE_SUFFIXES, image_suffix
from proqual.study import Sequence, SeriesRef, Study, StudyLabels, TechnicalMetadata

log = logging.getLogger(__name__)

#: file-name suffix (before the image extension) -> sequence
SUFFIX_SEQUENCES: dict[str, Sequence] = {
    "t2w": Sequence.T2W,
    "adc": Sequence.ADC,
    "hbv": Sequence.HBV,
    "dwi": Sequence.DWI,
    "dce": Sequence.DCE,
}
_FLAT = re.compile(r"^(?P<study>.+)_(?P<seq>t2w|adc|hbv|dwi|dce|sag|cor)$", re.IGNORECASE)
MARKSHEET_COLUMNS = (
    "patient_id",
    "study_id",
    "mri_date",
    "patient_age",
    "psa",
    "psad",
    "prostate_volume",
    "histopath_type",
    "lesion_PIRADS",
    "lesion_GS",
    "lesion_ISUP",
    "case_ISUP",
    "case_csPCa",
    "center",
)


def geometry_metadata(path: str | Path) -> TechnicalMetadata:
    """Technical metadata from an image file's header (no pixels read): spacing, matrix, slice thickness."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise InputError(
            path, f"unreadable image header ({str(exc).strip().splitlines()[-1][:200]})"
        ) from exc
    size = reader.GetSize()
    spacing = reader.GetSpacing()
    if len(size) < 3:
        raise InputError(path, f"image is {len(size)}D, expected 3D")
    return TechnicalMetadata(
        slice_thickness_mm=float(spacing[2]),
        spacing_mm=tuple(float(s) for s in spacing[:3]),
        matrix=tuple(int(s) for s in size[:3]),
        source="geometry",
    )


def _split_name(path: Path) -> tuple[str, str] | None:
    suffix = image_suffix(path)
    if suffix is None:
        return None
    m = _FLAT.match(path.name[: -len(suffix)])
    if not m:
        return None
    return m.group("study"), m.group("seq").lower()


def group_files(files: Iterable[str | Path], *, source: str | None = None) -> list[Study]:
    """Group image files named ``<study>_<seq>.<ext>`` into studies (sagittal/coronal files are recorded as
    unidentified extras). Files that do not follow the rule raise :class:`InputError`."""
    studies: dict[str, Study] = {}
    for f in sorted(Path(p) for p in files):
        parts = _split_name(f)
        if parts is None:
            raise InputError(f, "file name does not follow <study>_{t2w,adc,hbv}.<nii.gz|nii|mha|mhd|nrrd>")
        study_id, key = parts
        study = studies.setdefault(study_id, Study(study_id=study_id, source=source or str(f.parent)))
        if key in ("sag", "cor"):
            study.unidentified.append({"files": [str(f)], "reason": f"T2W {key} view (not used)"})
            continue
        seq = SUFFIX_SEQUENCES[key]
        if seq in study.sequences:
            raise InputError(f, f"second {seq.value} file for study {study_id}")
        study.sequences[seq] = SeriesRef(sequence=seq, paths=[str(f)], metadata=geometry_metadata(f))
    return list(studies.values())


def load_flat(folder: str | Path) -> list[Study]:
    """Studies of a flat folder: ``<study>_{t2w,adc,hbv}.<ext>`` files side by side."""
    folder = Path(folder)
    files = [f for f in folder.iterdir() if f.is_file() and _split_name(f)]
    if not files:
        raise InputError(folder, "no <study>_{t2w,adc,hbv}.<ext> image files found")
    return group_files(files, source=str(folder))


def _read_marksheet(path: Path) -> dict[tuple[str, str], dict[str, str]]:
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        header = reader.fieldnames or []
        missing = [c for c in ("patient_id", "study_id") if c not in header]
        if missing:
            raise InputError(path, f"marksheet lacks column(s) {', '.join(missing)}")
        rows = {}
        for row in reader:
            rows[(row["patient_id"].strip(), row["study_id"].strip())] = row
    return rows


def labels_from_marksheet_row(row: dict[str, str], *, where: str = "marksheet") -> StudyLabels:
    """PI-CAI marksheet row -> labels: case PI-RADS = max of lesion_PIRADS (None when all N/A),
    ``case_ISUP``, ``case_csPCa``."""
    from proqual import labels as L

    try:
        lesion_pirads = L.parse_lesion_field(row.get("lesion_PIRADS", ""), field="lesion_PIRADS")
        lesion_isup = L.parse_lesion_field(row.get("lesion_ISUP", ""), field="lesion_ISUP")
        pirads = L.case_pirads_from_lesions(lesion_pirads)
        isup = L.parse_isup(row.get("case_ISUP", ""), field="case_ISUP")
        cspca = L.parse_cspca(row.get("case_csPCa", ""), field="case_csPCa")
        if cspca is None and isup is not None:
            cspca = L.cspca_from_isup(isup)
        return StudyLabels(
            pirads=pirads, isup=isup, cspca=cspca, lesion_pirads=lesion_pirads, lesion_isup=lesion_isup
        )
    except ValidationError as exc:
        raise InputError(
            where, f"patient {row.get('patient_id')} study {row.get('study_id')}: {exc}"
        ) from exc


def load_picai(folder: str | Path, *, marksheet: str | Path | None = None) -> list[Study]:
    """Import a PI-CAI folder. Studies without a marksheet row get empty labels (and a log message)."""
    folder = Path(folder)
    images = folder / "images" if (folder / "images").is_dir() else folder
    sheet = (
        Path(marksheet)
        if marksheet
        else next((p for p in (folder / "marksheet.csv", images / "marksheet.csv") if p.is_file()), None)
    )
    if marksheet and not sheet.is_file():
        raise InputError(sheet, "marksheet not found")
    rows = _read_marksheet(sheet) if sheet else {}
    studies: list[Study] = []
    for patient_dir in sorted(p for p in images.iterdir() if p.is_dir()):
        files = [f for f in patient_dir.iterdir() if f.is_file() and _split_name(f)]
        for study in group_files(files, source=str(folder)):
            patient, _, study_no = study.study_id.partition("_")
            if not study_no:
                raise InputError(
                    patient_dir, f"file names must be <patient>_<study>_<seq>, got {study.study_id}"
                )
            study.patient_id = patient
            row = rows.get((patient, study_no))
            if row is not None:
                study.labels = labels_from_marksheet_row(row, where=str(sheet))
            elif rows:
                log.info("study %s has no marksheet row; imported without labels", study.study_id)
            masks = folder / "masks"
            for kind in ("gland", "pz", "tz", "lesion"):
                m = masks / f"{study.study_id}_{kind}.mha"
                if m.is_file():
                    study.masks[kind] = str(m)
            studies.append(study)
    if not studies:
        raise InputError(
            images, "no PI-CAI studies found (expected images/<patient>/<patient>_<study>_t2w.mha)"
        )
    return studies


def _is_picai(folder: Path) -> bool:
    images = folder / "images"
    if (folder / "marksheet.csv").is_file():
        return True
    return images.is_dir() and any(p.is_dir() for p in images.iterdir())


def load_studies(
    paths: str | Path | Iterable[str | Path], *, marksheet: str | Path | None = None
) -> list[Study]:
    """Load studies from any mix of PI-CAI folders, flat folders, DICOM folders and single image files."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    studies: list[Study] = []
    loose: list[Path] = []
    for raw in paths:
        p = Path(raw)
        if not p.exists():
            raise InputError(p, "path not found")
        if p.is_file():
            if image_suffix(p) is None:
                raise InputError(p, f"not an image file ({', '.join(IMAGE_SUFFIXES)}) or folder")
            loose.append(p)
        elif _is_picai(p):
            studies += load_picai(p, marksheet=marksheet)
        elif any(f.is_file() and _split_name(f) for f in p.iterdir()):
            studies += load_flat(p)
        else:
            from proqual.io.dicom import import_dicom_folder

            studies += import_dicom_folder(p)
    if loose:
        studies += group_files(loose)
    seen: set[str] = set()
    for s in studies:
        if s.study_id in seen:
            raise InputError(s.source, f"study id {s.study_id} appears twice")
        seen.add(s.study_id)
    return studies
