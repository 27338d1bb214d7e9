"""Classical no-reference quality measures (MRQy / MRIQC definitions, written here).

Foreground: given ``mask``, else Otsu's threshold, holes filled, largest connected component; the
background is everything else. Two tissue classes (``tissue_masks``) default to an Otsu split of the
foreground. Every measure is a plain float; a measure that is undefined for the image (empty
background, zero background noise, a single tissue class) is NaN, never an exception.

- SNR  = mean(foreground) / std(background)
- CNR  = |mean(t1) - mean(t2)| / sqrt(std(bg)^2 + std(t1)^2 + std(t2)^2)            (MRIQC)
- CJV  = (std(t1) + std(t2)) / |mean(t1) - mean(t2)|                                 (MRIQC; lower is better)
- EFC  = Shannon entropy of voxel intensities normalised by the total energy, divided by its maximum
         (a constant image gives 1, a single bright voxel 0; lower means sharper)     (MRIQC)
- FBER = mean(foreground^2) / mean(background^2)                                     (energy ratio)
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from proqual.errors import ValidationError

NAMES = ("snr", "cnr", "cjv", "efc", "fber")


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of a 1D sample (maximises the between-class variance)."""
    hist, edges = np.histogram(values, bins=bins)
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m = np.cumsum(hist * centres)
    mu0 = m / np.maximum(w0, 1)
    mu1 = (m[-1] - m) / np.maximum(w1, 1)
    between = w0 * w1 * (mu0 - mu1) ** 2
    return float(centres[int(np.argmax(between[:-1]))]) if len(between) > 1 else float(centres[0])


def foreground_mask(image: np.ndarray) -> np.ndarray:
    img = np.asarray(image, dtype=np.float64)
    if np.ptp(img) == 0:
        return np.ones(img.shape, bool)
    fg = img > otsu_threshold(img.ravel())
    fg = ndimage.binary_fill_holes(fg)
    labels, n = ndimage.label(fg)
    if n > 1:
        sizes = ndimage.sum(fg, labels, range(1, n + 1))
        fg = labels == (int(np.argmax(sizes)) + 1)
    return fg


def _std(x: np.ndarray) -> float:
    return float(x.std()) if x.size > 1 else float("nan")


def efc(image: np.ndarray) -> float:
    x = np.abs(np.asarray(image, dtype=np.float64)).ravel()
    n = x.size
    b_max = math.sqrt(float((x**2).sum()))
    if n < 2 or b_max == 0:
        return float("nan")
    e_max = n * (1.0 / math.sqrt(n)) * math.log(1.0 / math.sqrt(n))
    r = x / b_max
    e = float(np.sum(r * np.log(r + 1e-16)))
    return e / e_max


def classical_measures(
    image: np.ndarray,
    *,
    mask: np.ndarray | None = None,
    tissue_masks: tuple[np.ndarray, np.ndarray] | None = None,
) -> dict[str, float]:
    img = np.asarray(image, dtype=np.float64)
    if img.size == 0:
        raise ValidationError("image", "is empty")
    fg = foreground_mask(img) if mask is None else np.asarray(mask, bool)
    if fg.shape != img.shape:
        raise ValidationError("mask", f"shape {fg.shape} differs from the image {img.shape}")
    bg = ~fg
    f, b = img[fg], img[bg]
    sd_bg = _std(b)
    if tissue_masks is None and f.size > 1 and np.ptp(f) > 0:
        t = otsu_threshold(f)
        t1, t2 = f[f <= t], f[f > t]
    elif tissue_masks is not None:
        t1, t2 = img[np.asarray(tissue_masks[0], bool)], img[np.asarray(tissue_masks[1], bool)]
    else:
        t1 = t2 = np.array([])
    out = {name: float("nan") for name in NAMES}
    if f.size and sd_bg and not math.isnan(sd_bg):
        out["snr"] = float(f.mean()) / sd_bg
    if t1.size > 1 and t2.size > 1:
        diff = abs(float(t1.mean()) - float(t2.mean()))
        noise = math.sqrt((sd_bg if not math.isnan(sd_bg) else 0.0) ** 2 + _std(t1) ** 2 + _std(t2) ** 2)
        if noise > 0:
            out["cnr"] = diff / noise
        if diff > 0:
            out["cjv"] = (_std(t1) + _std(t2)) / diff
    out["efc"] = efc(img)
    if f.size and b.size and float((b**2).mean()) > 0:
        out["fber"] = float((f**2).mean()) / float((b**2).mean())
    return out
