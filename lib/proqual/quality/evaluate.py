"""Evaluation of the quality model against simulated severity, per artifact family.

- Held-out phantoms: every family that applies to a sequence, at severities 0, 0.2, ..., 1, same
  realisation seed across severities; SRCC / PLCC / KRCC / RMSE between the true severity and the
  predicted severity (1 - score), per family over all studies and sequences.
- Real MR volumes never used in training (the MR test files that nibabel ships): the same sweep with
  the "OTHER" prompt; the score must fall as severity rises (SRCC between severity and score <= -0.85).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np

from proqual import artifacts as A
from proqual.io.readers import Volume
from proqual.metrics import krcc, plcc, rmse, srcc
from proqual.quality.inputs import slice_stack
from proqual.quality.training import QualitySample, predict, saliency_target
from proqual.study import Sequence

SEVERITIES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)


def sweep_samples(
    volume: Volume,
    sequence: Sequence,
    *,
    seed: int,
    severities: Iterable[float] = SEVERITIES,
    families: Iterable[A.Family] | None = None,
    prompt: Sequence | None = None,
) -> list[QualitySample]:
    return [
        sweep_sample(volume, fam, sev, img, params, prompt=prompt or sequence)
        for fam, sev, img, params in sweep_images(
            volume, sequence, seed=seed, severities=severities, families=families
        )
    ]


def sweep_sample(
    volume: Volume, family: A.Family, severity: float, image: np.ndarray, params, *, prompt: Sequence
) -> QualitySample:
    """One sweep sample: the degraded ``image`` of ``volume`` (one item of :func:`sweep_images`) as the
    model sees it under ``prompt``, with target score 1 - ``severity``."""
    stack = slice_stack(Volume(image, volume.spacing, volume.origin, volume.direction))
    return QualitySample(
        slices=stack.slices.half(),
        sequence=prompt,
        score=1 - severity,
        piqual=0,
        params=A.param_vector(params),
        saliency=saliency_target(None, stack.source_index),
        family=family.value,
        severity=severity,
        fov=stack.fov,
    )


def sweep_images(
    volume: Volume,
    sequence: Sequence,
    *,
    seed: int,
    severities: Iterable[float] = SEVERITIES,
    families: Iterable[A.Family] | None = None,
) -> Iterator[tuple[A.Family, float, np.ndarray, A.ArtifactParams]]:
    """The degraded images behind :func:`sweep_samples`, as (family, severity, image, parameters): the
    k-th family of ``families`` (default: every family of ``sequence``) uses realisation seed ``seed +
    k`` at every severity, so one sweep is one realisation at growing strength."""
    fams = list(families or A.families_for(sequence.value))
    target = "ADC" if sequence is Sequence.ADC else "HBV"
    for k, fam in enumerate(fams):
        for sev in severities:
            img, params = A.degrade(
                volume.array, volume.spacing, fam, severity=float(sev), seed=seed + k, sequence=target
            )
            yield fam, float(sev), img, params


def family_metrics(
    model, samples: list[QualitySample], *, device: str = "cpu"
) -> dict[str, dict[str, float]]:
    """The model's :func:`metrics_of` on ``samples``."""
    return metrics_of(samples, predict(model, samples, device=device)["score"])


def metrics_of(samples: list[QualitySample], score: np.ndarray) -> dict[str, dict]:
    """Per family: SRCC/PLCC/KRCC/RMSE of predicted severity (1 - ``score``) vs true severity, the SRCC
    between severity and score (negative when the score falls as severity rises), and under
    ``per_sequence`` the count and SRCC of each sequence (prompt) on its own: the pooled figure also
    needs the same severity to get the same score on different sequences."""
    score = np.asarray(score, dtype=float)
    groups: dict[str, list[int]] = defaultdict(list)
    for i, s in enumerate(samples):
        groups[s.family].append(i)
    out = {}
    for fam, idx in sorted(groups.items()):
        sev = np.array([samples[i].severity for i in idx])
        pred = score[idx]
        per_seq: dict[str, list[int]] = defaultdict(list)
        for j, i in enumerate(idx):
            per_seq[samples[i].sequence.value].append(j)
        out[fam] = {
            "n": len(idx),
            "srcc": srcc(sev, 1 - pred),
            "plcc": plcc(sev, 1 - pred),
            "krcc": krcc(sev, 1 - pred),
            "rmse": rmse(sev, 1 - pred),
            "srcc_severity_vs_score": srcc(sev, pred),
            "per_sequence": {
                seq: {"n": len(js), "srcc": srcc(sev[js], 1 - pred[js])}
                for seq, js in sorted(per_seq.items())
            },
        }
    return out


