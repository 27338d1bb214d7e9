"""The durable annotation store: every clinician annotation of a study, kept forever, written atomically.

Layout under the store's ``root``::

    revisions/<anchor>/<n>.json   one file per submission (n = 1, 2, ...), never rewritten
    .lock                         the inter-process lock taken while a revision number is chosen

A revision records the validated annotation (:class:`proqual.labels.Annotation` as JSON), who made it and
when. Nothing is ever overwritten: a second submission, by the same or another annotator, is a new
revision. The *current* annotation of an annotator is their latest revision; when the current annotations
of two annotators disagree on a clinical value the study's summary says so (``conflict``).

Every file is written with :func:`atomic_write_bytes` (temporary file in the same folder, ``fsync``,
``os.replace``, ``fsync`` of the folder), so a process killed mid-write leaves the previous state intact
and never a half-written file; stray temporary files are ignored and removed on the next open.

Pure Python: this module imports neither monailabel nor torch.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from proqual.errors import InputError, ValidationError

#: values compared between annotators to flag a conflict (lesion points and comments are free-form)
COMPARED_FIELDS: tuple[str, ...] = ("pirads", "isup", "piqual")
#: suffix of the temporary files of :func:`atomic_write_bytes`
TMP_SUFFIX = ".tmp"
_ANCHOR = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-]{0,199}$")
_REVISION = re.compile(r"^(\d+)\.json$")
_thread_lock = threading.RLock()


# --------------------------------------------------------------------------------------------- files
def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # some filesystems do not allow opening a folder
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` so that readers see either the old file or the complete new one.

    The bytes go to a temporary file in the same folder, which is flushed and ``fsync``-ed and then
    renamed over ``path`` (``os.replace`` is atomic on POSIX); the folder is ``fsync``-ed so the rename
    survives a crash. A kill at any moment leaves ``path`` as it was (plus, at worst, a temporary file
    ending in ``.tmp``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)
    return path


def atomic_write_json(path: str | os.PathLike, obj: Any, *, indent: int | None = 2) -> Path:
    """:func:`atomic_write_bytes` of ``obj`` as UTF-8 JSON."""
    return atomic_write_bytes(path, (json.dumps(obj, indent=indent, default=str) + "\n").encode("utf-8"))


def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON file; a file that is not valid JSON raises :class:`InputError` naming it."""
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except json.JSONDecodeError as exc:
        raise InputError(path, f"not valid JSON ({exc})") from exc


