"""Scoring methods ``quality`` and ``uncertainty``: fill the image info of unscored studies.

``POST /scoring/<method>`` runs them in the background (MONAI Label runs scoring in a subprocess, and
after each next-sample request when auto-update scoring is on). ``quality`` stores ``quality_score``
(the study's worst sequence score, 0..1), ``study_piqual`` and the model hash in the anchor's image
info; ``uncertainty`` stores the normalised entropy of the PI-RADS probabilities (``uncertainty``).
Studies already scored are skipped unless ``force`` is true; studies a model cannot process (a
missing sequence) are listed with the reason.
"""

from __future__ import annotations

import logging
from typing import Any

from monailabel.interfaces.tasks.scoring import ScoringMethod

from monailabel_app.registry import SCORING, register

log = logging.getLogger(__name__)


class ProQualScoring(ScoringMethod):
    def __init__(self, app, name: str, task: str, key: str, description: str):
        super().__init__(description)
        self.app, self.name, self.task, self.key = app, name, task, key

    def __call__(self, request, datastore) -> dict[str, Any]:
        infer = getattr(self.app, "_infers", {}).get(self.task)
        if infer is None:
            return {
                "method": self.name,
                "scored": [],
                "skipped": {},
                "note": f"model {self.task} is not served",
            }
        spec = self.app.model_specs.get(self.task)
        if spec is not None and not spec.available:  # served, but no checkpoint yet
            return {
                "method": self.name,
                "scored": [],
                "skipped": {},
                "note": f"model {self.task} is not available: {spec.reason}",
            }
        force = str(request.get("force", "false")).lower() in ("1", "true", "yes")
        scored, skipped, kept = [], {}, 0
        for anchor in datastore.anchor_ids():
            if not force and datastore.get_image_info(anchor).get(self.key) is not None:
                kept += 1
                continue
            try:
                infer({"proqual_image_id": anchor})
                scored.append(anchor)
            except Exception as exc:  # noqa: BLE001 - reported per study
                skipped[anchor] = f"{type(exc).__name__}: {exc}"
        log.info(
            "scoring %s: %d scored, %d already scored, %d skipped", self.name, len(scored), kept, len(skipped)
        )
        return {"method": self.name, "scored": scored, "already_scored": kept, "skipped": skipped}


@register(SCORING, "quality")
def make_quality(app, name):
    return ProQualScoring(
        app, name, "quality", "quality_score", "Quality score (0..1) of each unscored study"
    )


@register(SCORING, "uncertainty")
def make_uncertainty(app, name):
    return ProQualScoring(
        app, name, "pirads", "uncertainty", "PI-RADS prediction uncertainty of each unscored study"
    )
