"""Finetuning, FCMAE-style pretraining, the finetune CLI and the experiment grid on a tiny scale."""

from __future__ import annotations

import csv

import torch
from proqual.classify.data import InputConfig, phantom_examples
from proqual.classify.finetune import FinetuneConfig, finetune
from proqual.classify.pretrain import pretrain_fcmae
from proqual.cli import main
from proqual.labels import get_scheme
from proqual.nets.classifier import Classifier
from proqual.nets.profound_conv import profound_conv

TINY = InputConfig("tiny-test", (16, 48, 48), (3.0, 1.5, 1.5))


def _examples(n=8, start=0):
    scheme = get_scheme("pirads_ge4")
    return phantom_examples(list(range(start, start + n)), seed=0, lq={1, 3}, scheme=scheme, inputs=TINY)


def test_examples_carry_labels_and_strata():
    ex = _examples(4)
    assert [e.label for e in ex] == [0, 0, 1, 1]  # PI-RADS 2, 3, 4, 5 by the phantom schedule
    assert [e.stratum for e in ex] == ["HQ", "LQ", "HQ", "LQ"]
    assert ex[0].image.shape == (3, 16, 48, 48)


def test_cached_lq_examples_are_not_reused_after_the_severity_mapping_changes(tmp_path, monkeypatch):
    from proqual import artifacts as A

    scheme = get_scheme("pirads_ge4")
    cache = tmp_path / "cache"
    first = phantom_examples([0, 1], seed=0, lq={1}, scheme=scheme, inputs=TINY, cache_dir=cache)
    assert len(list(cache.glob("*.pt"))) == 2
    # the cache is used while nothing changes
    again = phantom_examples([0, 1], seed=0, lq={1}, scheme=scheme, inputs=TINY, cache_dir=cache)
    assert len(list(cache.glob("*.pt"))) == 2 and torch.equal(first[1].image, again[1].image)
    scale = dict(A.SEVERITY_SCALE)
    for fam, (p0, p_max, gamma) in scale.items():
        scale[fam] = (p0, p_max, gamma * 1.1)
    monkeypatch.setattr(A, "SEVERITY_SCALE", scale)
    phantom_examples([0, 1], seed=0, lq={1}, scheme=scheme, inputs=TINY, cache_dir=cache)
    # the HQ example is reused, the LQ one is made again under the new mapping
    assert len(list(cache.glob("*.pt"))) == 3


def test_finetune_steps_lower_the_loss():
    torch.manual_seed(0)
    model = Classifier(profound_conv("small-cpu"), 2)
    ex = _examples(8)
    res = finetune(
        model,
        ex,
        scheme=get_scheme("pirads_ge4"),
        cfg=FinetuneConfig(
            mode="scratch", epochs=6, batch_size=4, lr=3e-3, augment=False, class_balance=False
        ),
    )
    losses = [h["loss"] for h in res["history"]]
    assert losses[-1] < losses[0]
    assert res["epochs_run"] == 6


def test_linear_probe_leaves_encoder_unchanged():
    torch.manual_seed(0)
    model = Classifier(profound_conv("small-cpu"), 2)
    before = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    finetune(
        model,
        _examples(4),
        scheme=get_scheme("pirads_ge4"),
        cfg=FinetuneConfig(mode="linear", epochs=1, batch_size=4, augment=True),
    )
    for k, v in model.encoder.state_dict().items():
        torch.testing.assert_close(v, before[k])


def test_pretraining_lowers_reconstruction_loss():
    torch.manual_seed(0)
    enc = profound_conv("small-cpu")
    images = [e.image for e in _examples(8)]
    hist = pretrain_fcmae(enc, images, epochs=4, batch_size=4, lr=3e-3)
    assert hist["history"][-1]["loss"] < hist["history"][0]["loss"]
    assert hist["patch"] == [16, 16, 16]


