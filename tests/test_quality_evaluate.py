"""Per-family and per-sequence metrics of the evaluation sweeps, on constructed predictions."""

import numpy as np
import pytest
import torch
from proqual.quality.evaluate import SEVERITIES, metrics_of
from proqual.quality.training import QualitySample
from proqual.study import Sequence


def _sample(seq: Sequence, family: str, severity: float) -> QualitySample:
    return QualitySample(
        slices=torch.zeros((1, 1, 4, 4), dtype=torch.float16),
        sequence=seq,
        score=1 - severity,
        piqual=0,
        params=np.zeros(3, np.float32),
        saliency=np.ones(1),
        family=family,
        severity=severity,
    )


def test_per_sequence_srcc_separates_a_sequence_that_ranks_from_one_that_does_not():
    samples = [_sample(seq, "bias", s) for seq in (Sequence.T2W, Sequence.HBV) for s in SEVERITIES]
    samples += [_sample(Sequence.T2W, "noise", s) for s in SEVERITIES]
    t2w = [1 - s for s in SEVERITIES]  # ranks perfectly
    hbv = [0.5 + 0.1 * s for s in SEVERITIES]  # rises with severity: ranked the wrong way
    noise = [0.9 - 0.5 * s for s in SEVERITIES]
    out = metrics_of(samples, np.array(t2w + hbv + noise))
    assert set(out) == {"bias", "noise"}
    bias = out["bias"]
    assert bias["n"] == 12
    assert bias["per_sequence"]["T2W"] == {"n": 6, "srcc": pytest.approx(1.0)}
    assert bias["per_sequence"]["HBV"] == {"n": 6, "srcc": pytest.approx(-1.0)}
    assert -1 < bias["srcc"] < 1 and bias["srcc_severity_vs_score"] == pytest.approx(-bias["srcc"])
    assert out["noise"]["srcc"] == pytest.approx(1.0) and set(out["noise"]["per_sequence"]) == {"T2W"}
    # predicted severity is 1 - score = 0.1 + 0.5 s
    expected = np.sqrt(np.mean([(s - (0.1 + 0.5 * s)) ** 2 for s in SEVERITIES]))
    assert out["noise"]["rmse"] == pytest.approx(expected)


def test_sweep_images_are_the_images_behind_sweep_samples_one_realisation_per_family():
    from proqual import artifacts as A
    from proqual.io.readers import Volume
    from proqual.quality.evaluate import sweep_images, sweep_samples

    rng = np.random.default_rng(3)
    vol = Volume(rng.uniform(50, 100, (24, 20, 6)).astype(np.float32), (1.0, 1.0, 3.0), (0.0, 0.0, 0.0))
    fams = [A.Family.BIAS, A.Family.NOISE]
    images = list(sweep_images(vol, Sequence.T2W, seed=11, severities=(0.0, 1.0), families=fams))
    samples = sweep_samples(vol, Sequence.T2W, seed=11, severities=(0.0, 1.0), families=fams)
    assert [(f.value, s) for f, s, _, _ in images] == [(x.family, x.severity) for x in samples]
    for k, fam in enumerate(fams):
        expected, _ = A.degrade(vol.array, vol.spacing, fam, severity=1.0, seed=11 + k, sequence="HBV")
        got = [img for f, s, img, _ in images if f is fam and s == 1.0]
        assert len(got) == 1 and np.array_equal(got[0], expected)
        assert not np.array_equal(got[0], vol.array)
