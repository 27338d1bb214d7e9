"""Trainers ``pirads``, ``isup`` and ``quality`` on MONAI Label's train-task interface.

``POST /train/<model>`` (JSON body: the options of :meth:`ProQualTrainer.config`) runs the trainer the
way MONAI Label runs every trainer: in a background subprocess that builds the app again and calls
the task; ``GET /train/`` shows its status and the last lines it printed. Each trainer

1. reads the annotation store (the final labels are the annotations' JSON, the values the study's
   current annotators agree on);
2. builds the quality-stratified finetune set with :func:`proqual.stratify.build_finetune_set`
   (``target_hq_fraction`` a request option, default from ``--conf``; quality stratum from the expert
   study PI-QUAL, else the stored quality score);
3. finetunes from the currently published checkpoint (or, when there is none yet, from a new small-cpu
   classifier / quality model, which then publishes the first checkpoint) with the same code as
   ``proqual finetune`` (:func:`proqual.classify.finetune.finetune`) or, for quality,
   :func:`proqual.quality.training.train` on the expert PI-QUAL ratings. The classifiers train
   data-parallel (DistributedDataParallel, one process per GPU, NCCL) when the request's ``multi_gpu``
   (MONAI Label's key, default true) selects more than one CUDA device (``gpus``: "all" or a comma list
   of indices, as in MONAI Label); otherwise, e.g. on a machine without GPUs, they train on one process.
   Either way the run's ``multi_gpu`` entry says what was used and why;
4. validates (a held-out part when there are enough studies, else the training set, said so);
5. publishes the new checkpoint atomically to the configured path (the infer tasks hot-reload it) and
   writes the run's summary to ``<store>/train/<model>.json``, shown by ``/info/`` as ``train_stats``.

Progress lines are printed as ``PROQUAL_PROGRESS {json}`` and the result as ``PROQUAL_RESULT {json}``,
so they appear in ``GET /train/`` details.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from monailabel.interfaces.tasks.train import TrainTask
from proqual.errors import ValidationError

from monailabel_app.registry import TRAINERS, register

log = logging.getLogger(__name__)


def _emit(kind: str, payload: dict[str, Any]) -> None:
    print(f"PROQUAL_{kind} {json.dumps(payload, default=str, separators=(',', ':'))}", flush=True)


def _float(request: dict, key: str, default: float, lo: float, hi: float) -> float:
    value = request.get(key, default)
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ValidationError(key, f"must be a number, got {value!r}") from None
    if not lo <= value <= hi:
        raise ValidationError(key, f"must be in [{lo}, {hi}], got {value}")
    return value


def _int(request: dict, key: str, default: int, lo: int, hi: int) -> int:
    value = request.get(key, default)
    try:
        value = int(value)
    except (TypeError, ValueError):
        raise ValidationError(key, f"must be an integer, got {value!r}") from None
    if not lo <= value <= hi:
        raise ValidationError(key, f"must be in [{lo}, {hi}], got {value}")
    return value


_TRUE, _FALSE = {"true", "1", "yes", "on"}, {"false", "0", "no", "off"}


def _bool(request: dict, key: str, default: bool) -> bool:
    value = request.get(key, default)
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    word = value.strip().lower() if isinstance(value, str) else None
    if word in _TRUE or word in _FALSE:
        return word in _TRUE
    raise ValidationError(key, f"must be true or false, got {value!r}")


def _gpu_ids(value: Any, n_cuda: int) -> list[int]:
    """MONAI Label's ``gpus``: "all" (or empty) -> every visible GPU, "0,2" (or a list) -> those."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "all")):
        return list(range(n_cuda))
    parts = value.split(",") if isinstance(value, str) else value
    try:
        ids = [int(str(p).strip()) for p in parts]
    except (TypeError, ValueError):
        raise ValidationError(
            "gpus", f'must be "all" or a comma list of GPU indices, got {value!r}'
        ) from None
    if len(set(ids)) != len(ids) or any(i < 0 for i in ids):
        raise ValidationError("gpus", f"GPU indices must be distinct and >= 0, got {value!r}")
    return ids


