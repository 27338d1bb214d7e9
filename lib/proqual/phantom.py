"""Deterministic digital phantom of bi-parametric prostate MRI (T2W, ADC, HBV) with ground truth.

Anatomy (all shapes smooth, with per-study random variation): body with pelvic fat, obturator muscles,
bladder (anterior-superior), rectum (posterior), prostate with a transition zone (TZ, anterior-central)
and a peripheral zone (PZ, the posterior crescent that remains), and one lesion whose size and
conspicuity follow the study's PI-RADS (low T2, low ADC, high HBV) and whose ADC drops further with the
ISUP grade group. Shapes are rendered as soft memberships (about 0.5 mm partial-volume edge) straight
on each sequence's grid, so T2W (0.5 x 0.5 x 3 mm) and ADC/HBV (2 x 2 x 3 mm by default) describe the same
anatomy in patient (LPS) coordinates. A smooth receive bias and Rician noise make the images MR-like.

Intensities: T2W and HBV in arbitrary units x 1000, ADC in 1e-6 mm2/s (PI-CAI's unit); files are int16.

Everything is a pure function of (index, seed, preset, pirads, isup): same arguments, same bytes.
"""

from __future__ import annotations

import csv
import io
import logging
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from proqual.errors import ValidationError
from proqual.io.readers import Volume, write_volume
from proqual.study import Sequence, StudyLabels

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PhantomPreset:
    """Grid sizes (x, y, z voxels) and spacings (mm) of T2W and of ADC/HBV."""

    t2w_size: tuple[int, int, int]
    t2w_spacing: tuple[float, float, float]
    dwi_size: tuple[int, int, int]
    dwi_spacing: tuple[float, float, float]


PRESETS: dict[str, PhantomPreset] = {
    # PI-CAI-like: T2W 384 x 384 x 24 at 0.5 x 0.5 x 3 mm; ADC/HBV 128 x 128 x 24 at 1.5 x 1.5 x 3 mm
    # (the same 192 mm field of view; the benchmark sizes of the quality issue)
    "picai": PhantomPreset((384, 384, 24), (0.5, 0.5, 3.0), (128, 128, 24), (1.5, 1.5, 3.0)),
    # sample data: 96 mm field of view around the gland, 16 slices
    "sample": PhantomPreset((192, 192, 16), (0.5, 0.5, 3.0), (48, 48, 16), (2.0, 2.0, 3.0)),
    # unit tests: 64 mm field of view around the gland, 12 slices
    "test": PhantomPreset((128, 128, 12), (0.5, 0.5, 3.0), (32, 32, 12), (2.0, 2.0, 3.0)),
}

#: (PI-RADS, ISUP) by study index modulo 8: any 8 consecutive studies cover PI-RADS 2..5 and ISUP 0..5
LABEL_SCHEDULE: tuple[tuple[int, int], ...] = ((2, 0), (3, 1), (4, 2), (5, 3), (4, 4), (5, 5), (3, 0), (2, 0))

# tissue properties: (T2W, ADC, HBV)
TISSUE = {
    "fat": (0.80, 450.0, 0.04),
    "muscle": (0.28, 1400.0, 0.14),
    "bladder": (1.00, 3000.0, 0.02),
    "rectal_wall": (0.35, 1300.0, 0.18),
    "rectal_air": (0.05, 0.0, 0.01),
    "pz": (0.72, 1650.0, 0.26),
    "tz": (0.45, 1200.0, 0.22),
}
# lesion by PI-RADS: (radius mm, conspicuity 0..1)
LESION = {1: (2.0, 0.05), 2: (3.0, 0.15), 3: (4.5, 0.4), 4: (6.5, 0.7), 5: (9.0, 0.95)}
GLEASON = {0: "0+0", 1: "3+3", 2: "3+4", 3: "4+3", 4: "4+4", 5: "4+5"}
PHANTOM_CENTRE_LPS = np.array([0.0, 20.0, -40.0])  # a plausible gland position in patient space


@dataclass
class PhantomStudy:
    study_id: str
    patient_id: str
    volumes: dict[Sequence, Volume]
    masks: dict[str, Volume]
    labels: StudyLabels
    lesions: list[dict] = field(default_factory=list)
    gland_centre_lps: tuple[float, float, float] = (0.0, 0.0, 0.0)
    extra: dict = field(default_factory=dict)


