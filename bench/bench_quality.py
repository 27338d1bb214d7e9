"""Benchmark: quality scoring of one PI-CAI-sized study (T2W 384x384x24, ADC/HBV 128x128x24).

File reading is excluded (the volumes are in memory); the figure covers slice-stack preparation, the
batched quality-model forward pass, prerequisites and classical measures. Prints the median and spread
of repeated runs and the peak resident memory. With several checkpoints their runs alternate, one of
each per round, so that the machine's noise falls on all alike, and each median is also given as a
ratio to the first checkpoint's. With --cuda (and a GPU) the CUDA figures too.

    .venv/bin/python bench/bench_quality.py [--checkpoint model/quality.pt ...] [--repeats 15] [--cuda]
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time
from pathlib import Path

import torch
from proqual.phantom import make_study
from proqual.quality.scoring import load_quality_model, score_volumes


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--checkpoint",
        type=Path,
        nargs="+",
        action="extend",
        help="one or more quality checkpoints, timed in turn (repeatable: the lists add up; default the "
        "shipped model/quality.pt)",
    )
    ap.add_argument("--repeats", type=int, default=15, help="timed runs per checkpoint (default 15)")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--cuda", action="store_true", help="also time on the GPU when there is one")
    args = ap.parse_args()
    if args.repeats < 1:
        ap.error(f"--repeats must be >= 1, got {args.repeats}")
    if not args.checkpoint:
        args.checkpoint = [Path(__file__).resolve().parents[1] / "model" / "quality.pt"]
    torch.set_num_threads(args.threads)
    study = make_study(0, seed=0, preset="picai")
    vols = study.volumes
    print("study:", {k.value: v.shape for k, v in vols.items()}, f"threads={args.threads}")
    devices = ["cpu"] + (["cuda"] if args.cuda and torch.cuda.is_available() else [])
    if args.cuda and not torch.cuda.is_available():
        print("no CUDA device available: CPU only")
    for dev in devices:
        models = {}
        for ckpt in args.checkpoint:
            models[ckpt] = load_quality_model(ckpt, device=dev)
            for _ in range(2):
                score_volumes(models[ckpt], vols, device=dev)
            print(f"{ckpt}: loaded and warmed up; peak RSS so far {_rss_mib():.0f} MiB")
        times: dict[Path, list[float]] = {c: [] for c in args.checkpoint}
        for _ in range(args.repeats):
            for ckpt, model in models.items():
                if dev == "cuda":
                    torch.cuda.synchronize()
                t = time.perf_counter()
                score_volumes(model, vols, device=dev)
                if dev == "cuda":
                    torch.cuda.synchronize()
                times[ckpt].append(time.perf_counter() - t)
        first = statistics.median(times[args.checkpoint[0]])
        for ckpt, ts in times.items():
            med = statistics.median(ts)
            q = statistics.quantiles(ts, n=4) if len(ts) > 1 else [med, med, med]
            print(
                f"{dev} {ckpt}: median {med:.3f} s  (quartiles {q[0]:.3f} / {q[2]:.3f}, n={len(ts)})"
                f"  ratio to the first {med / first:.2f}"
            )
    print(f"peak RSS {_rss_mib():.0f} MiB (the whole process; with several checkpoints, all of them loaded)")


if __name__ == "__main__":
    main()