def gpu_plan(request: dict, device: str, n_train: int) -> dict[str, Any]:
    """How a classifier trainer runs: ``used`` (DDP or not), ``world_size``, ``devices``, ``backend`` and
    a ``note`` saying why. DDP needs ``multi_gpu`` true, ``--conf device`` CUDA, at least two of the
    selected GPUs and two training studies per GPU (fewer GPUs are used when the set is small)."""
    requested = _bool(request, "multi_gpu", True)
    gpus = request.get("gpus", "all")
    plan: dict[str, Any] = {
        "requested": requested,
        "gpus": gpus,
        "used": False,
        "world_size": 1,
        "devices": [device],
        "backend": None,
    }
    if not requested:
        plan["note"] = f"multi_gpu false: trained on one process ({device})"
        return plan
    import torch

    n_cuda = torch.cuda.device_count() if torch.cuda.is_available() else 0
    ids = _gpu_ids(gpus, n_cuda)
    why = None
    if n_cuda == 0:
        why = "this machine has no CUDA device"
    elif not device.startswith("cuda"):
        why = f"--conf device is {device}"
    elif len(ids) < 2:
        why = f"only {len(ids)} CUDA device selected (gpus={gpus!r}, {n_cuda} visible)"
    elif n_train < 4:
        why = f"{n_train} training studies are too few to split (2 per GPU needed)"
    if why is None:
        missing = [i for i in ids if i >= n_cuda]
        if missing:
            raise ValidationError(
                "gpus", f"GPU {missing[0]} does not exist ({n_cuda} visible: 0..{n_cuda - 1})"
            )
        ids = ids[: n_train // 2]
        plan.update(
            used=True,
            world_size=len(ids),
            devices=[f"cuda:{i}" for i in ids],
            backend="nccl",
            note=f"DistributedDataParallel on {len(ids)} GPUs ({', '.join(map(str, ids))}); batch_size per GPU",
        )
        return plan
    plan["note"] = f"multi_gpu requested, but {why}: trained on one process ({device})"
    return plan


def _slim(history: dict[str, Any]) -> dict[str, Any]:
    """The finetune result for the stats file: per-rank sample counts and digests, not every index."""
    dist = history.get("distributed")
    if not dist or "ranks" not in dist:
        return history
    ranks = [{k: v for k, v in r.items() if k != "seen"} for r in dist["ranks"]]
    return {**history, "distributed": {**dist, "ranks": ranks}}


def stratified_size(n_hq: int, n_lq: int, target: float) -> int:
    """The largest finetune-set size whose HQ fraction can meet ``target`` from the strata available."""
    limits = [n_hq + n_lq]
    if target > 0:
        limits.append(math.floor(n_hq / target + 1e-9))
    if target < 1:
        limits.append(math.floor(n_lq / (1 - target) + 1e-9))
    return min(limits)


class ProQualTrainer(TrainTask):
    """Common part: the labeled pool, the stratified finetune set, publishing and the stats file."""

    def __init__(self, app, name: str, description: str):
        super().__init__(description)
        self.app = app
        self.name = name
        self.spec = app.model_specs[name]

    def config(self) -> dict[str, Any]:
        return {
            "max_epochs": 5,
            "learning_rate": 1e-3,
            "batch_size": 4,
            "target_hq_fraction": self.app.config.target_hq_fraction,
            "n": 0,  # 0: the largest set that meets the target HQ fraction
            "val_fraction": 0.25,
            "seed": 0,
        }

    def stats_path(self) -> Path:
        return Path(self.app.datastore().store) / "train" / f"{self.name}.json"

    def stats(self) -> dict[str, Any]:
        try:
            return json.loads(self.stats_path().read_text())
        except (OSError, ValueError):
            return {}

    # ------------------------------------------------------------------------------------ pool
    def labeled_pool(self, datastore) -> list[dict[str, Any]]:
        """One row per labeled study: anchor, agreed annotation fields, stratum, current revisions."""
        from proqual.stratify import assign_stratum

        rows = []
        for anchor in datastore.get_labeled_images():
            summary = datastore.annotations.summary(anchor)
            current = [rev.annotation for rev in summary.current.values()]
            if not current:
                continue
            study_q = {(a.get("piqual") or {}).get("study") for a in current}
            expert = next(iter(study_q)) if len(study_q) == 1 else None
            score = datastore.get_image_info(anchor).get("quality_score")
            stratum, source = assign_stratum(
                expert_piqual=expert,
                quality_score=None if score is None else float(score),
                hq_threshold=self.app.config.hq_threshold,
            )
            rows.append(
                {
                    "anchor": anchor,
                    "agreed": dict(summary.agreed),
                    "disagreements": sorted(summary.disagreements),
                    "current": current,
                    "stratum": stratum,
                    "stratum_source": source,
                    "quality_score": score,
                }
            )
        return rows

    def publish_stats(self, stats: dict[str, Any]) -> None:
        from proqual.annotations import atomic_write_json

        atomic_write_json(self.stats_path(), stats)

    def __call__(self, request, datastore):
        t0 = time.perf_counter()
        started = datetime.now(UTC).isoformat(timespec="seconds")
        self.publish_stats({"status": "RUNNING", "started": started, "model": self.name})
        try:
            result = self.train(request, datastore)
        except Exception as exc:
            self.publish_stats(
                {
                    "status": "ERROR",
                    "started": started,
                    "model": self.name,
                    "error": f"{type(exc).__name__}: {exc}",
                }
            )
            _emit("ERROR", {"model": self.name, "error": str(exc)})
            raise
        result.update(
            status="DONE", started=started, model=self.name, seconds=round(time.perf_counter() - t0, 2)
        )
        result = _jsonable(result)
        self.publish_stats(result)
        _emit("RESULT", result)
        return result

    def train(self, request, datastore) -> dict[str, Any]:  # pragma: no cover - abstract
        raise NotImplementedError


class ClassifierTrainer(ProQualTrainer):
    """PI-RADS / ISUP finetuning from the published checkpoint on the stratified finetune set."""

    task = "pirads"

    def config(self) -> dict[str, Any]:
        out = super().config()
        out.update(multi_gpu=True, gpus="all")  # MONAI Label's keys and defaults
        return out

    def scheme_name(self) -> str:
        if self.task == "pirads":
            return self.app.config.pirads_scheme
        if self.spec.checkpoint.is_file():
            import torch

            blob = torch.load(self.spec.checkpoint, map_location="cpu", weights_only=True)
            return (blob.get("config") or {}).get("scheme", "cspca")
        return "cspca"

    def start_model(self, scheme):
        """(model, config, source): the published checkpoint, else a new small-cpu classifier (with the
        official ProFound encoder when ``--conf profound_checkpoint`` is set)."""
        from proqual.checkpoints import load_checkpoint
        from proqual.classify.data import INPUTS
        from proqual.classify.infer import build_classifier, classifier_config, load_classifier

        if self.spec.checkpoint.is_file():
            import torch

            model, ck_scheme, _inputs = load_classifier(self.spec.checkpoint, device="cpu")
            config = torch.load(self.spec.checkpoint, map_location="cpu", weights_only=True)["config"]
            if ck_scheme.name != scheme.name:
                raise ValidationError(
                    "scheme", f"published checkpoint uses {ck_scheme.name}, the trainer needs {scheme.name}"
                )
            return model, config, str(self.spec.checkpoint)
        config = classifier_config(preset="small-cpu", scheme=scheme, inputs=INPUTS["small"])
        model = build_classifier(config)
        source = "scratch"
        if self.app.config.profound_checkpoint:
            load_checkpoint(model.encoder, self.app.config.profound_checkpoint, strict=False)
            source = str(self.app.config.profound_checkpoint)
        return model, config, source

    def train(self, request, datastore) -> dict[str, Any]:
        from proqual.cache import StudyCache
        from proqual.checkpoints import checkpoint_version, save_checkpoint
        from proqual.classify.data import INPUTS
        from proqual.classify.distributed import finetune_distributed
        from proqual.classify.finetune import Example, FinetuneConfig, evaluate
        from proqual.labels import get_scheme
        from proqual.stratify import PoolItem, build_finetune_set

        target = _float(request, "target_hq_fraction", self.app.config.target_hq_fraction, 0.0, 1.0)
        epochs = _int(request, "max_epochs", 5, 1, 1000)
        batch = _int(request, "batch_size", 4, 2, 256)
        lr = _float(request, "learning_rate", 1e-3, 1e-7, 1.0)
        seed = _int(request, "seed", 0, 0, 2**31 - 1)
        val_fraction = _float(request, "val_fraction", 0.25, 0.0, 0.9)
        scheme = get_scheme(self.scheme_name())

        rows = self.labeled_pool(datastore)
        pool, skipped = [], []
        for row in rows:
            value = row["agreed"].get(self.task)
            if self.task in row["disagreements"] or value is None or value == "not_biopsied":
                skipped.append(row["anchor"])
                continue
            label = scheme.encode(int(value))
            pool.append(
                PoolItem(row["anchor"], label, row["stratum"], row["stratum_source"], row["quality_score"])
            )
        known = [p for p in pool if p.stratum in ("HQ", "LQ")]
        n_hq = sum(p.stratum == "HQ" for p in known)
        n_req = _int(request, "n", 0, 0, 10**6) or stratified_size(n_hq, len(known) - n_hq, target)
        if n_req < 2:
            n_req = len(known)  # too few to honour the target: take everything, reported below
        if len(known) < 2:
            raise ValidationError(
                "annotations",
                f"{self.name} needs at least 2 labeled studies with a known quality stratum, "
                f"found {len(known)} ({len(rows)} labeled)",
            )
        fset = build_finetune_set(pool, n=n_req, hq_fraction=target, seed=seed)
        composition = fset.composition()
        composition["skipped_no_label_or_conflict"] = skipped
        _emit("PROGRESS", {"stage": "finetune set", "model": self.name, **composition})
        model, config, source = self.start_model(scheme)
        inputs = INPUTS[config.get("inputs", "small")]
        cache = StudyCache(0)
        examples = []
        for item in fset.items:
            study = datastore.study_for(item.study_id)
            image = cache.tensor(study, roi=inputs.roi, spacing=inputs.spacing, task=self.name)
            examples.append(Example(item.study_id, image, int(item.label), item.stratum))
        n_val = int(round(len(examples) * val_fraction)) if len(examples) >= 6 else 0
        val = examples[len(examples) - n_val :] if n_val else []
        train = examples[: len(examples) - n_val]
        plan = gpu_plan(request, self.app.device, len(train))
        log.info("%s: %s", self.name, plan["note"])
        _emit("PROGRESS", {"stage": "devices", "model": self.name, **plan})
        cfg = FinetuneConfig(
            mode="scratch" if source == "scratch" else "full",  # no layer-wise decay without pretraining
            epochs=epochs,
            batch_size=min(batch, len(train)),
            lr=lr,
            seed=seed,
            device=self.app.device,
            hq_fraction=target,
            patience=max(epochs, 5),
        )

        def progress(row: dict) -> None:
            _emit("PROGRESS", {"stage": "epoch", "model": self.name, "max_epochs": epochs, **row})

        # world_size 1 (no DDP in the plan) is a plain finetune on this process
        history = finetune_distributed(
            model,
            train,
            scheme=scheme,
            cfg=cfg,
            val=val or None,
            progress=progress,
            world_size=plan["world_size"],
            backend=plan["backend"],
            devices=plan["devices"],
        )
        history = _slim(history)
        metrics = evaluate(model, val or train, scheme, device=self.app.device)
        meta = {
            "task": self.task,
            "scheme": scheme.name,
            "trained": datetime.now(UTC).isoformat(timespec="seconds"),
            "started_from": source,
            "finetune_set": composition,
            "metrics": metrics,
            "metrics_on": "validation" if val else "training set (too few studies to hold out)",
        }
        save_checkpoint(model.cpu(), self.spec.checkpoint, meta=_jsonable(meta), config=config)
        return {
            "published": str(self.spec.checkpoint),
            "version": checkpoint_version(self.spec.checkpoint),
            "started_from": source,
            "composition": composition,
            "metrics": metrics,
            "metrics_on": meta["metrics_on"],
            "n_train": len(train),
            "n_val": len(val),
            "multi_gpu": plan,
            "history": _jsonable(history),
        }


class PiradsTrainer(ClassifierTrainer):
    task = "pirads"


class IsupTrainer(ClassifierTrainer):
    task = "isup"


class QualityTrainer(ProQualTrainer):
    """Finetunes the quality model on the experts' per-sequence PI-QUAL v2 ratings."""

    def config(self) -> dict[str, Any]:
        out = super().config()
        out.update(max_epochs=3, learning_rate=5e-4)
        return out

    def train(self, request, datastore) -> dict[str, Any]:
        from proqual.cache import StudyCache
        from proqual.checkpoints import checkpoint_version
        from proqual.nets.quality_net import QualityNet, QualityNetConfig
        from proqual.quality.scoring import load_quality_model
        from proqual.quality.training import TrainConfig, evaluate, rated_samples, save_quality_checkpoint
        from proqual.quality.training import train as train_quality
        from proqual.study import Sequence

        epochs = _int(request, "max_epochs", 3, 1, 1000)
        batch = _int(request, "batch_size", 4, 1, 256)
        lr = _float(request, "learning_rate", 5e-4, 1e-7, 1.0)
        seed = _int(request, "seed", 0, 0, 2**31 - 1)
        rows = self.labeled_pool(datastore)
        cache = StudyCache(0)
        items, per_rating = [], {1: 0, 2: 0, 3: 0}
        for row in rows:
            ratings: dict[str, set] = {}
            for ann in row["current"]:
                for seq, r in (ann.get("piqual") or {}).items():
                    if seq != "study":
                        ratings.setdefault(seq, set()).add(int(r))
            study = datastore.study_for(row["anchor"])
            for seq_name, values in sorted(ratings.items()):
                seq = Sequence.parse(seq_name)
                if len(values) != 1 or seq not in study.sequences:
                    continue  # annotators disagree, or the study lacks it
                rating = next(iter(values))
                items.append((cache.volumes(study, [seq])[seq], seq, rating))
                per_rating[rating] += 1
        if len(items) < 2:
            raise ValidationError(
                "annotations", f"quality needs at least 2 rated sequences, found {len(items)}"
            )
        samples = rated_samples(items)
        _emit(
            "PROGRESS", {"stage": "samples", "model": self.name, "n": len(samples), "per_rating": per_rating}
        )
        if self.spec.checkpoint.is_file():
            model, source = load_quality_model(self.spec.checkpoint, device="cpu"), str(self.spec.checkpoint)
            meta_in = dict(getattr(model, "meta", {}) or {})
        else:
            model, source, meta_in = QualityNet(QualityNetConfig()), "scratch", {}
        n_val = len(samples) // 4 if len(samples) >= 8 else 0
        val = samples[len(samples) - n_val :] if n_val else []
        train = samples[: len(samples) - n_val]
        cfg = TrainConfig(
            epochs=epochs, batch_size=min(batch, len(train)), lr=lr, seed=seed, device=self.app.device
        )

        def progress(row: dict) -> None:
            _emit("PROGRESS", {"stage": "epoch", "model": self.name, "max_epochs": epochs, **_jsonable(row)})

        multi = None
        if _bool(request, "multi_gpu", False):
            multi = {
                "requested": True,
                "used": False,
                "world_size": 1,
                "devices": [self.app.device],
                "note": f"the quality trainer has no data-parallel mode: trained on one process ({self.app.device})",
            }
            _emit("PROGRESS", {"stage": "devices", "model": self.name, **multi})
        history = train_quality(model, train, cfg=cfg, val_samples=val or None, progress=progress)
        metrics = _jsonable(evaluate(model, val or train, device=self.app.device))
        meta = {
            **{k: v for k, v in meta_in.items() if k not in ("finetuned",)},
            "finetuned": {
                "trained": datetime.now(UTC).isoformat(timespec="seconds"),
                "started_from": source,
                "n_samples": len(samples),
                "per_rating": per_rating,
                "metrics": metrics,
            },
        }
        save_quality_checkpoint(model.cpu(), self.spec.checkpoint, meta=_jsonable(meta))
        return {
            "published": str(self.spec.checkpoint),
            "version": checkpoint_version(self.spec.checkpoint),
            "started_from": source,
            "composition": {"samples": len(samples), "per_rating": per_rating, "studies": len(rows)},
            "metrics": metrics,
            "metrics_on": "validation" if val else "training set (too few samples to hold out)",
            "n_train": len(train),
            "n_val": len(val),
            **({"multi_gpu": multi} if multi else {}),
            "history": _jsonable(history),
        }


def _jsonable(obj: Any) -> Any:
    """Plain JSON (numpy/torch scalars as numbers, NaN and infinities as null)."""

    def clean(o: Any) -> Any:
        if isinstance(o, float):
            return o if math.isfinite(o) else None
        if isinstance(o, dict):
            return {str(k): clean(v) for k, v in o.items()}
        if isinstance(o, (list, tuple)):
            return [clean(v) for v in o]
        return o

    return clean(json.loads(json.dumps(obj, default=lambda o: o.item() if hasattr(o, "item") else str(o))))


@register(TRAINERS, "pirads")
def make_pirads(app, name):
    return PiradsTrainer(
        app, name, f"Finetune the PI-RADS classifier ({app.config.pirads_scheme}) on the annotations"
    )


@register(TRAINERS, "isup")
def make_isup(app, name):
    return IsupTrainer(app, name, "Finetune the ISUP classifier on the annotations")


@register(TRAINERS, "quality")
def make_quality(app, name):
    return QualityTrainer(app, name, "Finetune the quality model on the experts' PI-QUAL v2 ratings")


if __name__ == "__main__":  # pragma: no cover
    sys.exit("run through monailabel: POST /train/<model>")
