"""Benchmark: ProFound-Conv tiny forward on one 3 x 64 x 224 x 224 input (inference mode), and the
finetuning throughput of the small-cpu preset.

Variants measured side by side in one run (same weights, outputs checked against the reference), each
adding one change to the one before:
- reference: plain eager ConvNeXt-V2 as originally written: channels-first tensors, the channels-first
  LayerNorm written out (mean / variance per voxel), GRN as gamma * (x * nx) + beta + x;
- fused_layernorm: the channels-first LayerNorm as one move to channels-last and F.layer_norm;
- channels_last_3d: the input in channels_last_3d memory format (oneDNN's fast depth-wise Conv3d);
- default: ProQual's model as shipped: the above plus GRN as one fused pass (sum of squares over the
  flattened spatial axes, addcmul);
- compiled: torch.compile of the default (skipped with --no-compile).

    .venv/bin/python bench/bench_profound.py [--repeats 5] [--no-compile] [--cuda] [--finetune-throughput]
"""

from __future__ import annotations

import argparse
import copy
import resource
import statistics
import time

import torch
from proqual.nets import profound_conv as pc


class ReferenceLayerNorm(torch.nn.Module):
    """ConvNeXt's original channels-first LayerNorm (explicit mean/variance), for comparison."""

    def __init__(self, ln: pc.LayerNorm):
        super().__init__()
        self.weight, self.bias, self.eps = ln.weight, ln.bias, ln.eps

    def forward(self, x):
        u = x.mean(1, keepdim=True)
        s = (x - u).pow(2).mean(1, keepdim=True)
        x = (x - u) / torch.sqrt(s + self.eps)
        return self.weight[:, None, None, None] * x + self.bias[:, None, None, None]


class ReferenceGRN(torch.nn.Module):
    """GRN as written in ConvNeXt-V2 (four full passes over x)."""

    def __init__(self, grn: pc.GRN):
        super().__init__()
        self.gamma, self.beta = grn.gamma, grn.beta

    def forward(self, x):
        gx = torch.linalg.vector_norm(x, dim=(1, 2, 3), keepdim=True)
        nx = gx / (gx.mean(dim=-1, keepdim=True) + 1e-6)
        return self.gamma * (x * nx) + self.beta + x


class EagerConv(torch.nn.Module):
    """The same weights run without ProQual's channels_last_3d conversion (the input's layout is kept)."""

    def __init__(self, model: pc.ProFoundConv):
        super().__init__()
        self.model = model

    def forward(self, x):
        m = self.model
        for down, stage in zip(m.downsample_layers, m.stages, strict=True):
            x = stage(down(x))
        return m.norm(x.mean(dim=(-3, -2, -1)))


def reference_grn(model):
    for stage in model.stages:
        for block in stage:
            block.grn = ReferenceGRN(block.grn)
    return model


def reference_layernorm(model):
    for down in model.downsample_layers:
        for i, m in enumerate(down):
            if isinstance(m, pc.LayerNorm) and m.data_format == "channels_first":
                down[i] = ReferenceLayerNorm(m)
    return model


def reference_model(model):
    return EagerConv(reference_layernorm(reference_grn(copy.deepcopy(model))))


def timeit(fn, x, repeats, sync=lambda: None):
    with torch.inference_mode():
        fn(x)
        sync()
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            fn(x)
            sync()
            times.append(time.perf_counter() - t)
    return statistics.median(times), times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--cuda", action="store_true")
    ap.add_argument("--finetune-throughput", action="store_true")
    args = ap.parse_args()
    torch.manual_seed(0)
    model = pc.profound_conv("tiny").eval()
    x = torch.rand(1, 3, 64, 224, 224)
    with torch.inference_mode():
        want = reference_model(model)(x)
    rows = []
    fused_ln = EagerConv(reference_grn(copy.deepcopy(model)))
    variants = {
        "reference": (reference_model(model), x),
        "fused_layernorm": (fused_ln, x),
        "channels_last_3d": (fused_ln, x.contiguous(memory_format=torch.channels_last_3d)),
        "default": (model, x),
    }
    if not args.no_compile:
        t = time.perf_counter()
        compiled = torch.compile(copy.deepcopy(model))
        with torch.inference_mode():
            compiled(x)
        print(f"torch.compile warm-up {time.perf_counter() - t:.1f} s")
        variants["compiled"] = (compiled, x)
    for name, (m, inp) in variants.items():
        med, times = timeit(m, inp, args.repeats)
        with torch.inference_mode():
            err = float((m(inp) - want).abs().max())
        rows.append((name, med, min(times), max(times), err))
    base = rows[0][1]
    print(
        f"ProFound-Conv tiny, 1 x 3 x 64 x 224 x 224, CPU threads={torch.get_num_threads()}, repeats={args.repeats}"
    )
    print(f"{'variant':<18}{'median s':>10}{'min':>8}{'max':>8}{'vs ref':>8}{'max|diff|':>12}")
    for name, med, lo, hi, err in rows:
        print(f"{name:<18}{med:>10.3f}{lo:>8.3f}{hi:>8.3f}{base / med:>7.2f}x{err:>12.2e}")
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
    if args.cuda:
        if not torch.cuda.is_available():
            print("no CUDA device available")
        else:
            mc, xc = model.cuda(), x.cuda()

            def bf16(inp):
                with torch.autocast("cuda", dtype=torch.bfloat16):
                    return mc(inp)

            med, _ = timeit(bf16, xc, 20, torch.cuda.synchronize)
            print(
                f"CUDA bf16 autocast: median {med * 1000:.1f} ms, peak GPU memory {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB"
            )
    if args.finetune_throughput:
        from proqual.nets.classifier import Classifier

        clf = Classifier(pc.profound_conv("small-cpu"), 2).train()
        opt = torch.optim.AdamW(clf.parameters(), lr=1e-3)
        xb, yb = torch.rand(2, 3, 32, 96, 96), torch.tensor([0, 1])
        times = []
        for i in range(8):
            t = time.perf_counter()
            loss = torch.nn.functional.cross_entropy(clf(xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if i >= 2:
                times.append(time.perf_counter() - t)
        med = statistics.median(times)
        print(f"small-cpu finetuning (batch 2, 3 x 32 x 96 x 96): {med:.3f} s/step, {2 / med:.1f} studies/s")


if __name__ == "__main__":
    main()
