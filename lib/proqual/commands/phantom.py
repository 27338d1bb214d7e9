"""``proqual phantom``: write synthetic bi-parametric prostate MRI studies (PI-CAI layout)."""

from __future__ import annotations

import argparse
from pathlib import Path

NAME = "phantom"
HELP = "generate deterministic synthetic prostate MRI studies (T2W, ADC, HBV, masks, marksheet)"
DESCRIPTION = (
    "Write phantom studies in PI-CAI layout: images/<patient>/<patient>_<study>_{t2w,adc,hbv}.mha, "
    "masks/<patient>_<study>_{gland,pz,tz,lesion}.mha and marksheet.csv; with --dicom also each study as "
    "DICOM series under dicom/. The same arguments always give the same bytes."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from proqual.phantom import PRESETS

    parser.add_argument("--out", required=True, type=Path, help="output folder (created; must be empty)")
    parser.add_argument("--n", type=int, default=8, help="number of studies (default 8)")
    parser.add_argument("--seed", type=int, default=0, help="cohort seed (default 0)")
    parser.add_argument(
        "--preset",
        default="picai",
        choices=sorted(PRESETS),
        help="grid sizes: picai (T2W 384x384x24), sample (192x192x16), test (128x128x12); default picai",
    )
    parser.add_argument("--start", type=int, default=0, help="index of the first study (default 0)")
    parser.add_argument(
        "--dicom", action="store_true", help="also write every study as DICOM series under OUT/dicom/"
    )
    parser.add_argument("--overwrite", action="store_true", help="allow a non-empty output folder")


def run(args: argparse.Namespace) -> int:
    from proqual.errors import InputError
    from proqual.phantom import write_picai

    if args.out.exists() and any(args.out.iterdir()) and not args.overwrite:
        raise InputError(args.out, "output folder is not empty (use --overwrite to add to it)")
    write_picai(
        args.out,
        n=args.n,
        seed=args.seed,
        preset=args.preset,
        start=args.start,
        dicom=args.dicom,
        progress=True,
    )
    print(f"wrote {args.n} studies to {args.out}")
    return 0
