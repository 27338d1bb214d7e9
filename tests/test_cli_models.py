"""End to end with the shipped weights: proqual score / classify on sample-data, a bad study in a batch,
and the quality scoring API (heads, ranges, salient slice)."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
from proqual.cli import main

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "sample-data" / "picai"
MODEL = ROOT / "model"


@pytest.fixture(scope="module")
def quality_model():
    from proqual.quality.scoring import load_quality_model

    return load_quality_model(MODEL / "quality.pt")


def test_score_sample_data_end_to_end(tmp_path, capsys):
    out_csv, out_json = tmp_path / "q.csv", tmp_path / "q.json"
    assert main(["score", str(SAMPLE), "--csv", str(out_csv), "--json", str(out_json)]) == 0
    text = capsys.readouterr().out
    assert "study PI-QUAL v2" in text
    results = json.loads(out_json.read_text())
    assert len(results) == 8
    for r in results:
        assert r["study_piqual"] in (1, 2, 3)
        assert set(r["sequences"]) == {"T2W", "HBV", "ADC"}
        for q in r["sequences"].values():
            assert 0.0 <= q["score"] <= 1.0 and q["piqual"] in (1, 2, 3)
            assert abs(sum(q["piqual_probs"].values()) - 1) < 1e-3
            assert len(q["slice_quality"]) == len(q["saliency"]) == 16
            assert 0 <= q["salient_slice"]["index"] < 16
            assert {p["rule"] for p in q["prerequisites"]}
            assert set(q["classical"]) == {"snr", "cnr", "cjv", "efc", "fber"}
        assert r["model"]["sha256"]
    with open(out_csv, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 24 and {"score", "piqual", "prereq_t2w_slice_thickness"} <= set(rows[0])


def test_score_batch_with_a_bad_study(tmp_path, capsys):
    folder = tmp_path / "flat"
    folder.mkdir()
    src = SAMPLE / "images" / "10000"
    for seq in ("t2w", "adc", "hbv"):
        shutil.copy(src / f"10000_1000000_{seq}.mha", folder / f"good_{seq}.mha")
        (folder / f"bad_{seq}.mha").write_bytes((src / f"10000_1000000_{seq}.mha").read_bytes()[:400])
    out_json = tmp_path / "r.json"
    # headers of the truncated files still read, so the study is listed and fails while scoring
    assert main(["score", str(folder), "--json", str(out_json)]) == 1
    results = {r["study_id"]: r for r in json.loads(out_json.read_text())}
    assert "error" in results["bad"] and "bad_" in results["bad"]["error"]
    assert results["good"]["study_piqual"] in (1, 2, 3)
    assert "bad: ERROR" in capsys.readouterr().out


def test_quality_score_falls_with_severity(quality_model):
    from proqual import artifacts as A
    from proqual.io import Volume
    from proqual.phantom import make_study
    from proqual.quality.scoring import score_volumes
    from proqual.study import Sequence

    t2 = make_study(3, seed=99, preset="sample").volumes[Sequence.T2W]
    scores = []
    for sev in (0.0, 0.5, 1.0):
        img, _ = A.degrade(t2.array, t2.spacing, "noise", severity=sev, seed=5)
        scores.append(
            score_volumes(quality_model, {Sequence.T2W: Volume(img, t2.spacing, t2.origin, t2.direction)})[
                "T2W"
            ].score
        )
    assert scores[0] > scores[1] > scores[2]


def test_missing_checkpoint_is_a_clear_error(tmp_path, capsys):
    assert main(["score", str(SAMPLE), "--checkpoint", str(tmp_path / "none.pt")]) == 1
    assert "none.pt: quality checkpoint not found" in capsys.readouterr().err


def test_classify_sample_data(tmp_path, capsys):
    out = tmp_path / "c.json"
    assert main(["classify", str(SAMPLE), "--json", str(out)]) == 0
    results = json.loads(out.read_text())
    assert len(results) == 8
    for r in results:
        assert 0 <= r["pirads"]["positive_probability"] <= 1 and r["pirads"]["positive_name"] == "PI-RADS>=4"
        assert abs(sum(r["pirads"]["probabilities"].values()) - 1) < 1e-3
        assert r["isup"]["positive_name"] == "csPCa" and r["isup"]["model"]["sha256"]
    assert "P(csPCa)" in capsys.readouterr().out


def test_downstream_finetuning_on_expert_ratings(tmp_path, capsys):
    """The downstream path: expert PI-QUAL v2 ratings (CSV) finetune an existing quality checkpoint."""
    import torch
    from proqual.nets.quality_net import QualityNetConfig
    from proqual.quality.training import save_quality_checkpoint

    src = SAMPLE / "images"
    lines = ["path,sequence,piqual"]
    for i, (pid, rating) in enumerate([("10000", 3), ("10001", 2), ("10002", 1), ("10003", 3)]):
        seq = ("t2w", "adc", "hbv", "t2w")[i]
        dest = tmp_path / f"{pid}_{seq}.mha"
        shutil.copy(src / pid / f"{pid}_{1000000 + int(pid) - 10000}_{seq}.mha", dest)
        lines.append(f"{dest.name},{seq.upper()},{rating}")
    (tmp_path / "ratings.csv").write_text("\n".join(lines) + "\n")
    out = tmp_path / "q2.pt"
    args = [
        "train-quality",
        "--init",
        str(MODEL / "quality.pt"),
        "--skip-upstream",
        "--ratings",
        str(tmp_path / "ratings.csv"),
        "--downstream-epochs",
        "1",
        "--batch-size",
        "4",
        "--no-eval",
        "--out",
        str(out),
    ]
    assert main(args) == 0
    ckpt = torch.load(out, weights_only=True)
    meta = ckpt["meta"]
    # the shipped weights are an ensemble: it is finetuned as one model (on the members' mean) and stays one
    assert len(ckpt["config"]["members"]) == 3
    from proqual.nets.quality_net import QualityEnsemble
    from proqual.quality.scoring import load_quality_model

    tuned, shipped = load_quality_model(out), load_quality_model(MODEL / "quality.pt")
    assert isinstance(tuned, QualityEnsemble)
    changed = [
        not torch.equal(a, b)
        for (k, a), b in zip(tuned.state_dict().items(), shipped.state_dict().values(), strict=True)
        if "members.2." in k and a.is_floating_point()
    ]
    assert any(changed)  # every member is trained, the last one included
    assert (
        meta["stages"][0]["stage"] == "downstream" and "4 expert-rated volumes" in meta["stages"][0]["data"]
    )
    assert "saved" in capsys.readouterr().out
    # the checkpoint says what it started from, by hash, whatever the --init path holds later
    assert meta["init"]["path"] == str(MODEL / "quality.pt") and meta["init"]["member"] is None
    assert meta["init"]["sha256"] == shipped.version["sha256"]
    # a finetune of a finetune keeps the chain: the shipped c7's members were each finetuned from c6's
    assert meta["init"]["members"] == shipped.meta.get("members", [])
    assert meta["init"]["init"] == shipped.meta.get("init")
    assert [m["init"]["member"] for m in meta["init"]["members"]] == [0, 1, 2]
    # each keeps the record of the one c6 member it started from (member_record), not of all three
    assert all("member_record" in m["init"] and "members" not in m["init"] for m in meta["init"]["members"])
    (tmp_path / "bad.csv").write_text("path,sequence,piqual\nx.mha,T2W,7\n")
    assert (
        main(
            [
                "train-quality",
                "--init",
                str(MODEL / "quality.pt"),
                "--skip-upstream",
                "--ratings",
                str(tmp_path / "bad.csv"),
                "--no-eval",
                "--out",
                str(tmp_path / "q3.pt"),
            ]
        )
        == 1
    )
    capsys.readouterr()
    # --member K: one member of the ensemble is finetuned on its own and comes out as one model
    one = tmp_path / "q_member.pt"
    assert main([*args[:-1], str(one), "--member", "1"]) == 0
    from proqual.nets.quality_net import QualityNet

    alone = load_quality_model(one)
    assert isinstance(alone, QualityNet) and "--member 1" in alone.meta["command"]
    assert alone.meta["init"]["member"] == 1
    # only the member taken is on record (its own chain included), not its siblings
    assert alone.meta["init"]["member_record"] == shipped.meta["members"][1]
    assert "members" not in alone.meta["init"]
    start = shipped.members[1].state_dict()
    moved = [not torch.equal(v, start[k]) for k, v in alone.state_dict().items() if v.is_floating_point()]
    assert any(moved) and alone.state_dict().keys() == start.keys()
    # an ensemble of finetuned members keeps each member's start in its record
    ens = tmp_path / "q_member_ens.pt"
    assert (
        main(["ensemble-quality", str(one), str(MODEL / "quality.pt"), "--out", str(ens), "--no-eval"]) == 0
    )
    kept = torch.load(ens, weights_only=True)["meta"]["members"]
    assert kept[0]["init"]["member"] == 1 and kept[0]["init"]["sha256"] == shipped.version["sha256"]
    assert [m["via"] for m in kept[1:]] == [str(MODEL / "quality.pt")] * len(shipped.members)
    capsys.readouterr()
    # --kspace-peaks K: the member gets the k-space spike branch, started at zero and trained
    grown = tmp_path / "q_kspace.pt"
    assert (
        main([*args[:-1], str(grown), "--member", "1", "--kspace-peaks", "4", "--kspace-lr-scale", "10"]) == 0
    )
    branch = load_quality_model(grown)
    assert branch.config.kspace_peaks == 4 and "--kspace-peaks 4" in branch.meta["command"]
    assert branch.meta["stages"][0]["config"]["kspace_lr_scale"] == 10
    assert branch.kspace.weight.abs().sum() > 0
    capsys.readouterr()
    # --slice-levels: the member gets the between-slice level branch, started at zero and trained
    levelled = tmp_path / "q_levels.pt"
    assert (
        main([*args[:-1], str(levelled), "--member", "0", "--slice-levels", "--levels-lr-scale", "20"]) == 0
    )
    lv = load_quality_model(levelled)
    assert lv.config.slice_levels and "--slice-levels" in lv.meta["command"]
    assert lv.meta["stages"][0]["config"]["levels_lr_scale"] == 20
    assert lv.levels.weight.abs().sum() > 0
    capsys.readouterr()
    single = tmp_path / "single.pt"
    save_quality_checkpoint(QualityNet(QualityNetConfig()), single, meta={})
    for extra, message in (
        (["--member", "3"], "--member: must be in [0, 2]"),
        (["--member", "-1"], "--member: must be in [0, 2]"),
        (["--init", str(single), "--member", "0"], "is one model, not an ensemble"),
        (["--kspace-peaks", "0"], "--kspace-peaks: must be in [1, 16], got 0"),
        (
            ["--init", str(grown), "--kspace-peaks", "2"],
            "already has a k-space peak branch of 4 peaks, not 2",
        ),
        (["--kspace-lr-scale", "0"], "--kspace-lr-scale: must be a positive number, got 0"),
        (
            ["--init", str(grown), "--levels-lr-scale", "20"],
            "--levels-lr-scale: 20 needs a model with the slice-level branch",
        ),
        (
            ["--init", str(single), "--kspace-lr-scale", "10"],
            "--kspace-lr-scale: 10 needs a model with the k-space spike branch",
        ),
    ):
        assert main([*args[:-1], str(tmp_path / "x.pt"), *extra]) == 1
        assert message in capsys.readouterr().err
    assert main(["train-quality", "--member", "0", "--no-eval", "--out", str(tmp_path / "x.pt")]) == 1
    assert "--member: needs --init (an ensemble)" in capsys.readouterr().err
    assert not (tmp_path / "x.pt").exists()


def test_train_quality_upstream_with_fov_crop_records_it(tmp_path, capsys):
    import torch

    out = tmp_path / "q.pt"
    args = ["train-quality", "--n-studies", "1", "--per-volume", "1", "--n-val", "1", "--epochs", "1"]
    args += [
        "--no-eval",
        "--fov-crop",
        "0.5",
        "0.8",
        "--fov-crop-probability",
        "1",
        "--zero-background",
        "0.5",
        "--family-weight",
        "bias=2",
        "--family-weight",
        "through_plane=1.5",
        "--sequence-weight",
        "hbv=2",
        "--family-block",
        "2",
        "--flip",
        "0.5",
    ]
    args += ["--out", str(out)]
    assert main(args) == 0
    ckpt = torch.load(out, weights_only=True)
    data = ckpt["meta"]["stages"][0]["data"]
    assert "1 of them from an in-plane crop to 0.5..0.8 of each axis" in data
    assert "0.5 of them with the background set to zero" in data
    assert "family weights bias 2, through_plane 1.5" in data
    assert "by sequence ADC 1, HBV 2, T2W 1 (4 samples per epoch)" in data
    cmd = ckpt["meta"]["command"]
    assert "--family-weight bias=2 --family-weight through_plane=1.5" in cmd and "--fov-crop 0.5 0.8" in cmd
    assert "--sequence-weight hbv=2" in cmd and "--family-block 2" in cmd
    assert ckpt["meta"]["stages"][0]["config"]["family_block"] == 2
    assert "inputs mirrored along each in-plane axis with probability 0.5" in data and "--flip 0.5" in cmd
    assert ckpt["meta"]["stages"][0]["config"]["flip"] == 0.5
    assert ckpt["config"]["masked_pool"] is True
    capsys.readouterr()
    for bad, field in (
        (["--fov-crop", "0.8", "0.5"], "--fov-crop"),
        (["--fov-crop-probability", "2"], "--fov-crop-probability"),
        (["--zero-background", "-1"], "--zero-background"),
        (["--flip", "1.5"], "--flip: must be in [0, 1], got 1.5"),
        (["--family-weight", "glare=2"], "--family-weight"),
        (["--family-weight", "bias"], "--family-weight"),
        (["--family-weight", "bias=-1"], "--family-weight"),
        (["--sequence-weight", "flair=2"], "--sequence-weight: unknown sequence 'FLAIR'"),
        (["--sequence-weight", "HBV"], "--sequence-weight"),
        (["--sequence-weight", "HBV=0"], "--sequence-weight"),
        (["--family-block", "-1"], "--family-block"),
        (["--family-block", "9"], "--family-block: must be in [0, --batch-size 8], got 9"),
    ):
        assert main(["train-quality", "--no-eval", "--out", str(tmp_path / "x.pt"), *bad]) == 1
        assert field in capsys.readouterr().err
    assert not (tmp_path / "x.pt").exists()
    # a weighting that leaves ADC one family is refused before any phantom is made
    only_lowb = [
        a
        for f in ("motion", "ghosting", "spike", "blur", "through_plane", "gibbs")
        for a in ("--family-weight", f"{f}=0")
    ]
    assert main(["train-quality", "--no-eval", "--out", str(tmp_path / "x.pt"), *only_lowb]) == 1
    out, err = capsys.readouterr()
    assert "--family-weight: at least two families of ADC" in err and "phantom studies" not in out
    assert not (tmp_path / "x.pt").exists()


def test_train_quality_defaults_are_the_shipped_augmentations(tmp_path, capsys):
    """With no augmentation options the run uses the shipped weights' setting (a quarter of the clean
    volumes cropped to 0.5..1 of each axis, a quarter with a zero background, HBV volumes degraded three
    times as often, batches of family blocks of 4); 0 (HBV=1) turns each off, and the default block
    shrinks to a smaller --batch-size instead of refusing it."""
    import torch

    base = ["train-quality", "--n-studies", "1", "--per-volume", "1", "--n-val", "1", "--epochs", "1"]
    base += ["--no-eval"]
    assert main([*base, "--out", str(tmp_path / "d.pt")]) == 0
    stage = torch.load(tmp_path / "d.pt", weights_only=True)["meta"]["stages"][0]
    data = stage["data"]
    assert "0.25 of them from an in-plane crop to 0.5..1 of each axis" in data
    assert "0.25 of them with the background set to zero" in data
    assert "by sequence ADC 1, HBV 3, T2W 1 (5 samples per epoch)" in data
    assert stage["config"]["family_block"] == 4
    assert "family weights bias 2" in data
    shipped = torch.load(MODEL / "quality.pt", weights_only=True)["meta"]
    # the shipped weights (c7) are the mean of three members, each finetuned on its own five times from
    # e3's member k (c2, then c4, both with clean brain-template volumes, then c5 with the k-space spike
    # branch added, then c6 with the branch at ten times the learning rate, then c7 with bias drawn
    # three times as often and the branch's rate back at 1); e3's members are the defaults at seeds 0,
    # 1 and 2
    assert shipped["command"].startswith("proqual ensemble-quality ")
    assert len(shipped["members"]) == 3
    # the chain back to e3, one step per finetune: (sha256 prefix of the start, whether only member
    # k's record was kept (member_record) rather than every member's, what member k's command of that
    # start must and must not contain, and its k-space learning-rate scale where it was recorded)
    chain = [
        ("442be3b91247", True, ["--kspace-lr-scale 10.0"], [], 10),  # c6
        ("c9b53a0324c3", True, ["--kspace-peaks 4"], [], None),  # c5
        ("47da22c6ddcf", False, ["--family-weight spike=3"], ["--kspace-peaks"], None),  # c4
        ("eed0fad47089", False, ["--clean runs/clean"], [], None),  # c2
    ]
    for k, member in enumerate(shipped["members"]):
        cmd = member["command"]
        assert cmd.startswith("proqual train-quality --out ") and f"--member {k} " in cmd
        assert "--family-weight bias=3" in cmd and "--family-weight spike=3" in cmd
        assert "--kspace-lr-scale 1.0 " in cmd and member["stages"][0]["config"]["kspace_lr_scale"] == 1
        record = member
        for sha, member_record_only, has, lacks, lr_scale in chain:
            start = record["init"]
            assert start["sha256"].startswith(sha) and start["member"] == k
            if member_record_only:  # only member k's record is kept, not its siblings'
                assert "members" not in start
                record = start["member_record"]
            else:
                record = start["members"][k]
            assert f"--member {k} " in record["command"]
            assert all(x in record["command"] for x in has) and not any(x in record["command"] for x in lacks)
            if lr_scale is not None:
                assert record["stages"][0]["config"]["kspace_lr_scale"] == lr_scale
        e3 = record["init"]
        assert e3["sha256"].startswith("8d442025dc59") and e3["member"] == k
        assert e3["command"].startswith("proqual ensemble-quality ")
        commands = [m["command"] for m in e3["members"]]
        assert len(commands) == 3
        for seed, e3_cmd in enumerate(commands):
            assert "--sequence-weight HBV=3" in e3_cmd and "--family-block 4" in e3_cmd
            assert "--family-weight bias=2" in e3_cmd and f"--seed {seed} " in e3_cmd
    off = ["--fov-crop-probability", "0", "--zero-background", "0", "--sequence-weight", "HBV=1"]
    off += ["--family-block", "0", "--family-weight", "bias=1"]
    assert main([*base, *off, "--out", str(tmp_path / "o.pt")]) == 0
    meta = torch.load(tmp_path / "o.pt", weights_only=True)["meta"]
    data = meta["stages"][0]["data"]
    assert "in-plane crop" not in data and "background set to zero" not in data
    assert "by sequence ADC 1, HBV 1, T2W 1 (3 samples per epoch)" in data
    assert "--sequence-weight HBV=1" in meta["command"] and "HBV=3" not in meta["command"]
    assert meta["stages"][0]["config"]["family_block"] == 0 and "--family-block 0" in meta["command"]
    assert "family weights bias 1" in data and "bias=2" not in meta["command"]
    assert main([*base, "--batch-size", "2", "--out", str(tmp_path / "b.pt")]) == 0
    meta = torch.load(tmp_path / "b.pt", weights_only=True)["meta"]
    assert meta["stages"][0]["config"]["family_block"] == 2 and "--family-block 2" in meta["command"]
    capsys.readouterr()


def test_train_quality_evaluates_on_the_same_images_whatever_the_seed(tmp_path, capsys):
    """The evaluation sweeps use cohort seed 0 and realisation seed 0 for every --seed (before, --seed 1
    evaluated other phantoms), so runs with different seeds are compared on the same images."""
    import torch
    from proqual.quality import evaluate as E
    from proqual.quality.scoring import load_quality_model

    out = tmp_path / "s1.pt"
    args = ["train-quality", "--n-studies", "1", "--per-volume", "1", "--n-val", "1", "--epochs", "1"]
    assert main([*args, "--n-eval", "1", "--seed", "1", "--out", str(out)]) == 0
    evaluation = torch.load(out, weights_only=True)["meta"]["evaluation"]
    assert "cohort seed 0" in evaluation["about"] and "the same for every --seed" in evaluation["about"]
    model = load_quality_model(out)
    again = E.family_metrics(model, E.phantom_sweep(n_studies=1))
    assert set(evaluation["held_out_phantoms"]) == set(again) and len(again) == 9
    for fam, m in again.items():
        assert evaluation["held_out_phantoms"][fam]["srcc"] == pytest.approx(m["srcc"], abs=1e-6)
        assert evaluation["held_out_phantoms"][fam]["rmse"] == pytest.approx(m["rmse"], abs=1e-6)
    other = E.family_metrics(model, E.phantom_sweep(n_studies=1, cohort=1))
    assert any(abs(other[f]["rmse"] - again[f]["rmse"]) > 1e-4 for f in again)
    real = E.real_mr_evaluation(model, seed=0)
    for name, fams in real.items():
        for fam, m in fams.items():
            got = evaluation["real_mr"][name][fam]["srcc_severity_vs_score"]
            assert got == pytest.approx(m["srcc_severity_vs_score"], abs=1e-6)
    assert "phantom bias" in capsys.readouterr().out


def _tiny_checkpoints(folder: Path, n: int) -> list[Path]:
    import torch
    from proqual.nets.quality_net import QualityNet, QualityNetConfig
    from proqual.quality.training import save_quality_checkpoint

    out = []
    for i in range(n):
        torch.manual_seed(i)
        p = folder / f"m{i}.pt"
        save_quality_checkpoint(QualityNet(QualityNetConfig()), p, meta={"command": f"member {i}"})
        out.append(p)
    return out


def test_ensemble_quality_scores_the_mean_of_its_members(tmp_path, capsys):
    """proqual ensemble-quality writes one checkpoint that load_quality_model, score and the benches take
    as any other; its scores are the mean of the members' and its metadata keeps theirs."""
    import torch
    from proqual.phantom import make_study
    from proqual.quality.scoring import load_quality_model, score_volumes

    members = _tiny_checkpoints(tmp_path, 2)
    out = tmp_path / "ens.pt"
    assert main(["ensemble-quality", *map(str, members), "--out", str(out), "--no-eval"]) == 0
    assert "mean of 2 members" in capsys.readouterr().out
    meta = torch.load(out, weights_only=True)["meta"]
    assert [m["command"] for m in meta["members"]] == ["member 0", "member 1"]
    assert [m["init"] for m in meta["members"]] == [None, None]
    assert meta["command"].startswith("proqual ensemble-quality ")
    vols = make_study(20_000, seed=0).volumes
    got = score_volumes(load_quality_model(out), vols)
    each = [score_volumes(load_quality_model(p), vols) for p in members]
    for seq, q in got.items():
        assert q.score == pytest.approx((each[0][seq].score + each[1][seq].score) / 2, abs=2e-4)
        assert sum(q.piqual_probs.values()) == pytest.approx(1, abs=1e-3)
        assert len(q.slice_quality) == len(each[0][seq].slice_quality)
    assert each[0]["T2W"].score != pytest.approx(each[1]["T2W"].score, abs=1e-3)
    # --half: float16 in the file, float32 in the model, about half the bytes and the same scores
    half = tmp_path / "ens_half.pt"
    assert main(["ensemble-quality", *map(str, members), "--out", str(half), "--no-eval", "--half"]) == 0
    ckpt = torch.load(half, weights_only=True)
    assert ckpt["meta"]["weights_dtype"] == "float16" and ckpt["meta"]["command"].endswith(" --half")
    assert {v.dtype for v in ckpt["model"].values() if v.is_floating_point()} == {torch.float16}
    assert half.stat().st_size < 0.6 * out.stat().st_size
    half_model = load_quality_model(half)
    assert {p.dtype for p in half_model.parameters()} == {torch.float32}
    assert half_model.stored_half and not load_quality_model(out).stored_half
    # evaluate-quality rewrites a float16 checkpoint as float16
    evaluated = tmp_path / "ens_half_evaluated.pt"
    assert main(["evaluate-quality", str(half), "--n-eval", "1", "--out", str(evaluated)]) == 0
    ckpt = torch.load(evaluated, weights_only=True)
    assert {v.dtype for v in ckpt["model"].values() if v.is_floating_point()} == {torch.float16}
    assert "evaluation" in ckpt["meta"]
    for seq, q in score_volumes(half_model, vols).items():
        assert q.score == pytest.approx(got[seq].score, abs=2e-3)
    assert main(["score", str(SAMPLE), "--checkpoint", str(out), "--json", str(tmp_path / "s.json")]) == 0
    assert json.loads((tmp_path / "s.json").read_text())
    capsys.readouterr()


