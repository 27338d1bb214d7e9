"""MONAI Label datastores over ProQual studies.

MONAI Label thinks in single images; ProQual in studies (several sequences). Here:

- every sequence of every study is a datastore *image* (``GET /datastore/image?image=<id>`` downloads
  it), whose info names its study and sequence (``study_id``, ``sequence``, ``anchor``, ...);
- the study's T2W image is its **anchor**: inference, annotations and active learning use anchor ids.
  Any sequence id is accepted where a study is meant and mapped to its anchor;
- a study is *labeled* when its anchor has a ``final`` label file. That file is written by the
  annotation intake (``PUT /datastore/label?image=<anchor>&tag=final`` with the annotation JSON): the
  JSON is validated (:func:`proqual.labels.validate_annotation`), stored as a new revision in the
  durable :class:`proqual.annotations.AnnotationStore`, and the final label file is rewritten (atomically)
  with the study's current annotations;
- labels, annotations and image info live in a *store* folder (``--conf store``; for a local folder the
  default is ``<studies>/labels``, MONAI Label's own place), never next to the images.

:class:`LocalStudyDatastore` reads PI-CAI folders, flat folders and DICOM folders through
:func:`proqual.io.layouts.load_studies`. :class:`monailabel_app.dicomweb.DICOMwebStudyDatastore` reads a
DICOMweb server. Both share :class:`StudyDatastore`.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import re
import shutil
import tempfile
import threading
import time
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from monailabel.interfaces.datastore import Datastore, DefaultLabelTag
from proqual.annotations import (
    AnnotationStore,
    StudyAnnotations,
    atomic_write_bytes,
    atomic_write_json,
    check_anchor,
    file_lock,
    read_json,
)
from proqual.errors import InputError, ValidationError
from proqual.study import PROFOUND_CHANNELS, Sequence, Study

from monailabel_app.errors import ImageNotFound, LabelNotFound, NotSupportedError

log = logging.getLogger(__name__)

FINAL = DefaultLabelTag.FINAL.value
#: preferred anchor sequence first; a study without T2W is anchored on the next one present
ANCHOR_ORDER: tuple[Sequence, ...] = (
    Sequence.T2W,
    Sequence.ADC,
    Sequence.HBV,
    Sequence.DWI,
    Sequence.DCE,
    Sequence.OTHER,
)
#: the sequences the models need (ProFound's channels); a study lacking one lists it under ``missing``
REQUIRED_SEQUENCES: tuple[Sequence, ...] = PROFOUND_CHANNELS
_TAG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-]{0,63}$")
_IMAGE_SUFFIXES = (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd", ".nhdr")


@dataclass
class ImageEntry:
    """One datastore image: a sequence of a study."""

    image_id: str
    study_id: str
    sequence: Sequence
    anchor: str
    #: files of the image (one for NIfTI/MHA/NRRD; the instances of a DICOM series)
    paths: list[str] = field(default_factory=list)
    series_uid: str | None = None

    @property
    def is_anchor(self) -> bool:
        return self.image_id == self.anchor


def _suffix(path: str) -> str:
    low = path.lower()
    return next((s for s in _IMAGE_SUFFIXES if low.endswith(s)), Path(path).suffix)


def _label_suffix(filename: str) -> str:
    name = Path(filename).name
    low = name.lower()
    for s in (".nii.gz", ".seg.nrrd", ".json", ".nii", ".nrrd", ".mha"):
        if low.endswith(s):
            return s
    return "".join(Path(name).suffixes[-2:]) or ".bin"


class StudyDatastore(Datastore):
    """Shared logic: index of studies and images, labels, annotations and image info in ``store``.

    Subclasses implement :meth:`_scan` (the studies of the source) and may override
    :meth:`_image_file` (one local file per image, fetched or converted on demand) and
    :meth:`_materialize` (make every sequence of a study readable locally).
    """

    def __init__(self, *, store: str | os.PathLike, name: str, description: str = ""):
        self._name = name
        self._description = description
        self._store = Path(store).resolve()
        self._store.mkdir(parents=True, exist_ok=True)
        (self._store / FINAL).mkdir(exist_ok=True)
        self._info_path = self._store / "info.json"
        self._info_lock = self._store / ".info.lock"
        self._info_cache: tuple[float, dict] | None = None
        self.annotations = AnnotationStore(self._store / "annotations")
        self._lock = threading.RLock()
        self._studies: dict[str, Study] = {}
        self._images: dict[str, ImageEntry] = {}
        self._anchors: dict[str, str] = {}  # study id -> anchor id
        #: anchor -> details of the last annotation saved (read by the app's on_save_label)
        self.last_saved: dict[str, dict[str, Any]] = {}

    # ------------------------------------------------------------------------------------ the index
    def _scan(self) -> list[Study]:  # pragma: no cover - abstract
        raise NotImplementedError

    def _image_ids(self, study: Study) -> dict[Sequence, str]:
        """Image id of each sequence of ``study`` (default ``<study>_<seq>``, the PI-CAI file stem)."""
        return {seq: f"{study.study_id}_{seq.value.lower()}" for seq in study.sequences}

    def refresh(self) -> None:
        """Re-read the studies of the source."""
        studies = self._scan()
        images: dict[str, ImageEntry] = {}
        anchors: dict[str, str] = {}
        by_id: dict[str, Study] = {}
        for study in studies:
            ids = self._image_ids(study)
            if not ids:
                log.warning("study %s has no usable sequence; left out", study.study_id)
                continue
            anchor_seq = next(s for s in ANCHOR_ORDER if s in ids)
            anchor = ids[anchor_seq]
            check_anchor(anchor)
            for seq, image_id in ids.items():
                if image_id in images:
                    raise InputError(study.source, f"image id {image_id} appears twice")
                ref = study.sequences[seq]
                images[image_id] = ImageEntry(
                    image_id=image_id,
                    study_id=study.study_id,
                    sequence=seq,
                    anchor=anchor,
                    paths=list(ref.paths),
                    series_uid=ref.series_uid,
                )
            anchors[study.study_id] = anchor
            by_id[study.study_id] = study
        with self._lock:
            self._studies, self._images, self._anchors = by_id, images, anchors
        log.info("datastore %s: %d studies, %d images", self._name, len(by_id), len(images))

    def entry(self, image_id: str) -> ImageEntry:
        """The entry of an image id; unknown ids raise :class:`ImageNotFound` (HTTP 404)."""
        entry = self._images.get(image_id) if isinstance(image_id, str) else None
        if entry is None:
            raise ImageNotFound(str(image_id))
        return entry

    def anchor_of(self, image_id: str) -> str:
        """The anchor id of the study an image (any sequence) belongs to."""
        return self.entry(image_id).anchor

    def anchor_ids(self) -> list[str]:
        """The anchor id of every study, in study order."""
        return list(self._anchors.values())

    def study_ids(self) -> list[str]:
        return list(self._studies)

    def study_for(self, image_id: str) -> Study:
        """The :class:`proqual.study.Study` of an image id (any of its sequences), readable locally.

        Sequence paths point to local files (remote sources fetch them first); the result is a copy the
        caller may keep.
        """
        entry = self.entry(image_id)
        study = self._studies[entry.study_id]
        return self._materialize(study)

    def _materialize(self, study: Study) -> Study:
        return study.model_copy(deep=True)

    def sequence_ids(self, image_id: str) -> dict[str, str]:
        """Sequence name -> image id for the study of ``image_id``."""
        study = self._studies[self.entry(image_id).study_id]
        ids = self._image_ids(study)
        return {seq.value: ids[seq] for seq in ANCHOR_ORDER if seq in ids}

    def missing(self, image_id: str) -> list[str]:
        """Sequences the models need that the study of ``image_id`` lacks."""
        study = self._studies[self.entry(image_id).study_id]
        return study.missing(*REQUIRED_SEQUENCES)

    # ------------------------------------------------------------------------------------ image info
    def _read_info(self) -> dict:
        try:
            mtime = self._info_path.stat().st_mtime_ns
        except FileNotFoundError:
            return {"images": {}, "labels": {}}
        cached = self._info_cache
        if cached and cached[0] == mtime:
            return cached[1]
        try:
            data = read_json(self._info_path)
        except InputError:
            log.error("%s is not valid JSON; image info starts empty", self._info_path)
            data = {}
        data.setdefault("images", {})
        data.setdefault("labels", {})
        self._info_cache = (mtime, data)
        return data

    def _update_info(self, fn) -> None:
        with file_lock(self._info_lock):
            self._info_cache = None
            data = copy.deepcopy(self._read_info())
            fn(data)
            atomic_write_json(self._info_path, data)
            self._info_cache = None

    def _stored_image_info(self, image_id: str) -> dict:
        return copy.deepcopy(self._read_info()["images"].get(image_id, {}))

    def _stored_label_info(self, tag: str, label_id: str) -> dict:
        return copy.deepcopy(self._read_info()["labels"].get(tag, {}).get(label_id, {}))

    def get_image_info(self, image_id: str) -> dict[str, Any]:
        entry = self.entry(image_id)
        study = self._studies[entry.study_id]
        ref = study.sequences[entry.sequence]
        info: dict[str, Any] = self._stored_image_info(image_id)
        info.update(
            {
                "study_id": entry.study_id,
                "patient_id": study.patient_id,
                "sequence": entry.sequence.value,
                "anchor": entry.anchor,
                "is_anchor": entry.is_anchor,
                "sequences": self.sequence_ids(image_id),
                "missing": study.missing(*REQUIRED_SEQUENCES),
                "name": self._image_name(entry),
                "metadata": ref.metadata.model_dump(mode="json"),
            }
        )
        if entry.series_uid:
            info["SeriesInstanceUID"] = entry.series_uid
        if ref.description:
            info["description"] = ref.description
        if entry.is_anchor:
            info["labeled"] = self._final_path(entry.anchor).is_file()
            if study.unidentified:
                info["unidentified"] = study.unidentified
        path = self._known_image_file(entry)
        if path:
            info["path"] = path
        return info

    def update_image_info(self, image_id: str, info: dict[str, Any]) -> None:
        self.entry(image_id)

        def merge(data):
            data["images"].setdefault(image_id, {}).update(json.loads(json.dumps(info, default=str)))

        self._update_info(merge)

    # ------------------------------------------------------------------------------------ images
    def _image_name(self, entry: ImageEntry) -> str:
        if len(entry.paths) == 1:
            return Path(entry.paths[0]).name
        return f"{entry.image_id}.nii.gz"

    def _known_image_file(self, entry: ImageEntry) -> str | None:
        """The local file of an image if it is there without fetching or converting anything."""
        if len(entry.paths) == 1 and Path(entry.paths[0]).is_file():
            return str(Path(entry.paths[0]).resolve())
        cached = self._cache_file(entry)
        return str(cached) if cached.is_file() else None

    def _cache_file(self, entry: ImageEntry) -> Path:
        return self._store / "cache" / "images" / f"{entry.image_id}.nii.gz"

    def _image_file(self, entry: ImageEntry) -> Path:
        """One local image file for ``entry``: the file itself, or a NIfTI converted once and cached."""
        if len(entry.paths) == 1 and _suffix(entry.paths[0]) in _IMAGE_SUFFIXES:
            return Path(entry.paths[0]).resolve()
        return self._convert_to_nifti(entry, entry.paths)

    def _convert_to_nifti(self, entry: ImageEntry, files: list[str]) -> Path:
        target = self._cache_file(entry)
        if target.is_file():
            return target
        from proqual.io import read_volume, write_volume

        with file_lock(target.parent / f".{entry.image_id}.lock"):
            if target.is_file():
                return target
            volume = read_volume(files)
            tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".convert-"))
            try:
                out = write_volume(volume, tmp / target.name)
                os.replace(out, target)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        return target

    def get_image_uri(self, image_id: str) -> str:
        return str(self._image_file(self.entry(image_id)))

    def get_image(self, image_id: str, params=None) -> Any:
        import io

        return io.BytesIO(Path(self.get_image_uri(image_id)).read_bytes())

    def list_images(self) -> list[str]:
        return list(self._images)

    def add_image(self, image_id: str, image_filename: str, image_info: dict[str, Any]) -> str:
        raise NotSupportedError(
            "adding single images is not supported: put whole studies in the studies folder "
            "(PI-CAI or flat layout) or in the DICOMweb server"
        )

    def remove_image(self, image_id: str) -> None:
        self.entry(image_id)
        raise NotSupportedError("removing images is not supported: studies are read-only here")

    # ------------------------------------------------------------------------------------ labels
    def _final_path(self, anchor: str) -> Path:
        return self._store / FINAL / f"{anchor}.json"

    def _tag_dir(self, tag: str) -> Path:
        if tag in ("annotations", "cache") or not _TAG.match(tag or ""):
            raise ValidationError("tag", f"{tag!r} is not a valid label tag (letters, digits, _ and -)")
        return self._store / tag

    def _label_file(self, anchor: str, tag: str) -> Path | None:
        if tag == FINAL:
            p = self._final_path(anchor)
            return p if p.is_file() else None
        folder = self._tag_dir(tag)
        if not folder.is_dir():
            return None
        for p in sorted(folder.glob(f"{anchor}.*")):
            if p.is_file() and not p.name.endswith(".tmp"):
                return p
        return None

    def _tags(self) -> list[str]:
        return sorted(
            p.name
            for p in self._store.iterdir()
            if p.is_dir() and p.name not in ("annotations", "cache") and not p.name.startswith(".")
        )

    def get_label_uri(self, label_id: str, label_tag: str) -> str:
        entry = self._images.get(label_id)
        if entry is None:
            return ""
        p = self._label_file(entry.anchor, label_tag or FINAL)
        return str(p) if p else ""

    def get_label(self, label_id: str, label_tag: str, params=None) -> Any:
        import io

        uri = self.get_label_uri(label_id, label_tag)
        return io.BytesIO(Path(uri).read_bytes()) if uri else None

    def get_labels_by_image_id(self, image_id: str) -> dict[str, str]:
        entry = self._images.get(image_id)
        if entry is None:
            return {}
        return {tag: entry.anchor for tag in self._tags() if self._label_file(entry.anchor, tag)}

    def get_label_by_image_id(self, image_id: str, tag: str) -> str:
        return self.get_labels_by_image_id(image_id).get(tag, "")

    def get_label_info(self, label_id: str, label_tag: str) -> dict[str, Any]:
        entry = self._images.get(label_id)
        if entry is None or not self._label_file(entry.anchor, label_tag):
            return {}
        return self._stored_label_info(label_tag, entry.anchor)

    def get_labeled_images(self, label_tag: str | None = None, labels: list[str] | None = None) -> list[str]:
        """Anchor ids of the studies with a ``final`` label."""
        return [a for a in self._anchors.values() if self._final_path(a).is_file()]

    def get_unlabeled_images(
        self, label_tag: str | None = None, labels: list[str] | None = None
    ) -> list[str]:
        """Anchor ids of the studies without a ``final`` label (what active learning picks from)."""
        return [a for a in self._anchors.values() if not self._final_path(a).is_file()]

    def save_label(
        self, image_id: str, label_filename: str, label_tag: str, label_info: dict[str, Any]
    ) -> str:
        """Save a label of a study (``image_id``: its anchor or any of its sequences); returns the anchor.

        ``final`` labels are annotations: the file must be annotation JSON. It is validated (a
        :class:`proqual.errors.ValidationError` names the bad field and nothing is stored), kept as a new
        revision, and the study's final label file is rewritten with its current annotations.
        """
        entry = self.entry(image_id)
        anchor = entry.anchor
        tag = label_tag or FINAL
        label_info = dict(label_info or {})
        if tag == FINAL:
            data = self._read_annotation_file(label_filename)
            rev = self.annotations.submit(anchor, data, annotator=label_info.get("annotator"))
            summary = self.annotations.summary(anchor)
            atomic_write_json(self._final_path(anchor), self._final_document(entry, summary))
            details = {
                "study_id": entry.study_id,
                "anchor": anchor,
                "revision": rev.revision,
                "annotator": rev.annotator,
                "time": rev.time,
                "revisions": len(summary.revisions),
                "annotators": sorted(summary.current),
                "conflict": summary.conflict,
            }
            self.last_saved[anchor] = details
            stored = {**label_info, **details, "ts": int(time.time()), "name": self._final_path(anchor).name}
        else:
            suffix = _label_suffix(label_filename)
            folder = self._tag_dir(tag)
            for old in folder.glob(f"{anchor}.*") if folder.is_dir() else []:
                if old.name != f"{anchor}{suffix}" and not old.name.endswith(".tmp"):
                    old.unlink(missing_ok=True)
            atomic_write_bytes(folder / f"{anchor}{suffix}", Path(label_filename).read_bytes())
            stored = {**label_info, "ts": int(time.time()), "name": f"{anchor}{suffix}"}
        stored = json.loads(json.dumps(stored, default=str))

        def put(data):
            data["labels"].setdefault(tag, {})[anchor] = stored

        self._update_info(put)
        return anchor

    @staticmethod
    def _read_annotation_file(label_filename: str) -> Any:
        raw = Path(label_filename).read_bytes()
        if len(raw) > 5_000_000:
            raise ValidationError("label", f"annotation file is {len(raw)} bytes; at most 5 MB")
        try:
            return json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValidationError("label", f"the final label must be annotation JSON ({exc})") from None

    def _final_document(self, entry: ImageEntry, summary: StudyAnnotations) -> dict[str, Any]:
        latest = summary.revisions[-1]
        return {
            "anchor": entry.anchor,
            "study_id": entry.study_id,
            "revision": latest.revision,
            "time": latest.time,
            "latest": latest.annotation,
            "annotators": {who: rev.annotation for who, rev in summary.current.items()},
            "conflict": summary.conflict,
            "disagreements": summary.disagreements,
            "agreed": summary.agreed,
        }

    def annotation_summary(self, image_id: str) -> StudyAnnotations:
        """History and current annotations of the study of ``image_id`` (any sequence id)."""
        return self.annotations.summary(self.anchor_of(image_id))

    def remove_label(self, label_id: str, label_tag: str) -> None:
        """Remove a label file. For ``final`` the study becomes unlabeled; its revisions are kept."""
        entry = self.entry(label_id)
        p = self._label_file(entry.anchor, label_tag or FINAL)
        if p is None:
            raise LabelNotFound(label_id, label_tag)
        p.unlink(missing_ok=True)

    def update_label_info(self, label_id: str, label_tag: str, info: dict[str, Any]) -> None:
        entry = self.entry(label_id)
        if not self._label_file(entry.anchor, label_tag):
            raise LabelNotFound(label_id, label_tag)

        def merge(data):
            data["labels"].setdefault(label_tag, {}).setdefault(entry.anchor, {}).update(
                json.loads(json.dumps(info, default=str))
            )

        self._update_info(merge)

    # ------------------------------------------------------------------------------------ listings
    def datalist(self, full_path: bool = True) -> list[dict[str, Any]]:
        """Training pairs: each labeled study's anchor image and final label (annotation JSON)."""
        out = []
        for anchor in self.get_labeled_images():
            entry = self._images[anchor]
            out.append(
                {
                    "image": self.get_image_uri(anchor),
                    "label": str(self._final_path(anchor)),
                    "anchor": anchor,
                    "study_id": entry.study_id,
                    "sequences": self.sequence_ids(anchor),
                }
            )
        return out

    def studies_summary(self) -> list[dict[str, Any]]:
        """One row per study: ids, sequences, what is missing, labeled or not."""
        rows = []
        for study_id, anchor in self._anchors.items():
            study = self._studies[study_id]
            rows.append(
                {
                    "study_id": study_id,
                    "patient_id": study.patient_id,
                    "anchor": anchor,
                    "sequences": self.sequence_ids(anchor),
                    "missing": study.missing(*REQUIRED_SEQUENCES),
                    "labeled": self._final_path(anchor).is_file(),
                }
            )
        return rows

    def status(self) -> dict[str, Any]:
        tags: dict[str, int] = {}
        for tag in self._tags():
            n = sum(1 for a in self._anchors.values() if self._label_file(a, tag))
            if n:
                tags[tag] = n
        labeled = self.get_labeled_images()
        return {
            "total": len(self._anchors),
            "completed": len(labeled),
            "label_tags": tags,
            "studies": len(self._anchors),
            "images": len(self._images),
            "incomplete_studies": sum(1 for s in self._studies.values() if s.missing(*REQUIRED_SEQUENCES)),
        }

    def json(self) -> dict[str, Any]:
        objects = {}
        for image_id, entry in self._images.items():
            labels = {}
            if entry.is_anchor:
                for tag in self._tags():
                    p = self._label_file(image_id, tag)
                    if p:
                        labels[tag] = {
                            "ext": _label_suffix(p.name),
                            "info": self._stored_label_info(tag, image_id),
                        }
            objects[image_id] = {
                "image": {"ext": _suffix(self._image_name(entry)), "info": self.get_image_info(image_id)},
                "labels": labels,
            }
        return {
            "name": self._name,
            "description": self._description,
            "objects": objects,
            "studies": {row["study_id"]: row for row in self.studies_summary()},
        }

    def get_dataset_archive(self, limit_cases: int | None) -> str:
        pairs = self.datalist()
        if not pairs:
            raise NotSupportedError("no labeled study yet: nothing to archive")
        if limit_cases and 0 < limit_cases < len(pairs):
            pairs = pairs[:limit_cases]
        fd, path = tempfile.mkstemp(suffix=".zip")
        os.close(fd)
        with zipfile.ZipFile(path, "w") as archive:
            for pair in pairs:
                archive.write(pair["image"], arcname=f"image/{Path(pair['image']).name}")
                archive.write(pair["label"], arcname=f"label/{Path(pair['label']).name}")
            archive.writestr("metadata.json", json.dumps(self.json(), indent=2, default=str))
        return path

    # ------------------------------------------------------------------------------------ names
    def name(self) -> str:
        return self._name

    def set_name(self, name: str):
        self._name = name

    def description(self) -> str:
        return self._description

    def set_description(self, description: str):
        self._description = description

    @property
    def store(self) -> Path:
        return self._store


