"""DICOM: writing MR series (for the phantom), importing folders of mixed files, identifying sequences.

Import groups files by StudyInstanceUID and SeriesInstanceUID (headers only), identifies each series'
sequence from SeriesDescription / ProtocolName patterns as Siemens, Philips and GE write them, ImageType,
DiffusionBValue and the vendors' private b-value tags, and keeps the PI-QUAL v2 technical facts.
Localizers, unknown series and ambiguous duplicates are reported in ``Study.unidentified`` with the
reason, never chosen silently.
"""

from __future__ import annotations

import logging
import re
from collections import defaultdict
from pathlib import Path

import numpy as np

from proqual.errors import InputError
from proqual.io.readers import Volume
from proqual.study import Sequence, SeriesRef, Study, TechnicalMetadata

log = logging.getLogger(__name__)

MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
PRIVATE = {  # vendor private b-value tags: (group, creator, element offset)
    "SIEMENS": (0x0019, "SIEMENS MR HEADER", 0x0C),
    "GE": (0x0043, "GEMS_PARM_01", 0x39),
    "PHILIPS": (0x2001, "Philips Imaging DD 001", 0x03),
}
TIMING = {Sequence.T2W: (104.0, 5000.0), Sequence.ADC: (80.0, 4500.0), Sequence.HBV: (80.0, 4500.0)}

_LOCALIZER = re.compile(r"localizer|localiser|survey|scout|3[- ]?plane|\bloc\b|aahead", re.I)
_ADC = re.compile(r"\badc\b|_adc|dadc|apparent diffusion|adc_?map", re.I)
_DIFF = re.compile(r"diff|dwi|\bb\d{3,4}\b|b\d{3,4}|ep2d|trace|resolve|zoomit", re.I)
_CALC = re.compile(r"calc|_c\d{3,4}|synth|computed", re.I)
_T2 = re.compile(r"t2|tse|frfse|fse|haste", re.I)
_DCE = re.compile(r"dce|dyn|perfusion|twist|vibe|thrive|lava|disco|t1.*post|\+c", re.I)
_SAG = re.compile(r"sag", re.I)
_COR = re.compile(r"cor", re.I)


def _vendor(manufacturer: str | None) -> str:
    m = (manufacturer or "").upper()
    return "SIEMENS" if "SIEMENS" in m else "GE" if "GE" in m else "PHILIPS" if "PHILIPS" in m else m


def _uid(seed: str, *parts) -> str:
    from pydicom.uid import generate_uid

    return generate_uid(entropy_srcs=[seed, *map(str, parts)])