def test_finetune_and_classify_cli(tmp_path, capsys):
    ckpt = tmp_path / "p.pt"
    assert (
        main(
            [
                "finetune",
                "--phantoms",
                "8",
                "--val",
                "4",
                "--epochs",
                "1",
                "--out",
                str(ckpt),
                "--cache",
                str(tmp_path / "cache"),
            ]
        )
        == 0
    )
    assert "finetune set: 8 studies" in capsys.readouterr().out
    blob = torch.load(ckpt, weights_only=True)
    assert blob["config"]["scheme"] == "pirads_ge4" and "composition" in blob["meta"]
    assert main(["classify", "sample-data/picai", "--pirads", str(ckpt), "--isup", str(ckpt)]) == 1
    assert "is a pirads model (scheme pirads_ge4); --isup needs a isup model" in capsys.readouterr().err
    isup = tmp_path / "i.pt"
    assert (
        main(
            [
                "finetune",
                "--phantoms",
                "8",
                "--val",
                "4",
                "--epochs",
                "1",
                "--scheme",
                "cspca",
                "--out",
                str(isup),
                "--cache",
                str(tmp_path / "cache"),
            ]
        )
        == 0
    )
    assert main(["classify", "sample-data/picai", "--pirads", str(ckpt), "--isup", str(isup)]) == 0
    assert "P(csPCa)" in capsys.readouterr().out


def test_experiment_tiny_grid_and_resume(tmp_path, capsys):
    args = [
        "experiment",
        "--out",
        str(tmp_path),
        "--sizes",
        "4",
        "--finetune-hq",
        "0,1",
        "--test-hq",
        "0,1",
        "--seeds",
        "0",
        "--epochs",
        "1",
        "--pool-size",
        "8",
        "--test-pool-size",
        "8",
        "--n-test",
        "4",
        "--pretrain-studies",
        "4",
        "--pretrain-epochs",
        "1",
    ]
    assert main(args) == 0
    with open(tmp_path / "runs.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 2 * 2 * 2  # finetune fractions x inits x test fractions
    assert {r["init"] for r in rows} == {"pretrained", "scratch"}
    assert (tmp_path / "heatmap.png").stat().st_size > 1000 and (tmp_path / "label_efficiency.png").is_file()
    summary = (tmp_path / "summary.md").read_text()
    assert "N = 4:" in summary and summary.count("| 0.00 |") == 1 and "scratch 1.0" in summary
    first = next(r for r in rows if r["finetune_hq_fraction"] == "0.0" and r["init"] == "pretrained")
    assert f"{float(first['auroc']):.3f}" in summary.split("N = 4:")[1].splitlines()[4]
    capsys.readouterr()
    assert main(args) == 0  # resumes: nothing left to run
    assert "4 already done" in capsys.readouterr().out


def test_experiment_on_real_layout_data_with_model_strata(tmp_path, capsys):
    """The grid on labeled PI-CAI-layout studies (sample-data): strata from the quality model (no expert
    PI-QUAL in that marksheet), a deterministic disjoint finetune/test split, --init for 'pretrained'."""
    from pathlib import Path

    from proqual.classify.data import INPUTS
    from proqual.classify.experiment import GridConfig, _real_pools

    repo = Path(__file__).resolve().parents[1]
    data, quality = str(repo / "sample-data" / "picai"), str(repo / "model" / "quality.pt")
    cfg = GridConfig(data=(data,), quality_checkpoint=quality, hq_threshold=0.5, test_fraction=0.4)
    scheme = get_scheme("pirads_ge4")
    pool, test = _real_pools(cfg, scheme, INPUTS["small"], lambda m: None, lambda label: None)
    ids_pool, ids_test = {e.study_id for e in pool}, {e.study_id for e in test}
    assert not ids_pool & ids_test and len(ids_pool | ids_test) == 8
    assert {e.stratum for e in pool + test} <= {"HQ", "LQ"}
    again = _real_pools(cfg, scheme, INPUTS["small"], lambda m: None, lambda label: None)
    assert {e.study_id for e in again[1]} == ids_test  # the same split every time (resumable)

    args = [
        "experiment",
        data,
        "--out",
        str(tmp_path),
        "--quality-checkpoint",
        quality,
        "--hq-threshold",
        "0.5",
        "--init",
        str(repo / "model" / "pirads.pt"),
        "--sizes",
        "4",
        "--finetune-hq",
        "0,1",
        "--test-hq",
        "0.5",
        "--seeds",
        "0",
        "--epochs",
        "1",
        "--n-test",
        "3",
    ]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "8 labeled studies; strata: 0 expert PI-QUAL, 8 quality model" in out
    with open(tmp_path / "runs.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 4 and {r["init"] for r in rows} == {"pretrained", "scratch"}
    assert all(int(r["n_test"]) == 3 for r in rows)
    config = (tmp_path / "config.json").read_text()
    assert "pirads.pt" in config and "picai" in config