def _grid(size, spacing, centre) -> tuple[Volume, np.ndarray]:
    """An empty volume centred on ``centre`` (LPS) and its voxel-centre coordinates (x, y, z, 3) in mm."""
    size, spacing = np.asarray(size), np.asarray(spacing, float)
    origin = np.asarray(centre) - (size - 1) / 2.0 * spacing
    axes = [origin[i] + np.arange(size[i]) * spacing[i] for i in range(3)]
    xx, yy, zz = np.meshgrid(*axes, indexing="ij")
    vol = Volume(np.zeros(tuple(size), np.float32), tuple(spacing), tuple(origin), np.eye(3))
    return vol, np.stack([xx, yy, zz], -1).astype(np.float32)


def _ellipsoid(points, centre, radii, *, wobble=(0.0, 0.0), edge_mm=0.5) -> np.ndarray:
    """Soft membership (0..1) of a smooth, slightly lobed ellipsoid."""
    d = (points - np.asarray(centre, np.float32)) / np.asarray(radii, np.float32)
    r = np.sqrt((d**2).sum(-1))
    if wobble[0]:
        ang = np.arctan2(d[..., 1], d[..., 0])
        r = r / (1.0 + wobble[0] * np.cos(2 * ang + wobble[1]))
    dist_mm = (r - 1.0) * float(np.mean(radii))
    return 1.0 / (1.0 + np.exp(np.clip(dist_mm / edge_mm, -30, 30)))


def _anatomy(rng: np.random.Generator, pirads: int, isup: int) -> dict:
    """Random shape parameters of one study (in mm, relative to the gland centre)."""
    s = lambda lo, hi: float(rng.uniform(lo, hi))  # noqa: E731
    prostate_r = np.array([22.0 * s(0.85, 1.2), 17.0 * s(0.85, 1.2), 18.0 * s(0.85, 1.2)])
    tz_r = prostate_r * np.array([0.62, 0.55, 0.7]) * s(0.9, 1.1)
    zone = "TZ" if rng.random() < 0.25 else "PZ"
    radius, conspicuity = LESION[pirads]
    if zone == "PZ":  # posterior crescent, left or right
        side = 1.0 if rng.random() < 0.5 else -1.0
        lesion_c = np.array([side * prostate_r[0] * 0.45, prostate_r[1] * 0.55, s(-0.4, 0.4) * prostate_r[2]])
    else:
        lesion_c = np.array([s(-0.3, 0.3) * tz_r[0], -0.2 * tz_r[1], s(-0.3, 0.3) * tz_r[2]])
    return {
        "prostate_r": prostate_r,
        "prostate_wobble": (s(0.0, 0.08), s(0, np.pi)),
        "tz_r": tz_r,
        "tz_c": np.array([0.0, -3.0 * s(0.6, 1.4), 2.0 * s(-1, 1)]),
        "bladder_c": np.array(
            [s(-3, 3), -prostate_r[1] - 18.0 * s(0.9, 1.2), prostate_r[2] + 12.0 * s(0.8, 1.3)]
        ),
        "bladder_r": np.array([30.0, 24.0, 22.0]) * s(0.8, 1.2),
        "rectum_c": np.array([s(-3, 3), prostate_r[1] + 14.0 * s(0.9, 1.2), 0.0]),
        "rectum_r": np.array([16.0, 11.0, 60.0]) * s(0.9, 1.1),
        "muscle_dx": 50.0 * s(0.9, 1.1),
        "body_r": np.array([170.0, 115.0, 400.0]) * s(0.9, 1.05),
        "lesion_zone": zone,
        "lesion_c": lesion_c,
        "lesion_r": radius * s(0.85, 1.15),
        "conspicuity": conspicuity,
        "isup": isup,
        "bias": rng.normal(0, 0.12, size=4),
        "noise_seed": int(rng.integers(0, 2**31 - 1)),
    }


