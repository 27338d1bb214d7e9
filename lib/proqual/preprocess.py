"""Model-input preprocessing as MONAI dictionary transforms, written once and shared by every model.

The ProFound input (see DESIGN.md): channels [T2W, HBV, ADC]; ADC and HBV resampled onto the T2W grid;
LPS orientation (so that, as in SimpleITK arrays, rows run anterior -> posterior and columns patient
right -> left); spacing 1.0 x 0.5 x 0.5 mm (D, H, W); crop/pad to 64 x 224 x 224 around the gland centre
(the field-of-view centre when no gland position is known); each channel z-scored over its non-zero
voxels. Output tensor: (3, D, H, W), float32.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from collections.abc import Sequence as Seq

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import (
    Compose,
    ConcatItemsd,
    MapTransform,
    NormalizeIntensityd,
    ResampleToMatchd,
)

from proqual.errors import InputError, ProQualError
from proqual.io.readers import Volume, read_volume
from proqual.study import PROFOUND_CHANNELS, Sequence, Study

#: (D, H, W) of the ProFound input
PROFOUND_ROI: tuple[int, int, int] = (64, 224, 224)
#: (D, H, W) spacing in mm
PROFOUND_SPACING: tuple[float, float, float] = (1.0, 0.5, 0.5)
KEYS: tuple[str, ...] = tuple(s.value.lower() for s in PROFOUND_CHANNELS)  # ("t2w", "hbv", "adc")
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


def volume_to_metatensor(volume: Volume) -> MetaTensor:
    """A :class:`Volume` as a channel-first MONAI MetaTensor (1, X, Y, Z) with its RAS affine."""
    return MetaTensor(
        torch.from_numpy(np.ascontiguousarray(volume.array, dtype=np.float32))[None],
        affine=torch.as_tensor(volume.affine_ras(), dtype=torch.float64),
        meta={"filename_or_obj": volume.source, "space": "RAS"},
    )


class LoadVolumed(MapTransform):
    """Read each key's path (a file, a DICOM folder, or a list of DICOM files) with :func:`read_volume`.
    Values that are already :class:`Volume` objects are converted without reading."""

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            value = d[key]
            vol = value if isinstance(value, Volume) else read_volume(value)
            d[key] = volume_to_metatensor(vol)
        return d


def _bounds_ras(img: MetaTensor) -> tuple[np.ndarray, np.ndarray]:
    aff = np.asarray(img.affine, dtype=float)
    shape = img.shape[1:]
    corners = np.array(np.meshgrid(*[[0, s - 1] for s in shape], indexing="ij")).reshape(3, -1).T
    pts = corners @ aff[:3, :3].T + aff[:3, 3]
    return pts.min(0), pts.max(0)


class CheckOverlapd(MapTransform):
    """Fail clearly when an image does not overlap the reference image in patient space (so resampling it
    would give an all-background channel)."""

    def __init__(self, keys: KeysCollection, *, key_ref: str, min_fraction: float = 0.5):
        super().__init__(keys)
        self.key_ref = key_ref
        self.min_fraction = min_fraction

    def __call__(self, data):
        d = dict(data)
        lo_r, hi_r = _bounds_ras(d[self.key_ref])
        extent = np.maximum(hi_r - lo_r, 1e-6)
        for key in self.key_iterator(d):
            if key == self.key_ref:
                continue
            lo, hi = _bounds_ras(d[key])
            overlap = np.clip(np.minimum(hi, hi_r) - np.maximum(lo, lo_r), 0, None)
            frac = float(np.prod(overlap / extent))
            if frac < self.min_fraction:
                src = d[key].meta.get("filename_or_obj", key)
                ref = d[self.key_ref].meta.get("filename_or_obj", self.key_ref)
                raise InputError(
                    src,
                    f"{key.upper()} covers {frac:.0%} of the {self.key_ref.upper()} field of view ({ref}); "
                    "the geometries do not match, cannot resample",
                )
        return d


def lps_ordered_axes(affine_ras: np.ndarray) -> np.ndarray:
    """Unit direction columns (RAS) of an image's axes, permuted and flipped so the axes point L, P, S
    (keeps any obliquity of the acquisition, as MONAI's ``Orientation`` does)."""
    rot = np.asarray(affine_ras, dtype=float)[:3, :3]
    units = rot / np.linalg.norm(rot, axis=0, keepdims=True)
    targets = np.diag([-1.0, -1.0, 1.0])  # L, P, S in RAS
    out = np.zeros((3, 3))
    used: set[int] = set()
    for t in range(3):
        scores = [(abs(units[:, a] @ targets[:, t]), a) for a in range(3) if a not in used]
        _, axis = max(scores)
        used.add(axis)
        col = units[:, axis]
        out[:, t] = col if col @ targets[:, t] > 0 else -col
    return out


class TargetGridd(MapTransform):
    """Add ``grid_key``: an empty MetaTensor defining the output grid, ``roi_size`` (X, Y, Z) voxels of
    ``spacing`` mm, axes ordered L, P, S along the reference image's axes, centred at ``centre_key``
    (RAS mm) or, when absent, at the reference image's field-of-view centre. Resampling every channel
    straight onto it does orientation, spacing and crop/pad in one interpolation."""

    def __init__(
        self,
        key_ref: str,
        *,
        roi_size: Seq[int],
        spacing: Seq[float],
        centre_key: str = "centre_ras",
        grid_key: str = "grid",
    ):
        super().__init__([key_ref])
        self.key_ref = key_ref
        self.roi_size = tuple(int(r) for r in roi_size)
        self.spacing = tuple(float(s) for s in spacing)
        self.centre_key = centre_key
        self.grid_key = grid_key

    def __call__(self, data):
        d = dict(data)
        ref = d[self.key_ref]
        aff = np.asarray(ref.affine, dtype=float)
        centre = d.get(self.centre_key)
        if centre is None:
            centre = aff[:3, :3] @ ((np.array(ref.shape[1:]) - 1) / 2.0) + aff[:3, 3]
        rot = lps_ordered_axes(aff) @ np.diag(self.spacing)
        out = np.eye(4)
        out[:3, :3] = rot
        out[:3, 3] = np.asarray(centre, dtype=float) - rot @ ((np.array(self.roi_size) - 1) / 2.0)
        d[self.grid_key] = MetaTensor(
            torch.zeros((1, *self.roi_size), dtype=torch.float32),
            affine=torch.as_tensor(out, dtype=torch.float64),
            meta={"filename_or_obj": "grid", "space": "RAS"},
        )
        return d


class ToDHWd(MapTransform):
    """(C, X, Y, Z) -> (C, D, H, W) = (C, Z, Y, X): the ProFound axis order (plain tensor out)."""

    def __call__(self, data):
        d = dict(data)
        for key in self.key_iterator(d):
            t = d[key]
            t = t.as_tensor() if isinstance(t, MetaTensor) else torch.as_tensor(t)
            d[key] = t.permute(0, 3, 2, 1).contiguous()
        return d


class Pipeline(Compose):
    """A MONAI ``Compose`` that lets ProQual's own errors through: MONAI wraps any exception raised
    inside a transform in ``RuntimeError("applying transform ...")``, which would hide the message that
    names the bad file."""

    def __call__(self, data, *args, **kwargs):
        try:
            return super().__call__(data, *args, **kwargs)
        except RuntimeError as exc:
            cause = exc
            while cause is not None and not isinstance(cause, ProQualError):
                cause = cause.__cause__
            if cause is None:
                raise
            raise cause from None


def profound_transforms(
    *,
    roi: Seq[int] = PROFOUND_ROI,
    spacing: Seq[float] = PROFOUND_SPACING,
    load: bool = True,
) -> Pipeline:
    """The ProFound preprocessing pipeline. Input dict: ``t2w``, ``hbv``, ``adc`` (paths or Volumes) and
    optionally ``centre_ras`` (gland centre, RAS mm). Output adds ``image``: (3, D, H, W) float32."""
    d, h, w = (int(v) for v in roi)
    sd, sh, sw = (float(v) for v in spacing)
    keys = list(KEYS)
    steps = [LoadVolumed(keys)] if load else []
    steps += [
        CheckOverlapd(keys, key_ref="t2w"),
        TargetGridd("t2w", roi_size=(w, h, d), spacing=(sw, sh, sd)),
        ResampleToMatchd(keys, key_dst="grid", mode="bilinear", padding_mode="zeros"),
        ConcatItemsd(keys, name="image", dim=0),
        NormalizeIntensityd("image", nonzero=True, channel_wise=True),
        ToDHWd("image"),
    ]
    return Pipeline(steps)


def gland_centre_ras(study: Study) -> np.ndarray | None:
    """Centroid of the study's gland mask in RAS mm, or None when no mask is known."""
    path = study.masks.get("gland")
    if not path:
        return None
    mask = read_volume(path)
    idx = np.argwhere(mask.array > 0)
    if idx.size == 0:
        return None
    return LPS_TO_RAS @ mask.index_to_world(idx.mean(0))


def study_inputs(study: Study, *, task: str = "preprocessing") -> dict:
    """The input dict of :func:`profound_transforms` for a study (checks the three sequences exist)."""
    study.require(*PROFOUND_CHANNELS, task=task)
    data: dict = {k: _series_paths(study, Sequence(k.upper())) for k in KEYS}
    centre = gland_centre_ras(study)
    if centre is not None:
        data["centre_ras"] = centre
    return data


def _series_paths(study: Study, seq: Sequence):
    ref = study.sequences[seq]
    return ref.paths if len(ref.paths) > 1 else ref.paths[0]


def preprocess_study(study: Study, **kwargs) -> torch.Tensor:
    """(3, D, H, W) ProFound input of a study. Options as :func:`profound_transforms`."""
    out = profound_transforms(**kwargs)(study_inputs(study))
    image = out["image"]
    if not torch.isfinite(image).all():
        raise InputError(study.source, f"study {study.study_id}: preprocessing produced non-finite values")
    return image
