"""Inference tasks ``quality``, ``pirads`` and ``isup`` (MONAI Label classification type, JSON results).

Each task resolves any image id of a study (any sequence) to the study, reads and preprocesses it
through the app's shared :class:`proqual.cache.StudyCache` (so the three tasks on one study read and
preprocess it once), and answers JSON that carries the model version (checkpoint hash, time, size).
A checkpoint whose file changes (a trainer published a new one) is reloaded before the next inference.
Every configured model has its task even while its checkpoint file does not exist: it then answers 503
naming the file (never random weights), and loads the file on the first request after it appears.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from monailabel.interfaces.tasks.infer_v2 import InferTask, InferType
from proqual.errors import CheckpointError
from proqual.study import PROFOUND_CHANNELS

from monailabel_app.errors import BadRequestError, ModelUnavailableError
from monailabel_app.registry import INFERS, register

log = logging.getLogger(__name__)

#: the request key under which ProQualApp.infer passes the client's image id (MONAI Label replaces
#: ``image`` with the file URI before calling the task)
IMAGE_ID_KEY = "proqual_image_id"


def shared_cache(app):
    """The app's study cache (created on first use, ``cache_size`` studies)."""
    cache = getattr(app, "study_cache", None)
    if cache is None:
        from proqual.cache import StudyCache

        with _CACHE_LOCK:
            cache = getattr(app, "study_cache", None)
            if cache is None:
                cache = StudyCache(app.config.cache_size)
                app.study_cache = cache
    return cache


_CACHE_LOCK = threading.Lock()

#: the one thread that runs every model and preprocessing step. The web server calls the tasks from a
#: pool of threads, and each new calling thread most likely gets its own OpenMP thread team in torch; the
#: idle teams of earlier threads keep spinning and, on a small CPU, take cores from the working one
#: (measured on 2 cores, per request: quality 0.65 s -> 0.60 s, PI-RADS 0.22 s -> 0.13 s). The tasks run
#: one at a time anyway (MONAI Label calls them synchronously).
_WORKER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="proqual-infer")


def run_on_worker(fn, *args):
    """``fn(*args)`` on the inference thread; its exceptions propagate to the caller."""
    return _WORKER.submit(fn, *args).result()


def entropy(probs: dict[str, float] | list[float]) -> float:
    """Normalised entropy (0 = certain, 1 = uniform) of class probabilities."""
    p = list(probs.values()) if isinstance(probs, dict) else list(probs)
    if len(p) < 2:
        return 0.0
    h = -sum(v * math.log(v) for v in p if v > 0)
    return round(h / math.log(len(p)), 6)


class ReloadingModel:
    """A model loaded from a checkpoint file, reloaded when the file's mtime or size changes."""

    def __init__(self, path: Path, loader):
        self.path = Path(path)
        self.loader = loader
        self._lock = threading.Lock()
        self._stamp: tuple | None = None
        self._value: Any = None
        self.loads = 0

    def _current_stamp(self) -> tuple:
        try:
            st = self.path.stat()
        except OSError:
            raise CheckpointError(f"{self.path}: checkpoint not found") from None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def get(self):
        with self._lock:
            stamp = self._current_stamp()
            if stamp != self._stamp:
                self._value = self.loader(self.path)
                self._stamp = stamp
                self.loads += 1
                log.info("loaded %s (load #%d)", self.path, self.loads)
            return self._value


class ProQualInfer(InferTask):
    """Base of the three tasks: resolve the study, run :meth:`run`, add ids, timing and cache use."""

    def __init__(self, app, name: str, description: str):
        super().__init__(
            type=InferType.CLASSIFICATION,
            labels=[],
            dimension=3,
            description=description,
            config={},
        )
        self.app = app
        self.name = name
        self.spec = app.model_specs[name]
        self.model = ReloadingModel(self.spec.checkpoint, self.load)
        self._run_lock = threading.Lock()  # one forward pass at a time per task (models are not re-entrant)

    def load(self, path: Path):  # pragma: no cover - abstract
        raise NotImplementedError

    def run(self, model, study, cache) -> dict[str, Any]:  # pragma: no cover - abstract
        raise NotImplementedError

    def image_info(self, result: dict[str, Any]) -> dict[str, Any] | None:
        """What to keep in the anchor's image info after an inference (None: nothing)."""
        return None

    def is_valid(self) -> bool:
        return True

    def get_path(self, validate=True):
        return str(self.spec.checkpoint)

    def info(self) -> dict[str, Any]:
        out = super().info()
        out.update(self.spec.as_json())
        return out

    def loaded_model(self):
        """The model of the current checkpoint (loaded or reloaded when the file changed); 503 while the
        file does not exist."""
        if not self.spec.available:
            raise ModelUnavailableError(self.name, self.spec.checkpoint, self.spec.reason)
        try:
            return self.model.get()
        except CheckpointError:
            if not self.spec.available:  # removed between the check and the read
                raise ModelUnavailableError(self.name, self.spec.checkpoint, self.spec.reason) from None
            raise

    def __call__(self, request) -> tuple[None, dict[str, Any]]:
        image_id = request.get(IMAGE_ID_KEY) or request.get("image")
        if not isinstance(image_id, str) or not image_id:
            raise BadRequestError("inference needs image=<image id>")
        if not self.spec.available:  # before any datastore work (scoring and strategies call us directly)
            raise ModelUnavailableError(self.name, self.spec.checkpoint, self.spec.reason)
        ds = self.app.datastore()
        entry = ds.entry(image_id)  # unknown id -> 404
        study = ds.study_for(image_id)
        cache = shared_cache(self.app)
        before = cache.stats()
        t0 = time.perf_counter()
        model = self.loaded_model()
        with self._run_lock:
            result = run_on_worker(self.run, model, study, cache)
        after = cache.stats()
        result.update(
            task=self.name,
            image=image_id,
            anchor=entry.anchor,
            study_id=entry.study_id,
            sequence_ids=ds.sequence_ids(image_id),
            model=getattr(model, "version", result.get("model", {})),
            seconds=round(time.perf_counter() - t0, 4),
            cache={
                k: after[k] - before[k]
                for k in ("volume_reads", "volume_hits", "preprocess_runs", "preprocess_hits")
            },
        )
        info = self.image_info(result)
        if info:
            # kept for the finetune-set strata and active learning; a read-only store must not fail it
            try:
                ds.update_image_info(entry.anchor, info)
            except Exception as exc:
                log.warning("could not store image info of %s: %s", entry.anchor, exc)
        return None, result


