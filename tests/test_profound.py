"""ProFound-Conv architecture and checkpoint round trips in all three layouts."""

from __future__ import annotations

import pytest
import torch
from proqual.checkpoints import (
    checkpoint_version,
    detect_layout,
    load_checkpoint,
    remap_fcmae,
    save_checkpoint,
    sparse_kernel,
)
from proqual.errors import CheckpointError, ValidationError
from proqual.nets.classifier import Classifier
from proqual.nets.profound_conv import profound_conv

X = torch.rand(2, 3, 32, 64, 64)


def _model(seed=0, n=4):
    torch.manual_seed(seed)
    m = Classifier(profound_conv("small-cpu"), n)
    # make BatchNorm statistics non-trivial so that they must be carried by the checkpoint
    m.train()
    with torch.no_grad():
        m(torch.rand(4, 3, 32, 64, 64))
    return m.eval()


def test_tiny_structure_and_shapes():
    m = profound_conv("tiny").eval()
    names = set(m.state_dict())
    for key in (
        "downsample_layers.0.0.weight",
        "downsample_layers.3.1.weight",
        "stages.2.8.dwconv.weight",
        "stages.3.2.pwconv1.weight",
        "stages.0.0.grn.gamma",
        "stages.0.0.norm.weight",
        "norm.weight",
    ):
        assert key in names, key
    assert m.state_dict()["downsample_layers.0.0.weight"].shape == (96, 3, 4, 4, 4)
    assert m.state_dict()["downsample_layers.3.1.weight"].shape == (
        768,
        384,
        1,
        1,
        1,
    )  # stride-1 downsampling
    assert m.state_dict()["stages.1.0.grn.gamma"].shape == (1, 1, 1, 1, 4 * 192)
    assert sum(len(s) for s in m.stages) == 18
    with torch.no_grad():
        assert m(torch.rand(1, 3, 32, 64, 64)).shape == (1, 768)


def test_small_preset_and_head():
    m = _model(n=3)
    assert m(X).shape == (2, 3)
    assert list(m.head.state_dict()) == [
        "0.weight",
        "0.bias",
        "1.weight",
        "1.bias",
        "1.running_mean",
        "1.running_var",
        "1.num_batches_tracked",
        "3.weight",
        "3.bias",
    ]
    groups = m.layer_groups()
    assert len(groups) == 6  # stem, 4 stages, head
    assert sum(len(g) for g in groups) == len(list(m.parameters()))
    with pytest.raises(ValidationError, match="unknown ProFound-Conv preset 'huge'"):
        profound_conv("huge")


def test_linear_probe_freezes_encoder():
    m = _model()
    m.freeze_encoder()
    assert not any(p.requires_grad for p in m.encoder.parameters())
    assert all(p.requires_grad for p in m.head.parameters())


def test_proqual_round_trip(tmp_path):
    a, b = _model(0), _model(1)
    path = save_checkpoint(a, tmp_path / "m.pt", meta={"note": "x"}, config={"n": 4})
    assert not list(tmp_path.glob(".*tmp*"))
    rep = load_checkpoint(b, path)
    assert rep.layout == "proqual" and rep.not_in_checkpoint == []
    torch.testing.assert_close(a(X), b(X))
    v = checkpoint_version(path)
    assert len(v["sha256"]) == 12 and v["bytes"] == path.stat().st_size


def test_plain_and_state_dict_wrappers():
    a, b = _model(0), _model(1)
    load_checkpoint(b, {"state_dict": a.state_dict()})
    torch.testing.assert_close(a(X), b(X))


def test_profound_classifier_layout(tmp_path):
    a, b = _model(0), _model(1)
    torch.save(a.state_dict(), tmp_path / "official.pth")  # encoder.* + head.*
    assert detect_layout(a.state_dict()) == "profound_classifier"
    load_checkpoint(b, tmp_path / "official.pth")
    torch.testing.assert_close(a(X), b(X))


