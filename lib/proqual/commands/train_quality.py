"""``proqual train-quality``: train the quality model (upstream on simulated artifacts, optional
downstream finetuning on expert PI-QUAL v2 ratings) and evaluate it per artifact family."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

NAME = "train-quality"
HELP = "train the image-quality model on simulated degradations of phantoms (reproduces model/quality.pt)"
DESCRIPTION = (
    "Upstream: phantom studies are degraded by the artifact simulator with known parameters and the model "
    "learns the parameters, a quality score (1 - severity) and the PI-QUAL v2 class; every epoch sees new "
    "degradations of the same clean volumes. Downstream (optional, "
    "--ratings): finetuning on expert PI-QUAL v2 ratings of real images. The checkpoint records the config, "
    "the data and the metrics; --eval-out writes the per-family evaluation."
)


#: ``--sequence-weight`` when none is given: the shipped weights saw each HBV volume three times as often
DEFAULT_SEQUENCE_WEIGHTS = ("HBV=3",)
DEFAULT_FAMILY_BLOCK = 4
DEFAULT_FAMILY_WEIGHTS = ("bias=2",)


def add_checkpoint_arguments(parser: argparse.ArgumentParser) -> None:
    """``--out`` and ``--n-eval``, shared with ``ensemble-quality`` (which evaluates the same way)."""
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("model/quality.pt"),
        help="checkpoint path (default model/quality.pt)",
    )
    parser.add_argument(
        "--n-eval",
        type=int,
        default=6,
        help="held-out phantom studies for the family sweep (default 6; the same phantoms and real MR realisations for "
        "every checkpoint and --seed: proqual.quality.evaluate.EVAL_COHORT, EVAL_START, EVAL_REAL_SEED)",
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_checkpoint_arguments(parser)
    parser.add_argument(
        "--n-studies", type=int, default=120, help="phantom studies for training (default 120)"
    )
    parser.add_argument(
        "--per-volume",
        type=int,
        default=4,
        help="degraded samples per sequence volume and epoch, simulated anew every epoch (default 4)",
    )
    parser.add_argument(
        "--n-val", type=int, default=6, help="held-out phantom studies for validation (default 6)"
    )
    parser.add_argument(
        "--fov-crop",
        type=float,
        nargs=2,
        metavar=("LO", "HI"),
        default=(0.5, 1.0),
        help="crop a share of the clean training volumes in-plane to a fraction LO..HI of each axis before "
        "degrading them (smaller fields of view, as real volumes have; default 0.5 1, used only when "
        "--fov-crop-probability is above 0)",
    )
    parser.add_argument(
        "--fov-crop-probability",
        type=float,
        default=0.25,
        help="share of the training samples that --fov-crop applies to (default 0.25; 0: off)",
    )
    parser.add_argument(
        "--zero-background",
        type=float,
        default=0.25,
        help="share of the training samples whose clean volume first gets an exactly zero background, as "
        "masked real images have (default 0.25; 0: off)",
    )
    parser.add_argument(
        "--family-weight",
        action="append",
        default=None,
        metavar="FAMILY=W",
        help="draw artifact FAMILY W times as often as the others for the training degradations "
        f"(repeatable; default {' '.join(DEFAULT_FAMILY_WEIGHTS)}, as for the shipped weights; any "
        "--family-weight replaces the default; bias=1: every family of a sequence equally often)",
    )
    parser.add_argument(
        "--sequence-weight",
        action="append",
        default=None,
        metavar="SEQUENCE=W",
        help="give each volume of SEQUENCE (T2W, ADC, HBV, or OTHER for --clean volumes) round(W x --per-volume) "
        "degradations per "
        "epoch instead of --per-volume (repeatable; an epoch gets longer by the added samples; default "
        f"{' '.join(DEFAULT_SEQUENCE_WEIGHTS)}, as for the shipped weights; HBV=1 gives every sequence "
        "--per-volume)",
    )
    parser.add_argument(
        "--family-block",
        type=int,
        default=None,
        metavar="K",
        help="build each upstream batch from blocks of K samples that share an artifact family (from "
        "different volumes and sequences), so the ranking loss compares one family across images, as "
        f"the per-family evaluation does (default {DEFAULT_FAMILY_BLOCK}, or --batch-size if smaller, as "
        "for the shipped weights; 0: random batches)",
    )
    parser.add_argument(
        "--flip",
        type=float,
        default=0.0,
        metavar="P",
        help="mirror each upstream training input along each in-plane axis with probability P "
        "(independently), so scores do not depend on which way the anatomy or a shading gradient runs "
        "(default 0: off, as for the shipped weights)",
    )
    parser.add_argument(
        "--clean",
        action="append",
        default=None,
        metavar="[SEQUENCE=]PATH",
        help="add clean volumes to the phantoms for upstream training: an image file or a folder of them "
        "(repeatable; e.g. acquisitions written by proqual reslice-clean). SEQUENCE (T2W, ADC, HBV or "
        "OTHER; default OTHER) is the prompt they are trained with and picks their artifact families; "
        "each gets --per-volume degradations per epoch (scaled by --sequence-weight SEQUENCE=W) and a "
        "uniform saliency target. They must be free of artifacts: they are the score-1 references",
    )
    parser.add_argument("--preset", default="sample", help="phantom preset (default sample)")
    parser.add_argument("--epochs", type=int, default=40, help="upstream epochs (default 40)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the training and validation phantoms, their degradations and the initialisation "
        "(default 0); the evaluation sweeps do not depend on it",
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument(
        "--init", type=Path, help="start from this quality checkpoint (e.g. for downstream only)"
    )
    parser.add_argument(
        "--member",
        type=int,
        metavar="K",
        help="with an ensemble as --init: start from its K-th member alone (0-based), so the result is one "
        "model, not an ensemble finetuned on its mean output (meta.init keeps member K's record as "
        "member_record, not every member's)",
    )
    parser.add_argument(
        "--kspace-peaks",
        type=int,
        metavar="K",
        help="give the model the k-space spike evidence of the K strongest peaks of the slice-averaged "
        "power spectrum (one spike makes two: the spectrum of a real image is symmetric) and the strongest "
        "one's amplitude (see proqual.nets.quality_net.kspace_peak_features); with --init, a model without "
        "it gets the branch started at zero, so training begins from the same outputs (default: none for a "
        "new model, the --init model's own otherwise)",
    )
    parser.add_argument(
        "--slice-levels",
        action="store_true",
        help="give the model each slice's overall intensity level against the stack's (shading that varies "
        "between slices, see proqual.nets.quality_net.slice_level_features); with --init, a model without "
        "it gets the branch started at zero, so training begins from the same outputs (default: none for a "
        "new model, the --init model's own otherwise)",
    )
    parser.add_argument(
        "--kspace-lr-scale",
        type=float,
        default=1.0,
        metavar="F",
        help="train the k-space spike branch at F times the learning rate of the rest of the model (both "
        "stages; F > 0, default 1), e.g. so a branch just added at zero to a trained model can learn "
        "faster than the layers that are only finetuned; needs a model with the branch",
    )
    parser.add_argument(
        "--levels-lr-scale",
        type=float,
        default=1.0,
        metavar="F",
        help="train the slice-level branch (--slice-levels) at F times the learning rate of the rest of the "
        "model (both stages; F > 0, default 1); needs a model with the branch",
    )
    parser.add_argument(
        "--ratings",
        type=Path,
        help="CSV with columns path,sequence,piqual (expert PI-QUAL v2 1..3) for downstream finetuning",
    )
    parser.add_argument("--downstream-epochs", type=int, default=5)
    parser.add_argument(
        "--skip-upstream", action="store_true", help="only the downstream stage (needs --init)"
    )
    parser.add_argument("--eval-out", type=Path, help="write the evaluation JSON here")
    parser.add_argument("--no-eval", action="store_true", help="skip the per-family evaluation sweeps")


def _weights(items: list[str], *, option: str, key: str, case) -> dict[str, float]:
    """``["bias=2", ...]`` -> ``{"bias": 2.0}`` (names passed through ``case``, e.g. ``str.lower``); a
    malformed item is a :class:`ValidationError` on ``option`` that shows the expected ``key=W``."""
    from proqual.errors import ValidationError

    out: dict[str, float] = {}
    for item in items:
        name, sep, value = item.partition("=")
        try:
            out[case(name.strip())] = float(value)
        except ValueError:
            sep = ""
        if not sep:
            raise ValidationError(option, f"expected {key}=W with W a number, got {item!r}")
    return out


def _family_weights(items: list[str]) -> dict[str, float]:
    """``--family-weight`` values, the names and weights checked by
    :func:`proqual.quality.training.check_family_weights` for the three sequences the phantoms train
    (before any phantom is made), with errors naming the option."""
    from proqual.quality.training import check_family_weights

    out = _weights(items, option="--family-weight", key="FAMILY", case=str.lower)
    check_family_weights(out, field="--family-weight", sequences=("T2W", "ADC", "HBV"))
    return out


def _sequence_weights(items: list[str]) -> dict[str, float]:
    """``--sequence-weight`` values (``["HBV=2"]`` -> ``{"HBV": 2.0}``), checked by
    :func:`proqual.quality.training.check_sequence_weights`, with errors naming the option."""
    from proqual.quality.training import check_sequence_weights

    out = _weights(items, option="--sequence-weight", key="SEQUENCE", case=str.upper)
    check_sequence_weights(out, field="--sequence-weight")
    return out


#: options given once per value (``action="append"``); other list values are one option's arguments
_REPEATABLE = ("family_weight", "sequence_weight", "clean")


def _command_line(args: argparse.Namespace) -> str:
    """The options as one would type them (repeatable options repeated, pairs space-separated)."""
    parts = ["proqual train-quality"]
    for k, v in vars(args).items():
        if k in ("_run", "command", "verbose") or v is None or v is False or v == []:
            continue
        flag = f"--{k.replace('_', '-')}"
        if v is True:
            parts.append(flag)
        elif k in _REPEATABLE:
            parts += [f"{flag} {x}" for x in v]
        elif isinstance(v, (list, tuple)):
            parts.append(f"{flag} " + " ".join(f"{x:g}" if isinstance(x, float) else str(x) for x in v))
        else:
            parts.append(f"{flag} {v}")
    return " ".join(parts)


def _read_ratings(path: Path):
    import csv

    from proqual.errors import InputError
    from proqual.io.readers import read_volume
    from proqual.study import Sequence

    items = []
    with open(path, newline="") as fh:
        for i, row in enumerate(csv.DictReader(fh), start=2):
            try:
                seq = Sequence.parse(row["sequence"])
                rating = int(row["piqual"])
            except (KeyError, ValueError) as exc:
                raise InputError(path, f"line {i}: need path,sequence,piqual ({exc})") from exc
            items.append((read_volume(Path(path).parent / row["path"]), seq, rating))
    return items


def run(args: argparse.Namespace) -> int:
    import time

    import torch

    from proqual import artifacts as A
    from proqual.errors import ValidationError
    from proqual.nets.quality_net import QualityNet, QualityNetConfig, with_kspace_peaks, with_slice_levels
    from proqual.quality import training as T
    from proqual.quality.clean import clean_volumes

    if not 0 <= args.fov_crop_probability <= 1:
        raise ValidationError("--fov-crop-probability", f"must be in [0, 1], got {args.fov_crop_probability}")
    if not 0 <= args.zero_background <= 1:
        raise ValidationError("--zero-background", f"must be in [0, 1], got {args.zero_background}")
    if not 0 <= args.flip <= 1:
        raise ValidationError("--flip", f"must be in [0, 1], got {args.flip}")
    if args.kspace_peaks is not None and not 1 <= args.kspace_peaks <= 16:
        raise ValidationError("--kspace-peaks", f"must be in [1, 16], got {args.kspace_peaks}")
    if args.clean and args.skip_upstream:
        raise ValidationError(
            "--clean", "adds upstream training volumes, so it cannot go with --skip-upstream"
        )
    if args.family_block is None:
        args.family_block = min(DEFAULT_FAMILY_BLOCK, args.batch_size)
    if not 0 <= args.family_block <= args.batch_size:
        raise ValidationError(
            "--family-block", f"must be in [0, --batch-size {args.batch_size}], got {args.family_block}"
        )
    lo, hi = args.fov_crop
    if not 0 < lo <= hi <= 1:
        raise ValidationError("--fov-crop", f"needs 0 < LO <= HI <= 1, got {lo} {hi}")
    if args.sequence_weight is None:
        args.sequence_weight = list(DEFAULT_SEQUENCE_WEIGHTS)
    if args.family_weight is None:
        args.family_weight = list(DEFAULT_FAMILY_WEIGHTS)
    crop: dict = {"zero_background": args.zero_background}
    weights = _family_weights(args.family_weight)
    if weights:
        crop["family_weights"] = weights
    seq_weights = _sequence_weights(args.sequence_weight)
    if args.fov_crop_probability > 0:
        crop.update(fov_crop=(lo, hi), fov_crop_probability=args.fov_crop_probability)
    torch.manual_seed(args.seed)
    t_start = time.time()
    if args.init:
        from proqual.quality.scoring import load_quality_model

        model = load_quality_model(args.init)  # one QualityNet, or an ensemble trained as one model
        start = init_record(args.init, model, member=args.member)
        if args.member is not None:
            members = getattr(model, "members", None)
            if members is None:
                raise ValidationError("--member", f"{args.init} is one model, not an ensemble")
            if not 0 <= args.member < len(members):
                raise ValidationError(
                    "--member", f"must be in [0, {len(members) - 1}] for {args.init}, got {args.member}"
                )
            model = members[args.member]
        if args.kspace_peaks is not None:
            try:
                model = with_kspace_peaks(model, args.kspace_peaks)
            except ValueError as exc:
                raise ValidationError("--kspace-peaks", f"{exc} ({args.init})") from None
        if args.slice_levels:
            try:
                model = with_slice_levels(model)
            except ValueError as exc:
                raise ValidationError("--slice-levels", f"{exc} ({args.init})") from None
    else:
        if args.skip_upstream:
            raise ValidationError("--skip-upstream", "needs --init")
        if args.member is not None:
            raise ValidationError("--member", "needs --init (an ensemble)")
        model = QualityNet(
            QualityNetConfig(
                n_params=len(A.PARAM_NAMES),
                kspace_peaks=args.kspace_peaks or 0,
                slice_levels=args.slice_levels,
            )
        )
    try:  # before any simulation: a scale the model cannot use stops the run at once
        T.param_groups(
            model, T.TrainConfig(kspace_lr_scale=args.kspace_lr_scale, levels_lr_scale=args.levels_lr_scale)
        )
    except ValidationError as exc:
        raise ValidationError("--" + exc.field.replace("_", "-"), exc.problem) from None

    bar = _bar

    def epoch_line(row):
        print(
            f"epoch {row['epoch']}: loss {row['loss_total']:.4f}  val SRCC {row.get('srcc', float('nan')):.3f}  "
            f"PI-QUAL acc {row.get('piqual_accuracy', float('nan')):.2f}  ({row['seconds']} s)",
            flush=True,
        )

    meta: dict = {"stages": []}
    if args.init:
        meta["init"] = start  # what the run started from (the file --init named may change later)
    if not args.skip_upstream:
        added = clean_volumes(args.clean or [])  # read first: a bad file stops the run before any work
        clean = T.phantom_volumes(
            n_studies=args.n_studies, seed=args.seed, preset=args.preset, progress=bar("phantom studies")
        )
        clean += added
        train = T.FreshDegradations(
            clean, per_volume=args.per_volume, seed=args.seed, sequence_weights=seq_weights or None, **crop
        )
        val = T.phantom_samples(
            n_studies=args.n_val,
            per_volume=6,
            seed=args.seed,
            preset=args.preset,
            start=10_000,
            progress=bar("simulating validation data"),
        )
        cfg = T.TrainConfig(
            epochs=args.epochs,
            batch_size=args.batch_size,
            lr=args.lr,
            seed=args.seed,
            device=args.device,
            family_block=args.family_block,
            flip=args.flip,
            kspace_lr_scale=args.kspace_lr_scale,
            levels_lr_scale=args.levels_lr_scale,
        )
        hist = T.train(model, train, cfg=cfg, val_samples=val, progress=epoch_line)
        meta["stages"].append(
            {
                "stage": "upstream",
                "data": f"{args.n_studies} phantom studies (preset {args.preset}, seed {args.seed}, "
                f"indices 0..{args.n_studies - 1}) x 3 sequences x {args.per_volume} simulated degradations per epoch, new every epoch"
                + (
                    f"; {args.fov_crop_probability:g} of them from an in-plane crop to {lo:g}..{hi:g} of each axis"
                    if args.fov_crop_probability > 0
                    else ""
                )
                + (
                    f"; {args.zero_background:g} of them with the background set to zero"
                    if args.zero_background > 0
                    else ""
                )
                + (
                    "; family weights " + ", ".join(f"{k} {v:g}" for k, v in sorted(weights.items()))
                    if weights
                    else ""
                )
                + (
                    "; degradations per volume and epoch by sequence "
                    + ", ".join(f"{s.value} {train.count(s)}" for s in sorted({v.sequence for v in clean}))
                    + f" ({len(train)} samples per epoch)"
                    if seq_weights
                    else ""
                )
                + (
                    f"; inputs mirrored along each in-plane axis with probability {args.flip:g}"
                    if args.flip
                    else ""
                )
                + (
                    f"; plus {len(added)} clean volumes from --clean " + ", ".join(args.clean)
                    if added
                    else ""
                ),
                "validation": f"{args.n_val} phantom studies from index 10000",
                "clean_volumes": [_file_record(c.volume.source, c.sequence.value) for c in added],
                **hist,
            }
        )
    if args.ratings:
        rated = T.rated_samples(_read_ratings(args.ratings))
        cfg = T.TrainConfig(
            epochs=args.downstream_epochs,
            batch_size=args.batch_size,
            lr=args.lr / 4,
            seed=args.seed,
            device=args.device,
            w_params=0.0,
            w_saliency=0.0,
            kspace_lr_scale=args.kspace_lr_scale,
            levels_lr_scale=args.levels_lr_scale,
        )
        hist = T.train(model, rated, cfg=cfg, progress=epoch_line)
        meta["stages"].append(
            {"stage": "downstream", "data": f"{len(rated)} expert-rated volumes from {args.ratings}", **hist}
        )
    meta["evaluation"] = evaluation_as_asked(model, args)
    meta["seconds"] = round(time.time() - t_start)
    meta["command"] = _command_line(args)
    save_evaluated(model, args, meta)
    return 0


def evaluation_as_asked(model, args: argparse.Namespace) -> dict:
    """:func:`evaluate` with ``args.n_eval`` and ``args.preset``, or empty sweeps with ``args.no_eval``."""
    if args.no_eval:
        return {"held_out_phantoms": {}, "real_mr": {}}
    return evaluate(model, args.n_eval, args.preset)


def checkpoint_record(path: Path, model) -> dict:
    """Where a loaded quality checkpoint came from (path, hash), how it was made (command, seconds) and,
    for a finetune, what it started from (its own ``init``, None otherwise), as ensemble- and
    interpolate-quality and ``--init`` keep it in their metadata."""
    return {
        "path": str(path),
        "sha256": model.version["sha256"],
        "command": model.meta.get("command"),
        "seconds": model.meta.get("seconds"),
        "init": model.meta.get("init"),
    }


def init_record(path: Path, model, *, member: int | None = None) -> dict:
    """What a ``--init`` run started from: :func:`checkpoint_record` of the loaded checkpoint (with its
    own ``init`` when it was a finetune too), the ``--member`` taken and the records of its members when
    it is an ensemble (their commands), so a finetuned checkpoint keeps its whole recipe even after the
    file ``--init`` named is replaced. With ``member`` K only member K's record is kept (as
    ``member_record``; None when the ensemble has no records): it is all that member started from, and
    keeping every member's record at every step of a chain of member-wise finetunes would multiply the
    metadata by the ensemble's size at each step."""
    record = {**checkpoint_record(path, model), "member": member}
    members = model.meta.get("members", [])
    if member is None:
        record["members"] = members
    else:
        record["member_record"] = members[member] if 0 <= member < len(members) else None
    return record