def test_ensemble_quality_rejects_bad_members(tmp_path, capsys):
    import torch
    from proqual.quality.scoring import load_quality_model

    a, b = _tiny_checkpoints(tmp_path, 2)
    ens = tmp_path / "ens.pt"
    cases = [
        ([str(a)], "at least 2 members, got 1"),
        ([str(a), str(a)], "the same checkpoint is given twice"),
        ([str(a), str(b), "--out", str(a)], "is one of the members"),
        ([str(a), str(tmp_path / "none.pt")], "none.pt: quality checkpoint not found"),
    ]
    for extra, message in cases:
        assert (
            main(
                ["ensemble-quality", *extra, "--no-eval"] + ([] if "--out" in extra else ["--out", str(ens)])
            )
            == 1
        )
        assert message in capsys.readouterr().err
        assert not ens.exists()
    assert main(["ensemble-quality", str(a), str(b), "--out", str(ens), "--no-eval"]) == 0
    (tmp_path / "c").mkdir()
    c = _tiny_checkpoints(tmp_path / "c", 1)
    # an ensemble given as a member contributes its members, with their records
    e3 = tmp_path / "e3.pt"
    assert main(["ensemble-quality", str(ens), str(c[0]), "--out", str(e3), "--no-eval", "--flips"]) == 0
    assert "mean of 3 members over 4 in-plane mirror views" in capsys.readouterr().out
    ckpt = torch.load(e3, weights_only=True)
    assert ckpt["config"]["flips"] is True and ckpt["meta"]["command"].endswith(" --flips")
    assert [m["command"] for m in ckpt["meta"]["members"]] == ["member 0", "member 1", "member 0"]
    assert [m.get("via") for m in ckpt["meta"]["members"]] == [str(ens), str(ens), None]
    merged, parts = load_quality_model(e3), [load_quality_model(p) for p in (a, b, c[0])]
    for slot, part in zip(merged.members, parts, strict=True):
        for (k, v), w in zip(slot.state_dict().items(), part.state_dict().values(), strict=True):
            assert torch.equal(v, w), k


