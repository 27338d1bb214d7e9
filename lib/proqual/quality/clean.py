"""Clean volumes for upstream training besides the phantoms.

:func:`clean_volumes` reads the volumes a user points ``train-quality --clean`` at (files, or folders of
them), each with the sequence kind its prompt will say. :func:`reslice` draws one clinical-like
acquisition from a high-resolution clean volume (a cut across one of its axes, an in-plane and a slice
spacing, a slab of slices across the object), presented as an axial stack, so a 0.5 mm isotropic template
becomes many volumes that look like the thick-slice stacks the model scores; :func:`acquisitions` draws several, seeded.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np

from proqual import artifacts as A
from proqual.errors import InputError, ValidationError
from proqual.io.readers import IMAGE_SUFFIXES, Volume, image_suffix, read_volume
from proqual.study import Sequence

#: default ranges of :func:`reslice` (mm), and the slab's number of slices
IN_PLANE_MM: tuple[float, float] = (0.8, 2.5)
SLICE_MM: tuple[float, float] = (2.0, 5.0)
SLAB_SLICES = 24


def parse_clean_spec(spec: str) -> tuple[Sequence, Path]:
    """``"[SEQUENCE=]PATH"`` -> (sequence, path); without a sequence prefix the kind is OTHER. A prefix
    that is not a sequence name is taken as part of the path (paths may hold ``=``)."""
    head, sep, tail = spec.partition("=")
    if sep:
        try:
            return Sequence.parse(head), Path(tail)
        except ValueError:
            pass
    return Sequence.OTHER, Path(spec)


def clean_files(path: Path) -> list[Path]:
    """The image files of ``path``: the file itself, or the image files directly in a folder (sorted)."""
    if not path.exists():
        raise InputError(path, "no such file or folder (train-quality --clean)")
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and image_suffix(p))
        if not files:
            raise InputError(path, f"folder holds no image files ({', '.join(IMAGE_SUFFIXES)})")
        return files
    if not image_suffix(path):
        raise InputError(path, f"not an image file ({', '.join(IMAGE_SUFFIXES)}) or folder")
    return [path]


def clean_volumes(specs: Iterable[str]):
    """The :class:`~proqual.quality.training.CleanVolume` of every file the specs name (see
    :func:`parse_clean_spec`), without gland masks (their saliency target is uniform). Every file is read
    before training starts, so a bad one stops the run at once with an error naming it."""
    from proqual.quality.training import CleanVolume

    out = []
    for spec in specs:
        seq, path = parse_clean_spec(spec)
        for f in clean_files(path):
            vol = read_volume(f)
            if float(vol.array.min()) < 0:
                raise InputError(
                    f,
                    f"has negative values (minimum {float(vol.array.min()):g}); clean volumes "
                    "must be magnitude images",
                )
            out.append(CleanVolume(vol, seq))
    return out


def _check_range(name: str, lo: float, hi: float) -> None:
    if not (np.isfinite(lo) and np.isfinite(hi) and 0 < lo <= hi):
        raise ValidationError(name, f"needs 0 < LO <= HI, got {lo:g} {hi:g}")


def axial_axis(volume: Volume) -> int:
    """The index axis of ``volume`` closest to the patient's superior-inferior axis (its slices are the
    axial ones the quality model reads)."""
    return int(np.argmax(np.abs(np.asarray(volume.direction, float)[2, :])))


def reslice(
    volume: Volume,
    rng: np.random.Generator,
    *,
    in_plane: tuple[float, float] = IN_PLANE_MM,
    slice_mm: tuple[float, float] = SLICE_MM,
    slices: int = SLAB_SLICES,
) -> Volume:
    """One acquisition drawn from ``volume``: slices cut across one of its three index axes (equal
    chance), in-plane spacing uniform in ``in_plane`` and slice spacing uniform in ``slice_mm`` (mm), the
    whole in-plane extent, and a slab of ``slices`` slices placed uniformly at random within the object's
    extent along the slice axis (all of it when shorter). Before sampling, each axis is smoothed by a
    Gaussian whose FWHM makes up the difference between the new and the old spacing (anti-aliasing, and
    a slice profile as thick as the slice spacing). Linear interpolation.

    The result is always an axial stack, because the quality model reads axial slices: a cut across
    another axis is made by first swapping that axis with the volume's axial one (:func:`axial_axis`),
    i.e. the object is turned (and mirrored) in the scanner rather than the slice plane tilted. With an
    axial cut the geometry is the slab's own in the source's world coordinates."""
    import SimpleITK as sitk
    from scipy import ndimage

    _check_range("in_plane", *in_plane)
    _check_range("slice_mm", *slice_mm)
    if slices < 1:
        raise ValidationError("slices", f"must be >= 1, got {slices}")
    k = axial_axis(volume)
    cut = int(rng.integers(0, 3))
    order = [0, 1, 2]
    order[k], order[cut] = order[cut], order[k]
    array = np.transpose(volume.array, order)
    src = np.asarray(volume.spacing, float)[order]
    a, b = [ax for ax in range(3) if ax != k]
    s = float(rng.uniform(*in_plane))
    t = float(rng.uniform(*slice_mm))
    new = np.empty(3)
    new[[a, b, k]] = (s, s, t)
    sigma_mm = np.sqrt(np.maximum(new**2 - src**2, 0.0)) / 2.355
    smooth = ndimage.gaussian_filter(array.astype(np.float32), sigma=sigma_mm / src, mode="nearest")
    extent = (np.asarray(array.shape) - 1) * src  # mm along each index axis
    mask = A.object_mask(array)
    along = np.flatnonzero(mask.any(axis=(a, b)))
    lo, hi = (along[0], along[-1]) if along.size else (0, array.shape[k] - 1)
    lo_mm, hi_mm = lo * src[k], hi * src[k]
    n_slices = min(slices, int(extent[k] // t) + 1)
    length = (n_slices - 1) * t
    if hi_mm - lo_mm >= length:
        start_k = float(rng.uniform(lo_mm, hi_mm - length))
    else:  # the object is shorter than the slab: centre the slab on it, inside the volume
        start_k = float(np.clip((lo_mm + hi_mm - length) / 2, 0.0, extent[k] - length))
    size = [0, 0, 0]
    size[a], size[b], size[k] = int(extent[a] // s) + 1, int(extent[b] // s) + 1, n_slices
    offset = np.zeros(3)
    offset[k] = start_k
    direction = np.asarray(volume.direction, float)
    origin = np.asarray(volume.origin, float) + direction @ offset
    img = Volume(smooth, tuple(src), volume.origin, direction).to_sitk()
    res = sitk.Resample(
        img,
        size,
        sitk.Transform(),
        sitk.sitkLinear,
        tuple(float(v) for v in origin),
        tuple(float(v) for v in new),
        tuple(float(v) for v in direction.ravel()),
        0.0,
        sitk.sitkFloat32,
    )
    out = Volume.from_sitk(res, source=volume.source)
    np.maximum(out.array, 0.0, out=out.array)
    return out


def acquisitions(volume: Volume, *, n: int, seed: int, **kwargs) -> list[Volume]:
    """``n`` acquisitions of ``volume`` by :func:`reslice`, from a generator seeded by ``seed``."""
    if n < 1:
        raise ValidationError("n", f"must be >= 1, got {n}")
    rng = np.random.default_rng(seed)
    return [reslice(volume, rng, **kwargs) for _ in range(n)]