def _to_sparse(encoder_sd):
    """Build a FCMAE-style sparse checkpoint from a dense encoder (the inverse of the remapping)."""
    out = {}
    for k, v in encoder_sd.items():
        parts = k.split(".")
        if k.endswith("weight") and v.dim() == 5:
            out["encoder." + k[: -len("weight")] + "kernel"] = sparse_kernel(v, depthwise="dwconv" in k)
            continue
        if "grn" in k:
            v = v.reshape(1, -1)
        if parts[-2] in ("pwconv1", "pwconv2"):
            parts.insert(-1, "linear")
        elif parts[-2] == "norm" or (
            parts[0] == "downsample_layers"
            and v.dim() == 1
            and ((parts[1] == "0" and parts[2] == "1") or (parts[1] != "0" and parts[2] == "0"))
        ):
            parts.insert(-1, "ln")
        out["encoder." + ".".join(parts)] = v
    out["decoder.0.weight"] = torch.zeros(3)
    out["mask_token"] = torch.zeros(1, 16, 1, 1, 1)
    out["proj.weight"] = torch.zeros(2)
    return out


def test_fcmae_sparse_layout_loads_to_identical_encoder(tmp_path):
    a, b = _model(0), _model(1)
    sparse = _to_sparse(a.encoder.state_dict())
    assert detect_layout(sparse) == "fcmae"
    assert any(k.endswith(".kernel") for k in sparse) and any(".ln." in k for k in sparse)
    dense, dropped = remap_fcmae(sparse)
    assert set(dropped) == {"decoder.0.weight", "mask_token", "proj.weight"}
    torch.save({"model": sparse}, tmp_path / "fcmae.pth")
    rep = load_checkpoint(b, tmp_path / "fcmae.pth")
    assert rep.layout == "fcmae" and rep.not_in_checkpoint[0].startswith("head.")
    torch.testing.assert_close(a.encoder(X), b.encoder(X))
    # asymmetric kernel: the offset order matters, a wrong permutation would not round-trip
    w = torch.arange(2 * 3 * 27, dtype=torch.float32).reshape(2, 3, 3, 3, 3)
    from proqual.checkpoints import _dense_kernel

    torch.testing.assert_close(_dense_kernel(sparse_kernel(w, False), False), w)


def test_errors_list_keys(tmp_path):
    m = _model()
    sd = m.state_dict()
    missing = {k: v for k, v in sd.items() if not k.startswith("head.3")}
    with pytest.raises(CheckpointError, match=r"missing keys \(2\): head.3.weight, head.3.bias"):
        load_checkpoint(m, {"model": missing})
    extra = dict(sd, **{"encoder.extra.weight": torch.zeros(1)})
    with pytest.raises(CheckpointError, match=r"unexpected keys \(1\): encoder.extra.weight"):
        load_checkpoint(m, extra)
    wrong = dict(sd)
    wrong["head.3.weight"] = torch.zeros(7, 256)
    with pytest.raises(
        CheckpointError, match=r"shape mismatches \(1\): head.3.weight: checkpoint \(7, 256\)"
    ):
        load_checkpoint(m, wrong)
    with pytest.raises(CheckpointError, match="nope.pt: checkpoint file not found"):
        load_checkpoint(m, tmp_path / "nope.pt")
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(CheckpointError, match="junk.pt: unreadable checkpoint"):
        load_checkpoint(m, tmp_path / "junk.pt")


def test_vit_presets():
    from proqual.nets.profound_vit import profound_vit, sincos_3d

    vit = profound_vit("tiny").eval()
    assert vit.n_tokens == 1 * 2 * 2 and vit.pos_embed.shape == (1, 5, 64)
    with torch.no_grad():
        assert vit(torch.rand(2, 3, 16, 64, 64)).shape == (2, 64)
    with pytest.raises(ValidationError, match="ProFound-ViT expects"):
        vit(torch.rand(1, 3, 8, 64, 64))
    base = profound_vit("base")
    assert base.n_tokens == 256 and base.out_dim == 768 and len(base.blocks) == 12
    assert "blocks.11.attn.qkv.weight" in base.state_dict() and "patch_embed.proj.weight" in base.state_dict()
    emb = sincos_3d((4, 8, 8), 768)
    assert emb.shape == (256, 768) and len({tuple(r) for r in emb.round(decimals=5).tolist()}) == 256
    clf = Classifier(vit, 2)
    with torch.no_grad():
        clf.eval()
        assert clf(torch.rand(2, 3, 16, 64, 64)).shape == (2, 2)
    assert len(clf.layer_groups()) == 4
