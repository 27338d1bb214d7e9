"""QualityNet: every head's shape and range, saliency masking, prompts, gradients, learning."""

from __future__ import annotations

import time

import pytest
import torch
from proqual.nets.quality_net import SEQUENCE_PROMPTS, QualityNet, QualityNetConfig
from proqual.study import Sequence


def _net(**kw):
    torch.manual_seed(0)
    return QualityNet(QualityNetConfig(n_params=5, **kw))


def test_heads_shapes_and_ranges():
    net = _net().eval()
    x = torch.rand(2, 6, 1, 64, 64)
    out = net(x, sequence=torch.tensor([0, 2]))
    assert out["score"].shape == (2,) and ((out["score"] >= 0) & (out["score"] <= 1)).all()
    assert out["piqual_logits"].shape == (2, 3)
    assert out["params"].shape == (2, 5) and ((out["params"] >= 0) & (out["params"] <= 1)).all()
    assert out["slice_quality"].shape == (2, 6) and out["saliency"].shape == (2, 6)
    torch.testing.assert_close(out["saliency"].sum(1), torch.ones(2))
    assert out["embedding"].shape == (2, net.embed_dim)


def test_padded_slices_get_no_saliency_and_do_not_change_the_score():
    net = _net().eval()
    x = torch.rand(1, 4, 1, 64, 64)
    padded = torch.cat([x, torch.rand(1, 3, 1, 64, 64) * 10], 1)
    mask = torch.tensor([[True] * 4 + [False] * 3])
    a = net(x, sequence=torch.tensor([0]))
    b = net(padded, sequence=torch.tensor([0]), mask=mask)
    assert (b["saliency"][0, 4:] == 0).all()
    torch.testing.assert_close(a["score"], b["score"], atol=1e-5, rtol=1e-5)


def test_unknown_sequence_still_scores():
    net = _net().eval()
    out = net(torch.rand(1, 3, 1, 32, 32), sequence=torch.tensor([SEQUENCE_PROMPTS[Sequence.OTHER]]))
    assert torch.isfinite(out["score"]).all()
    assert net(torch.rand(1, 3, 1, 32, 32))["score"].shape == (1,)  # no prompt given: OTHER


