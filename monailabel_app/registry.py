"""Where the app's tasks come from: one factory per name, built from the configuration.

Inference tasks, trainers, active-learning strategies and scoring methods plug in by registering a
factory under their name in one of the tables below, from a module of this package listed in
:data:`PLUGIN_MODULES` (imported when the app starts, if it exists)::

    # monailabel_app/infers.py
    from monailabel_app.registry import INFERS, register

    @register(INFERS, "quality")
    def make_quality(app, name):          # app: the ProQualApp (config, device, datastore, model_specs)
        return QualityInfer(app.model_specs[name], app.datastore(), device=app.device)

The app then serves ``{name: factory(app, name)}`` for

- ``INFERS``: each configured model (``--conf models``), whether or not its checkpoint exists yet. A
  missing checkpoint makes the model *unavailable* (reported at start and in ``/info/``; an inference
  answers 503 naming the file), never run with random weights; the task loads the checkpoint on the
  first request after the file appears (copied there or published by a trainer), without a restart;
- ``TRAINERS``: each configured model (a trainer may start without a checkpoint and publish the first);
- ``STRATEGIES`` and ``SCORING``: every registered name.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

#: factory(app, name) -> a MONAI Label InferTask / TrainTask / Strategy / ScoringMethod
Factory = Callable[[Any, str], Any]

INFERS: dict[str, Factory] = {}
TRAINERS: dict[str, Factory] = {}
STRATEGIES: dict[str, Factory] = {}
SCORING: dict[str, Factory] = {}

#: modules that register factories when imported (missing ones are skipped)
PLUGIN_MODULES: tuple[str, ...] = (
    "monailabel_app.infers",
    "monailabel_app.trainers",
    "monailabel_app.strategies",
    "monailabel_app.scoring",
)


def register(table: dict[str, Factory], name: str) -> Callable[[Factory], Factory]:
    """Decorator: put ``factory`` into ``table`` under ``name``."""

    def deco(factory: Factory) -> Factory:
        table[name] = factory
        return factory

    return deco


def load_plugins() -> list[str]:
    """Import the plug-in modules that exist; returns their names."""
    loaded = []
    for module in PLUGIN_MODULES:
        if importlib.util.find_spec(module) is not None:
            importlib.import_module(module)
            loaded.append(module)
    return loaded


def build(table: dict[str, Factory], app: Any, names: Iterable[str]) -> dict[str, Any]:
    """``{name: table[name](app, name)}`` for each name that has a factory."""
    load_plugins()
    tasks: dict[str, Any] = {}
    for name in names:
        factory = table.get(name)
        if factory is None:
            log.debug("no factory registered for %s", name)
            continue
        tasks[name] = factory(app, name)
    return tasks


@dataclass(frozen=True)
class ModelSpec:
    """A configured model and its checkpoint path. Availability is looked up on the file system each
    time it is asked for, so a checkpoint that appears (or disappears) after the start is seen."""

    name: str
    checkpoint: Path

    @property
    def available(self) -> bool:
        return self.checkpoint.is_file()

    @property
    def reason(self) -> str | None:
        """Why the model cannot be served now (None when it can)."""
        return None if self.available else f"checkpoint {self.checkpoint} not found"

    def as_json(self) -> dict[str, Any]:
        reason = self.reason
        return {
            "checkpoint": str(self.checkpoint),
            "available": reason is None,
            **({"reason": reason} if reason else {}),
        }


def model_specs(config) -> dict[str, ModelSpec]:
    """One :class:`ModelSpec` per configured model (unavailable while its checkpoint file is missing)."""
    return {name: ModelSpec(name, Path(config.checkpoint(name))) for name in config.models}
