"""``proqual interpolate-quality``: the weights part of the way from one quality checkpoint to another
that was finetuned from it (weight-space interpolation, as in WiSE-FT)."""

from __future__ import annotations

import argparse
from pathlib import Path

from proqual.commands.train_quality import add_checkpoint_arguments

NAME = "interpolate-quality"
HELP = "interpolate the weights of a quality checkpoint and one finetuned from it"
DESCRIPTION = (
    "Writes the quality model whose every weight and batch-norm statistic is (1 - ALPHA) x BASE + ALPHA x "
    "TUNED. TUNED must have been finetuned from BASE (train-quality --init BASE), or both from one "
    "checkpoint, so that both have the same architecture and lie close in weight space; the result then "
    "often keeps much of the finetune's gain on its training data and much of BASE's behaviour elsewhere "
    "(for two finetunes of one start, ALPHA 0.5 is their weight-space mean, a 'model soup'). Both "
    "checkpoints' records (with meta.init, what each was finetuned from) are kept under meta.base and "
    "meta.tuned (and BASE's members under meta.members), and the result is evaluated on the same "
    "sweeps as train-quality unless --no-eval."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "base", type=Path, metavar="BASE", help="the quality checkpoint the finetune started from"
    )
    parser.add_argument(
        "tuned", type=Path, metavar="TUNED", help="the quality checkpoint finetuned from BASE"
    )
    parser.add_argument(
        "--alpha",
        type=float,
        default=0.5,
        help="share of TUNED in every weight, in [0, 1] (default 0.5: halfway; 0 gives BASE, 1 TUNED)",
    )
    add_checkpoint_arguments(parser)
    parser.add_argument("--preset", default="sample", help="phantom preset of the sweep (default sample)")
    parser.add_argument(
        "--eval-out", type=Path, help="write the checkpoint's metadata and evaluation (JSON) here"
    )
    parser.add_argument("--no-eval", action="store_true", help="skip the per-family evaluation sweeps")


def run(args: argparse.Namespace) -> int:
    import time

    import torch

    from proqual.commands.train_quality import checkpoint_record, evaluation_as_asked, save_evaluated
    from proqual.errors import ValidationError
    from proqual.quality.scoring import load_quality_model

    if not 0 <= args.alpha <= 1:
        raise ValidationError("--alpha", f"must be in [0, 1], got {args.alpha}")
    if args.base.resolve() == args.tuned.resolve():
        raise ValidationError("TUNED", "BASE and TUNED are the same checkpoint")
    if args.out.resolve() in {args.base.resolve(), args.tuned.resolve()}:
        raise ValidationError("--out", f"{args.out} is BASE or TUNED; write the result elsewhere")
    if args.n_eval < 1:
        raise ValidationError("--n-eval", f"must be >= 1, got {args.n_eval}")
    t0 = time.time()
    base, tuned = load_quality_model(args.base), load_quality_model(args.tuned)
    if type(base) is not type(tuned) or base.config.to_dict() != tuned.config.to_dict():
        raise ValidationError(
            "TUNED", f"{args.tuned} has another architecture than {args.base}; it must be finetuned from it"
        )
    a = float(args.alpha)
    sd_tuned = tuned.state_dict()
    mixed = {}
    for k, v in base.state_dict().items():
        w = sd_tuned[k]
        if v.shape != w.shape:
            raise ValidationError(
                "TUNED", f"{args.tuned}: weight {k} has shape {tuple(w.shape)}, BASE {tuple(v.shape)}"
            )
        # integer buffers (batch-norm step counters) are taken from TUNED
        mixed[k] = torch.lerp(v.float(), w.float(), a).to(v.dtype) if v.is_floating_point() else w.clone()
    base.load_state_dict(mixed)
    model = base.eval()
    meta: dict = {
        "interpolation": f"(1 - {a:g}) x base + {a:g} x tuned, every weight and batch-norm statistic",
        "base": checkpoint_record(args.base, base),
        "tuned": checkpoint_record(args.tuned, tuned),
    }
    if base.meta.get("members"):
        meta["members"] = base.meta["members"]
    meta["evaluation"] = evaluation_as_asked(model, args)
    meta["seconds"] = round(time.time() - t0)
    meta["command"] = f"proqual interpolate-quality {args.base} {args.tuned} --alpha {a:g} --out {args.out}"
    save_evaluated(model, args, meta, label=meta["interpolation"])
    return 0
