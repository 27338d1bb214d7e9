"""The finetune-set summary behind ``GET /proqual/finetune-set``.

Every labeled study (its anchor has a ``final`` label) is counted once, with the values its current
annotators agree on; a field the annotators disagree on counts under ``"conflict"``. Its quality
stratum is

- from expert PI-QUAL v2 when the annotations give a study score: HQ when it is 3 (optimal), LQ when
  1 or 2;
- else from the quality score the scoring method stored in the anchor's image info
  (``quality_score``, in [0, 1]): HQ when >= ``hq_threshold``;
- else ``unknown``.

The HQ fraction is HQ / (HQ + LQ) and is reported beside ``target_hq_fraction``.
When :mod:`proqual.stratify` provides ``stratum_of(annotation, quality_score, threshold)`` that rule is
used instead of the one above.
"""

from __future__ import annotations

from collections import Counter
from typing import Any


def _stratum_rule():
    try:
        from proqual import stratify
    except ImportError:
        return None
    return getattr(stratify, "stratum_of", None)


def stratum(agreed: dict[str, Any], quality_score: float | None, hq_threshold: float) -> str:
    """ "HQ", "LQ" or "unknown" (see the module docstring)."""
    rule = _stratum_rule()
    if rule is not None:
        return str(rule(agreed, quality_score, hq_threshold))
    piqual = agreed.get("piqual")
    study = piqual.get("study") if isinstance(piqual, dict) else None
    if study is not None:
        return "HQ" if int(study) >= 3 else "LQ"
    if quality_score is not None:
        return "HQ" if float(quality_score) >= hq_threshold else "LQ"
    return "unknown"


def _quality_score(info: dict[str, Any]) -> float | None:
    value = info.get("quality_score")
    if value is None and isinstance(info.get("quality"), dict):
        value = info["quality"].get("score")
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError):
        return None


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
        s = "unknown" if "piqual" in summary.disagreements and score is None else None
        s = s or stratum(agreed, score, config.hq_threshold)
        pirads[p] += 1
        isup[i] += 1
        strata[s] += 1
        by_stratum.setdefault(s, Counter())[f"pirads={p}"] += 1
        if summary.conflict:
            conflicts.append(anchor)
        studies.append({"anchor": anchor, "study_id": entry.study_id, "pirads": p, "isup": i, "stratum": s})
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
