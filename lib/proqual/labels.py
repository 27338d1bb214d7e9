"""One label schema, used by import, training, inference and annotation.

- Task schemes (:func:`get_scheme`): PI-RADS ``pirads_ge4`` (binary >= 4 vs < 4, the default),
  ``pirads_ge3``, ``pirads_4class`` ({<= 2, 3, 4, 5}), ``pirads_5class``; ISUP ``cspca`` (ISUP >= 2) and
  ``isup_gg`` (grade groups 0..5).
- PI-CAI marksheet parsing (lesion lists with ``N/A``, Gleason scores, csPCa flags).
- :class:`Annotation`: what a clinician enters (validated; errors name the dotted field).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic import ValidationError as PydanticValidationError

from proqual.errors import ValidationError
from proqual.study import StudyLabels

NA_TOKENS = {"", "n/a", "na", "nan", "none", "null", "-"}


@dataclass(frozen=True)
class Scheme:
    """A classification target: how a study's labels become a class index."""

    name: str
    task: Literal["pirads", "isup"]
    class_names: tuple[str, ...]
    #: classes whose probabilities add up to the clinically relevant positive call
    positive_classes: tuple[int, ...]
    description: str

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    @property
    def binary(self) -> bool:
        return self.n_classes == 2

    def encode(self, labels: StudyLabels | int | None) -> int | None:
        """Class index of a study (or of a raw PI-RADS / ISUP value); None when the label is absent."""
        if isinstance(labels, StudyLabels):
            value = labels.pirads if self.task == "pirads" else labels.isup
        else:
            value = labels
        if value is None or (
            isinstance(value, str) and value.strip().lower() in ("not_biopsied", "not biopsied")
        ):
            return None
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise ValidationError(self.task, f"must be an integer, got {value!r}")
        v = int(value)
        if self.task == "pirads":
            if not 1 <= v <= 5:
                raise ValidationError("pirads", f"must be 1..5, got {value}")
            return {
                "pirads_ge4": lambda: int(v >= 4),
                "pirads_ge3": lambda: int(v >= 3),
                "pirads_4class": lambda: max(v, 2) - 2,
                "pirads_5class": lambda: v - 1,
            }[self.name]()
        if not 0 <= v <= 5:
            raise ValidationError("isup", f"must be 0..5, got {value}")
        return int(v >= 2) if self.name == "cspca" else v

    def binary_prob(self, probs) -> np.ndarray:
        """Probability of the positive call (e.g. P(PI-RADS >= 4), P(csPCa)) from class probabilities
        (N, n_classes) or (n_classes,)."""
        p = np.asarray(probs, dtype=float)
        return p[..., list(self.positive_classes)].sum(-1)


SCHEMES: dict[str, Scheme] = {
    s.name: s
    for s in (
        Scheme("pirads_ge4", "pirads", ("PI-RADS<4", "PI-RADS>=4"), (1,), "binary PI-RADS >= 4 vs < 4"),
        Scheme("pirads_ge3", "pirads", ("PI-RADS<3", "PI-RADS>=3"), (1,), "binary PI-RADS >= 3 vs < 3"),
        Scheme("pirads_4class", "pirads", ("<=2", "3", "4", "5"), (2, 3), "PI-RADS {<=2, 3, 4, 5}"),
        Scheme("pirads_5class", "pirads", ("1", "2", "3", "4", "5"), (3, 4), "PI-RADS 1..5"),
        Scheme("cspca", "isup", ("no csPCa", "csPCa"), (1,), "clinically significant cancer, ISUP >= 2"),
        Scheme(
            "isup_gg",
            "isup",
            ("GG0", "GG1", "GG2", "GG3", "GG4", "GG5"),
            (2, 3, 4, 5),
            "ISUP grade group 0..5",
        ),
    )
}
#: the binary positive call of each scheme is P(PI-RADS >= 4) for PI-RADS schemes except pirads_ge3
DEFAULT_SCHEMES = {"pirads": "pirads_ge4", "isup": "cspca"}


def get_scheme(name: str) -> Scheme:
    try:
        return SCHEMES[name]
    except KeyError:
        raise ValidationError("scheme", f"unknown scheme {name!r}; valid: {', '.join(SCHEMES)}") from None


# ---------------------------------------------------------------------------------------------------
# PI-CAI marksheet values
# ---------------------------------------------------------------------------------------------------


def _is_na(token) -> bool:
    return (
        token is None
        or (isinstance(token, float) and math.isnan(token))
        or str(token).strip().lower() in NA_TOKENS
    )


def parse_lesion_field(value, *, field: str = "lesion_PIRADS", lo: int = 0, hi: int = 5) -> list[int | None]:
    """``"3,4,N/A"`` -> ``[3, 4, None]``; junk or out-of-range values raise :class:`ValidationError`."""
    if isinstance(value, (list, tuple)):
        tokens = list(value)
    elif _is_na(value):
        return []
    else:
        tokens = str(value).split(",")
    out: list[int | None] = []
    for tok in tokens:
        if _is_na(tok):
            out.append(None)
            continue
        try:
            v = float(str(tok).strip())
        except ValueError:
            raise ValidationError(field, f"{str(tok).strip()!r} is not a number or N/A") from None
        if v != int(v) or not lo <= v <= hi:
            raise ValidationError(field, f"{str(tok).strip()} is outside {lo}..{hi}")
        out.append(int(v))
    return out


def case_pirads_from_lesions(values) -> int | None:
    """Case PI-RADS = the maximum over lesions (N/A ignored); None when all are N/A or there are none."""
    lesions = parse_lesion_field(values, lo=1)
    known = [v for v in lesions if v is not None]
    return max(known) if known else None


