"""Severity calibration check: how much each artifact family changes a phantom image along its severity.

For every family and every sequence it applies to, degrades the clean volumes of a few phantom studies
(preset ``sample``, the quality model's training data) at severities 0, 0.1, ..., 1 and prints the
normalised RMSE against the clean image (over the voxels above 10 % of the 99.5th percentile), as a
fraction of the value at severity 1, plus the ratio "half / full" (NRMSE at severity 0.5 over NRMSE
at 1), and the NRMSE at severity 1 itself ("at 1"), which compares the sequences: the evaluation pools
them, so a family that changes one sequence much less at the same severity is scored less severe
there. An even mapping (the criterion in ``docs/artifacts.md``) gives about 0.5; a value near 0.75
means most of the change happens in the first half of the range, one near 0.3 that low severities
hardly change the image.

    .venv/bin/python bench/severity_curves.py [--studies 3] [--families spike through_plane]
"""

from __future__ import annotations

import argparse

import numpy as np
from proqual import artifacts as A
from proqual.phantom import make_study
from proqual.study import Sequence

SEVERITIES = np.linspace(0.0, 1.0, 11)


def nrmse_curve(image: np.ndarray, spacing, family: A.Family, *, seed: int, sequence: str) -> np.ndarray:
    fg = A.object_mask(image)
    ref = float(np.sqrt(np.mean(image[fg] ** 2)))
    out = []
    for s in SEVERITIES:
        img, _ = A.degrade(image, spacing, family, severity=float(s), seed=seed, sequence=sequence)
        out.append(float(np.sqrt(np.mean((img - image)[fg] ** 2))) / ref)
    return np.array(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--studies", type=int, default=3, help="phantom studies (default 3)")
    ap.add_argument("--start", type=int, default=20000, help="first phantom index (default 20000)")
    ap.add_argument("--families", nargs="*", default=[f.value for f in A.Family], help="default: all")
    args = ap.parse_args()
    studies = [make_study(args.start + i, seed=0, preset="sample") for i in range(args.studies)]
    print(
        f"{args.studies} phantom studies (preset sample) from index {args.start}; NRMSE / NRMSE at severity 1"
    )
    print(
        f"{'family':14s} {'seq':4s} {'at 1':>6s} {'half/full':>9s}  "
        + " ".join(f"{s:4.1f}" for s in SEVERITIES)
    )
    for name in args.families:
        fam = A.Family.parse(name)
        for seq in ("T2W", "ADC", "HBV"):
            if fam not in A.families_for(seq):
                continue
            vols = [st.volumes[Sequence(seq)] for st in studies]
            curves = [
                nrmse_curve(v.array, v.spacing, fam, seed=7 + i, sequence=seq) for i, v in enumerate(vols)
            ]
            m = np.mean(curves, axis=0)
            rel = m / m[-1] if m[-1] > 0 else m
            print(
                f"{fam.value:14s} {seq:4s} {m[-1]:6.3f} {rel[5]:9.2f}  " + " ".join(f"{x:4.2f}" for x in rel)
            )


if __name__ == "__main__":
    main()
