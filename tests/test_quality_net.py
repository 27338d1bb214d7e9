"""QualityNet: every head's shape and range, saliency masking, prompts, gradients, learning."""

from __future__ import annotations

import time

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