class QualityInfer(ProQualInfer):
    """PI-QUAL v2 quality of every sequence: score, class and probabilities, artifact estimates,
    slice-wise quality, salient slice (T2W voxel index and patient position), prerequisites."""

    def load(self, path: Path):
        from proqual.quality.scoring import load_quality_model

        return load_quality_model(path, device=self.app.device)

    def run(self, model, study, cache) -> dict[str, Any]:
        from proqual.quality.scoring import SCORED_SEQUENCES, score_study

        present = [s for s in SCORED_SEQUENCES if s in study.sequences] or list(study.sequences)
        vols = cache.volumes(study, present)
        q = score_study(model, study, device=self.app.device, volumes=vols)
        out = q.model_dump(mode="json")
        scores = [s.score for s in q.sequences.values()]
        out["quality_score"] = round(min(scores), 4) if scores else None
        out["study_score_rule"] = "minimum of the sequence scores"
        out["hq"] = out["quality_score"] is not None and out["quality_score"] >= self.app.config.hq_threshold
        return out

    def image_info(self, result):
        return {
            "quality_score": result["quality_score"],
            "study_piqual": result["study_piqual"],
            "quality_model": result["model"].get("sha256"),
        }


class ClassifierInfer(ProQualInfer):
    """PI-RADS or ISUP classification from the T2W, HBV and ADC of a study."""

    task: str = "pirads"

    def load(self, path: Path):
        from proqual.classify.infer import load_classifier

        model, scheme, inputs = load_classifier(path, device=self.app.device)
        if scheme.task != self.task:
            raise CheckpointError(
                f"{path}: a {scheme.task} checkpoint (scheme {scheme.name}), not a {self.task} one"
            )
        if self.task == "pirads" and scheme.name != self.app.config.pirads_scheme:
            raise CheckpointError(
                f"{path}: trained for scheme {scheme.name}, but --conf pirads_scheme is "
                f"{self.app.config.pirads_scheme}"
            )
        return model, scheme, inputs

    def run(self, loaded, study, cache) -> dict[str, Any]:
        from proqual.classify.infer import classify_study

        model, scheme, inputs = loaded
        image = cache.tensor(study, roi=inputs.roi, spacing=inputs.spacing, task=self.name)
        res = classify_study(model, study, scheme, inputs, device=self.app.device, image=image)
        out = res.model_dump(mode="json")
        out["uncertainty"] = entropy(res.probabilities)
        out["required_sequences"] = [s.value for s in PROFOUND_CHANNELS]
        return out


class PiradsInfer(ClassifierInfer):
    task = "pirads"

    def run(self, loaded, study, cache):
        out = super().run(loaded, study, cache)
        out["pirads_ge4_probability"] = out["positive_probability"] if out["scheme"] != "pirads_ge3" else None
        return out

    def image_info(self, result):
        return {"uncertainty": result["uncertainty"], "pirads_probabilities": result["probabilities"]}


class IsupInfer(ClassifierInfer):
    task = "isup"

    def run(self, loaded, study, cache):
        out = super().run(loaded, study, cache)
        out["cspca_probability"] = out["positive_probability"]
        out["grade_group_probabilities"] = out["probabilities"] if out["scheme"] == "isup_gg" else None
        return out


@register(INFERS, "quality")
def make_quality(app, name):
    return QualityInfer(app, name, "PI-QUAL v2 image quality per sequence and study, with the salient slice")


@register(INFERS, "pirads")
def make_pirads(app, name):
    return PiradsInfer(app, name, f"PI-RADS ({app.config.pirads_scheme}) class probabilities")


@register(INFERS, "isup")
def make_isup(app, name):
    return IsupInfer(app, name, "ISUP: csPCa probability (and grade-group probabilities)")
