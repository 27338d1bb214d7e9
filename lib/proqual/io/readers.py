"""Read and write 3D volumes through SimpleITK (NIfTI, MetaImage, NRRD, DICOM series).

Pixel decoding is SimpleITK's; this module only checks what comes back so that a bad file becomes an
:class:`~proqual.errors.InputError` naming it, never a silently wrong array.
"""

from __future__ import annotations

from collections.abc import Sequence as Seq
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from proqual.errors import InputError

#: single-file formats and their suffixes (longest first so ".nii.gz" wins over ".gz")
IMAGE_SUFFIXES: tuple[str, ...] = (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd", ".nhdr")


def image_suffix(path: str | Path) -> str | None:
    """The image suffix of ``path`` (``".nii.gz"``, ``".mha"``, ...), or None when it is not an image file."""
    name = Path(path).name.lower()
    for suffix in IMAGE_SUFFIXES:
        if name.endswith(suffix):
            return suffix
    return None


@dataclass
class Volume:
    """A 3D image in ITK conventions: ``array`` is indexed (x, y, z); geometry is in LPS millimetres."""

    array: np.ndarray
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: np.ndarray = field(default_factory=lambda: np.eye(3))
    source: str = ""

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.array.shape)

    def affine_lps(self) -> np.ndarray:
        """4x4 voxel-index -> LPS mm."""
        aff = np.eye(4)
        aff[:3, :3] = np.asarray(self.direction) @ np.diag(self.spacing)
        aff[:3, 3] = self.origin
        return aff

    def affine_ras(self) -> np.ndarray:
        """4x4 voxel-index -> RAS mm (the convention of NIfTI and MONAI)."""
        return np.diag([-1.0, -1.0, 1.0, 1.0]) @ self.affine_lps()

    def index_to_world(self, ijk) -> np.ndarray:
        """Continuous voxel index (x, y, z) -> LPS mm."""
        aff = self.affine_lps()
        return aff[:3, :3] @ np.asarray(ijk, dtype=float) + aff[:3, 3]

    def world_to_index(self, xyz) -> np.ndarray:
        aff = self.affine_lps()
        return np.linalg.solve(aff[:3, :3], np.asarray(xyz, dtype=float) - aff[:3, 3])

    def world_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """Axis-aligned LPS bounding box (min, max) of the voxel centres."""
        corners = np.array(np.meshgrid(*[[0, s - 1] for s in self.shape], indexing="ij")).reshape(3, -1).T
        pts = np.array([self.index_to_world(c) for c in corners])
        return pts.min(0), pts.max(0)

    def to_sitk(self) -> sitk.Image:
        img = sitk.GetImageFromArray(np.ascontiguousarray(np.transpose(self.array, (2, 1, 0))))
        img.SetSpacing(tuple(float(s) for s in self.spacing))
        img.SetOrigin(tuple(float(o) for o in self.origin))
        img.SetDirection(tuple(float(d) for d in np.asarray(self.direction).ravel()))
        return img

    @classmethod
    def from_sitk(cls, img: sitk.Image, source: str = "", dtype=np.float32) -> Volume:
        arr = sitk.GetArrayFromImage(img)  # (z, y, x)
        return cls(
            array=np.ascontiguousarray(np.transpose(arr, (2, 1, 0))).astype(dtype, copy=False),
            spacing=tuple(float(s) for s in img.GetSpacing()),
            origin=tuple(float(o) for o in img.GetOrigin()),
            direction=np.asarray(img.GetDirection(), dtype=float).reshape(3, 3),
            source=source,
        )


def _sort_dicom_files(paths: Seq[str | Path]) -> list[str]:
    """Order the files of one series along the slice normal (ImagePositionPatient)."""
    import pydicom

    keyed = []
    for p in paths:
        try:
            ds = pydicom.dcmread(str(p), stop_before_pixels=True)
        except Exception as exc:  # pydicom raises many types for corrupt files
            raise InputError(p, f"not a readable DICOM file ({exc})") from exc
        ipp = getattr(ds, "ImagePositionPatient", None)
        iop = getattr(ds, "ImageOrientationPatient", None)
        if ipp is None or iop is None:
            key = float(getattr(ds, "InstanceNumber", 0) or 0)
        else:
            normal = np.cross(np.asarray(iop[:3], float), np.asarray(iop[3:], float))
            key = float(np.dot(normal, np.asarray(ipp, float)))
        keyed.append((key, str(p)))
    keyed.sort()
    positions = np.array([k for k, _ in keyed])
    if len(positions) > 2:
        gaps = np.diff(positions)
        step = float(np.median(gaps))
        bad = np.flatnonzero(np.abs(gaps - step) > 0.05 * max(abs(step), 1e-6))
        if bad.size:
            i = int(bad[0])
            raise InputError(
                Path(keyed[i + 1][1]),
                f"slice spacing is not uniform ({gaps[i]:.3g} mm here, {step:.3g} mm elsewhere): a slice is "
                "missing, duplicated or unreadable in this series",
            )
    return [p for _, p in keyed]