class LocalStudyDatastore(StudyDatastore):
    """Studies of local folders or files (PI-CAI, flat, DICOM) via :func:`proqual.io.layouts.load_studies`.

    ``store`` defaults to ``<folder>/labels``. A folder without any study is an error (named in it).
    """

    def __init__(
        self,
        paths: str | os.PathLike | Iterable[str | os.PathLike],
        *,
        store: str | os.PathLike | None = None,
        marksheet: str | os.PathLike | None = None,
    ):
        self._paths = [Path(paths)] if isinstance(paths, (str, os.PathLike)) else [Path(p) for p in paths]
        self._marksheet = marksheet
        first = self._paths[0]
        default_store = (first if first.is_dir() else first.parent) / "labels"
        super().__init__(store=store or default_store, name=str(first), description="ProQual studies")
        self.refresh()

    def _scan(self) -> list[Study]:
        from proqual.io.layouts import load_studies

        paths = [p for p in self._paths if p.resolve() != self._store]
        for p in paths:
            if p.is_dir() and not any(f.is_file() for f in p.rglob("*") if self._store not in f.parents):
                raise InputError(p, "no studies found: the folder is empty (is --studies the right path?)")
        studies = load_studies(paths, marksheet=self._marksheet)
        if not studies:
            raise InputError(paths[0], "no studies found")
        return studies
