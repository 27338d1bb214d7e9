"""Image quality: PI-QUAL v2 prerequisites, classical measures, the learned model's inputs, training,
evaluation and scoring. Importing this package does not import torch."""

from proqual.quality.classical import classical_measures
from proqual.quality.piqual import score_to_piqual, study_piqual
from proqual.quality.prerequisites import PrerequisiteResult, check_prerequisites, check_study

__all__ = [
    "PrerequisiteResult",
    "check_prerequisites",
    "check_study",
    "classical_measures",
    "score_to_piqual",
    "study_piqual",
]
