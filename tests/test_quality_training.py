"""Quality training: fresh degradations every epoch (reproducible), the pairwise ranking loss, and the
training loop on both kinds of training data."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from proqual.errors import ValidationError
from proqual.io.readers import Volume
from proqual.nets.quality_net import QualityNet, QualityNetConfig
from proqual.quality import training as T
from proqual.study import Sequence


def _clean_volumes(n: int = 2) -> list[T.CleanVolume]:
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        arr = np.zeros((32, 32, 6), np.float32)  # x, y, z
        arr[8:24, 8 + i : 24 - i] = 100.0
        arr += rng.random(arr.shape, dtype=np.float32)
        gland = np.zeros(arr.shape, bool)
        gland[12:20, 12:20, 2:4] = True
        vol = Volume(arr, (1.0, 1.0, 3.0), (0.0, 0.0, 0.0), np.eye(3))
        out.append(T.CleanVolume(vol, Sequence.T2W if i % 2 == 0 else Sequence.HBV, gland))
    return out


def _same(a: list[T.QualitySample], b: list[T.QualitySample]) -> bool:
    return all(
        x.family == y.family and x.severity == y.severity and torch.equal(x.slices, y.slices)
        for x, y in zip(a, b, strict=True)
    )


def test_fresh_degradations_are_reproducible_per_epoch_and_new_across_epochs():
    data = T.FreshDegradations(_clean_volumes(), per_volume=5, seed=3)
    assert len(data) == 10
    e0, e0_again, e1 = data(0), data(0), data(1)
    assert len(e0) == len(e1) == 10
    assert _same(e0, e0_again)
    assert not _same(e0, e1)
    # another seed draws other degradations for the same epoch
    assert not _same(e0, T.FreshDegradations(_clean_volumes(), per_volume=5, seed=4)(0))
    for s in e0:
        assert 0.0 <= s.severity <= 1.0 and abs(s.score - (1.0 - s.severity)) < 1e-6
        assert s.piqual == T.piqual_from_severity(s.severity)


def test_fresh_degradations_reject_bad_arguments():
    with pytest.raises(ValidationError, match="volumes"):
        T.FreshDegradations([], per_volume=2, seed=0)
    with pytest.raises(ValidationError, match="per_volume"):
        T.FreshDegradations(_clean_volumes(), per_volume=0, seed=0)


def test_sequence_weights_set_the_degradations_of_each_sequence():
    vols = _clean_volumes()  # one T2W, one HBV
    plain = T.FreshDegradations(vols, per_volume=4, seed=3)
    heavy = T.FreshDegradations(vols, per_volume=4, seed=3, sequence_weights={"HBV": 2.5})
    assert len(plain) == 8 and len(heavy) == 14
    assert heavy.count(Sequence.HBV) == 10 and heavy.count(Sequence.T2W) == 4
    got = [s.sequence for s in heavy(0)]
    assert got.count(Sequence.HBV) == 10 and got.count(Sequence.T2W) == 4
    # a small weight still leaves one degradation per volume
    assert (
        T.FreshDegradations(vols, per_volume=4, seed=3, sequence_weights={"T2W": 0.01}).count(Sequence.T2W)
        == 1
    )
    # no weights: the same samples as before the option existed
    assert _same(plain(0), T.FreshDegradations(vols, per_volume=4, seed=3, sequence_weights=None)(0))
    for bad, match in (
        ({"FLAIR": 2.0}, "unknown sequence 'FLAIR'"),
        ({"HBV": 0.0}, "HBV"),
        ({"HBV": float("inf")}, "HBV"),
    ):
        with pytest.raises(ValidationError, match=match):
            T.FreshDegradations(vols, per_volume=4, seed=3, sequence_weights=bad)


def test_rank_loss_prefers_the_right_order():
    target = torch.tensor([0.9, 0.5, 0.1])
    right = T.rank_loss(target.clone(), target, min_gap=0.05, temperature=0.1)
    wrong = T.rank_loss(target.flip(0), target, min_gap=0.05, temperature=0.1)
    assert right < 0.1 < wrong
    # pairs closer than the gap do not count: no pair left, zero loss that still backpropagates
    pred = torch.tensor([0.2, 0.8], requires_grad=True)
    zero = T.rank_loss(pred, torch.tensor([0.5, 0.52]), min_gap=0.05, temperature=0.1)
    zero.backward()
    assert zero.item() == 0.0 and pred.grad is not None
    # the gradient raises the sample that should score higher
    pred = torch.tensor([0.4, 0.6], requires_grad=True)
    T.rank_loss(pred, torch.tensor([0.9, 0.1]), min_gap=0.05, temperature=0.1).backward()
    assert pred.grad[0] < 0 < pred.grad[1]


def test_family_order_groups_one_family_across_images():
    samples = T.FreshDegradations(_clean_volumes(4), per_volume=12, seed=1)(0)
    families = {s.family for s in samples}
    assert "clean" in families and any("+" in f for f in families)  # both special cases are present
    order = T.family_order(samples, 3, np.random.default_rng(0))
    assert sorted(order.tolist()) == list(range(len(samples)))  # a permutation: every sample once

    def neighbours_alike(idx) -> float:
        """share of neighbouring samples of one family (a clean sample matches any)"""
        keys = [samples[i].family.split("+")[0] for i in idx]
        return np.mean([a == b or "clean" in (a, b) for a, b in zip(keys[:-1], keys[1:], strict=True)])

    # blocks of 3 make two of every three neighbours alike; a shuffle rarely does
    assert neighbours_alike(order) > 0.6
    assert neighbours_alike(np.random.default_rng(0).permutation(len(samples))) < 0.4
    # the same generator state gives the same order; batches use it only when asked
    assert np.array_equal(order, T.family_order(samples, 3, np.random.default_rng(0)))
    blocked = list(T._batches(samples, 6, np.random.default_rng(0), family_block=3))
    assert [id(s) for b in blocked for s in b] == [id(samples[i]) for i in order]
    plain = list(T._batches(samples, 6, np.random.default_rng(0)))
    assert [id(s) for b in plain for s in b] != [id(s) for b in blocked for s in b]
    with pytest.raises(ValidationError, match="family_block"):
        T.family_order(samples, 0, np.random.default_rng(0))


class _Counting(T.FreshDegradations):
    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.epochs: list[int] = []

    def __call__(self, epoch):
        self.epochs.append(epoch)
        return super().__call__(epoch)


def test_training_draws_new_samples_every_epoch():
    torch.manual_seed(0)
    model = QualityNet(QualityNetConfig(n_params=len(T.A.PARAM_NAMES), widths=(8, 8, 16, 16, 16)))
    data = _Counting(_clean_volumes(), per_volume=4, seed=0)
    val = T.FreshDegradations(_clean_volumes(), per_volume=3, seed=99)(0)
    cfg = T.TrainConfig(epochs=3, batch_size=4)
    hist = T.train(model, data, cfg=cfg, val_samples=val)
    assert data.epochs == [0, 1, 2]
    assert hist["fresh_samples_per_epoch"] is True
    assert [r["epoch"] for r in hist["history"]] == [1, 2, 3]
    assert all(np.isfinite(r["loss_rank"]) and np.isfinite(r["srcc"]) for r in hist["history"])
    # a fixed list still trains, and says so
    hist = T.train(model, val, cfg=T.TrainConfig(epochs=1, batch_size=4))
    assert hist["fresh_samples_per_epoch"] is False and len(hist["history"]) == 1
    with pytest.raises(ValidationError, match="train_samples"):
        T.train(model, [], cfg=cfg)


def test_fov_crop_cuts_the_clean_volume_in_plane_and_keeps_grid_and_gland_aligned():
    vol = _clean_volumes(1)[0]
    rng = np.random.default_rng(5)
    grid, arr, gland = T._crop_in_plane(vol.volume, vol.volume.array, vol.gland, rng, (0.5, 0.6))
    assert 16 <= arr.shape[0] <= 20 and 16 <= arr.shape[1] <= 20 and arr.shape[2] == 6
    assert gland.shape == arr.shape and grid.shape == arr.shape
    # the cropped grid's first voxel is where that voxel was on the source grid
    i0 = np.round(vol.volume.world_to_index(grid.index_to_world((0, 0, 0)))).astype(int)
    assert np.array_equal(arr, vol.volume.array[i0[0] : i0[0] + arr.shape[0], i0[1] : i0[1] + arr.shape[1]])
    assert np.array_equal(gland, vol.gland[i0[0] : i0[0] + arr.shape[0], i0[1] : i0[1] + arr.shape[1]])
    with pytest.raises(ValidationError, match="fov_crop"):
        T._crop_in_plane(vol.volume, vol.volume.array, None, rng, (0.0, 0.5))


def test_fov_crop_shrinks_the_footprint_only_when_asked():
    vol = _clean_volumes(1)[0]

    def footprints(**kw):
        samples = T.simulate_samples(vol.volume, vol.sequence, rng=np.random.default_rng(2), n=12, **kw)
        return [int((s.slices.float() != 0).any(0).sum()) for s in samples]

    full = footprints()
    assert set(full) == {32 * 32}
    cropped = footprints(fov_crop=(0.5, 0.6), fov_crop_probability=1.0)
    assert max(cropped) <= 20 * 20 and min(cropped) >= 16 * 16


def test_zero_background_clears_the_air_and_keeps_dark_organs():
    rng = np.random.default_rng(0)
    arr = rng.random((40, 40, 3), dtype=np.float32) * 3.0  # background noise
    yy, xx = np.mgrid[:40, :40]
    body = (yy - 20) ** 2 + (xx - 20) ** 2 < 15**2
    organ = (yy - 20) ** 2 + (xx - 20) ** 2 < 4**2  # dark, enclosed by the body
    arr[body] = 100.0
    arr[organ] = 1.0
    before = arr.copy()
    out = T.zero_background_of(arr, level=0.1)
    assert np.array_equal(arr, before)  # a copy, the input is untouched
    assert (out[~body] == 0).all()
    assert np.array_equal(out[body], arr[body])  # the dark organ inside is kept
    assert np.array_equal(
        T.zero_background_of(np.zeros((4, 4, 2), np.float32), level=0.1), np.zeros((4, 4, 2))
    )


def test_samples_carry_the_field_of_view_and_training_pools_over_it():
    """The footprint comes from the geometry (the field of view on the canvas), not from the non-zero
    pixels: an exactly zero background inside the field of view is still image."""
    from proqual.quality.inputs import footprints, slice_stack

    vol = _clean_volumes(1)[0].volume  # 32 x 32 at 1 mm
    arr = vol.array.copy()
    arr[:8] = 0.0  # a zeroed background strip inside the field of view
    stack = slice_stack(Volume(arr, vol.spacing, vol.origin, vol.direction))
    assert stack.fov == (32, 32)
    fp = footprints([stack.fov, None], 128)
    assert fp.shape == (2, 1, 128, 128) and fp[0].sum() == 32 * 32 and fp[1].all()
    nonzero = (stack.slices != 0).any(0)[0]
    assert fp[0, 0][nonzero].all() and nonzero.sum() < 32 * 32
    sample = T.simulate_samples(vol, Sequence.T2W, rng=np.random.default_rng(0), n=1)[0]
    batch = T._collate([sample], "cpu")
    assert torch.equal(batch["footprint"], footprints([(32, 32)], 128))


def test_family_weights_change_how_often_each_family_is_drawn():
    vol = _clean_volumes(1)[0]

    def counts(**kw):
        samples = T.simulate_samples(
            vol.volume,
            vol.sequence,
            rng=np.random.default_rng(4),
            n=60,
            clean_fraction=0.0,
            pair_fraction=0.0,
            **kw,
        )
        names = [s.family for s in samples]
        return {f: names.count(f) for f in set(names)}

    uniform = counts()
    heavy = counts(family_weights={"bias": 8.0, "through_plane": 0.0})
    assert heavy.get("bias", 0) > 3 * uniform.get("bias", 0) and heavy.get("bias", 0) >= 20
    assert "through_plane" not in heavy and uniform.get("through_plane", 0) > 0
    # no weights: the same random stream as uniform draws (the shipped weights stay reproducible)
    assert counts(family_weights=None) == uniform
    for bad, match in (
        ({"glare": 1.0}, "unknown family"),
        ({"bias": -1.0}, "bias"),
        ({"bias": float("nan")}, "bias"),
    ):
        with pytest.raises(ValidationError, match=match):
            counts(family_weights=bad)
    only = {f.value: 0.0 for f in T.A.Family}
    only["bias"] = 1.0
    with pytest.raises(ValidationError, match="at least two families"):
        counts(family_weights=only)


def test_mirror_in_plane_flips_the_chosen_samples_and_their_footprints():
    x = torch.arange(3 * 2 * 1 * 4 * 5, dtype=torch.float32).reshape(3, 2, 1, 4, 5)
    fp = torch.zeros(3, 1, 4, 5)
    fp[:, :, :3, :2] = 1  # an off-centre field of view
    batch = {"x": x.clone(), "footprint": fp.clone()}
    T.mirror_in_plane(batch, np.array([[False, False], [True, False], [True, True]]))
    torch.testing.assert_close(batch["x"][0], x[0])
    torch.testing.assert_close(batch["x"][1], x[1].flip(-1))
    torch.testing.assert_close(batch["x"][2], x[2].flip(-1).flip(-2))
    torch.testing.assert_close(batch["footprint"][1], fp[1].flip(-1))
    torch.testing.assert_close(batch["footprint"][2], fp[2].flip((-2, -1)))
    assert batch["footprint"][2, 0, 3, 4] == 1 and batch["footprint"][2, 0, 0, 0] == 0


def test_kspace_lr_scale_gives_the_branch_its_own_learning_rate():
    from proqual.nets.quality_net import QualityEnsemble, QualityEnsembleConfig

    small = dict(n_params=len(T.A.PARAM_NAMES), widths=(8, 8, 16, 16, 16))
    net = QualityNet(QualityNetConfig(**small, kspace_peaks=2))
    groups, max_lr = T.param_groups(net, T.TrainConfig(lr=1e-3))
    assert max_lr == [1e-3] and len(groups[0]["params"]) == len(list(net.parameters()))
    groups, max_lr = T.param_groups(net, T.TrainConfig(lr=1e-3, kspace_lr_scale=10))
    assert max_lr == pytest.approx([1e-3, 1e-2])
    assert {id(p) for p in groups[1]["params"]} == {id(net.kspace.weight), id(net.kspace.bias)}
    assert len(groups[0]["params"]) + 2 == len(list(net.parameters()))
    # an ensemble: every member's branch goes in the scaled group
    ens = QualityEnsemble(QualityEnsembleConfig(members=[QualityNetConfig(**small, kspace_peaks=2)] * 2))
    groups, _ = T.param_groups(ens, T.TrainConfig(kspace_lr_scale=3))
    assert len(groups[1]["params"]) == 4
    # training runs the schedule on both groups, each at its own peak
    val = T.FreshDegradations(_clean_volumes(), per_volume=2, seed=5)(0)
    hist = T.train(net, val, cfg=T.TrainConfig(epochs=1, batch_size=4, kspace_lr_scale=10))
    assert hist["config"]["kspace_lr_scale"] == 10
    assert net.kspace.weight.abs().sum() > 0
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValidationError, match="kspace_lr_scale: must be a positive number"):
            T.param_groups(net, T.TrainConfig(kspace_lr_scale=bad))
    plain = QualityNet(QualityNetConfig(**small))
    with pytest.raises(ValidationError, match="needs a model with the k-space spike branch"):
        T.param_groups(plain, T.TrainConfig(kspace_lr_scale=10))


def test_levels_lr_scale_gives_the_slice_level_branch_its_own_learning_rate():
    small = dict(n_params=len(T.A.PARAM_NAMES), widths=(8, 8, 16, 16, 16))
    net = QualityNet(QualityNetConfig(**small, kspace_peaks=2, slice_levels=True))
    groups, max_lr = T.param_groups(net, T.TrainConfig(lr=1e-3, levels_lr_scale=20))
    assert max_lr == pytest.approx([1e-3, 2e-2])
    assert {id(p) for p in groups[1]["params"]} == {id(net.levels.weight), id(net.levels.bias)}
    # both branches scaled: three groups, every parameter in exactly one
    groups, max_lr = T.param_groups(net, T.TrainConfig(lr=1e-3, kspace_lr_scale=10, levels_lr_scale=20))
    assert max_lr == pytest.approx([1e-3, 1e-2, 2e-2])
    ids = [id(p) for g in groups for p in g["params"]]
    assert sorted(ids) == sorted(id(p) for p in net.parameters())
    assert {id(p) for p in groups[1]["params"]} == {id(net.kspace.weight), id(net.kspace.bias)}
    with pytest.raises(ValidationError, match="levels_lr_scale: must be a positive number"):
        T.param_groups(net, T.TrainConfig(levels_lr_scale=0.0))
    no_levels = QualityNet(QualityNetConfig(**small, kspace_peaks=2))
    with pytest.raises(
        ValidationError, match="levels_lr_scale: 20 needs a model with the slice-level branch"
    ):
        T.param_groups(no_levels, T.TrainConfig(levels_lr_scale=20))
