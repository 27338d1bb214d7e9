"""A bounded, thread-safe cache of read studies: their volumes and preprocessed model inputs.

Running the quality, PI-RADS and ISUP models on one study should read its files and preprocess them
once. :class:`StudyCache` keeps, per study, the :class:`~proqual.io.readers.Volume` of each sequence
and the preprocessed (3, D, H, W) tensor of each input configuration, for the ``max_studies`` most
recently used studies (LRU). A study's key is its id plus the path, size and modification time of
every file of its sequences, so a changed file is never served from the cache.

Concurrent requests for the same study wait for the one that is reading it instead of reading it
again (one lock per study entry; the table itself has its own lock).
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from proqual.errors import InputError, ValidationError
from proqual.study import PROFOUND_CHANNELS, Sequence, Study


def _file_stamp(path: str) -> tuple[str, int, int]:
    try:
        st = os.stat(path)
    except OSError as exc:
        raise InputError(path, f"cannot read file ({exc.strerror or exc})") from None
    return (str(path), st.st_size, st.st_mtime_ns)


def study_key(study: Study) -> tuple:
    """Cache key: study id + (path, size, mtime) of every file of every sequence."""
    stamps = []
    for seq in sorted(study.sequences, key=lambda s: s.value):
        for p in study.sequences[seq].paths:
            stamps.append((seq.value, *_file_stamp(p)))
    for name, p in sorted(study.masks.items()):
        stamps.append((f"mask:{name}", *_file_stamp(p)))
    return (study.study_id, tuple(stamps))


@dataclass
class _Entry:
    lock: threading.Lock = field(default_factory=threading.Lock)
    volumes: dict[Sequence, Any] = field(default_factory=dict)
    tensors: dict[tuple, Any] = field(default_factory=dict)


class StudyCache:
    """LRU cache of studies' volumes and preprocessed tensors (see the module docstring).

    ``max_studies=0`` disables caching (every call reads and preprocesses again).
    """

    def __init__(self, max_studies: int = 4):
        if max_studies < 0:
            raise ValidationError("cache_size", f"must be >= 0, got {max_studies}")
        self.max_studies = int(max_studies)
        self._entries: OrderedDict[tuple, _Entry] = OrderedDict()
        self._lock = threading.Lock()
        self._stats = {
            "volume_reads": 0,
            "volume_hits": 0,
            "preprocess_runs": 0,
            "preprocess_hits": 0,
            "evictions": 0,
        }

    # ------------------------------------------------------------------------------------- internals
    def _entry(self, study: Study) -> _Entry:
        key = study_key(study)
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                entry = _Entry()
                if self.max_studies > 0:
                    # drop stale versions of the same study (a file changed), then the least recent
                    for old in [k for k in self._entries if k[0] == key[0]]:
                        del self._entries[old]
                    self._entries[key] = entry
                    while len(self._entries) > self.max_studies:
                        self._entries.popitem(last=False)
                        self._stats["evictions"] += 1
            else:
                self._entries.move_to_end(key)
            return entry

    def _count(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._stats[name] += n

    # ------------------------------------------------------------------------------------- public API
    def volumes(self, study: Study, sequences: Iterable[Sequence | str] | None = None) -> dict[Sequence, Any]:
        """The volumes of ``sequences`` (default: all of the study's), read once per cached study.

        Raises :class:`proqual.errors.MissingSequenceError` when the study lacks one of them.
        """
        from proqual.io.readers import read_volume

        seqs = [Sequence.parse(s) for s in (sequences if sequences is not None else study.sequences)]
        study.require(*seqs)
        entry = self._entry(study)
        with entry.lock:
            out = {}
            for seq in seqs:
                vol = entry.volumes.get(seq)
                if vol is None:
                    ref = study.sequences[seq]
                    vol = read_volume(ref.paths if len(ref.paths) > 1 else ref.paths[0])
                    entry.volumes[seq] = vol
                    self._count("volume_reads")
                else:
                    self._count("volume_hits")
                out[seq] = vol
            return out

    def tensor(
        self,
        study: Study,
        *,
        roi: tuple[int, int, int],
        spacing: tuple[float, float, float],
        task: str = "classification",
    ) -> Any:
        """The ProFound-style (3, D, H, W) input of ``study`` for one ROI and spacing, preprocessed once
        (from the cached volumes). A study missing T2W, HBV or ADC raises
        :class:`proqual.errors.MissingSequenceError` naming what it lacks and ``task``."""
        import torch

        from proqual.preprocess import KEYS, gland_centre_ras, profound_transforms

        study.require(*PROFOUND_CHANNELS, task=task)
        key = (tuple(int(v) for v in roi), tuple(float(v) for v in spacing))
        vols = self.volumes(study, PROFOUND_CHANNELS)
        entry = self._entry(study)
        with entry.lock:
            image = entry.tensors.get(key)
            if image is not None:
                self._count("preprocess_hits")
                return image
            data: dict[str, Any] = {k: vols[Sequence(k.upper())] for k in KEYS}
            centre = gland_centre_ras(study)
            if centre is not None:
                data["centre_ras"] = centre
            image = profound_transforms(roi=key[0], spacing=key[1])(data)["image"]
            image = torch.as_tensor(image).float()
            if not torch.isfinite(image).all():
                raise InputError(
                    study.source, f"study {study.study_id}: preprocessing produced non-finite values"
                )
            entry.tensors[key] = image
            self._count("preprocess_runs")
            return image

    def stats(self) -> dict[str, int]:
        """Counters (reads, hits, preprocessing runs, evictions) and the number of cached studies."""
        with self._lock:
            return {**self._stats, "studies": len(self._entries), "max_studies": self.max_studies}

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
