"""Held-out phantom sweep over several phantom cohorts, for quality checkpoints side by side.

The evaluation in ``proqual train-quality`` (and in the model card) sweeps six held-out phantoms of
cohort seed 0 (indices from 20000): every family of every sequence at severities 0, 0.2, ..., 1. Six
phantoms are few, and some bias-field and spike realisations are much harder than others, so this
script repeats the sweep on other cohorts (other random phantoms and realisations, never used in
training: training uses indices 0.., validation 10000..) and prints, per family and checkpoint, the
SRCC of each cohort and the SRCC over all cohorts pooled, how many families meet the target
(>= 0.90) for each, and the shortfall: the amount by which the families miss the target, summed
(0 when every family meets it; the model card's selection rule adds it to the real-MR shortfall of
``bench/real_mr_sweep.py``). The images of one cohort are simulated once and scored by every
checkpoint.

    .venv/bin/python bench/phantom_sweep.py model/quality.pt [other.pt ...] [--cohorts 0 1] [--studies 6]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import NamedTuple

from proqual.quality import evaluate as E
from proqual.quality.scoring import load_quality_model
from proqual.quality.training import predict

TARGET = 0.90


class Summary(NamedTuple):
    met: int  # families meeting the target
    n: int  # families
    mean: float  # mean SRCC
    shortfall: float  # summed amount by which the families miss the target


def _summary(metrics: dict[str, dict]) -> Summary:
    srccs = [m["srcc"] for m in metrics.values()]
    short = sum(max(0.0, TARGET - v) for v in srccs)
    return Summary(sum(v >= TARGET for v in srccs), len(srccs), sum(srccs) / len(srccs), short)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoints", nargs="+", type=Path, help="quality checkpoints to compare")
    ap.add_argument(
        "--cohorts", nargs="+", type=int, default=[0, 1], help="phantom cohort seeds (default 0 1)"
    )
    ap.add_argument("--studies", type=int, default=6, help="held-out phantom studies per cohort (default 6)")
    ap.add_argument("--start", type=int, default=E.EVAL_START, help=f"first index (default {E.EVAL_START})")
    args = ap.parse_args()
    if args.studies < 1:
        ap.error(f"--studies: must be >= 1, got {args.studies}")
    models = {str(p): load_quality_model(p) for p in args.checkpoints}
    samples, scores = {}, {ck: {} for ck in models}
    for c in args.cohorts:
        print(f"cohort {c}: simulating {args.studies} phantom studies ...", file=sys.stderr, flush=True)
        samples[c] = E.phantom_sweep(n_studies=args.studies, cohort=c, start=args.start)
        for ck, model in models.items():
            scores[ck][c] = predict(model, samples[c])["score"]
    pooled = [x for c in args.cohorts for x in samples[c]]
    cohorts = " ".join(map(str, args.cohorts))
    print(
        f"{args.studies} held-out phantoms per cohort from index {args.start}; "
        f"SRCC(severity, 1 - score) for cohorts {cohorts} | pooled"
    )
    for ck in models:
        by = {c: E.metrics_of(samples[c], scores[ck][c]) for c in args.cohorts}
        all_ = E.metrics_of(pooled, [x for c in args.cohorts for x in scores[ck][c]])
        print(f"  {ck}")
        for fam in sorted(all_):
            vals = " ".join(f"{by[c][fam]['srcc']:6.3f}" if fam in by[c] else "     -" for c in args.cohorts)
            print(f"    {fam:14s} {vals} | {all_[fam]['srcc']:6.3f}")
        rows = [_summary(by[c]) for c in args.cohorts]
        tot = _summary(all_)
        print(f"    {'mean':14s} " + " ".join(f"{r.mean:6.3f}" for r in rows) + f" | {tot.mean:6.3f}")
        print(
            f"    {'>= ' + str(TARGET):14s} "
            + " ".join(f"{r.met:>4d}/{r.n}" for r in rows)
            + f" | {tot.met}/{tot.n}"
        )
        print(
            f"    {'shortfall':14s} "
            + " ".join(f"{r.shortfall:6.3f}" for r in rows)
            + f" | {tot.shortfall:6.3f}"
        )


if __name__ == "__main__":
    main()
