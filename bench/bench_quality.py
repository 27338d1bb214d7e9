"""Benchmark: quality scoring of one PI-CAI-sized study (T2W 384x384x24, ADC/HBV 128x128x24).

File reading is excluded (the volumes are in memory); the figure covers slice-stack preparation, the
batched QualityNet forward pass, prerequisites and classical measures. Prints the median and spread of
repeated runs and the peak resident memory. With --cuda (and a GPU) the CUDA figure too.

    .venv/bin/python bench/bench_quality.py [--checkpoint model/quality.pt] [--repeats 15] [--cuda]
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--checkpoint", type=Path, default=Path(__file__).resolve().parents[1] / "model" / "quality.pt"
    )
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--cuda", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    study = make_study(0, seed=0, preset="picai")
    vols = study.volumes
    print("study:", {k.value: v.shape for k, v in vols.items()}, f"threads={args.threads}")
    devices = ["cpu"] + (["cuda"] if args.cuda and torch.cuda.is_available() else [])
    if args.cuda and not torch.cuda.is_available():
        print("no CUDA device available: CPU only")
    for dev in devices:
        model = load_quality_model(args.checkpoint, device=dev)
        for _ in range(2):
            score_volumes(model, vols, device=dev)
        times = []
        for _ in range(args.repeats):
            if dev == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            score_volumes(model, vols, device=dev)
            if dev == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t)
        q = statistics.quantiles(times, n=4)
        print(
            f"{dev}: median {statistics.median(times):.3f} s  (quartiles {q[0]:.3f} / {q[2]:.3f}, n={len(times)})"
        )
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
