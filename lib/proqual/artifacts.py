"""Physically parameterised MRI artifact simulator: the upstream training targets of the quality model.

Nine artifact *families* (:class:`Family`) degrade a magnitude image with known physical parameters.
Following TorchIO, drawing the parameters is kept apart from applying them:

* :func:`sample_params` draws an :class:`ArtifactParams` (for a requested severity, or a uniform one);
* :func:`apply` is deterministic given the parameters: every random realisation (noise field, motion
  timing, bias-field shape, spike positions) is drawn from the ``seed`` stored in the parameters;
* :func:`degrade` does both; :func:`compose` / :func:`apply_all` chain several families;
* :func:`severity_of` maps parameters to a severity in [0, 1] (0 = clean, 1 = the worst we simulate);
  :func:`param_vector` turns parameters into a fixed-length regression target (:data:`PARAM_NAMES`).

Arrays are float32 indexed (x, y, z) with a voxel spacing (x, y, z) in mm; slices are axial (along z)
and 2D k-space is the in-plane (x, y) plane of each slice. The phase-encode axis is x (0) or y (1,
default). Outputs are new float32 arrays (the input is never modified) with non-negative values.

Severity mapping (see ``docs/artifacts.md``): each family has one *effective parameter* ``p`` computed
from its physical values (0 for a clean image; e.g. ``1/snr`` for noise, the FWHM for blur) and

    severity = clip((p - p_0) / (p_max - p_0), 0, 1) ** (1 / gamma)

with ``p_0`` (0 except for gibbs), ``p_max`` and ``gamma`` per family in :data:`SEVERITY_SCALE`, calibrated so that the degradation
(normalised RMSE and 1 - SSIM against the clean image) grows monotonically and roughly evenly with
severity. Sampling for a severity inverts this (``p = p_0 + (p_max - p_0) * severity ** gamma``, and p = 0 at severity 0); secondary parameters
(number of movements, ghost period, number of spikes, ...) are drawn so that they do not change ``p``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from collections.abc import Sequence as Seq
from dataclasses import dataclass, field
from enum import Enum
from functools import lru_cache
from typing import Any

import numpy as np

from proqual.errors import ValidationError

__all__ = [
    "PARAM_NAMES",
    "PHYSICAL_ORDER",
    "SEVERITY_SCALE",
    "ArtifactParams",
    "Family",
    "apply",
    "apply_all",
    "combined_severity",
    "compose",
    "degrade",
    "families_for",
    "object_mask",
    "param_vector",
    "sample_params",
    "severity_of",
    "signal_level",
]


class Family(str, Enum):  # noqa: UP042 (StrEnum needs Python 3.11; setup.cfg allows 3.10)
    """Artifact families. The value is the stable name used in files and parameter vectors."""

    NOISE = "noise"
    MOTION = "motion"
    GHOSTING = "ghosting"
    SPIKE = "spike"
    BIAS = "bias"
    BLUR = "blur"
    THROUGH_PLANE = "through_plane"
    GIBBS = "gibbs"
    LOWB_SNR = "lowb_snr"

    @classmethod
    def parse(cls, value: str | Family) -> Family:
        """Case-insensitive lookup by value (``"noise"``) or name (``"NOISE"``)."""
        if isinstance(value, Family):
            return value
        key = str(value).strip().lower()
        for fam in cls:
            if key in (fam.value, fam.name.lower()):
                return fam
        names = ", ".join(f.value for f in cls)
        raise ValidationError("family", f"unknown artifact family {value!r}; expected one of {names}")


# ----------------------------------------------------------------------------------------------------
# Constants (documented in docs/artifacts.md)
# ----------------------------------------------------------------------------------------------------

#: per family (p_0, p_max, gamma): severity = clip((p - p_0) / (p_max - p_0), 0, 1) ** (1 / gamma) for the
#: effective parameter p (0 = clean); p_0 > 0 only where smaller values do not change the image visibly
SEVERITY_SCALE: dict[Family, tuple[float, float, float]] = {
    Family.NOISE: (0.0, 1.0 / 3.0, 1.5),  # p = 1/snr; severity 1 at SNR 3
    Family.MOTION: (0.0, 8.0, 1.5),  # p = max translation + lever x max rotation (mm)
    Family.GHOSTING: (0.0, 0.5, 1.0),  # p = ghost_intensity / sqrt(n_ghosts)
    Family.SPIKE: (0.0, 0.2, 1.0),  # p = spike_intensity x sqrt(n_spikes), relative to the signal level
    Family.BIAS: (0.0, 0.3, 1.0),  # p = standard deviation of the log bias field over the object
    Family.BLUR: (0.0, 4.0, 1.0),  # p = Gaussian FWHM in mm
    Family.THROUGH_PLANE: (0.0, 2.0, 1.7),  # p = slice_factor - 1; effective slices 3x thicker at 1
    # p = MONAI GibbsNoise alpha; below 1 - 1/sqrt(2) the circular mask only trims the k-space corners
    Family.GIBBS: (1.0 - 1.0 / math.sqrt(2.0), 0.8, 0.6),
    Family.LOWB_SNR: (0.0, 1.0 / 1.5, 1.5),  # p = 1 / effective high-b SNR; severity 1 at SNR 1.5
}

#: lever arm (mm) that converts an in-plane rotation into a displacement for the motion severity
MOTION_LEVER_MM = 40.0
#: number of movements (pose changes) drawn by :func:`sample_params`
MOTION_MOVEMENTS = (2, 4)
#: the reference pose holds for the phase-encode lines with |k| below a cut drawn from this range
#: (cycles/mm, separately before and after the centre): the low spatial frequencies that set the contrast
MOTION_CENTRE_K = (0.015, 0.04)
#: ghost period (number of ghost positions across the FOV) range
GHOST_PERIODS = (2, 4)
#: phase-encode lines with |k| below this (cycles/mm) are never modulated by ghosting (object contrast kept)
GHOST_KEEP_CENTRE_K = 0.02
#: number of spikes range
SPIKE_COUNTS = (1, 3)
#: spike radius in k-space as a fraction of the half matrix
SPIKE_RADIUS = (0.15, 0.8)
#: polynomial order of the bias field
BIAS_ORDER = 3
#: largest signal drop of the high-b image at severity 1 (lowb_snr)
LOWB_MAX_DROP = 0.4
#: default b-values (s/mm2) of the DWI pair an ADC map is assumed to come from
ADC_B_VALUES = (50.0, 1000.0)
#: default scale of ADC image values to mm2/s (PI-CAI stores ADC in 1e-6 mm2/s)
ADC_SCALE = 1e-6
#: upper clip of a simulated ADC (mm2/s)
ADC_MAX_MM2_S = 4e-3

#: the order in which :func:`compose` applies families: object (bias, slice profile), acquisition
#: (motion, ghosting, spikes), reconstruction (truncation, apodisation) and finally thermal noise
PHYSICAL_ORDER: tuple[Family, ...] = (
    Family.BIAS,
    Family.THROUGH_PLANE,
    Family.MOTION,
    Family.GHOSTING,
    Family.SPIKE,
    Family.GIBBS,
    Family.BLUR,
    Family.NOISE,
    Family.LOWB_SNR,
)

_FAMILY_VALUES: dict[Family, tuple[str, ...]] = {
    Family.NOISE: ("snr",),
    Family.MOTION: ("max_translation_mm", "max_rotation_deg", "n_movements", "pe_axis"),
    Family.GHOSTING: ("ghost_intensity", "n_ghosts", "pe_axis"),
    Family.SPIKE: ("spike_intensity", "n_spikes"),
    Family.BIAS: ("bias_coefficient", "bias_order"),
    Family.BLUR: ("fwhm_mm",),
    Family.THROUGH_PLANE: ("slice_factor",),
    Family.GIBBS: ("gibbs_alpha",),
    Family.LOWB_SNR: ("snr", "signal_drop", "target", "b_low", "b_high", "adc_scale"),
}

_GENERIC: tuple[Family, ...] = (
    Family.NOISE,
    Family.MOTION,
    Family.GHOSTING,
    Family.SPIKE,
    Family.BIAS,
    Family.BLUR,
    Family.THROUGH_PLANE,
    Family.GIBBS,
)


def families_for(sequence: str | Any) -> tuple[Family, ...]:
    """Families that apply to a sequence (``"T2W"``, ``"ADC"``, ``"HBV"``/``"DWI"``, anything else).

    * T2W and other magnitude images: every family except ``lowb_snr``.
    * HBV / DWI: every family, ``lowb_snr`` included.
    * ADC (a computed map): no ``noise`` (noise reaches an ADC only through the DWI it comes from, which
      ``lowb_snr`` simulates) and no ``bias`` (a receive-coil bias cancels in the ADC ratio).
    """
    name = getattr(sequence, "value", sequence)
    key = str(name).strip().upper()
    if key in ("HBV", "DWI"):
        return (*_GENERIC, Family.LOWB_SNR)
    if key == "ADC":
        return tuple(f for f in _GENERIC if f not in (Family.NOISE, Family.BIAS)) + (Family.LOWB_SNR,)
    return _GENERIC


# ----------------------------------------------------------------------------------------------------
# Parameters
# ----------------------------------------------------------------------------------------------------


def _plain(value: Any) -> Any:
    """JSON-ready copy: numpy scalars to Python, non-finite floats to strings."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return "inf" if value > 0 else ("-inf" if value < 0 else "nan")
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _unplain(value: Any) -> Any:
    if isinstance(value, str) and value in ("inf", "-inf", "nan"):
        return float(value)
    if isinstance(value, list):
        return [_unplain(v) for v in value]
    return value