def write_series(
    volume: Volume,
    out_dir,
    *,
    sequence: Sequence,
    patient_id: str,
    study_id: str,
    study_uid: str,
    series_number: int,
    series_description: str,
    uid_seed: str,
    manufacturer: str = "SIEMENS",
    b_value: float | None = None,
    b_values_used: list[float] | None = None,
    image_type: list[str] | None = None,
    study_date: str = "20200101",
    series_uid: str | None = None,
    modality: str = "MR",
) -> list[Path]:
    """Write ``volume`` as one MR Image Storage file per axial slice (deterministic UIDs from ``uid_seed``).

    Pixels are int16 with RescaleSlope/Intercept chosen so the values survive; geometry (position,
    orientation, spacing, thickness) comes from the volume (LPS, array indexed x, y, z)."""
    from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    arr = np.asarray(volume.array, dtype=np.float64)
    lo, hi = float(arr.min()), float(arr.max())
    integral = np.allclose(arr, np.round(arr)) and lo >= -32768 and hi <= 32767
    slope, intercept = (
        (1.0, 0.0) if integral else ((hi - lo) / 65000.0 or 1.0, lo + 32500.0 * ((hi - lo) / 65000.0 or 1.0))
    )
    series_uid = series_uid or _uid(uid_seed, "series")
    frame_uid = _uid(uid_seed, study_uid, "frame")
    direction = np.asarray(volume.direction, float)
    iop = [float(v) for v in list(direction[:, 0]) + list(direction[:, 1])]
    te, tr = TIMING.get(sequence, (90.0, 4000.0))
    types = image_type or (
        ["DERIVED", "PRIMARY", "ADC"] if sequence is Sequence.ADC else ["ORIGINAL", "PRIMARY", "M", "ND"]
    )
    if sequence is Sequence.HBV and _CALC.search(series_description) and "CALC_BVAL" not in types:
        types = ["DERIVED", "PRIMARY", "DIFFUSION", "CALC_BVAL"]
    vendor = _vendor(manufacturer)
    paths = []
    for k in range(arr.shape[2]):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = MR_IMAGE_STORAGE
        meta.MediaStorageSOPInstanceUID = _uid(uid_seed, "instance", k)
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.ImplementationClassUID = _uid("proqual", "implementation")
        path = out / f"IM{k + 1:04d}.dcm"
        ds = FileDataset(str(path), Dataset(), file_meta=meta, preamble=b"\0" * 128)
        ds.is_little_endian, ds.is_implicit_VR = True, False
        ds.SOPClassUID, ds.SOPInstanceUID = MR_IMAGE_STORAGE, meta.MediaStorageSOPInstanceUID
        ds.Modality = modality
        ds.PatientID, ds.PatientName = patient_id, f"PHANTOM^{patient_id}"
        ds.StudyID, ds.StudyInstanceUID, ds.StudyDate, ds.SeriesDate = (
            study_id[:16],
            study_uid,
            study_date,
            study_date,
        )
        ds.StudyTime = ds.SeriesTime = "090000"
        ds.SeriesInstanceUID, ds.SeriesNumber, ds.InstanceNumber = series_uid, series_number, k + 1
        ds.SeriesDescription = ds.ProtocolName = series_description
        ds.FrameOfReferenceUID = frame_uid
        ds.ImageType = types
        ds.Manufacturer, ds.ManufacturerModelName = (
            manufacturer,
            {"SIEMENS": "Skyra", "GE": "SIGNA Premier"}.get(vendor, "Ingenia"),
        )
        ds.MagneticFieldStrength = 3.0
        ds.EchoTime, ds.RepetitionTime = te, tr
        ds.ImageOrientationPatient = iop
        ds.ImagePositionPatient = [float(v) for v in volume.index_to_world([0, 0, k])]
        ds.PixelSpacing = [
            float(volume.spacing[1]),
            float(volume.spacing[0]),
        ]  # row spacing (y), column spacing (x)
        ds.SliceThickness = ds.SpacingBetweenSlices = float(volume.spacing[2])
        ds.Rows, ds.Columns = arr.shape[1], arr.shape[0]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleSlope, ds.RescaleIntercept = f"{slope:.10g}", f"{intercept:.10g}"
        stored = np.round((arr[:, :, k].T - intercept) / slope).clip(-32768, 32767).astype(np.int16)
        ds.PixelData = stored.tobytes()
        bval = b_value
        if b_value is not None:
            ds.add_new(0x00189087, "FD", float(b_value))
        if vendor in PRIVATE and bval is not None:
            group, creator, elem = PRIVATE[vendor]
            block = ds.private_block(group, creator, create=True)
            if vendor == "GE":
                block.add_new(elem, "IS", [int(bval), 8, 0, 0])
            elif vendor == "SIEMENS":
                block.add_new(elem, "IS", int(bval))
            else:
                block.add_new(elem, "FL", float(bval))
        if b_values_used:
            ds.ImageComments = "b-values " + ",".join(f"{b:g}" for b in b_values_used)
        ds.save_as(path, write_like_original=False)
        paths.append(path)
    return paths