def isup_from_gleason(gleason: str) -> int | None:
    """Gleason score ``"3+4"`` -> ISUP grade group: <= 6 -> 1, 3+4 -> 2, 4+3 -> 3, 8 -> 4, 9-10 -> 5;
    ``"0+0"`` (benign) -> 0; N/A -> None."""
    if _is_na(gleason):
        return None
    try:
        primary, secondary = (int(p) for p in str(gleason).strip().split("+"))
    except ValueError:
        raise ValidationError("lesion_GS", f"{gleason!r} is not a Gleason score like 3+4") from None
    total = primary + secondary
    if total == 0:
        return 0
    if not (1 <= primary <= 5 and 1 <= secondary <= 5):
        raise ValidationError("lesion_GS", f"{gleason!r}: patterns must be 1..5")
    if total <= 6:
        return 1
    if total == 7:
        return 2 if primary == 3 else 3
    return 4 if total == 8 else 5


def parse_isup(value, *, field: str = "case_ISUP") -> int | None:
    """A case ISUP cell: 0..5, or None for N/A / not biopsied."""
    if _is_na(value) or str(value).strip().lower() in ("not_biopsied", "not biopsied"):
        return None
    vals = parse_lesion_field(str(value), field=field, lo=0, hi=5)
    return vals[0] if vals else None


def parse_cspca(value, *, field: str = "case_csPCa") -> bool | None:
    """``YES``/``NO``/``1``/``0``/``true``/``false`` -> bool; N/A -> None."""
    if _is_na(value):
        return None
    token = str(value).strip().lower()
    if token in ("yes", "1", "true", "y"):
        return True
    if token in ("no", "0", "false", "n"):
        return False
    raise ValidationError(field, f"{value!r} is not YES/NO")


def cspca_from_isup(isup: int | None) -> bool | None:
    return None if isup is None else isup >= 2


# ---------------------------------------------------------------------------------------------------
# Annotation: what a clinician enters
# ---------------------------------------------------------------------------------------------------

PIQUAL_KEYS = ("T2W", "ADC", "HBV", "DWI", "DCE", "study")


class LesionPoint(BaseModel):
    model_config = ConfigDict(extra="forbid")

    position_lps: tuple[float, float, float]
    pirads: int | None = Field(default=None, ge=1, le=5, strict=True)
    zone: Literal["PZ", "TZ", "AFS", "CZ"] | None = None

    @field_validator("position_lps")
    @classmethod
    def _finite(cls, v):
        if not all(math.isfinite(x) for x in v):
            raise ValueError("coordinates must be finite numbers")
        return v


class Annotation(BaseModel):
    """A clinician's read of one study (schema version 1)."""

    model_config = ConfigDict(extra="forbid")

    schema_version: Literal[1] = 1
    pirads: int | None = Field(default=None, ge=1, le=5, strict=True)
    #: ISUP grade group 0..5, "not_biopsied", or null (unknown)
    isup: Annotated[int, Field(strict=True)] | Literal["not_biopsied"] | None = None
    #: PI-QUAL v2 per sequence (T2W, ADC, HBV, DWI, DCE) and for the study ("study"), each 1..3
    piqual: dict[
        Literal["T2W", "ADC", "HBV", "DWI", "DCE", "study"], Annotated[int, Field(ge=1, le=3, strict=True)]
    ] = Field(default_factory=dict)
    lesions: list[LesionPoint] = Field(default_factory=list, max_length=50)
    comment: str = Field(default="", max_length=2000)
    annotator: str = Field(min_length=1, max_length=100)
    created: str | None = None

    @field_validator("isup")
    @classmethod
    def _isup(cls, v):
        if isinstance(v, bool) or (isinstance(v, int) and not 0 <= v <= 5):
            raise ValueError("must be 0..5, 'not_biopsied' or null")
        return v

    @field_validator("annotator")
    @classmethod
    def _annotator(cls, v):
        if not v.strip():
            raise ValueError("must not be blank")
        return v.strip()

    @field_validator("created")
    @classmethod
    def _created(cls, v):
        if v is None:
            return datetime.now(UTC).isoformat(timespec="seconds")
        try:
            datetime.fromisoformat(v)
        except ValueError:
            raise ValueError("must be an ISO 8601 date-time") from None
        return v

    def model_post_init(self, __context) -> None:
        if self.created is None:
            self.created = datetime.now(UTC).isoformat(timespec="seconds")

    def to_study_labels(self) -> StudyLabels:
        isup = self.isup if isinstance(self.isup, int) else None
        return StudyLabels(
            pirads=self.pirads, isup=isup, cspca=cspca_from_isup(isup), piqual=dict(self.piqual)
        )


def validate_annotation(data: dict | bytes | str) -> Annotation:
    """Parse and validate an annotation; raises :class:`ValidationError` naming the first bad field
    (dotted path, e.g. ``piqual.T2W`` or ``lesions.0.position_lps``)."""
    if isinstance(data, (bytes, bytearray)):
        try:
            data = data.decode("utf-8")
        except UnicodeDecodeError:
            raise ValidationError("annotation", "not UTF-8 text") from None
    if isinstance(data, str):
        try:
            data = json.loads(data)
        except json.JSONDecodeError as exc:
            raise ValidationError("annotation", f"not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(data, dict):
        raise ValidationError("annotation", f"must be a JSON object, got {type(data).__name__}")
    try:
        return Annotation.model_validate(data)
    except PydanticValidationError as exc:
        err = exc.errors()[0]
        loc = [str(p) for p in err["loc"]]
        # pydantic adds the literal/union branch to the location; keep the field path
        path = ".".join(p for p in loc if not p.startswith(("literal[", "int", "function-", "[key]")))
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown field"
        elif err["type"] == "missing":
            msg = "required field is missing"
        raise ValidationError(path or "annotation", msg) from None