def test_gradients_reach_every_head():
    net = _net()
    out = net(torch.rand(2, 3, 1, 32, 32), sequence=torch.tensor([0, 1]))
    loss = out["score"].sum() + out["piqual_logits"].sum() + out["params"].sum() + out["saliency"][:, 0].sum()
    loss.backward()
    for name in (
        "slice_quality.weight",
        "slice_saliency.weight",
        "piqual_head.2.weight",
        "params_head.2.weight",
        "stages.0.0.weight",
        "sequence_embedding.weight",
    ):
        grad = dict(net.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name


def test_size_and_speed():
    net = QualityNet().eval()
    n = sum(p.numel() for p in net.parameters())
    assert n < 3_000_000
    x = torch.rand(1, 24, 1, 128, 128)
    with torch.inference_mode():
        net(x)
        t = time.perf_counter()
        net(x)
    print(f"QualityNet: {n} parameters, forward 24x128x128 in {time.perf_counter() - t:.3f} s")


def test_a_few_steps_lower_the_loss():
    torch.manual_seed(0)
    net = _net()
    # toy task: noisy stacks have low quality, clean ones high
    clean = torch.zeros(8, 4, 1, 32, 32)
    clean[..., 8:24, 8:24] = 1.0
    noisy = clean + torch.randn_like(clean) * 0.5
    x = torch.cat([clean, noisy])
    y = torch.cat([torch.ones(8), torch.zeros(8)])
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    losses = []
    for _ in range(15):
        loss = torch.nn.functional.mse_loss(net(x, sequence=torch.zeros(16, dtype=torch.long))["score"], y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_footprint_is_the_non_zero_union_of_the_real_slices():
    x = torch.zeros(2, 3, 1, 16, 16)
    x[0, 0, 0, 2:5, 3:7] = 1.0
    x[0, 1, 0, 10:12, 10:12] = -2.0  # negative values are image too
    x[0, 2, 0, 0:16, 0:16] = 5.0  # a padded slice: not part of the footprint
    mask = torch.tensor([[True, True, False], [True, True, True]])
    fp = QualityNet.footprint(x, mask)
    assert fp.shape == (2, 1, 16, 16)
    assert fp[0].sum() == 3 * 4 + 2 * 2
    assert fp[0, 0, 2:5, 3:7].all() and fp[0, 0, 10:12, 10:12].all()
    assert fp[1].all()  # a volume that is zero everywhere pools over the whole canvas


def test_weighted_pool_is_mean_and_std_over_the_footprint():
    x = torch.randn(3, 4, 8, 8)
    w = torch.zeros(3, 1, 8, 8)
    w[:, :, 2:6, 1:4] = 1.0
    pooled = QualityNet._pool(x, w)
    inside = x[:, :, 2:6, 1:4].flatten(2)
    torch.testing.assert_close(pooled[:, :4], inside.mean(2))
    torch.testing.assert_close(pooled[:, 4:], (inside.var(2, unbiased=False) + 1e-6).sqrt())


def test_a_small_image_scores_the_same_whatever_zero_padding_surrounds_it():
    """Footprint pooling: a 32 x 32 image on a 160 or a 224 pixel canvas (offsets that are multiples of
    the encoder's total stride, margins beyond its receptive field) gets the same score; pooling over the
    whole canvas does not."""
    torch.manual_seed(1)
    img = torch.rand(1, 5, 1, 32, 32) + 0.1

    def on_canvas(size):
        c = torch.zeros(1, 5, 1, size, size)
        o = (size - 32) // 2
        c[..., o : o + 32, o : o + 32] = img
        return c

    def scores(net):
        net.eval()
        with torch.no_grad():
            # BatchNorm running statistics away from the identity, so the padding is not neutral
            for mod in net.modules():
                if isinstance(mod, torch.nn.BatchNorm2d):
                    mod.running_mean.uniform_(-0.5, 0.5)
                    mod.bias.uniform_(-0.5, 0.5)
            torch.nn.init.normal_(net.slice_quality.weight, std=0.3)
            return [net(on_canvas(n), sequence=torch.tensor([0]))["score"].item() for n in (160, 224)]

    masked = scores(_net(masked_pool=True))
    whole = scores(_net(masked_pool=False))
    assert abs(masked[0] - masked[1]) < 1e-4
    assert abs(whole[0] - whole[1]) > 1e-3


def test_checkpoints_written_before_footprint_pooling_load_with_whole_canvas_pooling():
    assert QualityNetConfig.from_dict({"n_params": 5}).masked_pool is False
    assert QualityNetConfig().masked_pool is True
    assert QualityNetConfig.from_dict(QualityNetConfig().to_dict()).masked_pool is True


def test_ensemble_is_the_mean_of_its_members():
    from proqual.nets.quality_net import QualityEnsemble, QualityEnsembleConfig

    torch.manual_seed(0)
    a, b = QualityNet(QualityNetConfig(n_params=5)), QualityNet(QualityNetConfig(n_params=5))
    ens = QualityEnsemble(QualityEnsembleConfig([a.config, b.config]))
    ens.members[0].load_state_dict(a.state_dict())
    ens.members[1].load_state_dict(b.state_dict())
    for m in (a, b, ens):
        m.eval()
    x = torch.rand(2, 5, 1, 64, 64)
    mask = torch.tensor([[True] * 5, [True] * 3 + [False] * 2])
    kw = {"sequence": torch.tensor([0, 2]), "mask": mask}
    oa, ob, oe = a(x, **kw), b(x, **kw), ens(x, **kw)
    for k in ("score", "params", "slice_quality", "saliency"):
        torch.testing.assert_close(oe[k], (oa[k] + ob[k]) / 2)
    assert not torch.allclose(oa["score"], ob["score"])  # the members differ, so the mean is not a copy
    probs = (torch.softmax(oa["piqual_logits"], 1) + torch.softmax(ob["piqual_logits"], 1)) / 2
    torch.testing.assert_close(torch.softmax(oe["piqual_logits"], 1), probs)
    torch.testing.assert_close(oe["saliency"].sum(1), torch.ones(2))
    assert (oe["saliency"][1, 3:] == 0).all()
    assert oe["embedding"].shape == (2, a.embed_dim + b.embed_dim) == (2, ens.embed_dim)
    cfg = QualityEnsembleConfig.from_dict(ens.config.to_dict())
    assert cfg == ens.config


def test_ensemble_with_flips_scores_an_image_and_its_mirror_images_alike():
    """With ``flips`` every output is the mean over the four in-plane mirror views of the members' outputs,
    so mirroring the input in-plane (and its footprint with it) leaves every output unchanged."""
    from proqual.nets.quality_net import FLIP_VIEWS, QualityEnsemble, QualityEnsembleConfig

    torch.manual_seed(0)
    a, b = QualityNet(QualityNetConfig(n_params=5)), QualityNet(QualityNetConfig(n_params=5))
    ens = QualityEnsemble(QualityEnsembleConfig([a.config, b.config], flips=True))
    ens.members[0].load_state_dict(a.state_dict())
    ens.members[1].load_state_dict(b.state_dict())
    for m in (a, b, ens):
        m.eval()
    x = torch.rand(2, 5, 1, 64, 48)
    x[1, :, :, :10] = 0  # a zero band on one side, so the guessed footprint is not symmetric
    mask = torch.tensor([[True] * 5, [True] * 3 + [False] * 2])
    kw = {"sequence": torch.tensor([0, 2]), "mask": mask}
    with torch.no_grad():
        out = ens(x, **kw)
        views = [[m(x.flip(d) if d else x, **kw) for d in FLIP_VIEWS] for m in (a, b)]
        plain = a(x, **kw)
        for k in ("score", "params", "slice_quality", "saliency"):
            want = torch.stack([torch.stack([o[k] for o in v]).mean(0) for v in views]).mean(0)
            torch.testing.assert_close(out[k], want)
        assert not torch.allclose(plain["score"], views[0][1]["score"])  # one member alone is not invariant
        for d in FLIP_VIEWS[1:]:
            fx = ens(x.flip(d), **kw)
            for k in ("score", "params", "slice_quality", "saliency", "piqual_logits"):
                torch.testing.assert_close(fx[k], out[k], atol=1e-5, rtol=1e-5)
        fp = torch.ones(2, 1, 64, 48)
        fp[0, :, :, 30:] = 0  # an explicit footprint is mirrored with the image
        torch.testing.assert_close(
            ens(x.flip(-1), footprint=fp.flip(-1), **kw)["score"], ens(x, footprint=fp, **kw)["score"]
        )
    assert QualityEnsembleConfig.from_dict(ens.config.to_dict()) == ens.config
    assert QualityEnsembleConfig.from_dict({"members": [a.config.to_dict()]}).flips is False
    with pytest.raises(ValueError, match="flips must be true or false"):
        QualityEnsembleConfig.from_dict({"members": [a.config.to_dict()], "flips": "yes"})


def _stripe_stack(n_slices=6, size=48, amplitude=0.05, noise=0.01, seed=0):
    """Slices of noise around 1 plus, in every slice, the stripe of one k-space spike (a cosine of
    ``amplitude`` at 5 cycles down and 9 across the image)."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    stripe = amplitude * torch.cos(2 * torch.pi * (5 * yy + 9 * xx) / size)
    return 1 + noise * torch.randn(n_slices, size, size, generator=g) + stripe


def test_kspace_peak_features_find_a_spike_hidden_in_noise():
    from proqual.nets.quality_net import kspace_peak_features

    k = 3
    full = torch.ones(1, 1, 48, 48)
    mask = torch.ones(1, 6, dtype=torch.bool)
    clean = kspace_peak_features(_stripe_stack(amplitude=0.0)[None], mask, full, k)
    # a stripe well below the noise in every pixel (amplitude 0.005 against noise 0.01) ...
    faint = kspace_peak_features(_stripe_stack(amplitude=0.005)[None], mask, full, k)
    strong = kspace_peak_features(_stripe_stack(amplitude=0.05)[None], mask, full, k)
    assert clean.shape == (1, k + 1)
    # ... is an isolated peak of the slice-averaged spectrum: contrast (log units / 4) well above noise's
    assert clean[0, 0] < 0.6 < 1.0 < faint[0, 0] < strong[0, 0]
    # the amplitude feature is the stripe's: a cosine of amplitude A has two peaks of A/2 x N each
    want = (torch.log(torch.tensor(0.05 / 2)) + 5) / 2
    torch.testing.assert_close(strong[0, k], want, atol=0.02, rtol=0)


def test_kspace_peak_features_use_the_footprint_and_the_real_slices_only():
    from proqual.nets.quality_net import kspace_peak_features

    sl = _stripe_stack(amplitude=0.02)
    own = kspace_peak_features(sl[None], torch.ones(1, 6, dtype=torch.bool), torch.ones(1, 1, 48, 48), 2)
    # the same image centred on a zero-padded 128 x 128 canvas, with two padded slices after it
    canvas = torch.zeros(1, 8, 128, 128)
    canvas[0, :6, 40:88, 40:88] = sl
    canvas[0, 6:] = torch.rand(2, 128, 128) * 50
    fp = torch.zeros(1, 1, 128, 128)
    fp[..., 40:88, 40:88] = 1
    mask = torch.tensor([[True] * 6 + [False] * 2])
    torch.testing.assert_close(kspace_peak_features(canvas, mask, fp, 2), own)
    # no real slice, or a footprint too small for a spectrum: zeros, not an error
    assert (kspace_peak_features(canvas, torch.zeros(1, 8, dtype=torch.bool), fp, 2) == 0).all()
    tiny = torch.zeros(1, 1, 128, 128)
    tiny[..., 60:66, 60:66] = 1
    assert (kspace_peak_features(canvas, mask, tiny, 2) == 0).all()


def test_adding_the_kspace_branch_leaves_the_outputs_unchanged_until_trained():
    from proqual.nets.quality_net import QualityEnsemble, QualityEnsembleConfig, with_kspace_peaks

    net = _net().eval()
    x = torch.rand(2, 5, 1, 64, 64)
    seq = torch.tensor([0, 2])
    before = net(x, sequence=seq)
    grown = with_kspace_peaks(net, 4).eval()
    assert grown.config.kspace_peaks == 4 and grown.kspace.in_features == 5
    after = grown(x, sequence=seq)
    for key in ("score", "params", "piqual_logits", "saliency"):
        torch.testing.assert_close(after[key], before[key])
    assert with_kspace_peaks(grown, 4) is grown
    with pytest.raises(ValueError, match="already has a k-space peak branch of 4 peaks, not 2"):
        with_kspace_peaks(grown, 2)
    with pytest.raises(ValueError, match=">= 1"):
        with_kspace_peaks(net, 0)
    # the branch learns: one step on a loss of the score moves its weights off zero
    grown.train()
    grown(x, sequence=seq)["score"].sum().backward()
    assert grown.kspace.weight.grad.abs().sum() > 0
    # an ensemble: every member gets the branch, and the config says so
    ens = QualityEnsemble(QualityEnsembleConfig([_net().config, _net().config])).eval()
    ref = ens(x, sequence=seq)["score"]
    ens = with_kspace_peaks(ens, 2)
    assert [m.kspace_peaks for m in ens.config.members] == [2, 2]
    torch.testing.assert_close(ens(x, sequence=seq)["score"], ref)
    # a member with a branch of another size is refused, whatever the others have
    mixed = QualityEnsemble(QualityEnsembleConfig([_net().config, _net(kspace_peaks=3).config]))
    with pytest.raises(ValueError, match="already has a k-space peak branch of 3 peaks, not 2"):
        with_kspace_peaks(mixed, 2)
    assert [m.kspace_peaks for m in with_kspace_peaks(mixed, 3).config.members] == [3, 3]


def test_a_checkpoint_with_the_kspace_branch_loads_with_it(tmp_path):
    from proqual.quality.scoring import load_quality_model
    from proqual.quality.training import save_quality_checkpoint

    net = _net(kspace_peaks=3).eval()
    with torch.no_grad():
        net.kspace.weight.normal_()
    save_quality_checkpoint(net, tmp_path / "k.pt", meta={})
    back = load_quality_model(tmp_path / "k.pt").eval()
    assert back.config.kspace_peaks == 3
    x = torch.rand(1, 4, 1, 64, 64)
    torch.testing.assert_close(back(x)["score"], net(x)["score"])


def _levelled_stack(n: int = 8, size: int = 32, shading: float = 0.0) -> torch.Tensor:
    """(n, size, size) positive slices whose overall level follows exp(shading * u), u from -1 to 1."""
    g = torch.Generator().manual_seed(1)
    base = 0.5 + 0.1 * torch.rand((n, size, size), generator=g)
    u = torch.linspace(-1, 1, n)
    return base * torch.exp(shading * u)[:, None, None]


def test_slice_level_features_measure_shading_between_slices():
    from proqual.nets.quality_net import N_LEVEL_FEATURES, slice_level_features

    mask = torch.ones(1, 8, dtype=torch.bool)
    fp = torch.ones(1, 1, 32, 32)
    flat = slice_level_features(_levelled_stack()[None], mask, fp)
    shaded = slice_level_features(_levelled_stack(shading=0.3)[None], mask, fp)
    assert flat.shape == shaded.shape == (1, 8, N_LEVEL_FEATURES)
    assert flat.abs().max() < 0.1  # same level everywhere (up to the pixels' jitter)
    # d runs from -0.3 to 0.3 in log (x4 in the feature's units) and is the same on every slice's
    # per-image columns; the median slice level is the reference
    d = shaded[0, :, 0]
    assert d[0] < -1.0 and d[-1] > 1.0 and (d.diff() > 0).all()
    torch.testing.assert_close(shaded[0, :, 1], d.abs())
    expected_step = 4 * 0.6 / 7
    assert abs(float(shaded[0, 0, 2]) - expected_step) < 0.05
    assert (shaded[0, :, 2:] == shaded[0, :1, 2:]).all() and shaded[0, 0, 3] > 0.5
    # a uniform scale of the whole stack changes nothing (levels are relative to the stack's median)
    torch.testing.assert_close(slice_level_features(3 * _levelled_stack(shading=0.3)[None], mask, fp), shaded)


def test_slice_level_features_ignore_padding_and_empty_slices():
    from proqual.nets.quality_net import slice_level_features

    stack = _levelled_stack(shading=0.3)
    own = slice_level_features(stack[None], torch.ones(1, 8, dtype=torch.bool), torch.ones(1, 1, 32, 32))
    # the same slices on a larger canvas with two padded slices: the footprint limits the pixels
    canvas = torch.zeros(1, 10, 64, 64)
    canvas[0, :8, 16:48, 16:48] = stack
    canvas[0, 8:, 16:48, 16:48] = 5.0  # padded slices hold junk: they must not count
    mask = torch.zeros(1, 10, dtype=torch.bool)
    mask[0, :8] = True
    fp = torch.zeros(1, 1, 64, 64)
    fp[..., 16:48, 16:48] = 1
    got = slice_level_features(canvas, mask, fp)
    torch.testing.assert_close(got[:, :8], own)
    assert (got[:, 8:] == 0).all()
    # an empty (all-zero) slice has no level and leaves the others' reference alone
    holed = stack.clone()
    holed[3] = 0
    feats = slice_level_features(holed[None], torch.ones(1, 8, dtype=torch.bool), torch.ones(1, 1, 32, 32))
    assert (feats[0, 3, :2] == 0).all() and feats[0, 3, 2:].abs().sum() > 0
    assert torch.isfinite(feats).all()
    # no real slice at all: zeros, not NaN
    none = slice_level_features(stack[None], torch.zeros(1, 8, dtype=torch.bool), torch.ones(1, 1, 32, 32))
    assert (none == 0).all()


def test_adding_the_slice_level_branch_leaves_the_outputs_unchanged_until_trained(tmp_path):
    from proqual.nets.quality_net import QualityEnsemble, QualityEnsembleConfig, with_slice_levels
    from proqual.quality.scoring import load_quality_model
    from proqual.quality.training import save_quality_checkpoint

    net = _net(kspace_peaks=2).eval()
    x = torch.rand(2, 5, 1, 64, 64)
    seq = torch.tensor([0, 2])
    before = net(x, sequence=seq)
    grown = with_slice_levels(net).eval()
    assert grown.config.slice_levels and grown.config.kspace_peaks == 2
    after = grown(x, sequence=seq)
    for key in ("score", "params", "piqual_logits", "saliency"):
        torch.testing.assert_close(after[key], before[key])
    assert with_slice_levels(grown) is grown
    grown.train()
    grown(x, sequence=seq)["score"].sum().backward()
    assert grown.levels.weight.grad.abs().sum() > 0
    # trained weights survive a checkpoint round trip; old configs load without the branch
    with torch.no_grad():
        grown.levels.weight.normal_()
    grown.eval()
    save_quality_checkpoint(grown, tmp_path / "l.pt", meta={})
    back = load_quality_model(tmp_path / "l.pt").eval()
    assert back.config.slice_levels
    torch.testing.assert_close(back(x)["score"], grown(x)["score"])
    assert not QualityNetConfig.from_dict({"n_params": 5}).slice_levels
    # an ensemble: every member gets it; a member that has it already keeps its trained branch
    ens = QualityEnsemble(QualityEnsembleConfig([_net().config, _net().config])).eval()
    ref = ens(x, sequence=seq)["score"]
    ens = with_slice_levels(ens)
    assert [m.slice_levels for m in ens.config.members] == [True, True]
    torch.testing.assert_close(ens(x, sequence=seq)["score"], ref)
    mixed = QualityEnsemble(QualityEnsembleConfig([_net().config, _net(slice_levels=True).config])).eval()
    with torch.no_grad():
        mixed.members[1].levels.weight.normal_()
    trained = mixed.members[1]
    ref = mixed(x, sequence=seq)["score"]
    mixed = with_slice_levels(mixed)
    assert mixed.members[1] is trained and [m.slice_levels for m in mixed.config.members] == [True, True]
    torch.testing.assert_close(mixed(x, sequence=seq)["score"], ref)
