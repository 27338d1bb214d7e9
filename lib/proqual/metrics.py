"""Evaluation metrics: classification (AUROC, QWK, F1, ...) and image-quality agreement (SRCC, PLCC, ...).

Conventions: ``y_true`` holds class indices; ``probs`` is (N,) positive-class probabilities for binary
problems or (N, K) class probabilities. A metric that is undefined for the input (e.g. AUROC with one
class present) returns NaN rather than raising, so a small validation set never stops a training run.
"""

from __future__ import annotations

import numpy as np
from scipy import stats

from proqual.errors import ValidationError


def _arr(x, name: str) -> np.ndarray:
    a = np.asarray(x, dtype=float)
    if a.size == 0:
        raise ValidationError(name, "is empty")
    if not np.all(np.isfinite(a)):
        raise ValidationError(name, "holds NaN or infinite values")
    return a


def _pair(a, b, names=("a", "b")) -> tuple[np.ndarray, np.ndarray]:
    x, y = _arr(a, names[0]), _arr(b, names[1])
    if len(x) != len(y):
        raise ValidationError(names[1], f"has {len(y)} values, {names[0]} has {len(x)}")
    return x, y


# ---------------------------------------------------------------------------------------------------
# image-quality agreement
# ---------------------------------------------------------------------------------------------------


def srcc(a, b) -> float:
    """Spearman rank correlation (NaN when either input is constant)."""
    a, b = _pair(a, b)
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(stats.spearmanr(a, b).statistic)


def plcc(a, b) -> float:
    """Pearson linear correlation (NaN when either input is constant)."""
    a, b = _pair(a, b)
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def krcc(a, b) -> float:
    """Kendall rank correlation (tau-b)."""
    a, b = _pair(a, b)
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(stats.kendalltau(a, b).statistic)


def rmse(a, b) -> float:
    a, b = _pair(a, b)
    return float(np.sqrt(np.mean((a - b) ** 2)))


# ---------------------------------------------------------------------------------------------------
# classification
# ---------------------------------------------------------------------------------------------------