def _render(points: np.ndarray, a: dict, centre: np.ndarray) -> dict[str, np.ndarray]:
    """Per-tissue memberships on a grid (points in LPS mm)."""
    p = points - centre.astype(np.float32)
    m = {
        "body": _ellipsoid(p, (0, 10, 0), a["body_r"], edge_mm=2.0),
        "muscle": np.maximum(
            _ellipsoid(p, (a["muscle_dx"], 5, 0), (16, 30, 80)),
            _ellipsoid(p, (-a["muscle_dx"], 5, 0), (16, 30, 80)),
        ),
        "bladder": _ellipsoid(p, a["bladder_c"], a["bladder_r"]),
        "rectum": _ellipsoid(p, a["rectum_c"], a["rectum_r"]),
        "rectal_air": _ellipsoid(p, a["rectum_c"], a["rectum_r"] * np.array([0.55, 0.5, 1.0])),
        "gland": _ellipsoid(p, (0, 0, 0), a["prostate_r"], wobble=a["prostate_wobble"]),
        "tz": _ellipsoid(p, a["tz_c"], a["tz_r"]),
        "lesion": _ellipsoid(p, a["lesion_c"], (a["lesion_r"],) * 3, edge_mm=1.0),
    }
    m["tz"] = np.minimum(m["tz"], m["gland"])
    m["pz"] = np.clip(m["gland"] - m["tz"], 0, 1)
    m["lesion"] = np.minimum(m["lesion"], m["gland"])
    return m


def _compose(m: dict[str, np.ndarray], channel: int, a: dict) -> np.ndarray:
    """Blend tissue values in drawing order (later tissues cover earlier ones)."""
    img = m["body"] * TISSUE["fat"][channel]
    for tissue, key in (
        ("muscle", "muscle"),
        ("bladder", "bladder"),
        ("rectal_wall", "rectum"),
        ("rectal_air", "rectal_air"),
    ):
        img = img * (1 - m[key]) + m[key] * TISSUE[tissue][channel]
    zone_val = m["pz"] * TISSUE["pz"][channel] + m["tz"] * TISSUE["tz"][channel]
    img = img * (1 - m["gland"]) + zone_val
    c = a["conspicuity"]
    host = TISSUE["pz" if a["lesion_zone"] == "PZ" else "tz"][channel]
    if channel == 0:  # T2: darker
        lesion_val = host * (1 - 0.55 * c)
    elif channel == 1:  # ADC: lower, more so with the grade group
        lesion_val = host * (1 - 0.55 * c) - 60.0 * a["isup"] * c
    else:  # HBV: brighter
        lesion_val = host * (1 + 3.0 * c)
    return img * (1 - m["lesion"]) + m["lesion"] * lesion_val


def _bias(points: np.ndarray, coeffs: np.ndarray, centre: np.ndarray) -> np.ndarray:
    p = (points - centre.astype(np.float32)) / 100.0
    return (
        1.0
        + coeffs[0] * p[..., 0]
        + coeffs[1] * p[..., 1]
        + coeffs[2] * p[..., 0] * p[..., 1]
        + coeffs[3] * p[..., 2]
    ).clip(0.6, 1.4)