@dataclass(frozen=True)
class ArtifactParams:
    """Everything needed to reproduce one degradation.

    ``values`` holds the named physical parameters of the family (see ``docs/artifacts.md``); ``seed``
    seeds every random realisation in :func:`apply`; ``severity`` is :func:`severity_of` of the values
    at sampling time. Treat ``values`` as read-only.
    """

    family: Family
    values: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    severity: float = 0.0

    def __post_init__(self):
        object.__setattr__(self, "family", Family.parse(self.family))
        if not isinstance(self.values, Mapping):
            raise ValidationError("values", f"must be a mapping, got {type(self.values).__name__}")
        vals = {str(k): (v.item() if isinstance(v, np.generic) else v) for k, v in self.values.items()}
        missing = [k for k in _FAMILY_VALUES[self.family] if k not in vals]
        if missing:
            raise ValidationError(
                "values", f"{self.family.value} parameters lack {', '.join(missing)} (have {sorted(vals)})"
            )
        object.__setattr__(self, "values", vals)
        try:
            seed = int(self.seed)
        except (TypeError, ValueError):
            raise ValidationError("seed", f"must be an integer, got {self.seed!r}") from None
        if seed < 0:
            raise ValidationError("seed", f"must be >= 0, got {seed}")
        object.__setattr__(self, "seed", seed)
        sev = float(self.severity)
        if not 0.0 <= sev <= 1.0:
            raise ValidationError("severity", f"must be in [0, 1], got {sev}")
        object.__setattr__(self, "severity", sev)
        _check_values(self.family, vals)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (an infinite SNR is written as the string ``"inf"``)."""
        return {
            "family": self.family.value,
            "values": {k: _plain(v) for k, v in self.values.items()},
            "seed": int(self.seed),
            "severity": float(self.severity),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ArtifactParams:
        """Inverse of :meth:`to_dict`; raises :class:`ValidationError` naming a missing or bad field."""
        if not isinstance(data, Mapping):
            raise ValidationError("params", f"must be a mapping, got {type(data).__name__}")
        for key in ("family", "values", "seed", "severity"):
            if key not in data:
                raise ValidationError(key, "missing from artifact parameters")
        values = data["values"]
        if not isinstance(values, Mapping):
            raise ValidationError("values", f"must be a mapping, got {type(values).__name__}")
        return cls(
            family=data["family"],
            values={k: _unplain(v) for k, v in values.items()},
            seed=data["seed"],
            severity=data["severity"],
        )


def _num(values: Mapping[str, Any], key: str, *, lo: float | None = None, hi: float | None = None) -> float:
    try:
        v = float(values[key])
    except (TypeError, ValueError):
        raise ValidationError(f"values.{key}", f"must be a number, got {values[key]!r}") from None
    if math.isnan(v):
        raise ValidationError(f"values.{key}", "is NaN")
    if lo is not None and v < lo:
        raise ValidationError(f"values.{key}", f"must be >= {lo}, got {v}")
    if hi is not None and v > hi:
        raise ValidationError(f"values.{key}", f"must be <= {hi}, got {v}")
    return v


def _int(values: Mapping[str, Any], key: str, *, lo: int, hi: int | None = None) -> int:
    v = _num(values, key, lo=lo, hi=hi)
    if v != int(v):
        raise ValidationError(f"values.{key}", f"must be an integer, got {values[key]!r}")
    return int(v)


def _check_values(family: Family, v: Mapping[str, Any]) -> None:
    if family in (Family.MOTION, Family.GHOSTING):
        _int(v, "pe_axis", lo=0, hi=1)
    if family is Family.NOISE:
        if _num(v, "snr") <= 0:
            raise ValidationError("values.snr", f"must be > 0 (inf = no noise), got {v['snr']}")
    elif family is Family.MOTION:
        _num(v, "max_translation_mm", lo=0)
        _num(v, "max_rotation_deg", lo=0, hi=45)
        _int(v, "n_movements", lo=1, hi=16)
    elif family is Family.GHOSTING:
        _num(v, "ghost_intensity", lo=0, hi=1)
        _int(v, "n_ghosts", lo=2, hi=64)
    elif family is Family.SPIKE:
        _num(v, "spike_intensity", lo=0)
        _int(v, "n_spikes", lo=1, hi=32)
    elif family is Family.BIAS:
        _num(v, "bias_coefficient", lo=0)
        _int(v, "bias_order", lo=1, hi=8)
    elif family is Family.BLUR:
        _num(v, "fwhm_mm", lo=0)
    elif family is Family.THROUGH_PLANE:
        _num(v, "slice_factor", lo=1)
    elif family is Family.GIBBS:
        _num(v, "gibbs_alpha", lo=0, hi=0.99)
    elif family is Family.LOWB_SNR:
        if _num(v, "snr") <= 0:
            raise ValidationError("values.snr", f"must be > 0 (inf = no noise), got {v['snr']}")
        _num(v, "signal_drop", lo=0, hi=0.95)
        if v["target"] not in ("HBV", "ADC"):
            raise ValidationError("values.target", f"must be 'HBV' or 'ADC', got {v['target']!r}")
        b_low = _num(v, "b_low", lo=0)
        if _num(v, "b_high", lo=0) <= b_low:
            raise ValidationError("values.b_high", f"must exceed b_low ({b_low}), got {v['b_high']}")
        if _num(v, "adc_scale") <= 0:
            raise ValidationError("values.adc_scale", f"must be > 0, got {v['adc_scale']}")


def _effective(family: Family, v: Mapping[str, Any]) -> float:
    """The effective parameter p of a family (0 = clean); severity is a monotone function of it."""
    if family is Family.NOISE:
        return 1.0 / float(v["snr"])
    if family is Family.MOTION:
        return float(v["max_translation_mm"]) + MOTION_LEVER_MM * math.radians(float(v["max_rotation_deg"]))
    if family is Family.GHOSTING:
        n = int(v["n_ghosts"])
        return float(v["ghost_intensity"]) / math.sqrt(n)
    if family is Family.SPIKE:
        return float(v["spike_intensity"]) * math.sqrt(int(v["n_spikes"]))
    if family is Family.BIAS:
        return float(v["bias_coefficient"])
    if family is Family.BLUR:
        return float(v["fwhm_mm"])
    if family is Family.THROUGH_PLANE:
        return float(v["slice_factor"]) - 1.0
    if family is Family.GIBBS:
        return float(v["gibbs_alpha"])
    if family is Family.LOWB_SNR:
        return 1.0 / (float(v["snr"]) * (1.0 - float(v["signal_drop"])))
    raise AssertionError(family)


def severity_of(params: ArtifactParams) -> float:
    """Severity in [0, 1] of the parameters: ``clip((p - p_0) / (p_max - p_0), 0, 1) ** (1 / gamma)``.

    ``p`` is the family's effective parameter (``docs/artifacts.md``), monotone in each physical value
    that makes the image worse; ``p_0``, ``p_max`` and ``gamma`` come from :data:`SEVERITY_SCALE`.
    """
    p = _effective(params.family, params.values)
    p0, p_max, gamma = SEVERITY_SCALE[params.family]
    if p <= p0:
        return 0.0
    return float(min(1.0, (p - p0) / (p_max - p0)) ** (1.0 / gamma))


def _check_severity(severity: float | None) -> float | None:
    if severity is None:
        return None
    s = float(severity)
    if not 0.0 <= s <= 1.0:
        raise ValidationError("severity", f"must be in [0, 1], got {severity}")
    return s


def sample_params(
    family: Family | str,
    rng: np.random.Generator,
    *,
    severity: float | None = None,
    pe_axis: int = 1,
    sequence: str | Any | None = None,
) -> ArtifactParams:
    """Draw parameters of ``family``.

    With ``severity`` the main parameter realises exactly that severity and only secondary parameters
    (and the realisation seed) are random; without it the severity is uniform in [0, 1]. The draws are
    made in a fixed order, so one ``rng`` state at different severities gives the same realisation
    (motion timing, ghost period, spike positions ...) scaled to the severity.

    ``pe_axis`` (0 = x, 1 = y) is the phase-encode axis for motion and ghosting. ``sequence`` (e.g.
    ``"ADC"``) checks that the family applies (:func:`families_for`) and, for ``lowb_snr``, picks the
    target (``"ADC"`` simulates the ADC map, anything else the high-b image).
    """
    fam = Family.parse(family)
    if not isinstance(rng, np.random.Generator):
        raise ValidationError("rng", f"must be a numpy Generator, got {type(rng).__name__}")
    if pe_axis not in (0, 1):
        raise ValidationError("pe_axis", f"must be 0 (x) or 1 (y), got {pe_axis!r}")
    if sequence is not None and fam not in families_for(sequence):
        seq = getattr(sequence, "value", sequence)
        raise ValidationError("family", f"{fam.value} does not apply to sequence {seq}")
    s = _check_severity(severity)
    if s is None:
        s = float(rng.uniform(0.0, 1.0))
    p0, p_max, gamma = SEVERITY_SCALE[fam]
    p = 0.0 if s == 0 else p0 + (p_max - p0) * s**gamma

    if fam is Family.NOISE:
        values: dict[str, Any] = {"snr": math.inf if p == 0 else 1.0 / p}
    elif fam is Family.MOTION:
        n_mov = int(rng.integers(MOTION_MOVEMENTS[0], MOTION_MOVEMENTS[1] + 1))
        share = float(rng.uniform(0.0, 0.5))  # part of the displacement due to rotation
        values = {
            "max_translation_mm": (1.0 - share) * p,
            "max_rotation_deg": math.degrees(share * p / MOTION_LEVER_MM),
            "n_movements": n_mov,
            "pe_axis": pe_axis,
        }
    elif fam is Family.GHOSTING:
        n = int(rng.integers(GHOST_PERIODS[0], GHOST_PERIODS[1] + 1))
        values = {"ghost_intensity": min(1.0, p * math.sqrt(n)), "n_ghosts": n, "pe_axis": pe_axis}
    elif fam is Family.SPIKE:
        n = int(rng.integers(SPIKE_COUNTS[0], SPIKE_COUNTS[1] + 1))
        values = {"spike_intensity": p / math.sqrt(n), "n_spikes": n}
    elif fam is Family.BIAS:
        values = {"bias_coefficient": p, "bias_order": BIAS_ORDER}
    elif fam is Family.BLUR:
        values = {"fwhm_mm": p}
    elif fam is Family.THROUGH_PLANE:
        values = {"slice_factor": 1.0 + p}
    elif fam is Family.GIBBS:
        values = {"gibbs_alpha": p}
    elif fam is Family.LOWB_SNR:
        drop = s * LOWB_MAX_DROP * float(rng.uniform(0.5, 1.0))
        target = (
            "ADC"
            if sequence is not None and str(getattr(sequence, "value", sequence)).upper() == "ADC"
            else "HBV"
        )
        values = {
            "snr": math.inf if p == 0 else 1.0 / (p * (1.0 - drop)),
            "signal_drop": drop,
            "target": target,
            "b_low": ADC_B_VALUES[0],
            "b_high": ADC_B_VALUES[1],
            "adc_scale": ADC_SCALE,
        }
    else:  # pragma: no cover
        raise AssertionError(fam)
    seed = int(rng.integers(0, 2**31 - 1))
    probe = ArtifactParams(fam, values, seed, 0.0)
    return ArtifactParams(fam, values, seed, severity_of(probe))


# ----------------------------------------------------------------------------------------------------
# Parameter vector
# ----------------------------------------------------------------------------------------------------

_VECTOR_SPEC: tuple[tuple[Family, str], ...] = (
    (Family.NOISE, "severity"),
    (Family.NOISE, "inv_snr"),
    (Family.MOTION, "severity"),
    (Family.MOTION, "translation"),
    (Family.MOTION, "rotation"),
    (Family.GHOSTING, "severity"),
    (Family.GHOSTING, "intensity"),
    (Family.SPIKE, "severity"),
    (Family.SPIKE, "intensity"),
    (Family.BIAS, "severity"),
    (Family.BIAS, "coefficient"),
    (Family.BLUR, "severity"),
    (Family.BLUR, "fwhm"),
    (Family.THROUGH_PLANE, "severity"),
    (Family.THROUGH_PLANE, "slice_factor"),
    (Family.GIBBS, "severity"),
    (Family.GIBBS, "alpha"),
    (Family.LOWB_SNR, "severity"),
    (Family.LOWB_SNR, "inv_snr"),
    (Family.LOWB_SNR, "drop"),
)

#: names of the entries of :func:`param_vector`, ``"<family>.<quantity>"``
PARAM_NAMES: tuple[str, ...] = tuple(f"{fam.value}.{q}" for fam, q in _VECTOR_SPEC)


def _normalised(params: ArtifactParams) -> dict[str, float]:
    """The family's normalised parameters (each 0 when clean, 1 at the worst simulated level)."""
    fam, v = params.family, params.values
    _, p_max, _ = SEVERITY_SCALE[fam]
    out = {"severity": severity_of(params)}
    if fam is Family.NOISE:
        out["inv_snr"] = (1.0 / float(v["snr"])) / p_max
    elif fam is Family.MOTION:
        out["translation"] = float(v["max_translation_mm"]) / p_max
        out["rotation"] = MOTION_LEVER_MM * math.radians(float(v["max_rotation_deg"])) / (0.5 * p_max)
    elif fam is Family.GHOSTING:
        out["intensity"] = float(v["ghost_intensity"])
    elif fam is Family.SPIKE:
        out["intensity"] = float(v["spike_intensity"]) / p_max
    elif fam is Family.BIAS:
        out["coefficient"] = float(v["bias_coefficient"]) / p_max
    elif fam is Family.BLUR:
        out["fwhm"] = float(v["fwhm_mm"]) / p_max
    elif fam is Family.THROUGH_PLANE:
        out["slice_factor"] = (float(v["slice_factor"]) - 1.0) / p_max
    elif fam is Family.GIBBS:
        out["alpha"] = float(v["gibbs_alpha"]) / p_max
    elif fam is Family.LOWB_SNR:
        out["inv_snr"] = (1.0 / float(v["snr"])) / p_max
        out["drop"] = float(v["signal_drop"]) / LOWB_MAX_DROP
    return {k: float(np.clip(x, 0.0, 1.0)) for k, x in out.items()}


