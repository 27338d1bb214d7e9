"""``proqual reslice-clean``: clinical-like acquisitions drawn from a high-resolution clean volume, as
clean training volumes for ``train-quality --clean``."""

from __future__ import annotations

import argparse
from pathlib import Path

NAME = "reslice-clean"
HELP = "draw clinical-like acquisitions from a high-resolution clean volume (for train-quality --clean)"
DESCRIPTION = (
    "Each acquisition slices SRC across one of its three axes (equal chance) and is written as an axial "
    "stack (a cut across another axis swaps that axis with the axial one first: the quality model reads "
    "axial slices), with an in-plane spacing and "
    "a slice spacing drawn uniformly from the given ranges and a slab of --slices slices placed at random "
    "within the object; each axis is first smoothed so that the new spacing is not aliased and a slice is "
    "as thick as its spacing. The acquisitions are written as OUT/<stem>_NNN.nii.gz (float32), seeded, so "
    "the same command writes the same files. SRC must be clean (no artifacts): train-quality scores it as "
    "quality 1 and degrades it with known parameters."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from proqual.quality.clean import IN_PLANE_MM, SLAB_SLICES, SLICE_MM

    parser.add_argument("src", type=Path, metavar="SRC", help="the clean volume (NIfTI, MHA, NRRD)")
    parser.add_argument("--out", type=Path, required=True, help="folder to write the acquisitions to")
    parser.add_argument("--n", type=int, default=24, help="number of acquisitions (default 24)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the draws (default 0)")
    for flag, default, what in (("--in-plane", IN_PLANE_MM, "in-plane"), ("--slice-mm", SLICE_MM, "slice")):
        parser.add_argument(
            flag,
            type=float,
            nargs=2,
            metavar=("LO", "HI"),
            default=default,
            help=f"{what} spacing range in mm (default {default[0]:g} {default[1]:g})",
        )
    parser.add_argument(
        "--slices",
        type=int,
        default=SLAB_SLICES,
        help=f"slices per acquisition (default {SLAB_SLICES}; fewer where the volume is shorter)",
    )


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from proqual.errors import InputError, ValidationError
    from proqual.io.readers import IMAGE_SUFFIXES, image_suffix, read_volume, write_volume
    from proqual.quality.clean import reslice

    if args.n < 1:
        raise ValidationError("--n", f"must be >= 1, got {args.n}")
    suffix = image_suffix(args.src)
    if not args.src.is_file() or suffix is None:
        raise InputError(args.src, f"not an image file ({', '.join(IMAGE_SUFFIXES)})")
    vol = read_volume(args.src)
    rng = np.random.default_rng(args.seed)
    stem = args.src.name[: -len(suffix)]
    args.out.mkdir(parents=True, exist_ok=True)
    for i in range(args.n):
        acq = reslice(
            vol, rng, in_plane=tuple(args.in_plane), slice_mm=tuple(args.slice_mm), slices=args.slices
        )
        path = write_volume(acq, args.out / f"{stem}_{i:03d}.nii.gz")
        sp = ", ".join(f"{v:.2f}" for v in acq.spacing)
        print(f"{i + 1}/{args.n} {path} {'x'.join(map(str, acq.shape))} at {sp} mm", flush=True)
    return 0