def _rician(img: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    n1 = rng.normal(0, sigma, img.shape).astype(np.float32)
    n2 = rng.normal(0, sigma, img.shape).astype(np.float32)
    return np.sqrt((img + n1) ** 2 + n2**2)


def make_study(
    index: int, *, seed: int, preset: str = "test", pirads: int | None = None, isup: int | None = None
) -> PhantomStudy:
    """Phantom study number ``index`` of the cohort ``seed`` (pure, deterministic).

    ``pirads`` (1..5) and ``isup`` (0..5) default to :data:`LABEL_SCHEDULE`. Every study has one lesion;
    PI-RADS 1-2 lesions are barely visible, and ISUP 0 means a benign biopsy.
    """
    if preset not in PRESETS:
        raise ValidationError(
            "preset", f"unknown phantom preset {preset!r}; choose from {', '.join(PRESETS)}"
        )
    sched_p, sched_i = LABEL_SCHEDULE[index % len(LABEL_SCHEDULE)]
    pirads = sched_p if pirads is None else int(pirads)
    isup = sched_i if isup is None else int(isup)
    if not 1 <= pirads <= 5:
        raise ValidationError("pirads", f"must be 1..5, got {pirads}")
    if not 0 <= isup <= 5:
        raise ValidationError("isup", f"must be 0..5, got {isup}")
    cfg = PRESETS[preset]
    rng = np.random.default_rng([int(seed), int(index)])
    a = _anatomy(rng, pirads, isup)
    centre = PHANTOM_CENTRE_LPS + rng.normal(0, 3.0, 3)
    noise = np.random.default_rng([int(seed), int(index), a["noise_seed"]])

    volumes: dict[Sequence, Volume] = {}
    t2, pts = _grid(cfg.t2w_size, cfg.t2w_spacing, centre)
    m = _render(pts, a, centre)
    bias = _bias(pts, a["bias"], centre)
    t2.array = (_rician(_compose(m, 0, a) * bias, 0.025, noise) * 1000).astype(np.float32)
    volumes[Sequence.T2W] = t2
    masks = {}
    for key in ("gland", "pz", "tz", "lesion"):
        masks[key] = Volume((m[key] > 0.5).astype(np.uint8), t2.spacing, t2.origin, t2.direction)

    low, lpts = _grid(cfg.dwi_size, cfg.dwi_spacing, centre)
    lm = _render(lpts, a, centre)
    lbias = _bias(lpts, a["bias"], centre)
    adc = _compose(lm, 1, a) + noise.normal(0, 40.0, low.shape)
    adc = np.clip(adc * lm["body"], 0, None)
    hbv = _rician(_compose(lm, 2, a) * lbias, 0.015, noise) * 1000
    volumes[Sequence.ADC] = Volume(adc.astype(np.float32), low.spacing, low.origin, low.direction)
    volumes[Sequence.HBV] = Volume(hbv.astype(np.float32), low.spacing, low.origin, low.direction)

    lesion_lps = centre + a["lesion_c"]
    cspca = isup >= 2
    labels = StudyLabels(pirads=pirads, isup=isup, cspca=cspca, lesion_pirads=[pirads], lesion_isup=[isup])
    lesion = {
        "centre_lps": [round(float(v), 3) for v in lesion_lps],
        "radius_mm": round(float(a["lesion_r"]), 3),
        "zone": a["lesion_zone"],
        "pirads": pirads,
        "isup": isup,
        "gleason": GLEASON[isup],
    }
    volume_ml = 4.0 / 3.0 * np.pi * float(np.prod(a["prostate_r"])) / 1000.0
    return PhantomStudy(
        study_id=str(1000000 + index),
        patient_id=str(10000 + index),
        volumes=volumes,
        masks=masks,
        labels=labels,
        lesions=[lesion],
        gland_centre_lps=tuple(round(float(v), 3) for v in centre),
        extra={
            "prostate_volume": round(volume_ml, 1),
            "age": int(rng.integers(52, 78)),
            "psa": round(float(rng.uniform(2.0, 6.0) + 4.0 * (isup / 5)), 2),
            "date": f"20{20 + index % 4:02d}-{1 + index % 12:02d}-{1 + (index * 7 + seed) % 28:02d}",
        },
    )


SERIES_NAMES = {
    "SIEMENS": ("t2_tse_tra", "ep2d_diff_b50_800_tra_ADC", "ep2d_diff_b50_800_tra_CALC_BVAL"),
    "Philips": ("T2W_TSE_ax", "dADC", "DWI_b1400"),
    "GE": ("Ax T2 FRFSE", "Apparent Diffusion Coefficient (mm2/s)", "Ax DWI b1400"),
}


def marksheet_row(study: PhantomStudy) -> dict[str, str]:
    """The PI-CAI marksheet row of a phantom study."""
    lab, les = study.labels, study.lesions[0]
    psa = study.extra["psa"]
    return {
        "patient_id": study.patient_id,
        "study_id": study.study_id,
        "mri_date": study.extra["date"],
        "patient_age": str(study.extra["age"]),
        "psa": f"{psa:.2f}",
        "psad": f"{psa / study.extra['prostate_volume']:.3f}",
        "prostate_volume": f"{study.extra['prostate_volume']:.1f}",
        "histopath_type": "MRBx" if lab.pirads >= 3 else "",
        "lesion_PIRADS": str(les["pirads"]),
        "lesion_GS": les["gleason"],
        "lesion_ISUP": str(les["isup"]),
        "case_ISUP": str(lab.isup),
        "case_csPCa": "YES" if lab.cspca else "NO",
        "center": "PHANTOM",
    }


def _write_study_files(study: PhantomStudy, root: Path) -> None:
    stem = f"{study.patient_id}_{study.study_id}"
    folder = root / "images" / study.patient_id
    for seq, vol in study.volumes.items():
        write_volume(
            Volume(np.round(vol.array), vol.spacing, vol.origin, vol.direction),
            folder / f"{stem}_{seq.value.lower()}.mha",
            dtype=np.int16,
        )
    for key, mask in study.masks.items():
        write_volume(mask, root / "masks" / f"{stem}_{key}.mha", dtype=np.uint8)


def _write_dicom(study: PhantomStudy, root: Path, index: int, seed: int) -> None:
    from proqual.io.dicom import write_series

    vendor = list(SERIES_NAMES)[index % 3]
    names = SERIES_NAMES[vendor]
    stem = f"{study.patient_id}_{study.study_id}"
    study_uid_seed = f"proqual-phantom-{seed}-{index}"
    from pydicom.uid import generate_uid

    study_uid = generate_uid(entropy_srcs=[study_uid_seed, "study"])
    date = study.extra["date"].replace("-", "")
    specs = [
        (Sequence.T2W, 1, names[0], {}),
        (Sequence.ADC, 2, names[1], {"b_values_used": [50.0, 800.0]}),
        (Sequence.HBV, 3, names[2], {"b_value": 1400.0, "b_values_used": [50.0, 800.0]}),
    ]
    for seq, number, desc, extra in specs:
        vol = study.volumes[seq]
        vol = Volume(np.round(vol.array), vol.spacing, vol.origin, vol.direction)
        safe = "".join(ch if ch.isalnum() else "_" for ch in desc)
        write_series(
            vol,
            root / "dicom" / stem / f"{number:02d}_{safe}",
            sequence=seq,
            patient_id=study.patient_id,
            study_id=study.study_id,
            study_uid=study_uid,
            series_number=number,
            series_description=desc,
            uid_seed=f"{study_uid_seed}-{number}",
            manufacturer=vendor,
            study_date=date,
            **extra,
        )


def write_picai(
    out_dir: str | Path,
    *,
    n: int,
    seed: int,
    preset: str = "test",
    start: int = 0,
    dicom: bool = False,
    progress: bool = False,
) -> list[Path]:
    """Write studies ``start .. start + n - 1`` in PI-CAI layout under ``out_dir``:

    - ``images/<patient>/<patient>_<study>_{t2w,adc,hbv}.mha`` (int16),
    - ``masks/<patient>_<study>_{gland,pz,tz,lesion}.mha`` (uint8, T2W grid),
    - ``marksheet.csv`` (PI-CAI columns),
    - with ``dicom=True`` also ``dicom/<patient>_<study>/<NN>_<description>/IM*.dcm``.

    Each study is written into a temporary folder first and moved into place, so an interrupted run
    leaves no half-written study. Returns the T2W paths.
    """
    if n < 1:
        raise ValidationError("n", f"must be >= 1, got {n}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows, written = [], []
    for k, index in enumerate(range(start, start + n)):
        study = make_study(index, seed=seed, preset=preset)
        with tempfile.TemporaryDirectory(dir=out, prefix=".tmp-") as tmp:
            tmp = Path(tmp)
            _write_study_files(study, tmp)
            if dicom:
                _write_dicom(study, tmp, index, seed)
            for f in sorted(tmp.rglob("*")):
                if f.is_file():
                    dest = out / f.relative_to(tmp)
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    shutil.move(str(f), dest)
        rows.append(marksheet_row(study))
        written.append(out / "images" / study.patient_id / f"{study.patient_id}_{study.study_id}_t2w.mha")
        if progress:
            lab = study.labels
            print(
                f"[{k + 1}/{n}] {study.patient_id}_{study.study_id}  PI-RADS {lab.pirads}  ISUP {lab.isup}",
                flush=True,
            )
    _write_marksheet(out / "marksheet.csv", rows)
    return written


def _write_marksheet(path: Path, rows: list[dict[str, str]]) -> None:
    from proqual.io.layouts import MARKSHEET_COLUMNS

    existing = []
    if path.is_file():
        with open(path, newline="") as fh:
            existing = list(csv.DictReader(fh))
    keys = {(r["patient_id"], r["study_id"]) for r in rows}
    merged = [r for r in existing if (r["patient_id"], r["study_id"]) not in keys] + rows
    merged.sort(key=lambda r: (r["patient_id"], r["study_id"]))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(MARKSHEET_COLUMNS), lineterminator="\n")
    writer.writeheader()
    writer.writerows(merged)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(buf.getvalue())
    tmp.replace(path)