def auroc(y_true, score) -> float:
    """Binary AUROC: the probability that a random positive scores above a random negative (ties count
    one half), computed from ranks (Mann-Whitney U). NaN when only one class is present."""
    y, s = _pair(y_true, score, ("y_true", "score"))
    y = y.astype(int)
    n_pos, n_neg = int((y == 1).sum()), int((y == 0).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = stats.rankdata(s)
    return float((ranks[y == 1].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def auroc_ovr(y_true, probs) -> float:
    """Macro one-vs-rest AUROC over the classes present in ``y_true`` (NaN when fewer than two)."""
    y = np.asarray(y_true).astype(int)
    p = _arr(probs, "probs")
    values = [auroc(y == k, p[:, k]) for k in range(p.shape[1]) if 0 < (y == k).sum() < len(y)]
    return float(np.mean(values)) if values else float("nan")


def confusion(y_true, y_pred, n_classes: int) -> np.ndarray:
    m = np.zeros((n_classes, n_classes), dtype=np.int64)
    for t, p in zip(np.asarray(y_true).astype(int), np.asarray(y_pred).astype(int), strict=True):
        m[t, p] += 1
    return m


def quadratic_weighted_kappa(y_true, y_pred, n_classes: int | None = None) -> float:
    """Cohen's kappa with quadratic weights w_ij = (i - j)^2 / (K - 1)^2."""
    y_true, y_pred = np.asarray(y_true).astype(int), np.asarray(y_pred).astype(int)
    k = n_classes or int(max(y_true.max(), y_pred.max()) + 1)
    if k < 2:
        return float("nan")
    o = confusion(y_true, y_pred, k).astype(float)
    w = (np.subtract.outer(np.arange(k), np.arange(k)) ** 2) / (k - 1) ** 2
    e = np.outer(o.sum(1), o.sum(0)) / o.sum()
    denom = (w * e).sum()
    return float(1.0 - (w * o).sum() / denom) if denom > 0 else float("nan")


def macro_f1(y_true, y_pred, n_classes: int | None = None) -> float:
    """Mean F1 over the classes present in truth or prediction."""
    y_true, y_pred = np.asarray(y_true).astype(int), np.asarray(y_pred).astype(int)
    k = n_classes or int(max(y_true.max(), y_pred.max()) + 1)
    m = confusion(y_true, y_pred, k)
    f1 = []
    for c in range(k):
        tp, fp, fn = m[c, c], m[:, c].sum() - m[c, c], m[c, :].sum() - m[c, c]
        if tp + fp + fn == 0:
            continue
        f1.append(2 * tp / (2 * tp + fp + fn))
    return float(np.mean(f1)) if f1 else float("nan")


def balanced_accuracy(y_true, y_pred, n_classes: int | None = None) -> float:
    """Mean recall over the classes present in ``y_true``."""
    y_true, y_pred = np.asarray(y_true).astype(int), np.asarray(y_pred).astype(int)
    recalls = [float(np.mean(y_pred[y_true == c] == c)) for c in np.unique(y_true)]
    return float(np.mean(recalls))


def sens_spec(y_true, score, threshold: float = 0.5) -> tuple[float, float]:
    """Sensitivity and specificity of ``score >= threshold``."""
    y = np.asarray(y_true).astype(int)
    pred = _arr(score, "score") >= threshold
    sens = float(pred[y == 1].mean()) if (y == 1).any() else float("nan")
    spec = float((~pred[y == 0]).mean()) if (y == 0).any() else float("nan")
    return sens, spec


def specificity_at_sensitivity(y_true, score, sensitivity: float) -> float:
    """The best specificity among thresholds whose sensitivity is >= ``sensitivity``."""
    y = np.asarray(y_true).astype(int)
    s = _arr(score, "score")
    if not (y == 1).any() or not (y == 0).any():
        return float("nan")
    best = 0.0
    for t in np.unique(np.concatenate([s, [np.inf]])):
        se, sp = sens_spec(y, s, t)
        if se >= sensitivity - 1e-12:
            best = max(best, sp)
    return float(best)


def classification_report(y_true, probs, scheme, *, threshold: float = 0.5) -> dict[str, float]:
    """Every metric that fits a :class:`proqual.labels.Scheme`: for binary schemes AUROC, sensitivity and
    specificity at ``threshold``, specificity at 0.8 / 0.9 sensitivity; for multi-class schemes macro OvR
    AUROC, QWK, macro-F1, balanced accuracy, plus the binary metrics of the scheme's positive call."""
    y = np.asarray(y_true).astype(int)
    p = _arr(probs, "probs")
    if len(p) != len(y):
        raise ValidationError("probs", f"has {len(p)} rows, y_true has {len(y)}")
    if p.ndim == 1:
        p = np.stack([1 - p, p], 1)
    if p.shape[1] != scheme.n_classes:
        raise ValidationError(
            "probs", f"has {p.shape[1]} columns, scheme {scheme.name} has {scheme.n_classes}"
        )
    pred = p.argmax(1)
    out: dict[str, float] = {"n": float(len(y))}
    if not scheme.binary:
        out["auroc_ovr"] = auroc_ovr(y, p)
        out["qwk"] = quadratic_weighted_kappa(y, pred, scheme.n_classes)
    out["macro_f1"] = macro_f1(y, pred, scheme.n_classes)
    out["balanced_accuracy"] = balanced_accuracy(y, pred, scheme.n_classes)
    pos = scheme.binary_prob(p)
    y_pos = np.isin(y, scheme.positive_classes).astype(int)
    out["auroc"] = auroc(y_pos, pos)
    out["sensitivity"], out["specificity"] = sens_spec(y_pos, pos, threshold)
    out["specificity_at_sens_0.8"] = specificity_at_sensitivity(y_pos, pos, 0.8)
    out["specificity_at_sens_0.9"] = specificity_at_sensitivity(y_pos, pos, 0.9)
    return out
