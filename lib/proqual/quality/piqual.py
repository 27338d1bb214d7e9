"""PI-QUAL v2 classes: from scores, and from sequences to the study.

Per sequence: 1 = inadequate, 2 = acceptable, 3 = optimal. The study-level rule (documented choice):

- the study is **1 (inadequate)** when T2W is 1, or when both diffusion sequences present (HBV/DWI and
  ADC) are 1, or when T2W is missing;
- it is **3 (optimal)** only when T2W, a high-b/DWI image and ADC are all present and all 3 (DCE, when
  present, must also be 3);
- otherwise **2 (acceptable)**: e.g. one diffusion sequence inadequate, or a missing diffusion sequence.

The rule mirrors PI-QUAL's reading logic: T2W alone carries anatomy, diffusion is judged as a pair, and a
study can only be optimal when every sequence is.
"""

from __future__ import annotations

from collections.abc import Mapping
from collections.abc import Sequence as Seq

import numpy as np

#: default score limits: score < 0.45 -> 1, < 0.8 -> 2, else 3 (matches the simulated training labels:
#: severity 0.2 / 0.55 -> score 0.8 / 0.45)
SCORE_THRESHOLDS: tuple[float, float] = (0.45, 0.8)
STUDY_RULE = (
    "study = 1 if T2W is 1 or missing, or both diffusion sequences (HBV/DWI and ADC) are 1; "
    "3 if T2W, HBV/DWI and ADC (and DCE when present) are all 3; otherwise 2"
)


def score_to_piqual(score: float, thresholds: tuple[float, float] = SCORE_THRESHOLDS) -> int:
    lo, hi = thresholds
    return 1 if score < lo else (2 if score < hi else 3)


def expected_class(probs: Seq[float]) -> float:
    """Expected PI-QUAL value (1..3) from the three class probabilities."""
    p = np.asarray(probs, dtype=float)
    return float((p / p.sum()) @ np.arange(1, len(p) + 1))


def study_piqual(per_sequence: Mapping[str, int]) -> int:
    """The study PI-QUAL v2 from per-sequence classes (keys T2W, HBV, DWI, ADC, DCE); see module doc."""
    t2 = per_sequence.get("T2W")
    diff = [per_sequence[k] for k in ("HBV", "DWI") if k in per_sequence]
    dwi = min(diff) if diff else None
    adc = per_sequence.get("ADC")
    if t2 is None or t2 == 1:
        return 1
    if dwi == 1 and adc == 1:
        return 1
    dce_ok = per_sequence.get("DCE", 3) == 3
    if t2 == 3 and dwi == 3 and adc == 3 and dce_ok:
        return 3
    return 2
