"""Exceptions. Every message names the offending file or field and the problem."""

from __future__ import annotations

from os import PathLike


class ProQualError(Exception):
    """Base class of every error ProQual raises on purpose."""


class InputError(ProQualError):
    """A file or folder given to ProQual cannot be used. ``source`` names it."""

    def __init__(self, source: str | PathLike | None, problem: str):
        self.source = None if source is None else str(source)
        self.problem = problem
        super().__init__(f"{self.source}: {problem}" if self.source else problem)


class MissingSequenceError(InputError):
    """A study lacks a sequence that a task needs."""

    def __init__(self, study_id: str, missing: list[str], task: str | None = None):
        self.study_id = study_id
        self.missing = list(missing)
        what = f" needed by {task}" if task else ""
        super().__init__(f"study {study_id}", f"missing sequence(s) {', '.join(self.missing)}{what}")


class ValidationError(ProQualError):
    """A value (label, annotation, option) is out of range. ``field`` names it."""

    def __init__(self, field: str, problem: str):
        self.field = field
        self.problem = problem
        super().__init__(f"{field}: {problem}")


class CheckpointError(ProQualError):
    """A checkpoint cannot be loaded into the requested model."""
