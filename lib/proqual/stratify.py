"""Quality-stratified finetune sets: every labeled study is high quality (HQ) or low quality (LQ), and the
HQ fraction of the finetune set is a controlled, reported quantity.

Stratum of a study (:func:`assign_stratum`):
- from an expert PI-QUAL v2 study rating when present: HQ when it is 3 (optimal), LQ otherwise
  (``hq_min_piqual``, default 3) -- the quality-impact study (arXiv 2508.11864) contrasts good with
  degraded clinical quality; "optimal" is the PI-QUAL v2 class that guarantees every sequence is good;
- else from the quality model's study score in [0, 1]: HQ when ``score >= hq_threshold``
  (default :data:`DEFAULT_HQ_THRESHOLD` = 0.8, the score at which the model's PI-QUAL becomes 3);
- else ``unknown``: excluded from stratified drawing and counted in every report.

:func:`build_finetune_set` draws N studies with round(N x target) HQ; when the pool cannot meet the
target it raises (``strict=True``) or takes what exists and says so in ``warnings`` (default), never
silently. :class:`StratifiedSampler` keeps the HQ fraction in every epoch.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator
from collections.abc import Sequence as Seq
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from proqual.errors import ValidationError

DEFAULT_HQ_THRESHOLD = 0.8
Stratum = Literal["HQ", "LQ", "unknown"]


@dataclass(frozen=True)
class PoolItem:
    study_id: str
    #: encoded class label (see proqual.labels.Scheme.encode); None for unlabeled
    label: int | None
    stratum: Stratum
    #: "expert", "model" or "none"
    stratum_source: str = "none"
    quality_score: float | None = None


def assign_stratum(
    *,
    expert_piqual: int | None = None,
    quality_score: float | None = None,
    hq_threshold: float = DEFAULT_HQ_THRESHOLD,
    hq_min_piqual: int = 3,
) -> tuple[Stratum, str]:
    """(stratum, source): the expert rating wins over the model score."""
    if not 0.0 <= hq_threshold <= 1.0:
        raise ValidationError("hq_threshold", f"must be in [0, 1], got {hq_threshold}")
    if expert_piqual is not None:
        if not 1 <= int(expert_piqual) <= 3:
            raise ValidationError("piqual.study", f"must be 1..3, got {expert_piqual}")
        return ("HQ" if int(expert_piqual) >= hq_min_piqual else "LQ"), "expert"
    if quality_score is not None:
        return ("HQ" if float(quality_score) >= hq_threshold else "LQ"), "model"
    return "unknown", "none"


def _check_fraction(name: str, value: float) -> float:
    if not 0.0 <= value <= 1.0:
        raise ValidationError(name, f"must be in [0, 1], got {value}")
    return float(value)


@dataclass
class FinetuneSet:
    items: list[PoolItem]
    target_hq_fraction: float
    n_requested: int
    warnings: list[str] = field(default_factory=list)
    #: pool items left out because their stratum is unknown
    n_unknown: int = 0

    @property
    def study_ids(self) -> list[str]:
        return [i.study_id for i in self.items]

    @property
    def hq_fraction(self) -> float:
        return sum(i.stratum == "HQ" for i in self.items) / len(self.items) if self.items else 0.0

    def composition(self) -> dict:
        """Counts per stratum, per class and per (class, stratum); achieved vs target HQ fraction."""
        by_stratum = Counter(i.stratum for i in self.items)
        by_class = Counter(str(i.label) for i in self.items)
        cross = Counter(f"{i.label}/{i.stratum}" for i in self.items)
        return {
            "n_requested": self.n_requested,
            "n_drawn": len(self.items),
            "hq": by_stratum.get("HQ", 0),
            "lq": by_stratum.get("LQ", 0),
            "hq_fraction": round(self.hq_fraction, 4),
            "target_hq_fraction": self.target_hq_fraction,
            "per_class": dict(sorted(by_class.items())),
            "per_class_stratum": dict(sorted(cross.items())),
            "unknown_stratum_excluded": self.n_unknown,
            "warnings": list(self.warnings),
        }

    def describe(self) -> str:
        c = self.composition()
        line = (
            f"finetune set: {c['n_drawn']}/{c['n_requested']} studies, HQ {c['hq']} / LQ {c['lq']} "
            f"(HQ fraction {c['hq_fraction']:.2f}, target {c['target_hq_fraction']:.2f}); classes {c['per_class']}"
        )
        return line + ("; " + "; ".join(self.warnings) if self.warnings else "")


def _draw(items: list[PoolItem], k: int, rng: np.random.Generator, class_balance: bool) -> list[PoolItem]:
    if k <= 0:
        return []
    if not class_balance:
        idx = rng.permutation(len(items))[:k]
        return [items[i] for i in sorted(idx)]
    by_class: dict = {}
    for it in items:
        by_class.setdefault(it.label, []).append(it)
    queues = {
        c: [v[i] for i in rng.permutation(len(v))]
        for c, v in sorted(by_class.items(), key=lambda kv: str(kv[0]))
    }
    out: list[PoolItem] = []
    while len(out) < k and any(queues.values()):
        for c in list(queues):
            if queues[c] and len(out) < k:
                out.append(queues[c].pop())
    return out


def build_finetune_set(
    pool: Iterable[PoolItem],
    *,
    n: int,
    hq_fraction: float,
    seed: int,
    class_balance: bool = False,
    strict: bool = False,
    exclude: Iterable[str] = (),
) -> FinetuneSet:
    """Draw ``n`` labeled studies with ``round(n * hq_fraction)`` HQ (deterministic for a seed).

    Unlabeled and unknown-stratum studies are never drawn. When a stratum has too few studies, the
    shortfall is filled from the other stratum and reported in ``warnings`` (or raises with
    ``strict=True``); when the pool is smaller than ``n`` everything available is taken and reported.
    """
    target = _check_fraction("hq_fraction", hq_fraction)
    if n < 1:
        raise ValidationError("n", f"must be >= 1, got {n}")
    skip = set(exclude)
    pool = sorted(
        (p for p in pool if p.study_id not in skip and p.label is not None), key=lambda p: p.study_id
    )
    ids = [p.study_id for p in pool]
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})
        raise ValidationError("pool", f"duplicate study ids {dup[:5]}")
    unknown = sum(p.stratum == "unknown" for p in pool)
    hq = [p for p in pool if p.stratum == "HQ"]
    lq = [p for p in pool if p.stratum == "LQ"]
    want_hq = int(round(n * target))
    want_lq = n - want_hq
    warnings = []
    take_hq, take_lq = min(want_hq, len(hq)), min(want_lq, len(lq))
    if take_hq < want_hq or take_lq < want_lq:
        msg = (
            f"pool cannot meet the target: wanted {want_hq} HQ + {want_lq} LQ, pool has {len(hq)} HQ + "
            f"{len(lq)} LQ labeled studies of known quality"
        )
        if strict:
            raise ValidationError("hq_fraction", msg)
        warnings.append(msg)
        # fill the shortfall from the other stratum, as far as it goes
        spare_hq, spare_lq = len(hq) - take_hq, len(lq) - take_lq
        take_hq += min(spare_hq, want_lq - take_lq)
        take_lq += min(spare_lq, want_hq - min(want_hq, len(hq)))
    if unknown:
        warnings.append(f"{unknown} labeled studies have no quality rating or score and were left out")
    rng = np.random.default_rng(seed)
    items = _draw(hq, take_hq, rng, class_balance) + _draw(lq, take_lq, rng, class_balance)
    items.sort(key=lambda i: i.study_id)
    fs = FinetuneSet(items, target, n, warnings, unknown)
    if len(items) < n:
        fs.warnings.insert(0, f"only {len(items)} of {n} requested studies drawn")
    return fs


def split_by_quality(
    pool: Iterable[PoolItem], *, n_test: int, test_hq_fraction: float, seed: int, strict: bool = True
) -> tuple[list[PoolItem], list[PoolItem]]:
    """(test set of ``n_test`` with the given HQ fraction, the rest): for experiments that vary the
    finetune and test HQ fractions independently on disjoint sets."""
    items = list(pool)
    test = build_finetune_set(items, n=n_test, hq_fraction=test_hq_fraction, seed=seed, strict=strict)
    chosen = set(test.study_ids)
    return test.items, [p for p in items if p.study_id not in chosen]


class StratifiedSampler:
    """Indices of a finetune set for each epoch with ``round(epoch_size * hq_fraction)`` HQ items
    (drawn without replacement while a stratum lasts, then with replacement -- stated in ``notes``).
    Optional class balancing inside each stratum. Deterministic for (seed, epoch)."""

    def __init__(
        self,
        items: Seq[PoolItem],
        *,
        hq_fraction: float,
        epoch_size: int | None = None,
        seed: int = 0,
        class_balance: bool = False,
    ):
        self.items = list(items)
        self.hq_fraction = _check_fraction("hq_fraction", hq_fraction)
        self.epoch_size = epoch_size or len(self.items)
        self.seed = seed
        self.class_balance = class_balance
        self.epoch = 0
        self.hq_idx = [i for i, it in enumerate(self.items) if it.stratum == "HQ"]
        self.lq_idx = [i for i, it in enumerate(self.items) if it.stratum == "LQ"]
        self.n_hq = int(round(self.epoch_size * self.hq_fraction))
        self.n_lq = self.epoch_size - self.n_hq
        self.notes = []
        for name, want, have in (("HQ", self.n_hq, self.hq_idx), ("LQ", self.n_lq, self.lq_idx)):
            if want and not have:
                raise ValidationError("hq_fraction", f"epoch needs {want} {name} items, the set has none")
            if want > len(have):
                self.notes.append(f"{name}: {want} per epoch from {len(have)} items, drawn with replacement")

    def __len__(self) -> int:
        return self.epoch_size

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _pick(self, idx: list[int], k: int, rng: np.random.Generator) -> list[int]:
        if k == 0:
            return []
        if self.class_balance:
            labels = np.array([self.items[i].label for i in idx], dtype=object)
            weights = np.array([1.0 / np.sum(labels == lab) for lab in labels])
            weights /= weights.sum()
            return list(rng.choice(idx, size=k, replace=True, p=weights))
        return list(rng.choice(idx, size=k, replace=k > len(idx)))

    def __iter__(self) -> Iterator[int]:
        rng = np.random.default_rng([self.seed, self.epoch])
        order = self._pick(self.hq_idx, self.n_hq, rng) + self._pick(self.lq_idx, self.n_lq, rng)
        self.epoch += 1
        return iter(int(i) for i in rng.permutation(order))
