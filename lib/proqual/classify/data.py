"""Classifier inputs: preprocessing configurations and the phantom cohort (HQ and LQ studies).

Two input configurations share the ProFound preprocessing code (:mod:`proqual.preprocess`):

- ``profound``: 3 x 64 x 224 x 224 at 1.0 x 0.5 x 0.5 mm (the official backbone);
- ``small``: 3 x 32 x 96 x 96 at 2.0 x 1.0 x 1.0 mm around the gland (the CPU demo backbone).

Phantom cohort: HQ studies are phantoms as generated; LQ studies are the same kind of phantoms degraded by
the artifact simulator (one family per sequence, severity 0.5..1, which maps to PI-QUAL v2 <= 2).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from proqual.classify.finetune import Example
from proqual.labels import Scheme
from proqual.study import Study


@dataclass(frozen=True)
class InputConfig:
    name: str
    roi: tuple[int, int, int]
    spacing: tuple[float, float, float]


INPUTS: dict[str, InputConfig] = {
    "profound": InputConfig("profound", (64, 224, 224), (1.0, 0.5, 0.5)),
    "small": InputConfig("small", (32, 96, 96), (2.0, 1.0, 1.0)),
}
#: LQ degradations of the phantom cohort: severity range (maps to PI-QUAL v2 <= 2)
LQ_SEVERITY = (0.5, 1.0)


def study_tensor(study: Study, inputs: InputConfig) -> torch.Tensor:
    from proqual.preprocess import preprocess_study

    return preprocess_study(study, roi=inputs.roi, spacing=inputs.spacing)


def phantom_tensor(
    index: int, *, seed: int, lq: bool, inputs: InputConfig, preset: str = "sample"
) -> tuple[torch.Tensor, Study]:
    """Preprocessed input of phantom study ``index`` (degraded when ``lq``) and its Study (labels)."""
    from proqual import artifacts as A
    from proqual.io.readers import Volume
    from proqual.phantom import make_study
    from proqual.preprocess import LPS_TO_RAS, profound_transforms
    from proqual.study import Sequence

    ph = make_study(index, seed=seed, preset=preset)
    vols = dict(ph.volumes)
    if lq:
        rng = np.random.default_rng([seed, index, 7])
        for seq, vol in vols.items():
            fams = A.families_for(seq.value)
            fam = fams[int(rng.integers(len(fams)))]
            sev = float(rng.uniform(*LQ_SEVERITY))
            img, _ = A.degrade(
                vol.array,
                vol.spacing,
                fam,
                severity=sev,
                seed=int(rng.integers(2**31)),
                sequence="ADC" if seq is Sequence.ADC else "HBV",
            )
            vols[seq] = Volume(img, vol.spacing, vol.origin, vol.direction, f"phantom {index} {seq.value}")
    data = {k.value.lower(): v for k, v in vols.items()}
    data["centre_ras"] = LPS_TO_RAS @ np.asarray(ph.gland_centre_lps)
    image = profound_transforms(roi=inputs.roi, spacing=inputs.spacing)(data)["image"]
    study = Study(study_id=f"{ph.patient_id}_{ph.study_id}", patient_id=ph.patient_id, labels=ph.labels)
    return image, study


def _cache_key(seed: int, index: int, lq: bool, inputs: InputConfig) -> str:
    """Name of a cached phantom example: it changes with everything that changes the image, the
    artifact severity mapping and LQ severity range included (an LQ image made under an older mapping
    is not reused)."""
    from proqual import artifacts as A

    mapping = sorted((f.value, v) for f, v in A.SEVERITY_SCALE.items()) if lq else None
    text = f"{seed}-{index}-{lq}-{inputs}-{mapping}-{LQ_SEVERITY if lq else None}"
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def phantom_examples(
    indices: list[int],
    *,
    seed: int,
    lq: set[int],
    scheme: Scheme,
    inputs: InputConfig,
    cache_dir: Path | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> list[Example]:
    """Examples of phantom studies (those in ``lq`` degraded), cached on disk when ``cache_dir`` is set."""
    out = []
    for k, i in enumerate(indices):
        is_lq = i in lq
        key = _cache_key(seed, i, is_lq, inputs)
        path = cache_dir / f"{key}.pt" if cache_dir else None
        if path and path.is_file():
            blob = torch.load(path, weights_only=True)
            image, pirads, isup = blob["image"], blob["pirads"], blob["isup"]
        else:
            image, study = phantom_tensor(i, seed=seed, lq=is_lq, inputs=inputs)
            pirads, isup = study.labels.pirads, study.labels.isup
            if path:
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_suffix(".tmp")
                torch.save({"image": image, "pirads": pirads, "isup": isup}, tmp)
                tmp.replace(path)
        label = scheme.encode(pirads if scheme.task == "pirads" else isup)
        out.append(Example(f"phantom-{seed}-{i}", image, label, "LQ" if is_lq else "HQ"))
        if progress:
            progress(k + 1, len(indices))
    return out


def study_examples(
    studies: list[Study],
    *,
    scheme: Scheme,
    inputs: InputConfig,
    quality_checkpoint: str | Path | None = None,
    hq_threshold: float | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[list[Example], dict[str, int]]:
    """Labeled real studies as examples with a quality stratum, and counts of what was used.

    The stratum comes from the study's expert PI-QUAL v2 when present (3 = HQ), else from the quality
    model of ``quality_checkpoint`` (study score = the minimum of the sequence scores, HQ when
    >= ``hq_threshold``, default :data:`proqual.stratify.DEFAULT_HQ_THRESHOLD`), else it stays
    ``unknown`` (such studies are left out of stratified sets, and said so). Studies without a label for
    ``scheme`` are skipped. Returns ``(examples, counts)`` with counts ``unlabeled``, ``expert``,
    ``model`` and ``unknown``."""
    from proqual.stratify import DEFAULT_HQ_THRESHOLD, assign_stratum

    threshold = DEFAULT_HQ_THRESHOLD if hq_threshold is None else hq_threshold
    qmodel = None
    if quality_checkpoint is not None:
        from proqual.quality.scoring import load_quality_model

        qmodel = load_quality_model(quality_checkpoint)
    from proqual.cache import StudyCache

    cache = StudyCache(1)  # each study's files are read once for the quality score and the model input
    out: list[Example] = []
    counts = {"unlabeled": 0, "expert": 0, "model": 0, "unknown": 0}
    for k, s in enumerate(studies, start=1):
        label = scheme.encode(s.labels)
        if label is None:
            counts["unlabeled"] += 1
        else:
            expert = s.labels.piqual.get("study") if s.labels.piqual else None
            score = None
            if expert is None and qmodel is not None:
                from proqual.quality.scoring import SCORED_SEQUENCES, score_study

                present = [q for q in SCORED_SEQUENCES if q in s.sequences] or list(s.sequences)
                q = score_study(qmodel, s, volumes=cache.volumes(s, present))
                score = min(v.score for v in q.sequences.values())
            stratum, source = assign_stratum(
                expert_piqual=expert, quality_score=score, hq_threshold=threshold
            )
            counts[source if source != "none" else "unknown"] += 1
            image = cache.tensor(s, roi=inputs.roi, spacing=inputs.spacing, task=scheme.name)
            out.append(Example(s.study_id, image, label, stratum))
        if progress:
            progress(k, len(studies))
    return out, counts
