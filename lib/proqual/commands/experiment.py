"""``proqual experiment``: the image-quality experiment grid on the phantom cohort."""

from __future__ import annotations

import argparse
from pathlib import Path

NAME = "experiment"
HELP = "run the finetune-HQ x test-HQ x N x pretrained/scratch experiment grid (resumable)"
DESCRIPTION = (
    "Reproduces the design of 'Impact of Clinical Image Quality on Efficient Foundation Model Finetuning' "
    "(arXiv 2508.11864) on phantoms: the HQ fraction of the finetune set and of the test set vary independently, a "
    "pretrained (FCMAE-style, on HQ phantoms) small ProFound-Conv is compared with training from scratch, over seeds "
    "and finetune-set sizes. Writes runs.csv, heatmap.png and label_efficiency.png to --out; rerunning the same "
    "command resumes an interrupted grid."
)


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(v) for v in text.split(","))


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(","))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from proqual.commands.finetune import add_stratum_arguments

    parser.add_argument(
        "paths",
        nargs="*",
        metavar="PATH",
        help="labeled PI-CAI or flat folders: run the grid on real data (split into finetune and test "
        "pools, see --test-fraction) instead of the phantom cohort",
    )
    parser.add_argument(
        "--out", type=Path, default=Path("runs/experiment"), help="output folder (default runs/experiment)"
    )
    parser.add_argument("--scheme", default="pirads_ge4", help="label scheme (default pirads_ge4)")
    parser.add_argument(
        "--sizes", type=_ints, default=(8, 16, 32), help="finetune-set sizes N (default 8,16,32)"
    )
    parser.add_argument(
        "--finetune-hq", type=_floats, default=(0.0, 0.5, 1.0), help="finetune HQ fractions (default 0,0.5,1)"
    )
    parser.add_argument(
        "--test-hq", type=_floats, default=(0.0, 0.5, 1.0), help="test HQ fractions (default 0,0.5,1)"
    )
    parser.add_argument("--seeds", type=_ints, default=(0, 1), help="seeds (default 0,1)")
    parser.add_argument("--epochs", type=int, default=30, help="finetuning epochs per run (default 30)")
    parser.add_argument(
        "--pool-size", type=int, default=64, help="phantom studies in the finetune pool (default 64)"
    )
    parser.add_argument(
        "--test-pool-size", type=int, default=48, help="phantom studies in the test pool (default 48)"
    )
    parser.add_argument("--n-test", type=int, default=24, help="studies per test set (default 24)")
    parser.add_argument(
        "--pretrain-studies", type=int, default=48, help="HQ phantoms for pretraining (default 48)"
    )
    parser.add_argument("--pretrain-epochs", type=int, default=8, help="pretraining epochs (default 8)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument(
        "--preset",
        default="small-cpu",
        help="ProFound-Conv preset: small-cpu (default) or tiny (ProFound's; use a GPU)",
    )
    parser.add_argument(
        "--inputs",
        help="input grid: small (3 x 32 x 96 x 96) or profound (3 x 64 x 224 x 224); default: small for "
        "small-cpu, profound otherwise",
    )
    parser.add_argument(
        "--init",
        help="checkpoint for the 'pretrained' runs (official ProFound FCMAE or finetuned layout, or ProQual's); "
        "default: FCMAE-style pretraining on HQ phantoms (or on the real finetune pool with PATH)",
    )
    parser.add_argument(
        "--test-fraction",
        type=float,
        default=0.4,
        help="with PATH: share of the studies held out as the test pool, per stratum and class (default 0.4)",
    )
    add_stratum_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from proqual.classify.experiment import GridConfig, run_grid, summarise
    from proqual.labels import get_scheme

    get_scheme(args.scheme)
    cfg = GridConfig(
        scheme=args.scheme,
        sizes=args.sizes,
        finetune_hq=args.finetune_hq,
        test_hq=args.test_hq,
        seeds=args.seeds,
        epochs=args.epochs,
        pool_size=args.pool_size,
        test_pool_size=args.test_pool_size,
        n_test=args.n_test,
        pretrain_studies=args.pretrain_studies,
        pretrain_epochs=args.pretrain_epochs,
        device=args.device,
        preset=args.preset,
        inputs=args.inputs or ("small" if args.preset == "small-cpu" else "profound"),
        data=tuple(str(p) for p in args.paths),
        test_fraction=args.test_fraction,
        init_checkpoint=args.init,
        quality_checkpoint=None if args.quality_checkpoint is None else str(args.quality_checkpoint),
        hq_threshold=args.hq_threshold,
    )
    csv_path = run_grid(cfg, args.out, log=lambda m: print(m, flush=True))
    print(f"wrote {csv_path}, {args.out / 'heatmap.png'}, {args.out / 'label_efficiency.png'}")
    mean = summarise(csv_path)
    n_max = max(k[1] for k in mean)
    for init in sorted({k[0] for k in mean}):
        cells = ", ".join(
            f"ft{f:.1f}/test{t:.1f}={v:.3f}"
            for (i, n, f, t), v in sorted(mean.items())
            if i == init and n == n_max
        )
        print(f"{init} N={n_max}: {cells}")
    return 0
