"""The study model: one MRI examination with its sequences, technical metadata and labels.

Plain pydantic models, JSON-ready; the same objects flow through the CLI, the MONAI Label app and
(serialised) the Slicer extension.
"""

from __future__ import annotations

from enum import Enum

from pydantic import BaseModel, ConfigDict, Field, field_validator

from proqual.errors import MissingSequenceError


class Sequence(str, Enum):
    """MR sequence kinds ProQual knows. ``HBV`` is the high-b-value DWI image (acquired or calculated)."""

    T2W = "T2W"
    ADC = "ADC"
    HBV = "HBV"
    DWI = "DWI"
    DCE = "DCE"
    OTHER = "OTHER"

    @classmethod
    def parse(cls, value: str | Sequence) -> Sequence:
        """Case-insensitive lookup: ``"t2w"``, ``"T2W"`` and ``Sequence.T2W`` all give ``Sequence.T2W``."""
        if isinstance(value, Sequence):
            return value
        key = str(value).strip().upper()
        try:
            return cls(key)
        except ValueError:
            names = ", ".join(s.value for s in cls)
            raise ValueError(f"unknown sequence {value!r}; expected one of {names}") from None


#: ProFound's channel order.
PROFOUND_CHANNELS: tuple[Sequence, ...] = (Sequence.T2W, Sequence.HBV, Sequence.ADC)


class TechnicalMetadata(BaseModel):
    """Acquisition facts used by the PI-QUAL v2 prerequisites. ``None`` means unknown."""

    model_config = ConfigDict(extra="forbid")

    slice_thickness_mm: float | None = None
    #: voxel spacing (x, y, z) in mm, from the image geometry
    spacing_mm: tuple[float, float, float] | None = None
    #: image size (x, y, z) in voxels
    matrix: tuple[int, int, int] | None = None
    #: all b-values (s/mm2) that belong to this series or were used to compute it
    b_values: list[float] = Field(default_factory=list)
    #: True when the high-b image was calculated (extrapolated) rather than acquired
    calculated_b_value: bool | None = None
    field_strength_t: float | None = None
    manufacturer: str | None = None
    model_name: str | None = None
    echo_time_ms: float | None = None
    repetition_time_ms: float | None = None
    temporal_resolution_s: float | None = None
    #: where the values came from: "dicom" (headers) or "geometry" (image file only)
    source: str = "geometry"


class SeriesRef(BaseModel):
    """One sequence of a study: where its image lives and what is known about it."""

    sequence: Sequence
    #: one image file, or the files of one DICOM series
    paths: list[str]
    series_uid: str | None = None
    description: str | None = None
    metadata: TechnicalMetadata = Field(default_factory=TechnicalMetadata)

    @property
    def path(self) -> str:
        """The file (single-file formats) or the folder of the first file (DICOM series)."""
        return self.paths[0]


class StudyLabels(BaseModel):
    """Reference labels of a study. Every field is optional; values are range-checked."""

    model_config = ConfigDict(extra="forbid")

    #: case-level PI-RADS v2.1 (1..5): the maximum over lesions, or None when not assessed
    pirads: int | None = None
    #: case-level ISUP grade group 0..5 (0 = no cancer), None when not biopsied
    isup: int | None = None
    #: clinically significant cancer (ISUP >= 2)
    cspca: bool | None = None
    lesion_pirads: list[int | None] = Field(default_factory=list)
    lesion_isup: list[int | None] = Field(default_factory=list)
    #: PI-QUAL v2 per sequence (keys T2W/ADC/HBV/DWI/DCE) and for the study ("study"), each 1..3
    piqual: dict[str, int] = Field(default_factory=dict)

    @field_validator("pirads")
    @classmethod
    def _pirads(cls, v):
        if v is not None and not 1 <= v <= 5:
            raise ValueError(f"PI-RADS must be 1..5, got {v}")
        return v

    @field_validator("isup")
    @classmethod
    def _isup(cls, v):
        if v is not None and not 0 <= v <= 5:
            raise ValueError(f"ISUP grade group must be 0..5, got {v}")
        return v

    @field_validator("piqual")
    @classmethod
    def _piqual(cls, v):
        allowed = {s.value for s in Sequence} | {"study"}
        for key, score in v.items():
            if key not in allowed:
                raise ValueError(f"PI-QUAL key {key!r} is not a sequence name or 'study'")
            if not 1 <= int(score) <= 3:
                raise ValueError(f"PI-QUAL v2 for {key} must be 1..3, got {score}")
        return v


class Study(BaseModel):
    """An MRI examination: id, patient and the sequences found for it."""

    study_id: str
    patient_id: str | None = None
    sequences: dict[Sequence, SeriesRef] = Field(default_factory=dict)
    labels: StudyLabels = Field(default_factory=StudyLabels)
    #: the folder or PACS the study was imported from
    source: str | None = None
    #: masks known for the study (e.g. {"gland": path}); used to centre crops and by the phantom tests
    masks: dict[str, str] = Field(default_factory=dict)
    #: series that were found but could not be identified or were left out, with the reason
    unidentified: list[dict] = Field(default_factory=list)

    def has(self, *sequences: Sequence | str) -> bool:
        return all(Sequence.parse(s) in self.sequences for s in sequences)

    def missing(self, *sequences: Sequence | str) -> list[str]:
        return [Sequence.parse(s).value for s in sequences if Sequence.parse(s) not in self.sequences]

    def require(self, *sequences: Sequence | str, task: str | None = None) -> None:
        """Raise :class:`MissingSequenceError` naming every missing sequence."""
        missing = self.missing(*sequences)
        if missing:
            raise MissingSequenceError(self.study_id, missing, task)

    def series(self, sequence: Sequence | str) -> SeriesRef:
        self.require(sequence)
        return self.sequences[Sequence.parse(sequence)]