def param_vector(params: ArtifactParams | Iterable[ArtifactParams]) -> np.ndarray:
    """Fixed-length float32 vector (names in :data:`PARAM_NAMES`), every entry in [0, 1].

    Per family: its severity and its main physical parameters normalised by the value reached at
    severity 1; zeros for families that are absent. Accepts one :class:`ArtifactParams` or the list
    :func:`compose` returns; a family present twice gets ``1 - prod(1 - x)`` per entry.
    """
    items = [params] if isinstance(params, ArtifactParams) else list(params)
    keep = np.ones(len(PARAM_NAMES), dtype=np.float64)  # running prod(1 - x)
    index = {name: i for i, name in enumerate(PARAM_NAMES)}
    for item in items:
        if not isinstance(item, ArtifactParams):
            raise ValidationError("params", f"expected ArtifactParams, got {type(item).__name__}")
        for q, x in _normalised(item).items():
            keep[index[f"{item.family.value}.{q}"]] *= 1.0 - x
    return (1.0 - keep).astype(np.float32)


def combined_severity(params: Iterable[ArtifactParams]) -> float:
    """Severity of several degradations together: ``1 - prod(1 - s_i)`` (0 for none).

    Any one severe artifact makes the image severe; mild ones accumulate.
    """
    keep = 1.0
    for item in params:
        keep *= 1.0 - severity_of(item)
    return float(1.0 - keep)


