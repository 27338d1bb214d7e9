"""Data-parallel finetuning (DistributedDataParallel) for real: two CPU processes on gloo over loopback,
on the tiny phantom examples of tests/test_classify.py."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from proqual.checkpoints import save_checkpoint
from proqual.classify.data import INPUTS
from proqual.classify.distributed import finetune_distributed, parameter_digest
from proqual.classify.finetune import FinetuneConfig, finetune
from proqual.classify.infer import classifier_config, load_classifier
from proqual.cli import main
from proqual.errors import ValidationError
from proqual.labels import get_scheme
from proqual.nets.classifier import Classifier
from proqual.nets.profound_conv import profound_conv
from proqual.stratify import PoolItem, StratifiedSampler
from test_classify import _examples


def test_finetune_on_two_gloo_ranks(tmp_path):
    scheme = get_scheme("pirads_ge4")
    train = _examples(9)  # 9 studies on 2 ranks: 4 each, the odd one left out of the epoch
    val = _examples(3, start=20)
    torch.manual_seed(0)
    model = Classifier(profound_conv("small-cpu"), 2)
    before = parameter_digest(model)
    cfg = FinetuneConfig(mode="scratch", epochs=1, batch_size=2, lr=1e-3)  # class-balanced, augmented
    rows = []
    res = finetune_distributed(
        model, train, scheme=scheme, cfg=cfg, val=val, world_size=2, backend="gloo", progress=rows.append
    )
    d = res["distributed"]
    assert (d["world_size"], d["backend"], d["devices"]) == (2, "gloo", ["cpu", "cpu"])
    assert d["samples_per_rank"] == [4, 4] and [r["rank"] for r in d["ranks"]] == [0, 1]

    # each rank trained on its own part of the same stratified, class-balanced epoch order
    pool = [PoolItem(e.study_id, e.label, e.stratum) for e in train]
    hq = sum(p.stratum == "HQ" for p in pool) / len(pool)
    order = list(StratifiedSampler(pool, hq_fraction=hq, seed=cfg.seed, class_balance=True))
    seen = [r["seen"][0] for r in d["ranks"]]
    assert seen[0] == order[0:8:2] and seen[1] == order[1:8:2]  # disjoint positions of the order
    assert Counter(seen[0]) + Counter(seen[1]) == Counter(order[:8])  # together: the epoch (less its tail)

    # one progress row (rank 0's), with the loss and validation averaged over both ranks
    assert len(rows) == 1 and rows[0]["samples"] == 8 and "val_auroc" in rows[0]
    assert res["history"] == rows and res["epochs_run"] == 1

    # the ranks ended with identical parameters, which the caller's model now holds
    assert d["parameters_identical"], d["ranks"]
    assert parameter_digest(model) == d["ranks"][1]["parameters_sha256"] != before

    # the checkpoint the caller saves (once) loads
    config = classifier_config(preset="small-cpu", scheme=scheme, inputs=INPUTS["small"])
    path = save_checkpoint(model, tmp_path / "ddp.pt", meta={"training": res}, config=config)
    loaded, loaded_scheme, _ = load_classifier(path)
    assert loaded_scheme.name == "pirads_ge4" and parameter_digest(loaded) == parameter_digest(model)


def test_distributed_without_a_process_group_trains_on_one_process():
    model = Classifier(profound_conv("small-cpu"), 2)
    cfg = FinetuneConfig(mode="scratch", epochs=1, batch_size=4, augment=False, distributed=True)
    res = finetune(model, _examples(4), scheme=get_scheme("pirads_ge4"), cfg=cfg)
    assert res["distributed"]["world_size"] == 1 and "one process" in res["distributed"]["note"]
    assert res["history"][0]["samples"] == 4


def test_too_few_studies_for_the_ranks_is_refused_before_starting():
    model = Classifier(profound_conv("small-cpu"), 2)
    with pytest.raises(ValidationError, match="2 ranks need at least 4 studies"):
        finetune_distributed(
            model, _examples(3), scheme=get_scheme("pirads_ge4"), cfg=FinetuneConfig(), world_size=2
        )


def test_finetune_cli_documents_world_size(capsys):
    with pytest.raises(SystemExit):
        main(["finetune", "--help"])
    out = capsys.readouterr().out
    assert "--world-size" in out and "gloo" in out and "nccl" in out.lower()


def test_finetune_cli_world_size_two_on_cpu(tmp_path, capsys):
    ckpt = tmp_path / "p.pt"
    args = ["finetune", "--phantoms", "4", "--val", "2", "--epochs", "1", "--batch-size", "2"]
    args += ["--world-size", "2", "--out", str(ckpt), "--cache", str(tmp_path / "cache")]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert (
        "data-parallel: 2 ranks (gloo), studies per rank [2, 2], parameters identical across ranks: yes"
        in out
    )
    model, scheme, _ = load_classifier(ckpt)  # written once, by the launching process
    d = torch.load(ckpt, weights_only=True)["meta"]["training"]["distributed"]
    assert d["parameters_identical"] and parameter_digest(model) == d["ranks"][0]["parameters_sha256"]
    assert [len(r["seen"][0]) for r in d["ranks"]] == [2, 2] and scheme.name == "pirads_ge4"
