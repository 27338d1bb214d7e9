"""Quality-stratified finetune sets: the builder's guarantees, shortfalls, the per-epoch sampler."""

from __future__ import annotations

import pytest
from proqual.errors import ValidationError
from proqual.stratify import PoolItem, StratifiedSampler, assign_stratum, build_finetune_set, split_by_quality


def _pool(n_hq=20, n_lq=20, n_unknown=3):
    items = [PoolItem(f"h{i:02d}", i % 2, "HQ", "model", 0.9) for i in range(n_hq)]
    items += [PoolItem(f"l{i:02d}", i % 2, "LQ", "model", 0.2) for i in range(n_lq)]
    items += [PoolItem(f"u{i:02d}", 1, "unknown") for i in range(n_unknown)]
    items.append(PoolItem("nolabel", None, "HQ", "expert"))
    return items


def test_stratum_rules():
    assert assign_stratum(expert_piqual=3, quality_score=0.1) == ("HQ", "expert")  # expert wins
    assert assign_stratum(expert_piqual=2, quality_score=0.99) == ("LQ", "expert")
    assert assign_stratum(quality_score=0.85) == ("HQ", "model")
    assert assign_stratum(quality_score=0.6, hq_threshold=0.5) == ("HQ", "model")
    assert assign_stratum() == ("unknown", "none")
    with pytest.raises(ValidationError, match="piqual.study: must be 1..3"):
        assign_stratum(expert_piqual=5)


@pytest.mark.parametrize("fraction", [0.0, 0.25, 0.5, 0.8, 1.0])
def test_exact_hq_count_and_determinism(fraction):
    fs = build_finetune_set(_pool(), n=16, hq_fraction=fraction, seed=3)
    comp = fs.composition()
    assert comp["n_drawn"] == 16 and comp["hq"] == round(16 * fraction)
    assert fs.study_ids == build_finetune_set(_pool(), n=16, hq_fraction=fraction, seed=3).study_ids
    assert "nolabel" not in fs.study_ids and not any(s.startswith("u") for s in fs.study_ids)
    assert comp["unknown_stratum_excluded"] == 3
    assert any("no quality rating" in w for w in fs.warnings)


def test_shortfall_is_reported_or_raises():
    fs = build_finetune_set(_pool(n_hq=3), n=10, hq_fraction=0.8, seed=0)
    assert fs.composition()["hq"] == 3 and len(fs.items) == 10
    assert any("pool cannot meet the target: wanted 8 HQ + 2 LQ, pool has 3 HQ" in w for w in fs.warnings)
    assert "HQ fraction 0.30, target 0.80" in fs.describe()
    with pytest.raises(ValidationError, match="hq_fraction: pool cannot meet the target"):
        build_finetune_set(_pool(n_hq=3), n=10, hq_fraction=0.8, seed=0, strict=True)
    small = build_finetune_set(_pool(n_hq=2, n_lq=2), n=10, hq_fraction=0.5, seed=0)
    assert len(small.items) == 4 and small.warnings[0] == "only 4 of 10 requested studies drawn"


def test_class_balance():
    pool = [PoolItem(f"a{i}", 0, "HQ") for i in range(30)] + [PoolItem(f"b{i}", 1, "HQ") for i in range(4)]
    fs = build_finetune_set(pool, n=8, hq_fraction=1.0, seed=0, class_balance=True)
    assert fs.composition()["per_class"] == {"0": 4, "1": 4}


def test_disjoint_test_and_finetune_sets():
    test, rest = split_by_quality(_pool(), n_test=10, test_hq_fraction=0.2, seed=1)
    assert sum(t.stratum == "HQ" for t in test) == 2
    fs = build_finetune_set(rest, n=12, hq_fraction=0.75, seed=1)
    assert not set(fs.study_ids) & {t.study_id for t in test}
    assert fs.composition()["hq"] == 9


def test_sampler_keeps_fraction_every_epoch():
    fs = build_finetune_set(_pool(), n=20, hq_fraction=0.5, seed=0)
    sampler = StratifiedSampler(fs.items, hq_fraction=0.25, epoch_size=20, seed=4)
    epochs = [list(sampler) for _ in range(3)]
    for idx in epochs:
        assert len(idx) == 20
        assert sum(fs.items[i].stratum == "HQ" for i in idx) == 5
    assert epochs[0] != epochs[1]  # reshuffled each epoch
    again = StratifiedSampler(fs.items, hq_fraction=0.25, epoch_size=20, seed=4)
    assert list(again) == epochs[0]


def test_sampler_needs_items_of_each_wanted_stratum():
    items = [PoolItem("a", 0, "LQ")]
    with pytest.raises(ValidationError, match="epoch needs 1 HQ items, the set has none"):
        StratifiedSampler(items, hq_fraction=1.0)
    s = StratifiedSampler([PoolItem("a", 0, "HQ"), PoolItem("b", 0, "LQ")], hq_fraction=0.5, epoch_size=6)
    assert s.notes and "with replacement" in s.notes[0]


def test_order_independent_and_duplicates_rejected():
    pool = _pool()
    a = build_finetune_set(pool, n=10, hq_fraction=0.5, seed=2).study_ids
    b = build_finetune_set(list(reversed(pool)), n=10, hq_fraction=0.5, seed=2).study_ids
    assert a == b
    with pytest.raises(ValidationError, match="duplicate study ids"):
        build_finetune_set(pool + pool[:1], n=4, hq_fraction=0.5, seed=0)
