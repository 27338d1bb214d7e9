"""``proqual score``: image-quality scores per sequence and study (PI-QUAL v2 aligned)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

NAME = "score"
HELP = "score image quality per sequence and study (PI-QUAL v2), with prerequisites and classical measures"
DESCRIPTION = (
    "Score every study under the given paths (PI-CAI folder, flat folder, DICOM folder or image files). Prints a "
    "table; --csv and --json write every field: per-sequence score, PI-QUAL v2 class and probabilities, "
    "estimated artifact parameters, salient slice and slice-wise quality, prerequisite results and classical "
    "measures. A study that cannot be read gets an error row; the others are still scored."
)
DEFAULT_CHECKPOINT = Path(__file__).resolve().parents[3] / "model" / "quality.pt"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("paths", nargs="+", metavar="PATH")
    parser.add_argument(
        "--checkpoint",
        type=Path,
        default=DEFAULT_CHECKPOINT,
        help="quality checkpoint (default: the shipped model/quality.pt)",
    )
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="default cpu")
    parser.add_argument("--csv", type=Path, help="write one row per sequence to this CSV file")
    parser.add_argument("--json", type=Path, help="write the full results to this JSON file ('-' for stdout)")
    parser.add_argument("--marksheet", help="PI-CAI marksheet.csv when it is not inside the folder")


def _csv_rows(results):
    for r in results:
        if "error" in r:
            yield {"study_id": r["study_id"], "error": r["error"]}
            continue
        for seq, q in r["sequences"].items():
            row = {
                "study_id": r["study_id"],
                "study_piqual": r["study_piqual"],
                "sequence": seq,
                "score": q["score"],
                "piqual": q["piqual"],
                "salient_slice": q["salient_slice"]["index"],
            }
            row.update({f"p_piqual_{k}": v for k, v in q["piqual_probs"].items()})
            row.update({f"prereq_{p['rule']}": p["status"] for p in q["prerequisites"]})
            row.update({k: v for k, v in q["classical"].items()})
            row.update({f"artifact_{k}": v for k, v in q["artifacts"].items()})
            row["slice_quality"] = " ".join(f"{v:.3f}" for v in q["slice_quality"])
            yield row


def run(args: argparse.Namespace) -> int:
    import csv

    import torch
    from tqdm import tqdm

    from proqual.errors import ProQualError
    from proqual.io.layouts import load_studies
    from proqual.quality.scoring import load_quality_model, score_study

    if args.device == "cuda" and not torch.cuda.is_available():
        raise ProQualError("--device cuda: no CUDA device is available")
    model = load_quality_model(args.checkpoint, device=args.device)
    studies = load_studies(args.paths, marksheet=args.marksheet)
    results = []
    for study in tqdm(studies, desc="scoring", unit="study", disable=len(studies) < 2, file=sys.stderr):
        try:
            results.append(score_study(model, study, device=args.device).model_dump(mode="json"))
        except ProQualError as exc:
            results.append({"study_id": study.study_id, "error": str(exc)})
    for r in results:
        if "error" in r:
            print(f"{r['study_id']}: ERROR {r['error']}")
            continue
        print(f"{r['study_id']}: study PI-QUAL v2 {r['study_piqual']}")
        for seq, q in r["sequences"].items():
            fails = [p["reason"] for p in q["prerequisites"] if p["status"] == "fail"]
            print(
                f"  {seq:<4} score {q['score']:.2f}  PI-QUAL {q['piqual']}  salient slice {q['salient_slice']['index']}"
                + (f"  prerequisite failed: {'; '.join(fails)}" if fails else "")
            )
    if args.csv:
        rows = list(_csv_rows(results))
        fields = sorted({k for row in rows for k in row}, key=lambda k: (k != "study_id", k != "sequence", k))
        args.csv.parent.mkdir(parents=True, exist_ok=True)
        with open(args.csv, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=fields)
            writer.writeheader()
            writer.writerows(rows)
    if args.json:
        text = json.dumps(results, indent=2)
        if str(args.json) == "-":
            print(text)
        else:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(text)
    return 1 if any("error" in r for r in results) else 0
