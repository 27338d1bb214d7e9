"""``proqual finetune``: one finetuning run of a PI-RADS or ISUP classifier (reproduces model/pirads.pt and
model/isup.pt on phantoms; the MONAI Label trainers call the same function)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

NAME = "finetune"
HELP = "finetune a ProFound-Conv PI-RADS / ISUP classifier on phantoms or a labeled PI-CAI folder"
DESCRIPTION = (
    "Train one classifier and save it with its config, data composition (per class and quality stratum) and "
    "validation metrics. Data: --phantoms N (phantom cohort; --lq-fraction of them degraded by the artifact "
    "simulator) or PATH (a PI-CAI/flat folder with labels). Initialisation: --init CHECKPOINT (an official "
    "ProFound FCMAE or classifier checkpoint, or ours), --pretrain (FCMAE-style pretraining on the training "
    "images first), or neither (from scratch). --world-size N trains data-parallel (DistributedDataParallel) on "
    "N processes on this machine: one per GPU with --device cuda (NCCL), or N CPU processes (gloo); every "
    "rank trains on a disjoint shard of each epoch's stratified order, --batch-size is per rank, and the "
    "checkpoint is written once."
)


def add_stratum_arguments(parser: argparse.ArgumentParser) -> None:
    """Options for the quality stratum of real studies (shared with ``proqual experiment``)."""
    parser.add_argument(
        "--quality-checkpoint",
        type=Path,
        help="real studies without an expert study PI-QUAL get their stratum from this quality model "
        "(e.g. model/quality.pt); without it they stay 'unknown' and are left out of stratified sets",
    )
    parser.add_argument(
        "--hq-threshold",
        type=float,
        help="quality score at or above which a study is HQ (default 0.8; expert PI-QUAL 3 is always HQ)",
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "paths", nargs="*", metavar="PATH", help="labeled PI-CAI or flat folders (or use --phantoms)"
    )
    parser.add_argument("--phantoms", type=int, help="train on N phantom studies instead of PATH")
    parser.add_argument(
        "--lq-fraction", type=float, default=0.5, help="phantoms degraded as LQ (default 0.5)"
    )
    add_stratum_arguments(parser)
    parser.add_argument(
        "--val", type=int, default=32, help="held-out phantom studies for validation (default 32)"
    )
    parser.add_argument(
        "--scheme",
        default="pirads_ge4",
        help="pirads_ge4 (default), pirads_ge3, pirads_4class, pirads_5class, cspca, isup_gg",
    )
    parser.add_argument(
        "--preset", default="small-cpu", help="backbone preset: small-cpu (default) or tiny (ProFound)"
    )
    parser.add_argument(
        "--inputs", default=None, help="input config: small or profound (default: small for small-cpu)"
    )
    parser.add_argument("--mode", default="full", choices=["full", "linear", "scratch"])
    parser.add_argument(
        "--init", type=Path, help="initial weights (FCMAE, ProFound classifier or ProQual checkpoint)"
    )
    parser.add_argument(
        "--pretrain", action="store_true", help="FCMAE-style pretraining on the training images first"
    )
    parser.add_argument("--pretrain-epochs", type=int, default=8)
    parser.add_argument(
        "--hq-fraction", type=float, help="HQ fraction kept in every epoch (default: the data's own)"
    )
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--world-size",
        type=int,
        default=1,
        metavar="N",
        help="data-parallel training (DDP) on N processes: with --device cuda one per GPU (cuda:0..N-1, "
        "NCCL), else N CPU processes (gloo); --batch-size is per process (default 1: no DDP)",
    )
    parser.add_argument("--out", type=Path, required=True, help="checkpoint path, e.g. model/pirads.pt")
    parser.add_argument(
        "--cache", type=Path, default=Path("runs/cache"), help="preprocessed-input cache folder"
    )


def run(args: argparse.Namespace) -> int:
    import time

    import torch

    from proqual.checkpoints import load_checkpoint, save_checkpoint
    from proqual.classify.data import INPUTS, phantom_examples, study_examples
    from proqual.classify.distributed import finetune_distributed, rank_devices
    from proqual.classify.finetune import FinetuneConfig, finetune
    from proqual.classify.infer import build_classifier, classifier_config
    from proqual.errors import ValidationError
    from proqual.labels import get_scheme
    from proqual.stratify import FinetuneSet, PoolItem

    t0 = time.time()
    if args.world_size < 1:
        raise ValidationError("--world-size", f"must be at least 1, got {args.world_size}")
    devices = rank_devices(args.world_size, args.device) if args.world_size > 1 else None
    scheme = get_scheme(args.scheme)
    inputs = INPUTS[args.inputs or ("small" if args.preset == "small-cpu" else "profound")]
    log = lambda m: print(m, flush=True)  # noqa: E731
    if args.phantoms:
        rng_lq = {i for i in range(args.phantoms) if (i * 7919) % 100 < args.lq_fraction * 100}
        train = phantom_examples(
            list(range(args.phantoms)),
            seed=args.seed + 1000,
            lq=rng_lq,
            scheme=scheme,
            inputs=inputs,
            cache_dir=args.cache,
            progress=lambda i, n: (
                log(f"preparing training phantoms {i}/{n}") if i % 16 == 0 or i == n else None
            ),
        )
        val_idx = list(range(50_000, 50_000 + args.val))
        val = phantom_examples(
            val_idx,
            seed=args.seed + 1000,
            lq={i for i in val_idx if i % 2},
            scheme=scheme,
            inputs=inputs,
            cache_dir=args.cache,
        )
        data_desc = (
            f"{args.phantoms} phantom studies (cohort seed {args.seed + 1000}, {len(rng_lq)} degraded as LQ); "
            f"validation {args.val} held-out phantoms (half LQ)"
        )
    elif args.paths:
        from proqual.io.layouts import load_studies

        train, counts = study_examples(
            load_studies(args.paths),
            scheme=scheme,
            inputs=inputs,
            quality_checkpoint=args.quality_checkpoint,
            hq_threshold=args.hq_threshold,
        )
        log(
            f"strata: {counts['expert']} from expert PI-QUAL, {counts['model']} from the quality model, "
            f"{counts['unknown']} unknown; {counts['unlabeled']} studies without a {scheme.name} label skipped"
        )
        n_val = max(1, len(train) // 5)
        val, train = train[:n_val], train[n_val:]
        data_desc = (
            f"{len(train)} labeled studies from {', '.join(map(str, args.paths))}; validation {len(val)}"
        )
    else:
        raise ValidationError("data", "give PATH(s) with labeled studies or --phantoms N")
    config = classifier_config(preset=args.preset, scheme=scheme, inputs=inputs)
    torch.manual_seed(args.seed)
    model = build_classifier(config)
    init_desc = "random (scratch)"
    if args.init:
        rep = load_checkpoint(model, args.init)
        init_desc = f"{args.init} ({rep.layout}; {len(rep.not_in_checkpoint)} head keys initialised fresh)"
    elif args.pretrain:
        from proqual.classify.pretrain import pretrain_fcmae

        hist = pretrain_fcmae(
            model.encoder,
            [e.image for e in train],
            epochs=args.pretrain_epochs,
            device=args.device,
            progress=lambda r: log(f"pretraining epoch {r['epoch']}: loss {r['loss']:.4f}"),
        )
        init_desc = f"FCMAE-style pretraining on the training images ({args.pretrain_epochs} epochs, final loss {hist['history'][-1]['loss']:.4f})"
    mode = "scratch" if (args.mode == "full" and not (args.init or args.pretrain)) else args.mode
    cfg = FinetuneConfig(
        mode=mode,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        device=args.device,
        hq_fraction=args.hq_fraction,
    )
    items = [PoolItem(e.study_id, e.label, e.stratum) for e in train]
    own_hq = sum(i.stratum == "HQ" for i in items) / len(items) if items else 0.0
    target = args.hq_fraction if args.hq_fraction is not None else own_hq  # no target: the data's own make-up
    comp = FinetuneSet(items, round(target, 4), len(train)).composition()
    log(
        f"finetune set: {comp['n_drawn']} studies, HQ {comp['hq']} / LQ {comp['lq']}, classes {comp['per_class']}"
    )

    def progress(r: dict) -> None:
        log(
            f"epoch {r['epoch']}: loss {r['loss']:.4f}  val AUROC {r.get('val_auroc', float('nan')):.3f}  ({r['seconds']} s)"
        )

    if devices:
        log(f"data-parallel: {args.world_size} processes on {', '.join(devices)}")
        res = finetune_distributed(
            model,
            train,
            scheme=scheme,
            cfg=cfg,
            val=val,
            world_size=args.world_size,
            devices=devices,
            progress=progress,
        )
        d = res["distributed"]
        log(
            f"data-parallel: {d['world_size']} ranks ({d['backend']}), studies per rank {d['samples_per_rank']}, "
            f"parameters identical across ranks: {'yes' if d['parameters_identical'] else 'NO'}"
        )
    else:
        res = finetune(model, train, scheme=scheme, cfg=cfg, val=val, progress=progress)
    from proqual.classify.finetune import evaluate

    metrics = evaluate(model, val, scheme, device=args.device)
    meta = {
        "data": data_desc,
        "init": init_desc,
        "composition": comp,
        "validation": metrics,
        "training": res,
        "seconds": round(time.time() - t0),
        "command": "proqual finetune "
        + " ".join(
            f"--{k.replace('_', '-')} {v}"
            for k, v in vars(args).items()
            if k not in ("_run", "command", "verbose", "paths") and v not in (None, False)
        ),
    }
    save_checkpoint(model, args.out, meta=meta, config=config)
    log(f"saved {args.out}: validation " + json.dumps({k: round(v, 3) for k, v in metrics.items()}))
    return 0
