"""``proqual ensemble-quality``: combine quality checkpoints trained with different seeds into one
checkpoint whose model is their mean (:class:`proqual.nets.quality_net.QualityEnsemble`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from proqual.commands.train_quality import add_checkpoint_arguments

NAME = "ensemble-quality"
HELP = "combine quality checkpoints (e.g. train-quality runs with different --seed) into one mean model"
DESCRIPTION = (
    "Writes one quality checkpoint whose score, class probabilities, artifact parameters and slice curves "
    "are the means of the members' (train-quality runs with different --seed differ by up to 0.2 SRCC "
    "per family; their mean varies less). The members' own metadata (with meta.init, what a finetuned "
    "member started from) is kept under meta.members, and the ensemble is evaluated on the same sweeps "
    "as train-quality unless --no-eval. Scoring time grows with the number of members (and fourfold for "
    "the networks with --flips). An ensemble given as a MEMBER contributes its members, with their "
    "metadata."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "members",
        nargs="+",
        type=Path,
        metavar="MEMBER",
        help="quality checkpoints: single models, or ensembles, which contribute their members (at least 2 "
        "members in all)",
    )
    add_checkpoint_arguments(parser)
    parser.add_argument("--preset", default="sample", help="phantom preset of the sweep (default sample)")
    parser.add_argument(
        "--eval-out", type=Path, help="write the checkpoint's metadata and evaluation (JSON) here"
    )
    parser.add_argument("--no-eval", action="store_true", help="skip the per-family evaluation sweeps")
    parser.add_argument(
        "--half",
        action="store_true",
        help="store the weights as float16: half the file (4 members fit in 12 MB); the model still computes "
        "in float32 after loading, and scores move by up to about 5e-4",
    )
    parser.add_argument(
        "--flips",
        action="store_true",
        help="score every input also in its in-plane mirror images (left-right, up-down, both) and average "
        "over the four views: the score no longer depends on which way a shading gradient or other pattern "
        "runs; the networks' share of the scoring time grows fourfold",
    )


def run(args: argparse.Namespace) -> int:
    import time

    from proqual.commands.train_quality import checkpoint_record, evaluation_as_asked, save_evaluated
    from proqual.errors import ValidationError
    from proqual.nets.quality_net import QualityEnsemble, QualityEnsembleConfig, QualityNet
    from proqual.quality.scoring import load_quality_model

    if len({p.resolve() for p in args.members}) < len(args.members):
        raise ValidationError("MEMBER", "the same checkpoint is given twice")
    if args.n_eval < 1:
        raise ValidationError("--n-eval", f"must be >= 1, got {args.n_eval}")
    if args.out.resolve() in {p.resolve() for p in args.members}:
        raise ValidationError("--out", f"{args.out} is one of the members; write the ensemble elsewhere")
    t0 = time.time()
    nets: list[QualityNet] = []
    members_meta: list[dict] = []
    for p in args.members:
        net = load_quality_model(p)
        if isinstance(net, QualityNet):
            nets.append(net)
            members_meta.append(
                {
                    **checkpoint_record(p, net),
                    "stages": net.meta.get("stages", []),
                    "evaluation": net.meta.get("evaluation", {}),
                }
            )
            continue
        # an ensemble contributes its members; their records come from its own metadata
        kept = net.meta.get("members") or []
        if len(kept) != len(net.members):
            kept = [{} for _ in net.members]
        for sub, rec in zip(net.members, kept, strict=True):
            nets.append(sub)
            members_meta.append({**rec, "via": str(p), "via_sha256": net.version["sha256"]})
    if len(nets) < 2:
        raise ValidationError("MEMBER", f"an ensemble needs at least 2 members, got {len(nets)}")
    model = QualityEnsemble(QualityEnsembleConfig([n.config for n in nets], flips=args.flips))
    for slot, net in zip(model.members, nets, strict=True):
        slot.load_state_dict(net.state_dict())
    model.eval()
    meta: dict = {
        "ensemble": f"mean of {len(nets)} members" + (" over 4 in-plane mirror views" if args.flips else ""),
        "weights_dtype": "float16" if args.half else "float32",
        "members": members_meta,
    }
    if args.half:
        # evaluate what the file will hold: the weights rounded to float16
        for slot in model.members:
            slot.load_state_dict(
                {k: v.half() if v.is_floating_point() else v for k, v in slot.state_dict().items()}
            )
    meta["evaluation"] = evaluation_as_asked(model, args)
    meta["seconds"] = round(time.time() - t0)
    meta["command"] = (
        "proqual ensemble-quality "
        + " ".join(map(str, args.members))
        + f" --out {args.out}"
        + (" --half" if args.half else "")
        + (" --flips" if args.flips else "")
    )
    save_evaluated(model, args, meta, label=meta["ensemble"], half=args.half)
    return 0