# ----------------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------------


def _check_image(image: np.ndarray, spacing) -> tuple[np.ndarray, tuple[float, float, float]]:
    """A float32 non-negative copy of ``image`` and the spacing as floats; raises on bad input."""
    if not isinstance(image, np.ndarray):
        raise ValidationError("image", f"must be a numpy array, got {type(image).__name__}")
    if image.ndim != 3:
        raise ValidationError("image", f"must be 3D (x, y, z), got shape {image.shape}")
    if min(image.shape) < 1:
        raise ValidationError("image", f"is empty, shape {image.shape}")
    try:
        sp = tuple(float(s) for s in spacing)
    except (TypeError, ValueError):
        raise ValidationError("spacing", f"must be three numbers in mm, got {spacing!r}") from None
    if len(sp) != 3 or not all(math.isfinite(s) and s > 0 for s in sp):
        raise ValidationError("spacing", f"must be three positive numbers in mm, got {spacing!r}")
    img = np.array(image, dtype=np.float32, copy=True)
    if not np.isfinite(img).all():
        raise ValidationError("image", "contains NaN or infinite values")
    lo, hi = float(img.min()), float(img.max())
    if lo < 0:
        if lo < -1e-3 * max(abs(hi), 1e-12):
            raise ValidationError(
                "image", f"must be a non-negative magnitude image; minimum is {lo:g} (maximum {hi:g})"
            )
        np.maximum(img, 0.0, out=img)  # interpolation overshoot of a few 1e-4
    return img, sp  # type: ignore[return-value]


