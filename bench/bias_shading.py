"""How far the real-MR bias sweeps can be ranked from the image alone: visible shading against severity.

The bias family multiplies an image by a smooth random field whose strength grows with the severity
(``proqual.artifacts``). A real volume already carries shading of its own (coil sensitivity, anatomy),
and a field that happens to run against it makes the image *more* uniform at low severity, so a score
that follows what it can see must rise there. For each real MR volume of the evaluation and each
realisation seed of ``bench/real_mr_sweep.py`` this prints

- ``corr``: the correlation, over the object, between the simulated log field and the volume's own
  low-order log shading (negative: the field cancels part of the native shading);
- ``shading``: the visible shading of the degraded image at severities 0, 0.2, ..., 1, i.e. the
  standard deviation over the object of a 3rd-order Legendre polynomial fitted to its log intensity;
- per checkpoint given, its score at the same severities;

and, pooled over the seeds, SRCC(severity, -shading): what a score that tracks this visible shading
exactly would reach against the target (<= -0.85), beside each checkpoint's pooled SRCC(severity,
score). The shading fit also absorbs low-order anatomy, so it is an estimate, not a bound.

    .venv/bin/python bench/bias_shading.py [model/quality.pt ...] [--seeds 0 1 2 3 4] [--order 3]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from numpy.polynomial import legendre
from proqual import artifacts as A
from proqual.metrics import srcc
from proqual.quality import evaluate as E
from proqual.quality.scoring import load_quality_model
from proqual.quality.training import predict


def low_order_design(shape, spacing, mask: np.ndarray, order: int) -> np.ndarray:
    """(n_mask, n_terms) 3D Legendre terms of total degree 1..``order`` at the voxels of ``mask``, on
    physical coordinates scaled to [-1, 1] along the longest axis (as the simulated field)."""
    half = max((n - 1) / 2.0 * s for n, s in zip(shape, spacing, strict=True)) or 1.0
    axes = [(np.arange(n) - (n - 1) / 2.0) * s / half for n, s in zip(shape, spacing, strict=True)]
    idx = np.nonzero(mask)
    u = [ax[i] for ax, i in zip(axes, idx, strict=True)]
    polys = [[legendre.legval(c, np.eye(order + 1)[d]) for d in range(order + 1)] for c in u]
    cols = [
        polys[0][i] * polys[1][j] * polys[2][k]
        for i in range(order + 1)
        for j in range(order + 1 - i)
        for k in range(order + 1 - i - j)
        if i + j + k > 0
    ]
    return np.stack(cols, axis=1)


def low_order_log(image: np.ndarray, spacing, mask: np.ndarray, order: int) -> np.ndarray:
    """The low-order part (zero mean) of log(image) over ``mask``, by least squares."""
    design = low_order_design(image.shape, spacing, mask, order)
    logs = np.log(image[mask])
    full = np.column_stack([design, np.ones(len(logs))])
    coef, *_ = np.linalg.lstsq(full, logs, rcond=None)
    fit = design @ coef[:-1]
    return fit - fit.mean()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoints", nargs="*", type=Path, help="quality checkpoints to show beside it")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4], help="default 0 1 2 3 4")
    ap.add_argument("--order", type=int, default=3, help="polynomial order of the shading fit (default 3)")
    args = ap.parse_args()
    if args.order < 1:
        ap.error(f"--order must be >= 1, got {args.order}")
    models = {str(p): load_quality_model(p) for p in args.checkpoints}
    for name, vol in E.real_mr_volumes():
        clean = vol.array
        mask = A.object_mask(clean) & (clean > 0)
        native = low_order_log(clean, vol.spacing, mask, args.order)
        print(f"\n{name}: bias sweeps, severities {' '.join(f'{s:.1f}' for s in E.SEVERITIES)}")
        sev_all, shade_all = [], []
        score_all: dict[str, list[float]] = {k: [] for k in models}
        for seed in args.seeds:
            bias = [
                (sev, img, par)
                for fam, sev, img, par in E.real_mr_images(vol, seed=seed)
                if fam is A.Family.BIAS
            ]
            images = [(sev, img) for sev, img, _ in bias]
            field = np.log(np.maximum(images[-1][1][mask], 1e-12)) - np.log(clean[mask])
            corr = float(np.corrcoef(field, native)[0, 1])
            shading = []
            for _, img in images:
                ok = mask & (img > 0)
                shading.append(float(np.std(low_order_log(img, vol.spacing, ok, args.order))))
            sev_all += [s for s, _ in images]
            shade_all += shading
            print(f"  seed {seed}: corr {corr:+.2f}  shading " + " ".join(f"{v:.3f}" for v in shading))
            if models:
                samples = [
                    E.sweep_sample(vol, A.Family.BIAS, sev, img, par, prompt=E.REAL_MR_PROMPT)
                    for sev, img, par in bias
                ]
                for ckpt, model in models.items():
                    sc = predict(model, samples)["score"]
                    score_all[ckpt] += [float(v) for v in sc]
                    print(f"    {ckpt}: score " + " ".join(f"{v:.3f}" for v in sc))
        sev = np.array(sev_all)
        print(f"  pooled over seeds: SRCC(severity, -shading) {srcc(sev, -np.array(shade_all)):6.2f}")
        for ckpt, vals in score_all.items():
            print(f"  pooled over seeds: SRCC(severity, score) {srcc(sev, np.array(vals)):6.2f}  {ckpt}")


if __name__ == "__main__":
    main()
