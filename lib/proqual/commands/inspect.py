"""``proqual inspect``: list the studies found under paths, with sequences, geometry and labels."""

from __future__ import annotations

import argparse
import json
import sys

NAME = "inspect"
HELP = "list the studies in PI-CAI, flat or DICOM folders (or image files): sequences, geometry, labels"
DESCRIPTION = (
    "Import studies the way every other command does and show what was found: each study's sequences with "
    "their voxel spacing and size, the reference labels (PI-RADS, ISUP, csPCa) and any series that were "
    "left out with the reason."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "paths", nargs="+", metavar="PATH", help="PI-CAI folder, flat folder, DICOM folder or image files"
    )
    parser.add_argument("--marksheet", help="PI-CAI marksheet.csv when it is not inside the folder")
    parser.add_argument("--json", action="store_true", help="print the studies as JSON instead of a table")


def _fmt(values, digits=2) -> str:
    return "x".join(f"{v:.{digits}g}" if isinstance(v, float) else str(v) for v in values) if values else "?"


def run(args: argparse.Namespace) -> int:
    from proqual.io.layouts import load_studies

    studies = load_studies(args.paths, marksheet=args.marksheet)
    if args.json:
        json.dump([s.model_dump(mode="json") for s in studies], sys.stdout, indent=2)
        print()
        return 0
    print(f"{len(studies)} studies")
    for s in studies:
        lab = s.labels
        print(
            f"{s.study_id}  patient={s.patient_id or '?'}  PI-RADS={lab.pirads}  ISUP={lab.isup}  csPCa={lab.cspca}"
        )
        for seq, ref in s.sequences.items():
            m = ref.metadata
            print(
                f"  {seq.value:<5} {_fmt(m.matrix)} vox  {_fmt(m.spacing_mm)} mm  {ref.description or ''}  {ref.path}"
            )
        for extra in s.unidentified:
            print(
                f"  left out: {extra.get('description') or extra.get('files', ['?'])[0]}: {extra['reason']}"
            )
        missing = s.missing("T2W", "ADC", "HBV")
        if missing:
            print(f"  missing: {', '.join(missing)}")
    return 0