def object_mask(image: np.ndarray, *, level: float = 0.1) -> np.ndarray:
    """The object: the voxels above ``level`` (10 %) of the 99.5th percentile (taken on at most about a
    million voxels); every voxel when the image has no positive signal."""
    top = float(np.percentile(image.reshape(-1)[:: max(1, image.size // 1_000_000)], 99.5))
    return image > level * top if top > 0 else np.ones(image.shape, dtype=bool)


def signal_level(image: np.ndarray) -> float:
    """Reference signal for SNR definitions: mean of the voxels above 10 % of the 99.5th percentile."""
    flat = image.reshape(-1)
    sub = flat[:: max(1, flat.size // 1_000_000)]
    top = float(np.percentile(sub, 99.5))
    if top <= 0:
        return 0.0
    fg = sub[sub > 0.1 * top]
    return float(fg.mean()) if fg.size else 0.0


def _to_slices(img: np.ndarray, pe_axis: int) -> np.ndarray:
    """(x, y, z) -> contiguous (z, readout, phase-encode)."""
    order = (2, 0, 1) if pe_axis == 1 else (2, 1, 0)
    return np.ascontiguousarray(img.transpose(order))


def _from_slices(arr: np.ndarray, pe_axis: int) -> np.ndarray:
    """(z, readout, phase-encode) -> contiguous float32 (x, y, z)."""
    order = (1, 2, 0) if pe_axis == 1 else (2, 1, 0)
    return np.ascontiguousarray(arr.transpose(order), dtype=np.float32)


def _inplane_spacing(spacing, pe_axis: int) -> tuple[float, float]:
    """(readout, phase-encode) spacing in mm."""
    return (spacing[0], spacing[1]) if pe_axis == 1 else (spacing[1], spacing[0])


def _fft():
    import scipy.fft

    return scipy.fft


def _rician(signal: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Magnitude of ``signal`` plus complex Gaussian noise of standard deviation ``sigma`` per channel."""
    re = rng.standard_normal(signal.shape, dtype=np.float32)
    im = rng.standard_normal(signal.shape, dtype=np.float32)
    re *= np.float32(sigma)
    re += signal
    im *= np.float32(sigma)
    np.square(re, out=re)
    np.square(im, out=im)
    re += im
    np.sqrt(re, out=re)
    return re


def _torch_out(x) -> np.ndarray:
    import torch

    if isinstance(x, torch.Tensor):
        return x.as_tensor().numpy() if hasattr(x, "as_tensor") else x.numpy()
    return np.asarray(x)


@lru_cache(maxsize=1)
def _monai():
    import monai.transforms as mt

    return mt


# ----------------------------------------------------------------------------------------------------
# Families
# ----------------------------------------------------------------------------------------------------


def _apply_noise(img, spacing, v, seed) -> np.ndarray:
    snr = float(v["snr"])
    if math.isinf(snr):
        return img
    s_ref = signal_level(img)
    if s_ref <= 0:
        raise ValidationError("image", "has no signal (all voxels <= 0); an SNR cannot be defined")
    return _rician(img, s_ref / snr, np.random.default_rng(seed))


def _motion_realisation(v, seed, ky_mm: np.ndarray):
    """Segment index per (unshifted) phase-encode line and per-segment poses.

    Returns ``(segment, translations, rotations)``: ``segment[line]`` is 0 for the reference segment,
    ``translations[j]`` is a unit-free (d_ro, d_pe) direction x magnitude with the largest magnitude 1,
    ``rotations[j]`` a signed factor with the largest |factor| 1 (entry 0, the reference, is zero).
    Drawn in a fixed order from ``seed`` so that only the amplitudes depend on the values."""
    rng = np.random.default_rng(seed)
    n = int(v["n_movements"])
    n_pe = ky_mm.size
    k_left, k_right = rng.uniform(MOTION_CENTRE_K[0], MOTION_CENTRE_K[1], size=2)
    n_left = int(rng.integers(1, n)) if n > 1 else int(rng.integers(0, 2))
    n_right = n - n_left
    cuts_left = np.sort(rng.uniform(0.0, 1.0, size=max(n_left - 1, 0)))
    cuts_right = np.sort(rng.uniform(0.0, 1.0, size=max(n_right - 1, 0)))
    angles = rng.uniform(0.0, 2.0 * math.pi, size=n)
    t_mag = rng.uniform(0.7, 1.0, size=n)
    r_mag = rng.uniform(0.7, 1.0, size=n) * rng.choice([-1.0, 1.0], size=n)

    # lines in acquisition order (linear ordering: most negative ky first)
    order = np.argsort((np.arange(n_pe) + n_pe // 2) % n_pe)  # unshifted index of each time slot
    ky_t = ky_mm[order]
    segment_t = np.zeros(n_pe, dtype=np.int64)
    left = np.nonzero(ky_t < -k_left)[0]
    right = np.nonzero(ky_t >= k_right)[0]
    if n_left and left.size:
        # segments 1..n_left from the start of the acquisition, split at random fractions of the left part
        edges = np.floor(cuts_left * left.size).astype(np.int64)
        segment_t[left] = 1 + np.searchsorted(edges, np.arange(left.size), side="right")
    if n_right and right.size:
        edges = np.floor(cuts_right * right.size).astype(np.int64)
        base = 1 + n_left
        segment_t[right] = base + np.searchsorted(edges, np.arange(right.size), side="right")
    segment = np.empty(n_pe, dtype=np.int64)
    segment[order] = segment_t
    trans = np.zeros((n + 1, 2))
    trans[1:, 0] = t_mag * np.cos(angles)
    trans[1:, 1] = t_mag * np.sin(angles)
    trans /= np.abs(t_mag).max()
    rots = np.zeros(n + 1)
    rots[1:] = r_mag / np.abs(r_mag).max()
    return segment, trans, rots


def _shear_rotate_kspace(f_ro: np.ndarray, theta: float, sp_ro: float, sp_pe: float) -> np.ndarray:
    """2D k-space (unshifted, axes 1, 2) of every slice rotated in-plane by ``theta`` about the FOV
    centre, computed exactly by three Fourier shears (periodic boundary, as in an MR reconstruction).
    ``f_ro`` is the slices' FFT along the readout axis (axis 1) only."""
    fft = _fft()
    _, n_ro, n_pe = f_ro.shape
    k_ro = fft.fftfreq(n_ro).astype(np.float32)
    k_pe = fft.fftfreq(n_pe).astype(np.float32)
    r = (np.arange(n_ro, dtype=np.float32) - n_ro / 2) * sp_ro  # mm
    q = (np.arange(n_pe, dtype=np.float32) - n_pe / 2) * sp_pe
    a = -math.tan(theta / 2.0)
    b = math.sin(theta)
    # shear along readout by a * pe (mm) -> shift in readout pixels, per pe row
    ph_ro = np.exp((-2j * np.pi) * np.outer(k_ro, a * q / sp_ro)).astype(np.complex64)  # (n_ro, n_pe)
    ph_pe = np.exp((-2j * np.pi) * np.outer(b * r / sp_pe, k_pe)).astype(np.complex64)  # (n_ro, n_pe)
    f = f_ro * ph_ro
    f = fft.ifft(f, axis=1, workers=-1, overwrite_x=True)
    f = fft.fft(f, axis=2, workers=-1, overwrite_x=True)
    f *= ph_pe
    f = fft.ifft(f, axis=2, workers=-1, overwrite_x=True)
    f = fft.fft(f, axis=1, workers=-1, overwrite_x=True)
    f *= ph_ro
    return fft.fft(f, axis=2, workers=-1, overwrite_x=True)


def _apply_motion(img, spacing, v, seed) -> np.ndarray:
    """Rigid in-plane motion during a sequential (linear-order) acquisition of the phase-encode lines.

    Every slice is acquired with the same line timing (interleaved multi-slice). The lines with
    |k_pe| below a cut of 0.015..0.04 cycles/mm (the contrast-defining centre) keep the reference pose;
    the earlier and later lines are split into ``n_movements`` segments (at least one on each side when
    ``n_movements`` >= 2), each with its own translation (random direction, 0.7..1 x the maximum, the
    largest exactly ``max_translation_mm``) and rotation about the FOV centre (likewise, random sign,
    up to ``max_rotation_deg``)."""
    max_t = float(v["max_translation_mm"])
    max_r = math.radians(float(v["max_rotation_deg"]))
    if max_t == 0 and max_r == 0:
        return img
    pe_axis = int(v["pe_axis"])
    sp_ro, sp_pe = _inplane_spacing(spacing, pe_axis)
    sl = _to_slices(img, pe_axis)
    _, n_ro, n_pe = sl.shape
    fft = _fft()
    segment, trans, rots = _motion_realisation(v, seed, fft.fftfreq(n_pe, d=sp_pe))
    f_ro = fft.fft(sl, axis=1, workers=-1)
    k_ref = fft.fft(f_ro, axis=2, workers=-1)
    out = k_ref.copy()
    k_ro = fft.fftfreq(n_ro).astype(np.float32)  # cycles / pixel
    k_pe = fft.fftfreq(n_pe).astype(np.float32)
    for j in range(1, len(rots)):
        lines = np.nonzero(segment == j)[0]
        if lines.size == 0:
            continue
        theta = max_r * rots[j]
        d_ro = max_t * trans[j, 0] / sp_ro  # pixels
        d_pe = max_t * trans[j, 1] / sp_pe
        if theta != 0:
            k_pose = _shear_rotate_kspace(f_ro, theta, sp_ro, sp_pe)[:, :, lines]
        else:
            k_pose = k_ref[:, :, lines]
        ramp = np.exp((-2j * np.pi) * (k_ro[:, None] * d_ro + k_pe[lines][None, :] * d_pe))
        out[:, :, lines] = k_pose * ramp.astype(np.complex64)
    res = np.abs(fft.ifft2(out, axes=(1, 2), workers=-1, overwrite_x=True))
    return _from_slices(res, pe_axis)


def _apply_ghosting(img, spacing, v, seed) -> np.ndarray:
    """Every ``n_ghosts``-th phase-encode line (counted from the centre, offset n//2 so that the centre
    line is kept) is scaled by ``1 - ghost_intensity``: ghosts at multiples of FOV / n along the phase
    encode axis, each of amplitude ``ghost_intensity / n`` relative to the object."""
    a = float(v["ghost_intensity"])
    if a == 0:
        return img
    n = int(v["n_ghosts"])
    pe_axis = int(v["pe_axis"])
    sl = _to_slices(img, pe_axis)
    n_pe = sl.shape[2]
    fft = _fft()
    k = fft.fft2(sl, axes=(1, 2), workers=-1)
    offset = (np.arange(n_pe) + n_pe // 2) % n_pe - n_pe // 2  # signed line offset from the centre
    ky_mm = np.abs(fft.fftfreq(n_pe, d=_inplane_spacing(spacing, pe_axis)[1]))
    lines = np.nonzero((np.mod(offset, n) == n // 2) & (ky_mm >= GHOST_KEEP_CENTRE_K))[0]
    k[:, :, lines] *= np.float32(1.0 - a)
    res = np.abs(fft.ifft2(k, axes=(1, 2), workers=-1, overwrite_x=True))
    return _from_slices(res, pe_axis)


def _spike_locations(shape_ro_pe: tuple[int, int], n: int, seed: int) -> list[tuple[int, int]]:
    rng = np.random.default_rng(seed)
    n_ro, n_pe = shape_ro_pe
    radius = rng.uniform(SPIKE_RADIUS[0], SPIKE_RADIUS[1], size=n)
    angle = rng.uniform(0.0, 2.0 * math.pi, size=n)
    locs = []
    for rad, ang in zip(radius, angle, strict=True):
        i = n_ro // 2 + int(round(rad * math.cos(ang) * (n_ro // 2)))
        j = n_pe // 2 + int(round(rad * math.sin(ang) * (n_pe // 2)))
        i = min(max(i, 0), n_ro - 1)
        j = min(max(j, 0), n_pe - 1)
        if (i, j) == (n_ro // 2, n_pe // 2):  # never on the DC term
            i = min(i + 1, n_ro - 1)
        locs.append((i, j))
    return locs


def _apply_spike(img, spacing, v, seed) -> np.ndarray:
    """``n_spikes`` k-space spikes (MONAI ``KSpaceSpikeNoise``) at random in-plane frequencies, the same
    in every slice. Each spike adds a stripe pattern of amplitude ``spike_intensity`` x the signal level
    (:func:`signal_level`)."""
    import torch

    r = float(v["spike_intensity"])
    if r == 0:
        return img
    s_ref = signal_level(img)
    if s_ref <= 0:
        return img
    sl = _to_slices(img, 1)
    _, n_ro, n_pe = sl.shape
    n = int(v["n_spikes"])
    locs = _spike_locations((n_ro, n_pe), n, seed)
    # inverse FFT divides by n_ro * n_pe: a coefficient A gives a stripe of amplitude A / (n_ro * n_pe)
    log_amp = math.log(r * s_ref * n_ro * n_pe)
    if n == 1:
        tr = _monai().KSpaceSpikeNoise(loc=locs[0], k_intensity=log_amp)
    else:
        tr = _monai().KSpaceSpikeNoise(loc=tuple(locs), k_intensity=tuple([log_amp] * n))
    res = np.abs(_torch_out(tr(torch.from_numpy(sl))))
    return _from_slices(res, 1)


def _bias_field(img: np.ndarray, spacing, v, seed) -> np.ndarray:
    """exp of a random Legendre polynomial of order ``bias_order`` over physical coordinates scaled to
    [-1, 1] along the longest axis. The log-field has zero mean and standard deviation
    ``bias_coefficient`` over the object (the voxels above 10 % of the 99.5th percentile; the whole
    grid when there are none), so the coefficient measures the shading that is visible."""
    from numpy.polynomial import legendre

    order = int(v["bias_order"])
    coef = float(v["bias_coefficient"])
    rng = np.random.default_rng(seed)
    shape = img.shape
    half = max((n - 1) / 2.0 * s for n, s in zip(shape, spacing, strict=True)) or 1.0
    basis = []
    for n, s in zip(shape, spacing, strict=True):
        u = (np.arange(n) - (n - 1) / 2.0) * s / half
        basis.append(np.stack([legendre.legval(u, np.eye(order + 1)[d]) for d in range(order + 1)], axis=1))
    c = rng.standard_normal((order + 1,) * 3)
    deg = np.add.outer(np.add.outer(np.arange(order + 1), np.arange(order + 1)), np.arange(order + 1))
    c = np.where((deg > 0) & (deg <= order), c / np.maximum(deg, 1), 0.0)
    log_field = np.einsum("ijk,xi,yj,zk->xyz", c, *basis, optimize=True).astype(np.float32)
    fg = object_mask(img)
    vals = log_field[fg] if fg.any() else log_field.reshape(-1)
    mean, std = float(vals.mean()), float(vals.std())
    log_field -= np.float32(mean)
    if std > 0:
        log_field *= np.float32(coef / std)
    return np.exp(log_field)


def _apply_bias(img, spacing, v, seed) -> np.ndarray:
    if float(v["bias_coefficient"]) == 0:
        return img
    img *= _bias_field(img, spacing, v, seed)
    return img


def _apply_blur(img, spacing, v, seed) -> np.ndarray:
    """In-plane Gaussian blur of FWHM ``fwhm_mm`` (MONAI ``GaussianSmooth``, per slice)."""
    import torch

    fwhm = float(v["fwhm_mm"])
    if fwhm == 0:
        return img
    k = 2.0 * math.sqrt(2.0 * math.log(2.0))
    sigma = (fwhm / k / spacing[0], fwhm / k / spacing[1])
    sl = _to_slices(img, 1)
    res = _torch_out(_monai().GaussianSmooth(sigma=sigma)(torch.from_numpy(sl)))
    return _from_slices(np.maximum(res, 0.0), 1)


def _slice_profile_matrix(n_z: int, factor: float) -> np.ndarray:
    """(n_z, n_z) weights: output slice i averages the box-profile input slices over a window of
    ``factor`` slice thicknesses centred on it (renormalised at the ends of the stack)."""
    i = np.arange(n_z, dtype=np.float64)[:, None]
    j = np.arange(n_z, dtype=np.float64)[None, :]
    w = np.minimum(i + factor / 2.0, j + 0.5) - np.maximum(i - factor / 2.0, j - 0.5)
    w = np.clip(w, 0.0, None)
    return w / w.sum(axis=1, keepdims=True)


def _apply_through_plane(img, spacing, v, seed) -> np.ndarray:
    """Thicker effective slices: each slice integrates ``slice_factor`` x its thickness (box profile),
    sampled at the original slice positions."""
    f = float(v["slice_factor"])
    if f == 1.0 or img.shape[2] == 1:
        return img
    m = _slice_profile_matrix(img.shape[2], f).astype(np.float32)
    return np.ascontiguousarray(img @ m.T, dtype=np.float32)


def _apply_gibbs(img, spacing, v, seed) -> np.ndarray:
    """In-plane k-space truncation (MONAI ``GibbsNoise``: circular mask of radius (1 - alpha) x the
    half-diagonal of the matrix), magnitude reconstruction."""
    import torch

    alpha = float(v["gibbs_alpha"])
    if alpha == 0:
        return img
    sl = _to_slices(img, 1)
    res = np.abs(_torch_out(_monai().GibbsNoise(alpha=alpha)(torch.from_numpy(sl))))
    return _from_slices(res, 1)


def _apply_lowb(img, spacing, v, seed) -> np.ndarray:
    """Low-SNR high-b regime. HBV: the signal drops by ``signal_drop`` and Rician noise of standard
    deviation ``signal_level / snr`` is added (the noise floor). ADC: the map is turned into the two-point
    DWI signals it implies (S(b_low) = 1, S(b_high) = (1 - drop) exp(-(b_high - b_low) ADC)) over the
    voxels with ADC > 0, both get Rician noise at ``snr`` relative to the mean high-b signal, and the ADC
    is recomputed (noisy, and biased by the noise floor and the drop); clipped to [0, 4e-3] mm2/s."""
    snr = float(v["snr"])
    drop = float(v["signal_drop"])
    if math.isinf(snr) and drop == 0:
        return img
    rng = np.random.default_rng(seed)
    if v["target"] == "HBV":
        s_ref = signal_level(img)
        if s_ref <= 0:
            raise ValidationError("image", "has no signal (all voxels <= 0); an SNR cannot be defined")
        sig = img * np.float32(1.0 - drop)
        return sig if math.isinf(snr) else _rician(sig, s_ref / snr, rng)
    scale = float(v["adc_scale"])
    db = float(v["b_high"]) - float(v["b_low"])
    fg = img > 0
    if not fg.any():
        return img
    adc = img[fg].astype(np.float64) * scale
    # the unit check looks at the object only: a zeroed background that an earlier k-space artifact
    # filled with faint ringing would otherwise pull the median far below any tissue ADC
    median = float(np.median(img[fg & object_mask(img)])) * scale
    if not 1e-4 <= median <= 1e-2:
        raise ValidationError(
            "values.adc_scale",
            f"image values x adc_scale ({scale:g}) give a median ADC of {median:.3g} mm2/s; expected "
            "1e-4..1e-2 (PI-CAI ADC maps are in 1e-6 mm2/s)",
        )
    s_high = np.exp(-db * adc).astype(np.float32)
    sigma = float(s_high.mean()) / snr
    s_high *= np.float32(1.0 - drop)
    s_low = np.ones_like(s_high)
    if sigma > 0:
        s_low = _rician(s_low, sigma, rng)
        s_high = _rician(s_high, sigma, rng)
    tiny = np.float32(1e-6)
    new = np.log(np.maximum(s_low, tiny) / np.maximum(s_high, tiny)) / db
    top = max(ADC_MAX_MM2_S, float(adc.max()))
    out = img.copy()
    out[fg] = (np.clip(new, 0.0, top) / scale).astype(np.float32)
    return out


_APPLY = {
    Family.NOISE: _apply_noise,
    Family.MOTION: _apply_motion,
    Family.GHOSTING: _apply_ghosting,
    Family.SPIKE: _apply_spike,
    Family.BIAS: _apply_bias,
    Family.BLUR: _apply_blur,
    Family.THROUGH_PLANE: _apply_through_plane,
    Family.GIBBS: _apply_gibbs,
    Family.LOWB_SNR: _apply_lowb,
}


# ----------------------------------------------------------------------------------------------------
# Public application API
# ----------------------------------------------------------------------------------------------------


def apply(image: np.ndarray, spacing: Seq[float], params: ArtifactParams) -> np.ndarray:
    """Apply one degradation. Deterministic given ``params``; returns a new float32 array, values >= 0.

    ``image`` is a non-negative magnitude image indexed (x, y, z) (tiny negative interpolation overshoot
    is clipped); ``spacing`` is (x, y, z) in mm. Raises :class:`ValidationError` for bad input.
    """
    if not isinstance(params, ArtifactParams):
        raise ValidationError("params", f"expected ArtifactParams, got {type(params).__name__}")
    img, sp = _check_image(image, spacing)
    out = _APPLY[params.family](img, sp, params.values, params.seed)
    out = np.ascontiguousarray(out, dtype=np.float32)
    np.maximum(out, 0.0, out=out)
    return out


def degrade(
    image: np.ndarray,
    spacing: Seq[float],
    family: Family | str,
    *,
    severity: float,
    seed: int,
    pe_axis: int = 1,
    sequence: str | Any | None = None,
) -> tuple[np.ndarray, ArtifactParams]:
    """Sample parameters of ``family`` at ``severity`` from ``numpy.random.default_rng(seed)`` and apply
    them. Same seed, different severities: the same realisation at different strengths."""
    params = sample_params(
        family, np.random.default_rng(seed), severity=severity, pe_axis=pe_axis, sequence=sequence
    )
    return apply(image, spacing, params), params


def apply_all(
    image: np.ndarray, spacing: Seq[float], params: Iterable[ArtifactParams], *, physical_order: bool = True
) -> np.ndarray:
    """Apply several degradations in sequence (in :data:`PHYSICAL_ORDER` unless ``physical_order`` is
    False, then in the given order). Deterministic; returns a new float32 array."""
    items = list(params)
    if physical_order:
        items = sorted(items, key=lambda p: PHYSICAL_ORDER.index(p.family))
    img, sp = _check_image(image, spacing)
    for item in items:
        img = apply(img, sp, item)
    return img


def compose(
    image: np.ndarray,
    spacing: Seq[float],
    families: Iterable[Family | str],
    *,
    seed: int,
    severities: Seq[float] | None = None,
    pe_axis: int = 1,
    sequence: str | Any | None = None,
    physical_order: bool = True,
) -> tuple[np.ndarray, list[ArtifactParams]]:
    """Sample and apply several families (e.g. ``["noise", "motion"]``).

    Parameters are drawn from ``numpy.random.default_rng(seed)`` in the order given (``severities``, one
    per family, or uniform ones); they are applied in :data:`PHYSICAL_ORDER` unless ``physical_order`` is
    False. Returns the image and the parameters in the order given; their joint severity is
    :func:`combined_severity` (``1 - prod(1 - s_i)``).
    """
    fams = [Family.parse(f) for f in families]
    if severities is not None and len(severities) != len(fams):
        raise ValidationError("severities", f"need one per family ({len(fams)}), got {len(severities)}")
    rng = np.random.default_rng(seed)
    params = [
        sample_params(
            f,
            rng,
            severity=None if severities is None else severities[i],
            pe_axis=pe_axis,
            sequence=sequence,
        )
        for i, f in enumerate(fams)
    ]
    return apply_all(image, spacing, params, physical_order=physical_order), params