#: the held-out phantoms of the evaluation: cohort seed and first index (training uses indices 0.., the
#: validation 10000..); fixed, so that runs with different ``--seed`` are measured on the same images
EVAL_COHORT = 0
EVAL_START = 20_000
#: the realisation seed of the real MR sweep of the evaluation (fixed for the same reason)
EVAL_REAL_SEED = 0


def phantom_sweep(
    *,
    n_studies: int,
    cohort: int = EVAL_COHORT,
    start: int = EVAL_START,
    preset: str = "sample",
    progress: Callable[[int, int], None] | None = None,
) -> list[QualitySample]:
    """The sweep samples (:func:`sweep_samples`) of ``n_studies`` phantom studies of ``cohort`` from index
    ``start``; realisation seed ``cohort * 1000 + index``."""
    from proqual.phantom import make_study

    samples = []
    for i in range(n_studies):
        study = make_study(start + i, seed=cohort, preset=preset)
        for seq, vol in study.volumes.items():
            samples += sweep_samples(vol, seq, seed=cohort * 1000 + start + i)
        if progress:
            progress(i + 1, n_studies)
    return samples


def phantom_evaluation(
    model,
    *,
    n_studies: int,
    cohort: int = EVAL_COHORT,
    start: int = EVAL_START,
    preset: str = "sample",
    progress: Callable[[int, int], None] | None = None,
) -> dict:
    """:func:`family_metrics` of ``model`` on :func:`phantom_sweep`."""
    samples = phantom_sweep(n_studies=n_studies, cohort=cohort, start=start, preset=preset, progress=progress)
    return family_metrics(model, samples)


def real_mr_volumes() -> list[tuple[str, Volume]]:
    """Real MR volumes shipped as test data by nibabel (evaluation only, never training), negative
    values clipped to 0 (magnitude images)."""
    import nibabel

    from proqual.io.readers import read_volume

    data = Path(nibabel.__file__).parent / "tests" / "data"
    out: list[tuple[str, Volume]] = []
    anat = data / "anatomical.nii"
    if anat.is_file():
        out.append(("nibabel anatomical.nii (T1 brain, 33x41x25)", read_volume(anat)))
    epi = data / "example4d.nii.gz"
    if epi.is_file():
        import SimpleITK as sitk

        img = sitk.ReadImage(str(epi))
        first = img[:, :, :, 0]
        out.append(
            ("nibabel example4d.nii.gz volume 0 (EPI, 128x96x24)", Volume.from_sitk(first, source=str(epi)))
        )
    return [
        (name, Volume(np.clip(v.array, 0, None), v.spacing, v.origin, v.direction, v.source))
        for name, v in out
    ]


#: the prompt of the real MR sweeps (brain volumes, not prostate sequences)
REAL_MR_PROMPT = Sequence.OTHER


def real_mr_sweep(volume: Volume, *, seed: int = EVAL_REAL_SEED) -> list[QualitySample]:
    """The sweep samples of one real MR volume: every family that applies to T2W, under the OTHER
    prompt (the volumes are not prostate sequences), realisation seed ``seed``."""
    return sweep_samples(
        volume, Sequence.T2W, seed=seed, prompt=REAL_MR_PROMPT, families=A.families_for("T2W")
    )


def real_mr_images(
    volume: Volume, *, seed: int = EVAL_REAL_SEED
) -> Iterator[tuple[A.Family, float, np.ndarray, A.ArtifactParams]]:
    """The degraded images behind :func:`real_mr_sweep` (:func:`sweep_images`), in the same order."""
    return sweep_images(volume, Sequence.T2W, seed=seed, families=A.families_for("T2W"))


def real_mr_evaluation(model, *, seed: int = EVAL_REAL_SEED) -> dict:
    """:func:`family_metrics` of ``model`` on :func:`real_mr_sweep` of every real MR volume."""
    return {name: family_metrics(model, real_mr_sweep(vol, seed=seed)) for name, vol in real_mr_volumes()}