def _b_values(ds, *, include_source: bool = True) -> list[float]:
    """The b-values a header tells: the image's own (DiffusionBValue, vendor private tags, the description)
    and, with ``include_source``, those it was computed from (noted in ImageComments)."""
    out: list[float] = []
    if "DiffusionBValue" in ds:
        out.append(float(ds.DiffusionBValue))
    vendor = _vendor(getattr(ds, "Manufacturer", ""))
    if vendor in PRIVATE:
        group, creator, elem = PRIVATE[vendor]
        try:
            block = ds.private_block(group, creator)
            value = block[elem].value
            value = (
                value[0]
                if isinstance(value, (list, tuple))
                or hasattr(value, "__len__")
                and not isinstance(value, (str, bytes))
                else value
            )
            out.append(float(value))
        except (KeyError, ValueError, TypeError):
            pass
    comments = str(getattr(ds, "ImageComments", ""))
    m = re.search(r"b-values\s+([\d.,\s]+)", comments) if include_source else None
    if m:
        out += [float(v) for v in m.group(1).replace(" ", "").split(",") if v]
    desc = f"{getattr(ds, 'SeriesDescription', '')} {getattr(ds, 'ProtocolName', '')}"
    for v in re.findall(r"(?:^|[^a-z0-9])b[_=]?(\d{3,4})(?!\d)", desc, re.I):
        out.append(float(v))
    return sorted(set(out))


def identify_sequence(ds) -> tuple[Sequence | None, str]:
    """The sequence of a series from one header (works on header-only datasets, e.g. DICOMweb metadata)."""
    desc = f"{getattr(ds, 'SeriesDescription', '') or ''} {getattr(ds, 'ProtocolName', '') or ''}".strip()
    image_type = [str(t).upper() for t in (getattr(ds, "ImageType", None) or [])]
    if "LOCALIZER" in image_type or _LOCALIZER.search(desc):
        return None, "localizer, ignored"
    if "ADC" in image_type or _ADC.search(desc):
        return Sequence.ADC, f"ADC ({'ImageType' if 'ADC' in image_type else 'description'} {desc!r})"
    bvals = _b_values(ds, include_source=False)
    calculated = "CALC_BVAL" in image_type or bool(_CALC.search(desc))
    if _DIFF.search(desc) or bvals or "DIFFUSION" in image_type or "TRACEW" in image_type:
        high = max(bvals) if bvals else None
        if (
            high is not None
            and (high >= 1400 or (high >= 1000 and not calculated))
            and (len(bvals) == 1 or calculated)
        ):
            return Sequence.HBV, f"high-b DWI (b={high:g}{', calculated' if calculated else ''})"
        if high is None:
            return Sequence.DWI, f"diffusion series without b-value ({desc!r})"
        return Sequence.DWI, f"diffusion series, b-values {', '.join(f'{b:g}' for b in bvals)}"
    if _DCE.search(desc):
        return Sequence.DCE, f"dynamic contrast-enhanced ({desc!r})"
    if _T2.search(desc):
        if _SAG.search(desc):
            return Sequence.OTHER, "T2W sagittal (not used)"
        if _COR.search(desc):
            return Sequence.OTHER, "T2W coronal (not used)"
        return Sequence.T2W, f"T2W ({desc!r})"
    return Sequence.OTHER, f"no pattern matched ({desc!r})"


def technical_metadata(ds, *, files: int | None = None) -> TechnicalMetadata:
    """PI-QUAL v2 facts from one header of a series."""

    def num(name):
        v = getattr(ds, name, None)
        try:
            return float(v) if v not in (None, "") else None
        except (TypeError, ValueError):
            return None

    ps = getattr(ds, "PixelSpacing", None)
    dz = num("SpacingBetweenSlices") or num("SliceThickness")
    spacing = (float(ps[1]), float(ps[0]), dz) if ps and dz else None
    rows, cols = getattr(ds, "Rows", None), getattr(ds, "Columns", None)
    image_type = [str(t).upper() for t in (getattr(ds, "ImageType", None) or [])]
    desc = f"{getattr(ds, 'SeriesDescription', '')} {getattr(ds, 'ProtocolName', '')}"
    tr_temporal = num("TemporalResolution")
    return TechnicalMetadata(
        slice_thickness_mm=num("SliceThickness"),
        spacing_mm=spacing,
        matrix=(int(cols), int(rows), int(files)) if rows and cols and files else None,
        b_values=_b_values(ds),
        calculated_b_value=("CALC_BVAL" in image_type or bool(_CALC.search(desc))) or None,
        field_strength_t=num("MagneticFieldStrength"),
        manufacturer=getattr(ds, "Manufacturer", None) or None,
        model_name=getattr(ds, "ManufacturerModelName", None) or None,
        echo_time_ms=num("EchoTime"),
        repetition_time_ms=num("RepetitionTime"),
        temporal_resolution_s=tr_temporal / 1000.0 if tr_temporal else None,
        source="dicom",
    )


