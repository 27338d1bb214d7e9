"""``proqual classify``: PI-RADS and ISUP probabilities per study with the derived binary calls."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

NAME = "classify"
HELP = "PI-RADS and ISUP probabilities per study (P(PI-RADS>=4), P(csPCa)) with the shipped or given models"
MODEL_DIR = Path(__file__).resolve().parents[3] / "model"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("paths", nargs="+", metavar="PATH")
    parser.add_argument(
        "--pirads",
        type=Path,
        default=MODEL_DIR / "pirads.pt",
        help="PI-RADS checkpoint (default model/pirads.pt)",
    )
    parser.add_argument(
        "--isup", type=Path, default=MODEL_DIR / "isup.pt", help="ISUP checkpoint (default model/isup.pt)"
    )
    parser.add_argument(
        "--threshold", type=float, default=0.5, help="operating threshold of the binary calls (default 0.5)"
    )
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--json", type=Path, help="write all results to this JSON file ('-' for stdout)")
    parser.add_argument("--marksheet", help="PI-CAI marksheet.csv when it is not inside the folder")


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from proqual.classify.data import study_tensor
    from proqual.classify.infer import classify_study, load_classifier
    from proqual.errors import CheckpointError, ProQualError
    from proqual.io.layouts import load_studies

    models = [load_classifier(p, device=args.device) for p in (args.pirads, args.isup)]
    for (_, scheme, _), (path, task) in zip(
        models, ((args.pirads, "pirads"), (args.isup, "isup")), strict=True
    ):
        if scheme.task != task:
            raise CheckpointError(
                f"{path}: is a {scheme.task} model (scheme {scheme.name}); --{task} needs a {task} model"
            )
    studies = load_studies(args.paths, marksheet=args.marksheet)
    results, failed = [], 0
    for study in tqdm(studies, desc="classifying", unit="study", disable=len(studies) < 2, file=sys.stderr):
        try:
            cache = {}
            row = {"study_id": study.study_id}
            for model, scheme, inputs in models:
                if inputs.name not in cache:
                    cache[inputs.name] = study_tensor(study, inputs)
                r = classify_study(
                    model,
                    study,
                    scheme,
                    inputs,
                    device=args.device,
                    image=cache[inputs.name],
                    threshold=args.threshold,
                )
                row[scheme.task] = r.model_dump(mode="json")
            results.append(row)
            print(
                f"{study.study_id}: P({row['pirads']['positive_name']}) {row['pirads']['positive_probability']:.3f}"
                f"  P(csPCa) {row['isup']['positive_probability']:.3f}"
            )
        except ProQualError as exc:
            failed += 1
            results.append({"study_id": study.study_id, "error": str(exc)})
            print(f"{study.study_id}: ERROR {exc}")
    if args.json:
        text = json.dumps(results, indent=2)
        if str(args.json) == "-":
            print(text)
        else:
            args.json.write_text(text)
    return 1 if failed else 0