def test_interpolate_quality_mixes_the_weights_and_refuses_what_does_not_fit(tmp_path, capsys):
    """interpolate-quality: every float weight and batch-norm statistic (1 - alpha) x BASE + alpha x TUNED;
    alpha 0 and 1 give the two checkpoints' scores back; clear errors for bad alpha and mismatched files."""
    import torch
    from proqual.nets.quality_net import QualityNet, QualityNetConfig
    from proqual.phantom import make_study
    from proqual.quality.scoring import load_quality_model, score_volumes
    from proqual.quality.training import save_quality_checkpoint

    base, tuned = _tiny_checkpoints(tmp_path, 2)
    base_bytes = base.read_bytes()
    outs = {}
    for alpha in ("0", "0.25", "1"):
        outs[alpha] = tmp_path / f"w{alpha}.pt"
        args = ["interpolate-quality", str(base), str(tuned), "--alpha", alpha, "--out", str(outs[alpha])]
        assert main([*args, "--no-eval", "--eval-out", str(tmp_path / f"w{alpha}.json")]) == 0
    assert "(1 - 0.25) x base + 0.25 x tuned" in capsys.readouterr().out
    written = json.loads((tmp_path / "w0.25.json").read_text())
    assert written["tuned"]["command"] == "member 1" and written["evaluation"]["held_out_phantoms"] == {}
    sd_b, sd_t = load_quality_model(base).state_dict(), load_quality_model(tuned).state_dict()
    mixed = load_quality_model(outs["0.25"]).state_dict()
    assert any("running_mean" in k for k in mixed)
    for k, v in mixed.items():
        if v.is_floating_point():
            torch.testing.assert_close(v, 0.75 * sd_b[k] + 0.25 * sd_t[k])
        else:
            assert torch.equal(v, sd_t[k])
    meta = torch.load(outs["0.25"], weights_only=True)["meta"]
    assert meta["base"]["command"] == "member 0" and meta["tuned"]["command"] == "member 1"
    assert meta["base"]["init"] is None and meta["tuned"]["init"] is None
    # a TUNED that records what it was finetuned from keeps that record in meta.tuned
    start = {"path": str(base), "sha256": "from-base", "member": None}
    tuned_from = tmp_path / "tuned_from.pt"
    save_quality_checkpoint(
        QualityNet(QualityNetConfig()), tuned_from, meta={"command": "finetune", "init": start}
    )
    soup = tmp_path / "soup.pt"
    assert main(["interpolate-quality", str(base), str(tuned_from), "--out", str(soup), "--no-eval"]) == 0
    assert torch.load(soup, weights_only=True)["meta"]["tuned"]["init"] == start
    assert meta["command"].endswith(f"--alpha 0.25 --out {outs['0.25']}")
    vols = make_study(20_000, seed=0).volumes
    for alpha, ref in (("0", base), ("1", tuned)):
        got, want = (
            score_volumes(load_quality_model(outs[alpha]), vols),
            score_volumes(load_quality_model(ref), vols),
        )
        for seq in got:
            assert got[seq].score == pytest.approx(want[seq].score, abs=1e-6)
    other = tmp_path / "other.pt"
    save_quality_checkpoint(QualityNet(QualityNetConfig(n_params=5)), other, meta={})
    bad_out = tmp_path / "bad.pt"
    for extra, message in (
        ([str(base), str(tuned), "--alpha", "1.5"], "--alpha: must be in [0, 1], got 1.5"),
        ([str(base), str(base)], "BASE and TUNED are the same checkpoint"),
        ([str(base), str(other)], "has another architecture than"),
        ([str(base), str(tmp_path / "none.pt")], "none.pt: quality checkpoint not found"),
    ):
        assert main(["interpolate-quality", *extra, "--no-eval", "--out", str(bad_out)]) == 1
        assert message in capsys.readouterr().err
    assert main(["interpolate-quality", str(base), str(tuned), "--no-eval", "--out", str(base)]) == 1
    assert "is BASE or TUNED" in capsys.readouterr().err
    assert not bad_out.exists()
    assert base.read_bytes() == base_bytes  # the refused --out left BASE as it was


