"""ProQual: quality-aware AI for prostate MRI.

The core library. It imports neither monailabel nor slicer; heavy optional pieces are imported lazily.
"""

from proqual.errors import CheckpointError, InputError, MissingSequenceError, ProQualError
from proqual.study import Sequence, SeriesRef, Study, StudyLabels, TechnicalMetadata

__version__ = "0.1.0"

__all__ = [
    "CheckpointError",
    "InputError",
    "MissingSequenceError",
    "ProQualError",
    "Sequence",
    "SeriesRef",
    "Study",
    "StudyLabels",
    "TechnicalMetadata",
    "__version__",
]