def _slice_key(ds) -> float:
    ipp, iop = getattr(ds, "ImagePositionPatient", None), getattr(ds, "ImageOrientationPatient", None)
    if ipp is None or iop is None:
        return float(getattr(ds, "InstanceNumber", 0) or 0)
    normal = np.cross(np.asarray(iop[:3], float), np.asarray(iop[3:], float))
    return float(np.dot(normal, np.asarray(ipp, float)))


def import_dicom_folder(path, *, progress: bool = False) -> list[Study]:
    """Studies in a folder (searched recursively) of mixed DICOM and other files."""
    import pydicom

    root = Path(path)
    if not root.is_dir():
        raise InputError(root, "not a folder")
    series: dict[tuple[str, str], list[tuple[float, str, object]]] = defaultdict(list)
    for f in sorted(p for p in root.rglob("*") if p.is_file()):
        try:
            ds = pydicom.dcmread(str(f), stop_before_pixels=True)
        except Exception:  # not DICOM (or unreadable): skipped
            continue
        if "SeriesInstanceUID" not in ds or "StudyInstanceUID" not in ds:
            continue
        series[(ds.StudyInstanceUID, ds.SeriesInstanceUID)].append((_slice_key(ds), str(f), ds))
    if not series:
        raise InputError(root, "folder holds no DICOM series")
    studies: dict[str, Study] = {}
    chosen: dict[tuple[str, Sequence], list[tuple]] = defaultdict(list)
    for (study_uid, series_uid), items in sorted(series.items()):
        items.sort(key=lambda t: t[0])
        first = items[0][2]
        study = studies.setdefault(
            study_uid,
            Study(
                study_id=str(getattr(first, "StudyID", "") or study_uid),
                patient_id=str(getattr(first, "PatientID", "") or "") or None,
                source=str(root),
            ),
        )
        seq, reason = identify_sequence(first)
        files = [p for _, p, _ in items]
        desc = str(getattr(first, "SeriesDescription", "") or "")
        if seq is None or seq is Sequence.OTHER:
            study.unidentified.append(
                {"series_uid": series_uid, "description": desc, "files": len(files), "reason": reason}
            )
            continue
        ref = SeriesRef(
            sequence=seq,
            paths=files,
            series_uid=series_uid,
            description=desc,
            metadata=technical_metadata(first, files=len(files)),
        )
        chosen[(study_uid, seq)].append((ref, int(getattr(first, "SeriesNumber", 0) or 0)))
    for (study_uid, seq), refs in chosen.items():
        study = studies[study_uid]
        if seq is Sequence.HBV:  # documented rule: the highest b-value wins, then the latest series
            refs.sort(key=lambda r: (max(r[0].metadata.b_values or [0]), r[1]))
        else:  # the latest series (highest SeriesNumber) wins
            refs.sort(key=lambda r: r[1])
        study.sequences[seq] = refs[-1][0]
        for ref, _ in refs[:-1]:
            study.unidentified.append(
                {
                    "series_uid": ref.series_uid,
                    "description": ref.description,
                    "files": len(ref.paths),
                    "reason": f"second {seq.value} series; kept {refs[-1][0].description!r}",
                }
            )
            log.warning(
                "study %s: %d %s series, kept %r",
                study.study_id,
                len(refs),
                seq.value,
                refs[-1][0].description,
            )
    ids = [s.study_id for s in studies.values()]
    for s in studies.values():
        if ids.count(s.study_id) > 1:  # StudyID is not unique: fall back to the UID
            s.study_id = next(uid for uid, st in studies.items() if st is s)
    if progress:
        print(f"{len(studies)} studies, {len(series)} series in {root}")
    return list(studies.values())
