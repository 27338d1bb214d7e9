"""A DICOMweb (e.g. Orthanc) datastore: MR series grouped into studies, sequences identified.

Unlike MONAI Label's stock ``DICOMWebDatastore`` this one

- lists ``Modality=MR`` series by default (the stock filter is CT),
- groups the series of one study (StudyInstanceUID) into a :class:`proqual.study.Study` and identifies
  each series' sequence with :func:`proqual.io.dicom.identify_sequence` (unidentified series are listed
  in the study's ``unidentified`` with the reason, not guessed),
- downloads nothing at start (no dcmqi: final labels are annotation JSON kept in the local store, never
  DICOM SEG pushed to the PACS),
- fetches a series' instances only when an image or study is asked for, into ``<store>/cache``.

Image ids are SeriesInstanceUIDs (as in MONAI Label and OHIF); study ids are StudyInstanceUIDs; a
study's anchor is its T2W series.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from proqual.annotations import file_lock
from proqual.study import Sequence, SeriesRef, Study, TechnicalMetadata

from monailabel_app.datastore import ImageEntry, StudyDatastore
from monailabel_app.errors import UpstreamError

log = logging.getLogger(__name__)

DEFAULT_SEARCH_FILTER: dict[str, Any] = {"Modality": "MR"}
_SERIES_FIELDS = (
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SeriesDescription",
    "SeriesNumber",
    "PatientID",
    "StudyDate",
    "Modality",
)


def default_store(url: str) -> Path:
    """``~/.cache/proqual/dicomweb/<hash of url>``: where labels and fetched series go by default."""
    digest = hashlib.sha1(url.encode()).hexdigest()[:16]
    return Path.home() / ".cache" / "proqual" / "dicomweb" / digest


def _bulk_data(_uri: str) -> bytes:
    return b""  # listing never needs pixel data


def _dataset(meta: dict):
    import pydicom

    return pydicom.Dataset.from_json(meta, bulk_data_uri_handler=_bulk_data)


def _value(ds, keyword: str, default=None):
    value = ds.get(keyword, None)  # by keyword pydicom returns the value itself
    if value is None or value == "":
        return default
    return value


def identify(datasets: list) -> tuple[Sequence | None, str]:
    """Sequence of a series from its first instance's header, as the DICOM folder import does."""
    from proqual.io.dicom import identify_sequence

    return identify_sequence(datasets[0])


def header_metadata(datasets: list) -> TechnicalMetadata:
    """PI-QUAL v2 technical facts from the series' headers (:func:`proqual.io.dicom.technical_metadata`)."""
    from proqual.io.dicom import technical_metadata

    return technical_metadata(datasets[0], files=len(datasets))


