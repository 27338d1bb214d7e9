"""``proqual evaluate-quality``: the evaluation of a quality checkpoint on the sweeps train-quality uses,
printed, and written into a copy of the checkpoint (for a run trained with ``--no-eval``)."""

from __future__ import annotations

import argparse
from pathlib import Path

NAME = "evaluate-quality"
HELP = "evaluate a quality checkpoint on the held-out phantom and real MR sweeps"
DESCRIPTION = (
    "Runs the evaluation that train-quality records in meta.evaluation (the held-out phantoms of cohort "
    "seed 0 and the real MR volumes, the same images for every checkpoint) on CHECKPOINT and prints it. "
    "--out writes the checkpoint again with that evaluation in meta.evaluation (weights and every other "
    "record unchanged; meta.evaluated_by names this command), e.g. for a run trained with --no-eval; "
    "--eval-out writes the checkpoint's metadata with the evaluation as JSON."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", type=Path, metavar="CHECKPOINT", help="the quality checkpoint")
    parser.add_argument(
        "--n-eval", type=int, default=6, help="held-out phantom studies for the family sweep (default 6)"
    )
    parser.add_argument("--preset", default="sample", help="phantom preset of the sweep (default sample)")
    parser.add_argument(
        "--out", type=Path, help="write the checkpoint with the evaluation here (may be CHECKPOINT itself)"
    )
    parser.add_argument("--eval-out", type=Path, help="write the metadata with the evaluation (JSON) here")


def run(args: argparse.Namespace) -> int:
    import copy

    from proqual.commands.train_quality import evaluate, print_evaluation, save_evaluated, write_meta_json
    from proqual.errors import ValidationError
    from proqual.quality.scoring import load_quality_model

    if args.n_eval < 1:
        raise ValidationError("--n-eval", f"must be >= 1, got {args.n_eval}")
    model = load_quality_model(args.checkpoint)
    meta = copy.deepcopy(model.meta)
    meta["evaluation"] = evaluate(model, args.n_eval, args.preset)
    meta["evaluated_by"] = (
        f"proqual evaluate-quality {args.checkpoint} --n-eval {args.n_eval} --preset {args.preset}"
    )
    if args.out is None:
        print_evaluation(meta["evaluation"])
        if args.eval_out:
            write_meta_json(args.eval_out, meta)
        return 0
    # keep float16 storage where the checkpoint had it (ensemble-quality --half)
    save_evaluated(model, args, meta, label=f"{args.checkpoint} with its evaluation", half=model.stored_half)
    return 0