def _check(volume: Volume, where: str) -> Volume:
    arr = volume.array
    if arr.size == 0 or min(arr.shape) == 0:
        raise InputError(where, f"image is empty (size {arr.shape})")
    if not np.all(np.isfinite(arr)):
        bad = int(np.size(arr) - np.count_nonzero(np.isfinite(arr)))
        raise InputError(where, f"image holds {bad} NaN/inf voxel(s)")
    if not np.any(arr):
        raise InputError(where, "image is empty (every voxel is 0)")
    if any(s <= 0 or not np.isfinite(s) for s in volume.spacing):
        raise InputError(where, f"invalid voxel spacing {volume.spacing}")
    return volume


def read_volume(path: str | Path | Seq[str | Path], *, dtype=np.float32) -> Volume:
    """Read one 3D image: a file path, a DICOM series folder, or the list of a DICOM series' files.

    Raises :class:`InputError` naming the file when it is missing, unreadable, corrupt or truncated, not
    3D, empty, or holds NaN/inf voxels.
    """
    if isinstance(path, (list, tuple)):
        files = [Path(p) for p in path]
        if not files:
            raise InputError(None, "empty list of DICOM files")
        where = str(files[0].parent) if len(files) > 1 else str(files[0])
        for f in files:
            if not f.is_file():
                raise InputError(f, "file not found")
        if len(files) == 1 and image_suffix(files[0]):
            return read_volume(files[0], dtype=dtype)
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(_sort_dicom_files(files))
        return _finish(reader.Execute, where, dtype)
    p = Path(path)
    if not p.exists():
        raise InputError(p, "file not found")
    if p.is_dir():
        series = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(p))
        if not series:
            raise InputError(p, "folder holds no DICOM series")
        if len(series) > 1:
            raise InputError(p, f"folder holds {len(series)} DICOM series; import it as a study folder")
        files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(p), series[0])
        return read_volume(list(files), dtype=dtype)
    if p.stat().st_size == 0:
        raise InputError(p, "file is empty (0 bytes)")

    suffix = image_suffix(p)
    if suffix in (".nii", ".nii.gz"):
        _check_nifti_complete(p, compressed=suffix == ".nii.gz")

    def run():
        return sitk.ReadImage(str(p))

    return _finish(run, str(p), dtype)


def _check_nifti_complete(path: Path, *, compressed: bool) -> None:
    """SimpleITK zero-fills a truncated NIfTI without a word; check the data size against the header."""
    import gzip
    import zlib

    import nibabel as nib

    try:
        header = nib.load(str(path)).header
        expected = (
            int(header.get_data_offset()) + int(np.prod(header.get_data_shape())) * int(header["bitpix"]) // 8
        )
    except Exception as exc:  # nibabel raises several types for junk headers
        raise InputError(path, f"unreadable, corrupt or truncated image (bad NIfTI header: {exc})") from exc
    if not compressed:
        actual = path.stat().st_size
    else:
        actual = 0
        try:
            with gzip.open(path, "rb") as fh:
                while chunk := fh.read(1 << 22):
                    actual += len(chunk)
        except (EOFError, OSError, zlib.error) as exc:
            raise InputError(path, f"unreadable, corrupt or truncated image (gzip stream: {exc})") from exc
    if actual < expected:
        raise InputError(path, f"unreadable, corrupt or truncated image ({actual} of {expected} bytes)")


def _finish(execute, where: str, dtype) -> Volume:
    try:
        img = execute()
    except RuntimeError as exc:
        msg = str(exc).strip().splitlines()
        detail = next((m for m in reversed(msg) if m.strip()), "unknown reason")
        raise InputError(where, f"unreadable, corrupt or truncated image ({detail.strip()[:200]})") from exc
    if img.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(
            where, f"image has {img.GetNumberOfComponentsPerPixel()} components per voxel, expected 1"
        )
    dim = img.GetDimension()
    if dim == 4:
        size = img.GetSize()
        if size[3] != 1:
            raise InputError(where, f"image is 4D with {size[3]} volumes, expected one 3D volume")
        img = img[:, :, :, 0]
    elif dim != 3:
        raise InputError(where, f"image is {dim}D, expected 3D")
    if min(img.GetSize()) < 1:
        raise InputError(where, f"image is empty (size {img.GetSize()})")
    return _check(Volume.from_sitk(img, source=where, dtype=dtype), where)


def write_volume(volume: Volume, path: str | Path, *, dtype=None, compress: bool = True) -> Path:
    """Write ``volume`` to ``path`` (format from the suffix). Single-file formats appear atomically."""
    p = Path(path)
    if image_suffix(p) is None:
        raise InputError(p, f"unsupported image suffix; use one of {', '.join(IMAGE_SUFFIXES)}")
    vol = (
        volume
        if dtype is None
        else Volume(volume.array.astype(dtype), volume.spacing, volume.origin, volume.direction)
    )
    p.parent.mkdir(parents=True, exist_ok=True)
    suffix = image_suffix(p)
    if suffix in (".mhd", ".nhdr"):
        # detached-header formats write two files; they are written in place
        sitk.WriteImage(vol.to_sitk(), str(p), useCompression=compress)
        return p
    tmp = p.with_name(f".{p.name[: -len(suffix)]}.tmp{suffix}")
    sitk.WriteImage(vol.to_sitk(), str(tmp), useCompression=compress)
    tmp.replace(p)
    return p