def save_evaluated(
    model, args: argparse.Namespace, meta: dict, *, label: str = "", half: bool = False
) -> None:
    """Write ``model`` with ``meta`` to ``args.out``, print its evaluation and, with ``args.eval_out``,
    write ``meta`` there as JSON (train-quality, ensemble-quality, interpolate-quality)."""
    from proqual.quality import training as T

    T.save_quality_checkpoint(model, args.out, meta=meta, half=half)
    print(f"saved {args.out}" + (f" ({label})" if label else ""))
    print_evaluation(meta["evaluation"])
    if args.eval_out:
        write_meta_json(args.eval_out, meta)


def write_meta_json(path: Path, meta: dict) -> None:
    """A checkpoint's metadata (with its evaluation) as JSON at ``path`` (``--eval-out``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(meta, indent=2, default=float))


def _file_record(path: str, sequence: str) -> dict:
    """Path, sequence and SHA-256 of one ``--clean`` file, so a checkpoint says exactly what it saw."""
    import hashlib

    return {"path": path, "sequence": sequence, "sha256": hashlib.sha256(Path(path).read_bytes()).hexdigest()}


def _bar(label):
    return lambda i, n: print(f"\r{label}: {i}/{n}", end="\n" if i == n else "", flush=True)


def evaluate(model, n_eval: int, preset: str) -> dict:
    """The evaluation recorded in a checkpoint's ``meta.evaluation``: the held-out phantom sweep and the
    real MR sweep, the same images whatever the training seed."""
    from proqual.quality import evaluate as E

    print("evaluating on held-out phantoms and real MR volumes ...", flush=True)
    return {
        "held_out_phantoms": E.phantom_evaluation(
            model, n_studies=n_eval, preset=preset, progress=_bar("phantom sweep")
        ),
        "real_mr": E.real_mr_evaluation(model, seed=E.EVAL_REAL_SEED),
        "about": f"{n_eval} held-out phantom studies (preset {preset}, cohort seed "
        f"{E.EVAL_COHORT}, indices from {E.EVAL_START}) and the real MR volumes, realisation seed {E.EVAL_REAL_SEED}; "
        "the same for every --seed",
    }


def print_evaluation(evaluation: dict) -> None:
    for fam, m in evaluation["held_out_phantoms"].items():
        seqs = ", ".join(f"{k} {v['srcc']:.3f}" for k, v in m["per_sequence"].items())
        print(
            f"  phantom {fam:<14} SRCC {m['srcc']:.3f}  PLCC {m['plcc']:.3f}  KRCC {m['krcc']:.3f}  RMSE {m['rmse']:.3f}"
            f"  ({seqs})"
        )
    for name, fams in evaluation["real_mr"].items():
        worst = max(m["srcc_severity_vs_score"] for m in fams.values())
        print(f"  real MR {name}: worst SRCC(severity, score) {worst:.3f}")
