"""The finetune-set summary behind ``GET /proqual/finetune-set``.

Every labeled study (its anchor has a ``final`` label) is counted once, with the values its current
annotators agree on; a field the annotators disagree on counts under ``"conflict"``. Its quality
stratum comes from :func:`proqual.stratify.assign_stratum`: the expert study PI-QUAL v2 of the
annotations when they agree on one (HQ when 3), else the quality score the scoring method stored in
the anchor's image info (``quality_score`` in [0, 1], HQ when >= ``hq_threshold``), else ``unknown``.
The HQ fraction is HQ / (HQ + LQ), reported beside ``target_hq_fraction``.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from proqual.stratify import assign_stratum


def _quality_score(info: dict[str, Any]) -> float | None:
    value = info.get("quality_score")
    if value is None and isinstance(info.get("quality"), dict):
        value = info["quality"].get("score")
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError):
        return None


def _study_piqual(annotation: dict[str, Any]) -> int | None:
    piqual = annotation.get("piqual")
    return piqual.get("study") if isinstance(piqual, dict) else None


def _key(value: Any) -> str:
    return "none" if value is None else str(value)


def finetune_set_summary(datastore, config) -> dict[str, Any]:
    """Counts per class (PI-RADS, ISUP) and per quality stratum, and the HQ fraction vs the target."""
    pirads: Counter = Counter()
    isup: Counter = Counter()
    strata: Counter = Counter()
    by_stratum: dict[str, Counter] = {}
    conflicts = []
    studies = []
    for anchor in datastore.get_labeled_images():
        entry = datastore.entry(anchor)
        summary = datastore.annotations.summary(anchor)
        agreed = summary.agreed
        p = "conflict" if "pirads" in summary.disagreements else _key(agreed.get("pirads"))
        i = "conflict" if "isup" in summary.disagreements else _key(agreed.get("isup"))
        score = _quality_score(datastore.get_image_info(anchor))
        study_q = {_study_piqual(rev.annotation) for rev in summary.current.values()}
        expert = next(iter(study_q)) if len(study_q) == 1 else None  # annotators disagree: not expert
        s, source = assign_stratum(
            expert_piqual=expert, quality_score=score, hq_threshold=config.hq_threshold
        )
        pirads[p] += 1
        isup[i] += 1
        strata[s] += 1
        by_stratum.setdefault(s, Counter())[f"pirads={p}"] += 1
        if summary.conflict:
            conflicts.append(anchor)
        studies.append(
            {
                "anchor": anchor,
                "study_id": entry.study_id,
                "pirads": p,
                "isup": i,
                "stratum": s,
                "stratum_source": source,
                "quality_score": score,
            }
        )
    known = strata["HQ"] + strata["LQ"]
    fraction = strata["HQ"] / known if known else None
    return {
        "labeled": len(studies),
        "pirads": dict(sorted(pirads.items())),
        "isup": dict(sorted(isup.items())),
        "strata": {"HQ": strata["HQ"], "LQ": strata["LQ"], "unknown": strata["unknown"]},
        "per_stratum": {k: dict(sorted(v.items())) for k, v in sorted(by_stratum.items())},
        "hq_fraction": fraction,
        "target_hq_fraction": config.target_hq_fraction,
        "hq_threshold": config.hq_threshold,
        "hq_fraction_gap": None if fraction is None else round(fraction - config.target_hq_fraction, 6),
        "conflicts": conflicts,
        "studies": studies,
    }