@contextlib.contextmanager
def file_lock(path: str | os.PathLike) -> Iterator[None]:
    """Exclusive lock between threads and processes (``flock`` on ``path``; released if the holder dies)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _thread_lock:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                import fcntl

                fcntl.flock(fd, fcntl.LOCK_EX)
            except ImportError:  # pragma: no cover - non-POSIX: the thread lock only
                pass
            yield
        finally:
            os.close(fd)  # closing the descriptor releases the flock


def remove_stale_temporaries(folder: str | os.PathLike, *, older_than_s: float = 60.0) -> int:
    """Delete temporary files left by killed writers (older than ``older_than_s``). Returns how many."""
    removed = 0
    now = time.time()
    for tmp in Path(folder).rglob(f"*{TMP_SUFFIX}"):
        with contextlib.suppress(OSError):
            if now - tmp.stat().st_mtime > older_than_s:
                tmp.unlink()
                removed += 1
    return removed


# --------------------------------------------------------------------------------------------- models
class Revision(BaseModel):
    """One submitted annotation of a study."""

    anchor: str
    revision: int
    annotator: str
    #: submission time, ISO 8601 in UTC
    time: str
    annotation: dict[str, Any]


class StudyAnnotations(BaseModel):
    """Every revision of one study, the current annotation of each annotator, and whether they agree."""

    anchor: str
    revisions: list[Revision] = Field(default_factory=list)
    #: annotator -> their latest revision
    current: dict[str, Revision] = Field(default_factory=dict)
    #: True when the current annotations of two or more annotators differ in a compared field
    conflict: bool = False
    #: field -> {annotator: value} for each compared field the annotators disagree on
    disagreements: dict[str, dict[str, Any]] = Field(default_factory=dict)
    #: compared field -> value, for the fields every current annotation agrees on
    agreed: dict[str, Any] = Field(default_factory=dict)

    @property
    def labeled(self) -> bool:
        return bool(self.revisions)


def _default_validator(data: Any) -> Any:
    from proqual.labels import validate_annotation

    return validate_annotation(data)


def _as_dict(annotation: Any) -> dict[str, Any]:
    if isinstance(annotation, BaseModel):
        return annotation.model_dump(mode="json")
    if isinstance(annotation, dict):
        return json.loads(json.dumps(annotation, default=str))
    raise ValidationError("annotation", f"expected a JSON object, got {type(annotation).__name__}")


def compare(current: dict[str, Revision], fields: tuple[str, ...] = COMPARED_FIELDS):
    """(disagreements, agreed) between the current annotations of several annotators."""
    disagreements: dict[str, dict[str, Any]] = {}
    agreed: dict[str, Any] = {}
    for name in fields:
        values = {who: rev.annotation.get(name) for who, rev in current.items()}
        distinct = {json.dumps(v, sort_keys=True) for v in values.values()}
        if len(distinct) > 1:
            disagreements[name] = values
        elif values:
            agreed[name] = next(iter(values.values()))
    return disagreements, agreed


# --------------------------------------------------------------------------------------------- store
class AnnotationStore:
    """Durable, append-only store of study annotations (see the module docstring for the layout).

    ``validator`` turns the submitted JSON into a validated annotation or raises
    :class:`~proqual.errors.ValidationError` naming the field; the default is
    :func:`proqual.labels.validate_annotation`.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        *,
        validator: Callable[[Any], Any] | None = None,
        compared_fields: tuple[str, ...] = COMPARED_FIELDS,
    ):
        self.root = Path(root)
        self.validator = validator or _default_validator
        self.compared_fields = tuple(compared_fields)
        (self.root / "revisions").mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(self.root)

    # -- paths
    def _lock(self):
        return file_lock(self.root / ".lock")

    def _folder(self, anchor: str) -> Path:
        check_anchor(anchor)
        return self.root / "revisions" / anchor

    def _numbers(self, anchor: str) -> list[int]:
        folder = self._folder(anchor)
        if not folder.is_dir():
            return []
        return sorted(int(m.group(1)) for f in folder.iterdir() if (m := _REVISION.match(f.name)))

    # -- writing
    def validate(self, data: Any) -> dict[str, Any]:
        """Validate submitted data and return it as a JSON-ready dict (raises ValidationError)."""
        return _as_dict(self.validator(data))

    def submit(
        self,
        anchor: str,
        annotation: Any,
        *,
        annotator: str | None = None,
        when: datetime | None = None,
    ) -> Revision:
        """Validate ``annotation`` and store it as the next revision of ``anchor``.

        ``annotator`` fills in the annotation's ``annotator`` when it has none; when both are given they
        must agree. Invalid data raises :class:`~proqual.errors.ValidationError` and stores nothing.
        """
        check_anchor(anchor)
        if isinstance(annotation, dict) and annotator and not annotation.get("annotator"):
            annotation = {**annotation, "annotator": annotator}  # the schema requires an annotator
        data = self.validate(annotation)
        who = data.get("annotator")
        if annotator and who and str(annotator) != str(who):
            raise ValidationError(
                "annotator", f"the annotation names {who!r} but it was submitted as {annotator!r}"
            )
        who = who or annotator
        if not who or not str(who).strip():
            raise ValidationError("annotator", "required: who made this annotation")
        data["annotator"] = str(who).strip()
        stamp = (when or datetime.now(UTC)).astimezone(UTC).isoformat(timespec="milliseconds")
        with self._lock():
            numbers = self._numbers(anchor)
            n = (numbers[-1] + 1) if numbers else 1
            rev = Revision(
                anchor=anchor, revision=n, annotator=data["annotator"], time=stamp, annotation=data
            )
            atomic_write_json(self._folder(anchor) / f"{n}.json", rev.model_dump(mode="json"))
        return rev

    # -- reading
    def revisions(self, anchor: str) -> list[Revision]:
        """All revisions of ``anchor``, oldest first (empty when it was never annotated)."""
        folder = self._folder(anchor)
        return [Revision.model_validate(read_json(folder / f"{n}.json")) for n in self._numbers(anchor)]

    def current(self, anchor: str) -> dict[str, Revision]:
        """annotator -> their latest revision of ``anchor``."""
        latest: dict[str, Revision] = {}
        for rev in self.revisions(anchor):
            latest[rev.annotator] = rev
        return latest

    def summary(self, anchor: str) -> StudyAnnotations:
        """History, current annotation per annotator and the conflict flag of one study."""
        revisions = self.revisions(anchor)
        current: dict[str, Revision] = {}
        for rev in revisions:
            current[rev.annotator] = rev
        disagreements, agreed = compare(current, self.compared_fields)
        return StudyAnnotations(
            anchor=anchor,
            revisions=revisions,
            current=current,
            conflict=bool(disagreements),
            disagreements=disagreements,
            agreed=agreed,
        )

    def anchors(self) -> list[str]:
        """Every anchor id with at least one revision."""
        folder = self.root / "revisions"
        return sorted(p.name for p in folder.iterdir() if p.is_dir() and self._numbers(p.name))

    def conflicts(self) -> list[str]:
        """Anchors whose annotators currently disagree."""
        return [a for a in self.anchors() if self.summary(a).conflict]


def check_anchor(anchor: str) -> str:
    """An anchor id is used as a folder name: letters, digits, ``.``, ``_`` and ``-`` only."""
    if not isinstance(anchor, str) or not _ANCHOR.match(anchor) or anchor in (".", ".."):
        raise ValidationError("anchor", f"{anchor!r} is not a valid study anchor id")
    return anchor
