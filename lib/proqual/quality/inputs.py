"""Quality-model input: a volume as a stack of axial slices at a fixed physical in-plane resolution.

Every slice is kept at (about) its native in-plane resolution, so that noise, ringing and blur stay visible,
and cropped or zero-padded to ``size`` x ``size`` pixels around the field-of-view centre (for a PI-CAI T2W
at 0.5 mm this is the central 64 mm around the gland; a 1.5-2 mm ADC fits whole). The stack is scaled by
a robust intensity (the 99th percentile of the foreground). The mapping back to the source volume's
voxel indices and patient coordinates is kept so that a salient slice can be reported in both.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
import torch
import torch.nn.functional as F

from proqual.errors import InputError
from proqual.io.readers import Volume

#: in-plane size of the slices fed to the quality model; pixel size limits in mm (native spacing is kept
#: inside these limits)
SLICE_SIZE = 128
PIXEL_MM_RANGE = (0.4, 3.0)


@dataclass
class SliceStack:
    """``slices``: (S, 1, size, size) float32; ``source_index[k]`` is the z index of slice k in the source
    volume; ``positions_lps[k]`` the patient coordinates (mm) of that slice's centre; ``fov``: the rows
    and columns of the canvas that the image covers (centred; the rest is zero padding)."""

    slices: torch.Tensor
    source_index: np.ndarray
    positions_lps: np.ndarray
    scale: float
    fov: tuple[int, int] = (SLICE_SIZE, SLICE_SIZE)


def _to_lps_axes(volume: Volume) -> tuple[sitk.Image, np.ndarray]:
    """Reorient so that the array axes run L, P, S; return the image and, for every new z index, the
    source z index (or -1 when the slice axis was not the source's z)."""
    img = volume.to_sitk()
    oriented = sitk.DICOMOrient(img, "LPS")
    # which source index does each oriented slice come from? map slice centres back
    n = oriented.GetSize()[2]
    src = np.empty(n, dtype=int)
    cx, cy = (oriented.GetSize()[0] - 1) / 2.0, (oriented.GetSize()[1] - 1) / 2.0
    for k in range(n):
        world = oriented.TransformContinuousIndexToPhysicalPoint((cx, cy, float(k)))
        src[k] = int(round(volume.world_to_index(world)[2]))
    return oriented, src


def slice_stack(volume: Volume, *, size: int = SLICE_SIZE, pixel_mm: float | None = None) -> SliceStack:
    """Axial slice stack of ``volume`` for the quality model (see module doc). ``pixel_mm`` overrides the
    native in-plane pixel size."""
    if min(volume.shape) < 1:
        raise InputError(volume.source, f"image is empty (size {volume.shape})")
    oriented, src = _to_lps_axes(volume)
    arr = sitk.GetArrayFromImage(oriented).astype(np.float32)  # (z, y, x)
    spacing = oriented.GetSpacing()
    if pixel_mm is None:
        pixel_mm = float(np.clip(min(spacing[0], spacing[1]), *PIXEL_MM_RANGE))
    fg = arr[arr > 0]
    if fg.size == 0:
        raise InputError(volume.source, "image has no positive voxels")
    scale = float(np.percentile(fg, 99)) or 1.0
    t = torch.from_numpy(arr / scale)[:, None]  # (S, 1, y, x)
    # resample in-plane to pixel_mm around the centre: first to the target pixel size, then crop/pad
    ny = max(1, int(round(arr.shape[1] * spacing[1] / pixel_mm)))
    nx = max(1, int(round(arr.shape[2] * spacing[0] / pixel_mm)))
    if (ny, nx) != arr.shape[1:]:
        mode = "area" if ny <= arr.shape[1] and nx <= arr.shape[2] else "bilinear"
        kwargs = {} if mode == "area" else {"align_corners": False}
        t = F.interpolate(t, size=(ny, nx), mode=mode, **kwargs)
    t = _centre_crop_pad(t, size)
    cx, cy = (oriented.GetSize()[0] - 1) / 2.0, (oriented.GetSize()[1] - 1) / 2.0
    positions = np.array(
        [oriented.TransformContinuousIndexToPhysicalPoint((cx, cy, float(k))) for k in range(arr.shape[0])]
    )
    fov = (min(ny, size), min(nx, size))
    return SliceStack(t.contiguous().float(), src, positions, scale, fov)


def _centre_crop_pad(t: torch.Tensor, size: int) -> torch.Tensor:
    _, _, h, w = t.shape
    out = torch.zeros((t.shape[0], 1, size, size), dtype=t.dtype)
    sy, sx = max(0, (h - size) // 2), max(0, (w - size) // 2)
    dy, dx = max(0, (size - h) // 2), max(0, (size - w) // 2)
    ch, cw = min(h, size), min(w, size)
    out[:, :, dy : dy + ch, dx : dx + cw] = t[:, :, sy : sy + ch, sx : sx + cw]
    return out


def footprints(fovs: list[tuple[int, int] | None], size: int) -> torch.Tensor:
    """(B, 1, size, size) float mask of the canvas pixels each image covers (see
    :attr:`SliceStack.fov`, placed as :func:`slice_stack` centres it); ``None``: the whole canvas."""
    out = torch.ones((len(fovs), 1, size, size), dtype=torch.float32)
    for i, fov in enumerate(fovs):
        if fov is not None:
            out[i] = _centre_crop_pad(torch.ones((1, 1, *fov)), size)[0]
    return out


def batch_stacks(stacks: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad slice stacks of different lengths into (B, S_max, 1, H, W) plus a (B, S_max) bool mask of the
    real slices."""
    s_max = max(s.shape[0] for s in stacks)
    h, w = stacks[0].shape[-2:]
    out = torch.zeros((len(stacks), s_max, 1, h, w), dtype=torch.float32)
    mask = torch.zeros((len(stacks), s_max), dtype=torch.bool)
    for i, s in enumerate(stacks):
        out[i, : s.shape[0]] = s
        mask[i, : s.shape[0]] = True
    return out, mask
