"""ProQual as a MONAI Label app: ``monailabel start_server --app monailabel_app --studies <folder|url>``.

The app stays thin over :mod:`proqual`:

- configuration: ``--conf key value`` pairs validated at start by :mod:`monailabel_app.config`;
- studies: :mod:`monailabel_app.datastore` (local folders) and :mod:`monailabel_app.dicomweb` (PACS);
- annotations: ``PUT /datastore/label?image=<anchor>&tag=final`` with the annotation JSON, kept by
  :class:`proqual.annotations.AnnotationStore`;
- HTTP extras (``/proqual/...`` routes, 4xx error mapping): :mod:`monailabel_app.server`;
- tasks: inference tasks, trainers, strategies and scoring methods come from factories registered in
  :mod:`monailabel_app.registry`, one per name, built from the configuration.

MONAI Label loads this file by path as a module called ``main``, so the repository root is put on
``sys.path`` to import the ``monailabel_app`` package.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

_ROOT = str(Path(__file__).resolve().parent.parent)
if _ROOT not in sys.path:
    sys.path.append(_ROOT)

from monailabel.interfaces.app import MONAILabelApp  # noqa: E402
from monailabel.interfaces.datastore import Datastore  # noqa: E402
from proqual.errors import ProQualError  # noqa: E402

from monailabel_app import registry  # noqa: E402
from monailabel_app.config import ProQualConfig, parse_conf  # noqa: E402
from monailabel_app.errors import ModelUnavailableError, NotFoundError  # noqa: E402
from monailabel_app.registry import ModelSpec  # noqa: E402

log = logging.getLogger("monailabel_app")


class ProQualApp(MONAILabelApp):
    """Quality-aware prostate MRI: quality, PI-RADS and ISUP models over multi-sequence studies."""

    def __init__(self, app_dir: str, studies: str, conf: dict[str, str]):
        # MONAILabelApp.__init__ calls the init_* hooks, so everything they use is set first.
        try:
            self.config: ProQualConfig = parse_conf(conf)
            self.device: str = self.config.resolved_device()
        except ProQualError as exc:
            log.error("ProQual cannot start: invalid --conf: %s", exc)
            raise
        self.model_specs: dict[str, ModelSpec] = registry.model_specs(self.config)
        for spec in self.model_specs.values():
            if spec.available:
                log.info("model %s: checkpoint %s", spec.name, spec.checkpoint)
            else:
                log.warning("model %s is unavailable until its checkpoint exists: %s", spec.name, spec.reason)
        try:
            self._init_base(app_dir, studies, conf)
        except ProQualError as exc:
            log.error("ProQual cannot start: %s", exc)
            raise

    def _init_base(self, app_dir: str, studies: str, conf: dict[str, str]) -> None:
        super().__init__(
            app_dir=app_dir,
            studies=studies,
            conf=conf,
            name="ProQual",
            description="Quality-aware AI for prostate MRI: PI-QUAL v2 quality, PI-RADS, ISUP "
            "(research use only, not for clinical use)",
            version=_version(),
            labels=[],
        )

    # -------------------------------------------------------------------------------------- hooks
    def init_datastore(self) -> Datastore:
        """Local folder (PI-CAI, flat, DICOM) or DICOMweb URL. Never MONAI Label's stock DICOMweb
        datastore, which downloads dcmqi from the internet at start."""
        store = self.config.store
        if self.studies.startswith(("http://", "https://")):
            from monailabel.config import settings

            from monailabel_app.dicomweb import DEFAULT_SEARCH_FILTER, DICOMwebStudyDatastore

            self.studies = self.studies.rstrip("/")
            stock = settings.MONAI_LABEL_DICOMWEB_SEARCH_FILTER
            search = DEFAULT_SEARCH_FILTER if stock in ({}, {"Modality": "CT"}) else stock
            return DICOMwebStudyDatastore(self.studies, store=store, search_filter=search)
        from monailabel_app.datastore import LocalStudyDatastore

        return LocalStudyDatastore(self.studies, store=store)

    def init_infers(self) -> dict[str, Any]:
        # every configured model gets its task, with or without a checkpoint: the task loads the file on
        # the first request after it appears (ReloadingModel) and answers 503 while it is missing
        return registry.build(registry.INFERS, self, list(self.model_specs))

    def init_trainers(self) -> dict[str, Any]:
        # TODO(trainer helper, issue 5 §5): register factories in monailabel_app.registry.TRAINERS.
        return registry.build(registry.TRAINERS, self, list(self.model_specs))

    def init_strategies(self) -> dict[str, Any]:
        # TODO(active-learning helper, issue 5 §6): register "quality_aware", "uncertainty", "random",
        # "first" in monailabel_app.registry.STRATEGIES.
        return registry.build(registry.STRATEGIES, self, list(registry.STRATEGIES))

    def init_scoring_methods(self) -> dict[str, Any]:
        # TODO(active-learning helper, issue 5 §6): register "quality", "uncertainty" in
        # monailabel_app.registry.SCORING.
        return registry.build(registry.SCORING, self, list(registry.SCORING))

    # -------------------------------------------------------------------------------------- lookups
    def available_models(self) -> list[str]:
        return [n for n, s in self.model_specs.items() if s.available]

    def require(self, kind: str, name: str) -> None:
        """Raise :class:`NotFoundError` (HTTP 404) when no ``kind`` called ``name`` is served.

        ``kind``: "model", "trainer", "strategy" or "scoring method". A configured model whose
        checkpoint is missing is served (its task exists); :meth:`require_weights` tells it apart.
        """
        tables = {
            "model": self._infers,
            "trainer": self._trainers,
            "strategy": self._strategies,
            "scoring method": self._scoring_methods,
        }
        table = tables[kind]
        if name in table:
            return
        spec = self.model_specs.get(name) if kind == "model" else None
        if spec is not None:
            raise NotFoundError(kind, name, table, why="no inference task is registered for it yet")
        raise NotFoundError(kind, name, table)

    def require_weights(self, name: str) -> None:
        """Raise :class:`ModelUnavailableError` (HTTP 503) while model ``name``'s checkpoint is missing."""
        spec = self.model_specs.get(name)
        if spec is not None and not spec.available:
            raise ModelUnavailableError(name, spec.checkpoint, spec.reason)

    # -------------------------------------------------------------------------------------- requests
    def infer(self, request, datastore=None):
        model = request.get("model")
        if model:
            self.require("model", model)
            self.require_weights(model)
        image = request.get("image")
        if isinstance(image, str) and image and not Path(image).exists():
            (datastore or self.datastore()).entry(image)  # unknown id -> 404 before any work
            # MONAI Label replaces "image" by the file URI before calling the task; keep the id
            request = {**request, "proqual_image_id": image}
        return super().infer(request, datastore)

    def next_sample(self, request):
        self.require("strategy", request.get("strategy") or "random")
        return super().next_sample(request)

    def train(self, request):
        if request.get("model"):
            self.require("trainer", request["model"])
        return super().train(request)

    def scoring(self, request, datastore=None):
        if request.get("method"):
            self.require("scoring method", request["method"])
        return super().scoring(request, datastore)

    def on_save_label(self, image_id, label_id):
        """After ``PUT /datastore/label``: the answer carries the stored revision and conflict flag."""
        saved = self.datastore().last_saved.pop(label_id, None)
        return dict(saved) if saved else {}

    def server_mode(self, mode: bool):
        super().server_mode(mode)
        if mode:
            from monailabel_app import server

            server.install()

    # -------------------------------------------------------------------------------------- info
    def info(self):
        meta = super().info()
        meta["proqual"] = {
            "config": self.config.model_dump(mode="json"),
            "device": self.device,
            "models": {n: s.as_json() for n, s in self.model_specs.items()},
            "routes": ["/proqual/studies", "/proqual/annotations/{image}", "/proqual/finetune-set"],
        }
        cache = getattr(self, "study_cache", None)
        if cache is not None:
            meta["proqual"]["cache"] = cache.stats()
        return meta

    def finetune_set_summary(self) -> dict[str, Any]:
        from monailabel_app.finetune import finetune_set_summary

        return finetune_set_summary(self.datastore(), self.config)


def _version() -> str:
    try:
        from proqual import __version__

        return __version__
    except Exception:  # pragma: no cover
        return "0"
