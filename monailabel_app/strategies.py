"""Active-learning strategies: ``quality_aware``, ``uncertainty``, ``random`` and ``first``.

``POST /activelearning/<strategy>`` answers the next unlabeled study's anchor id (``id``, the T2W image)
plus the ids of its other sequences (``sequences``) and why it was chosen.

- ``first``: the first unlabeled study in datastore order;
- ``random``: a random unlabeled study (``seed`` request option for a repeatable draw);
- ``uncertainty``: the unlabeled study whose PI-RADS probabilities have the highest normalised entropy
  (from image info, computed on demand for up to ``max_compute`` unscored studies);
- ``quality_aware``: the most uncertain unlabeled study of the quality stratum (HQ/LQ) whose next
  study brings the finetune set's HQ fraction closest to ``target_hq_fraction`` (request option,
  default from ``--conf``); when no unlabeled study is in that stratum, the most uncertain of the
  others. Strata come from the stored quality scores (computed on demand, ``max_compute``).
"""

from __future__ import annotations

import logging
import random
from typing import Any

from monailabel.interfaces.tasks.strategy import Strategy

from monailabel_app.registry import STRATEGIES, register

log = logging.getLogger(__name__)


def unlabeled_anchors(datastore) -> list[str]:
    labeled = set(datastore.get_labeled_images())
    return [a for a in datastore.anchor_ids() if a not in labeled]


def ensure_scored(app, anchor: str, task: str) -> dict[str, Any]:
    """The anchor's image info, after running ``task`` (quality or pirads) when its value is missing.
    A study the task cannot process (missing sequence, unreadable) is left unscored."""
    key = {"quality": "quality_score", "pirads": "uncertainty"}[task]
    ds = app.datastore()
    info = ds.get_image_info(anchor)
    spec = app.model_specs.get(task)
    servable = task in getattr(app, "_infers", {}) and spec is not None and spec.available
    if info.get(key) is None and servable:
        try:
            app._infers[task]({"proqual_image_id": anchor})
        except Exception as exc:  # noqa: BLE001 - the study stays unscored, with the reason logged
            log.info("cannot score %s with %s: %s", anchor, task, exc)
            return info
        info = ds.get_image_info(anchor)
    return info


def _answer(datastore, anchor: str, strategy: str, **why) -> dict[str, Any]:
    entry = datastore.entry(anchor)
    seqs = datastore.sequence_ids(anchor)
    return {
        "id": anchor,
        "study_id": entry.study_id,
        "sequences": seqs,
        "other_ids": [i for i in seqs.values() if i != anchor],
        "missing": datastore.missing(anchor),
        "strategy": strategy,
        **why,
    }


def wanted_stratum(n_hq: int, n_lq: int, target: float) -> str:
    """The stratum whose next study brings the HQ fraction closest to ``target`` (ties: HQ when the
    target is at least one half)."""
    n = n_hq + n_lq + 1
    gap_hq = abs((n_hq + 1) / n - target)
    gap_lq = abs(n_hq / n - target)
    if gap_hq == gap_lq:
        return "HQ" if target >= 0.5 else "LQ"
    return "HQ" if gap_hq < gap_lq else "LQ"


class _Base(Strategy):
    name = "first"

    def __init__(self, app, description: str):
        super().__init__(description)
        self.app = app

    def pick(self, request, datastore, candidates: list[str]) -> tuple[str, dict]:  # pragma: no cover
        raise NotImplementedError

    def __call__(self, request, datastore):
        candidates = unlabeled_anchors(datastore)
        if not candidates:
            return {}
        anchor, why = self.pick(request, datastore, candidates)
        return _answer(datastore, anchor, self.name, remaining=len(candidates), **why)


class First(_Base):
    name = "first"

    def pick(self, request, datastore, candidates):
        return candidates[0], {}


class Random(_Base):
    name = "random"

    def pick(self, request, datastore, candidates):
        seed = request.get("seed")
        rng = random.Random(None if seed is None else int(seed))
        return rng.choice(candidates), {}


def _uncertainties(app, candidates: list[str], max_compute: int) -> dict[str, float]:
    ds = app.datastore()
    out, computed = {}, 0
    for anchor in candidates:
        info = ds.get_image_info(anchor)
        if info.get("uncertainty") is None and computed < max_compute and not ds.missing(anchor):
            info = ensure_scored(app, anchor, "pirads")
            computed += 1
        if info.get("uncertainty") is not None:
            out[anchor] = float(info["uncertainty"])
    return out


class Uncertainty(_Base):
    name = "uncertainty"

    def pick(self, request, datastore, candidates):
        unc = _uncertainties(self.app, candidates, int(request.get("max_compute", 16)))
        if not unc:
            return candidates[0], {"uncertainty": None, "note": "no study could be scored; first unlabeled"}
        best = max(candidates, key=lambda a: (unc.get(a, -1.0), -candidates.index(a)))
        return best, {"uncertainty": unc.get(best)}


class QualityAware(_Base):
    name = "quality_aware"

    def pick(self, request, datastore, candidates):
        from proqual.stratify import assign_stratum

        from monailabel_app.finetune import finetune_set_summary

        cfg = self.app.config
        target = float(request.get("target_hq_fraction", cfg.target_hq_fraction))
        summary = finetune_set_summary(datastore, cfg)
        fraction = summary["hq_fraction"]
        wanted = wanted_stratum(summary["strata"]["HQ"], summary["strata"]["LQ"], target)
        max_compute = int(request.get("max_compute", 16))
        strata = {}
        for i, anchor in enumerate(candidates):
            info = (
                ensure_scored(self.app, anchor, "quality")
                if i < max_compute
                else datastore.get_image_info(anchor)
            )
            score = info.get("quality_score")
            strata[anchor] = assign_stratum(
                quality_score=None if score is None else float(score), hq_threshold=cfg.hq_threshold
            )[0]
        unc = _uncertainties(self.app, candidates, max_compute)
        pool = [a for a in candidates if strata[a] == wanted] or candidates
        best = max(pool, key=lambda a: (unc.get(a, -1.0), -candidates.index(a)))
        return best, {
            "uncertainty": unc.get(best),
            "stratum": strata[best],
            "wanted_stratum": wanted,
            "hq_fraction": fraction,
            "target_hq_fraction": target,
            "quality_score": datastore.get_image_info(best).get("quality_score"),
        }


@register(STRATEGIES, "first")
def make_first(app, name):
    return First(app, "The first unlabeled study")


@register(STRATEGIES, "random")
def make_random(app, name):
    return Random(app, "A random unlabeled study")


@register(STRATEGIES, "uncertainty")
def make_uncertainty(app, name):
    return Uncertainty(app, "The unlabeled study with the most uncertain PI-RADS prediction")


@register(STRATEGIES, "quality_aware")
def make_quality_aware(app, name):
    return QualityAware(
        app,
        "The most uncertain unlabeled study of the quality stratum the finetune set needs to reach its HQ target",
    )