class DICOMwebStudyDatastore(StudyDatastore):
    """Studies of a DICOMweb server (see the module docstring).

    ``ttl_s``: how long a listing is trusted before the server is asked again (new series appear
    within that time; an unknown id asks at once, at most every 5 s).
    """

    def __init__(
        self,
        url: str,
        *,
        store: str | os.PathLike | None = None,
        search_filter: dict[str, Any] | None = None,
        session=None,
        ttl_s: float = 60.0,
    ):
        from dicomweb_client import DICOMwebClient

        self._url = url.rstrip("/")
        self._client = DICOMwebClient(url=self._url, session=session)
        self._filter = dict(search_filter or DEFAULT_SEARCH_FILTER)
        self._ttl_s = ttl_s
        self._series_meta: dict[str, list] = {}
        self._series_study: dict[str, str] = {}
        self._last_scan = 0.0
        self._last_miss_scan = 0.0
        super().__init__(store=store or default_store(self._url), name=self._url, description="DICOMweb")
        self.refresh()

    # ------------------------------------------------------------------------------------ listing
    def _query(self, fn, *args, what: str, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # requests errors, HTTP errors: name the server and the request
            raise UpstreamError(
                f"DICOMweb {what} at {self._url} failed: {type(exc).__name__}: {exc}", server=self._url
            ) from exc

    def _metadata(self, study_uid: str, series_uid: str) -> list:
        meta = self._series_meta.get(series_uid)
        if meta is None:
            raw = self._query(
                self._client.retrieve_series_metadata, study_uid, series_uid, what="series metadata"
            )
            meta = [_dataset(m) for m in raw]

            def order(ds):
                n = _value(ds, "InstanceNumber")
                return int(n) if n is not None else 0

            meta.sort(key=order)
            self._series_meta[series_uid] = meta
        return meta

    def _scan(self) -> list[Study]:
        rows = self._query(
            self._client.search_for_series,
            search_filters=self._filter,
            fields=list(_SERIES_FIELDS),
            get_remaining=True,
            what=f"series search {self._filter}",
        )
        studies: dict[str, Study] = {}
        candidates: dict[tuple[str, Sequence], list[tuple[SeriesRef, int]]] = {}
        series_study: dict[str, str] = {}
        for row in sorted(rows, key=lambda r: str(r.get("0020000E", {}).get("Value", [""])[0])):
            head = _dataset(row)
            study_uid = str(_value(head, "StudyInstanceUID", ""))
            series_uid = str(_value(head, "SeriesInstanceUID", ""))
            if not study_uid or not series_uid:
                continue
            study = studies.setdefault(
                study_uid,
                Study(study_id=study_uid, patient_id=_value(head, "PatientID"), source=self._url),
            )
            try:
                datasets = self._metadata(study_uid, series_uid)
            except UpstreamError as exc:
                study.unidentified.append({"series_uid": series_uid, "reason": str(exc)})
                continue
            if not datasets:
                study.unidentified.append({"series_uid": series_uid, "reason": "series has no instances"})
                continue
            description = _value(datasets[0], "SeriesDescription") or _value(head, "SeriesDescription")
            seq, reason = identify(datasets)
            if seq is None or seq == Sequence.OTHER:
                study.unidentified.append(
                    {"series_uid": series_uid, "description": description, "reason": reason}
                )
                continue
            ref = SeriesRef(
                sequence=seq,
                paths=[],
                series_uid=series_uid,
                description=description,
                metadata=header_metadata(datasets),
            )
            number = int(_value(datasets[0], "SeriesNumber", 0) or 0)
            candidates.setdefault((study_uid, seq), []).append((ref, number))
            series_study[series_uid] = study_uid
        # several series of one sequence: the same documented rule as the DICOM folder import
        # (HBV: highest b-value, then latest series; others: latest series); the rest are reported
        for (study_uid, seq), refs in candidates.items():
            if seq == Sequence.HBV:
                refs.sort(key=lambda r: (max(r[0].metadata.b_values or [0]), r[1]))
            else:
                refs.sort(key=lambda r: r[1])
            kept = refs[-1][0]
            studies[study_uid].sequences[seq] = kept
            for ref, _ in refs[:-1]:
                studies[study_uid].unidentified.append(
                    {
                        "series_uid": ref.series_uid,
                        "description": ref.description,
                        "reason": f"second {seq.value} series; kept {kept.description!r}",
                    }
                )
        self._series_study = series_study
        self._last_scan = time.monotonic()
        return list(studies.values())

    def _image_ids(self, study: Study) -> dict[Sequence, str]:
        return {seq: ref.series_uid for seq, ref in study.sequences.items()}

    def _fresh(self) -> None:
        if time.monotonic() - self._last_scan > self._ttl_s:
            self.refresh()

    def entry(self, image_id: str) -> ImageEntry:
        if isinstance(image_id, str) and image_id not in self._images:
            now = time.monotonic()
            if now - self._last_miss_scan > 5.0:
                self._last_miss_scan = now
                self.refresh()
        return super().entry(image_id)

    def list_images(self) -> list[str]:
        self._fresh()
        return super().list_images()

    def get_unlabeled_images(self, label_tag=None, labels=None) -> list[str]:
        self._fresh()
        return super().get_unlabeled_images(label_tag, labels)

    def get_labeled_images(self, label_tag=None, labels=None) -> list[str]:
        self._fresh()
        return super().get_labeled_images(label_tag, labels)

    # ------------------------------------------------------------------------------------ fetching
    def _series_dir(self, series_uid: str) -> Path:
        return self._store / "cache" / "dicom" / series_uid

    def fetch_series(self, image_id: str) -> list[str]:
        """Download the instances of a series once (atomically) and return their local files."""
        entry = self.entry(image_id)
        folder = self._series_dir(entry.series_uid)
        if not folder.is_dir():
            with file_lock(folder.parent / f".{entry.series_uid}.lock"):
                if not folder.is_dir():
                    study_uid = self._series_study[entry.series_uid]
                    datasets = self._query(
                        self._client.retrieve_series, study_uid, entry.series_uid, what="series download"
                    )
                    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{entry.series_uid}."))
                    try:
                        for i, ds in enumerate(datasets):
                            ds.save_as(tmp / f"{i:05d}.dcm", write_like_original=False)
                        os.replace(tmp, folder)
                    except BaseException:
                        shutil.rmtree(tmp, ignore_errors=True)
                        raise
        return sorted(str(p) for p in folder.glob("*.dcm"))

    def _image_file(self, entry: ImageEntry) -> Path:
        return self._convert_to_nifti(entry, self.fetch_series(entry.image_id))

    def _image_name(self, entry: ImageEntry) -> str:
        return f"{entry.image_id}.nii.gz"

    def _materialize(self, study: Study) -> Study:
        study = study.model_copy(deep=True)
        for ref in study.sequences.values():
            ref.paths = self.fetch_series(ref.series_uid)
        return study