def test_evaluate_quality_writes_the_evaluation_and_keeps_the_weights(tmp_path, capsys):
    import torch
    from proqual.quality import evaluate as E
    from proqual.quality.scoring import load_quality_model

    (src,) = _tiny_checkpoints(tmp_path, 1)
    out, js = tmp_path / "evaluated.pt", tmp_path / "e.json"
    args = ["evaluate-quality", str(src), "--n-eval", "1", "--out", str(out), "--eval-out", str(js)]
    assert main(args) == 0
    assert "phantom bias" in capsys.readouterr().out
    before, after = torch.load(src, weights_only=True), torch.load(out, weights_only=True)
    assert before["meta"] == {"command": "member 0"}  # the source is left alone
    assert after["meta"]["command"] == "member 0" and "evaluate-quality" in after["meta"]["evaluated_by"]
    for k, v in before["model"].items():
        assert torch.equal(v, after["model"][k])
    evaluation = after["meta"]["evaluation"]
    assert len(evaluation["held_out_phantoms"]) == 9 and "cohort seed 0" in evaluation["about"]
    # what it records is what the sweep gives for these weights
    real = E.real_mr_evaluation(load_quality_model(src), seed=E.EVAL_REAL_SEED)
    name = next(iter(real))
    got = evaluation["real_mr"][name]["noise"]["srcc_severity_vs_score"]
    assert got == pytest.approx(real[name]["noise"]["srcc_severity_vs_score"], abs=1e-6)
    assert json.loads(js.read_text())["evaluation"]["about"] == evaluation["about"]
    assert main(["evaluate-quality", str(tmp_path / "none.pt")]) == 1
    assert "none.pt" in capsys.readouterr().err
    assert main(["evaluate-quality", str(src), "--n-eval", "0"]) == 1
    assert "--n-eval: must be >= 1" in capsys.readouterr().err
