"""Metrics against hand-computed values (and scikit-learn as a cross-check)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from proqual import metrics as M
from proqual.labels import get_scheme
from sklearn.metrics import cohen_kappa_score, f1_score, roc_auc_score


def test_auroc_by_hand():
    # positives 0.8, 0.4; negatives 0.5, 0.1 -> pairs (0.8>0.5, 0.8>0.1, 0.4<0.5, 0.4>0.1) = 3/4
    assert M.auroc([1, 1, 0, 0], [0.8, 0.4, 0.5, 0.1]) == pytest.approx(0.75)
    # a tie counts one half: positive 0.5 vs negative 0.5 -> 0.5
    assert M.auroc([1, 0], [0.5, 0.5]) == pytest.approx(0.5)


def test_auroc_single_class_is_nan():
    assert math.isnan(M.auroc([1, 1], [0.2, 0.3]))


def test_auroc_matches_sklearn():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 50)
    s = rng.random(50)
    assert M.auroc(y, s) == pytest.approx(roc_auc_score(y, s))
    p = rng.dirichlet(np.ones(3), 60)
    yy = rng.integers(0, 3, 60)
    assert M.auroc_ovr(yy, p) == pytest.approx(roc_auc_score(yy, p, multi_class="ovr", average="macro"))


def test_qwk_by_hand():
    # perfect agreement -> 1
    assert M.quadratic_weighted_kappa([0, 1, 2], [0, 1, 2]) == pytest.approx(1.0)
    # 2 classes, truth [0,0,1,1], pred [0,1,1,1]: O = [[1,1],[0,2]], E = outer([2,2],[1,3])/4 = [[.5,1.5],[.5,1.5]]
    # weights [[0,1],[1,0]] -> 1 - (1)/(1.5+0.5) = 0.5
    assert M.quadratic_weighted_kappa([0, 0, 1, 1], [0, 1, 1, 1]) == pytest.approx(0.5)
    rng = np.random.default_rng(1)
    a, b = rng.integers(0, 5, 40), rng.integers(0, 5, 40)
    assert M.quadratic_weighted_kappa(a, b, 5) == pytest.approx(cohen_kappa_score(a, b, weights="quadratic"))


def test_f1_and_balanced_accuracy_by_hand():
    y, p = [0, 0, 1, 1], [0, 1, 1, 1]
    # class 0: tp1 fp0 fn1 -> 2/3; class 1: tp2 fp1 fn0 -> 4/5
    assert M.macro_f1(y, p) == pytest.approx((2 / 3 + 4 / 5) / 2)
    assert M.macro_f1(y, p) == pytest.approx(f1_score(y, p, average="macro"))
    assert M.balanced_accuracy(y, p) == pytest.approx((0.5 + 1.0) / 2)


def test_sensitivity_specificity():
    y, s = [1, 1, 1, 0, 0], [0.9, 0.6, 0.2, 0.7, 0.1]
    assert M.sens_spec(y, s, 0.5) == pytest.approx((2 / 3, 1 / 2))
    # sensitivity >= 0.6: threshold 0.6 gives 2/3 sens and spec 1/2 (0.7 is above) -> 0.5
    assert M.specificity_at_sensitivity(y, s, 0.6) == pytest.approx(0.5)
    # sensitivity 1 needs threshold <= 0.2 -> spec 1/2
    assert M.specificity_at_sensitivity(y, s, 1.0) == pytest.approx(0.5)


def test_iqa_metrics():
    a = [1, 2, 3, 4]
    assert M.srcc(a, [10, 20, 30, 40]) == pytest.approx(1.0)
    assert M.srcc(a, [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert M.krcc(a, [1, 3, 2, 4]) == pytest.approx(4 / 6)  # 5 concordant, 1 discordant pair
    assert M.plcc([0, 1, 2], [1, 3, 5]) == pytest.approx(1.0)
    assert M.rmse([0, 0], [3, 4]) == pytest.approx(math.sqrt(12.5))
    assert math.isnan(M.srcc([1, 1, 1], [1, 2, 3]))


def test_classification_report_multiclass():
    scheme = get_scheme("pirads_4class")
    y = [0, 1, 2, 3]
    probs = np.eye(4) * 0.7 + 0.075
    rep = M.classification_report(y, probs, scheme)
    assert rep["qwk"] == pytest.approx(1.0)
    assert rep["auroc"] == pytest.approx(1.0)  # classes 2, 3 (PI-RADS >= 4) vs the rest
    assert rep["sensitivity"] == pytest.approx(1.0)


def test_classification_report_shape_mismatch():
    from proqual.errors import ValidationError

    with pytest.raises(ValidationError, match="probs: has 3 columns, scheme cspca has 2"):
        M.classification_report([0, 1], np.ones((2, 3)) / 3, get_scheme("cspca"))


def test_length_and_nan_checks():
    from proqual.errors import ValidationError

    with pytest.raises(ValidationError, match="score: has 2 values, y_true has 3"):
        M.auroc([1, 0, 1], [0.2, 0.3])
    with pytest.raises(ValidationError, match="NaN"):
        M.srcc([1, 2, 3], [1, float("nan"), 2])
