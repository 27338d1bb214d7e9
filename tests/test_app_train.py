"""The whole active-learning loop over real HTTP: info -> next sample -> infer the three models ->
submit annotations -> train (tiny, CPU, MONAI Label's background subprocess) -> the published model is
hot-reloaded (its version changes) -> inference reflects it. Also the trainers' error for too few
labels and the finetune-set composition they report."""

from __future__ import annotations

import json
import time

import pytest
from server_harness import monailabel_server, write_picai_studies
from test_app_infer import make_checkpoints

QUIET = {"MONAI_LABEL_AUTO_UPDATE_SCORING": "false"}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("train")
    studies = write_picai_studies(tmp / "studies", n=4, drop_last=None)
    conf = make_checkpoints(tmp / "model")
    conf.update(store=str(tmp / "store"), device="cpu", target_hq_fraction="0.5")
    with monailabel_server(studies, conf=conf, env=QUIET) as srv:
        yield srv


def annotate(srv, anchor: str, annotation: dict):
    files = {"label": ("annotation.json", json.dumps(annotation).encode(), "application/json")}
    r = srv.put("/datastore/label", params={"image": anchor, "tag": "final"}, files=files)
    assert r.status_code == 200, srv.explain(r)
    return r


def wait_for_training(srv, timeout: float = 150.0) -> dict:
    """The latest training task once it has finished (MONAI Label's GET /train/)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = srv.get("/train/")
        assert r.status_code == 200, srv.explain(r)
        task = r.json()
        if task.get("status") not in ("SUBMITTED", "RUNNING"):
            return task
        time.sleep(0.5)
    raise AssertionError(f"training still running after {timeout} s: {task}")


def infer(srv, model: str, image: str) -> dict:
    r = srv.post(f"/infer/{model}", params={"image": image, "output": "json"})
    assert r.status_code == 200, srv.explain(r)
    return r.json()


def test_full_loop_next_infer_annotate_train_reload(server):
    srv = server
    info = srv.get("/info/").json()
    assert {"quality", "pirads", "isup"} <= set(info["models"]) <= set(info["models"]) | set()
    assert {"pirads", "isup", "quality"} <= set(info["trainers"])
    assert {"quality_aware", "uncertainty", "random", "first"} <= set(info["strategies"])
    assert info["trainers"]["pirads"]["config"]["target_hq_fraction"] == 0.5

    # too few labels: the trainer fails with a clear message, the server keeps serving
    r = srv.post("/train/pirads", json={"max_epochs": 1})
    assert r.status_code == 200, srv.explain(r)
    status = wait_for_training(srv)
    assert status["status"] == "ERROR", status
    assert any("at least 2 labeled" in line for line in status["details"]), "\n".join(status["details"])

    # next sample -> infer the three -> annotate, three times
    labels = [(5, 3, 3), (2, 0, 3), (4, 2, 2)]  # (PI-RADS, ISUP, study PI-QUAL)
    before = {}
    for pirads, isup, piqual in labels:
        r = srv.post("/activelearning/first", json={})
        assert r.status_code == 200, srv.explain(r)
        nxt = r.json()
        anchor = nxt["id"]
        assert set(nxt["sequences"]) == {"T2W", "ADC", "HBV"} and len(nxt["other_ids"]) == 2
        for model in ("quality", "pirads", "isup"):
            before[(model, anchor)] = infer(srv, model, anchor)
        annotate(
            srv,
            anchor,
            {
                "pirads": pirads,
                "isup": isup,
                "piqual": {"T2W": piqual, "ADC": piqual, "HBV": 3, "study": piqual},
                "annotator": "dr_a",
            },
        )
    fs = srv.get("/proqual/finetune-set").json()
    assert fs["labeled"] == 3 and fs["strata"]["HQ"] == 2 and fs["strata"]["LQ"] == 1

    # train the PI-RADS classifier (tiny) and check the published model is served
    old_version = before[("pirads", anchor)]["model"]["sha256"]
    r = srv.post("/train/pirads", json={"max_epochs": 2, "batch_size": 2, "target_hq_fraction": 0.5})
    assert r.status_code == 200, srv.explain(r)
    status = wait_for_training(srv)
    assert status["status"] == "DONE", json.dumps(status, default=str)[-3000:]
    assert any(line.startswith("PROQUAL_PROGRESS") and '"epoch"' in line for line in status["details"])
    r = srv.get("/info/")
    assert "train_stats" in r.json(), srv.explain(r)
    stats = r.json()["train_stats"]["pirads"]
    assert stats["status"] == "DONE"
    comp = stats["composition"]
    # 2 HQ + 1 LQ labeled, target 0.5: the largest set meeting the target is 1 HQ + 1 LQ
    assert comp["n_drawn"] == 2 and comp["hq"] == 1 and comp["lq"] == 1 and comp["hq_fraction"] == 0.5
    assert stats["version"]["sha256"] != old_version and "auroc" in stats["metrics"]
    after = infer(srv, "pirads", anchor)
    assert after["model"]["sha256"] == stats["version"]["sha256"] != old_version
    assert after["probabilities"] != before[("pirads", anchor)]["probabilities"]

    # the quality trainer finetunes on the per-sequence ratings and is hot-reloaded too
    r = srv.post("/train/quality", json={"max_epochs": 1, "batch_size": 4})
    assert r.status_code == 200, srv.explain(r)
    status = wait_for_training(srv)
    assert status["status"] == "DONE", json.dumps(status, default=str)[-3000:]
    q_stats = srv.get("/info/").json()["train_stats"]["quality"]
    assert q_stats["composition"]["samples"] == 9 and q_stats["composition"]["per_rating"]["3"] == 7
    q_after = infer(srv, "quality", anchor)
    assert q_after["model"]["sha256"] == q_stats["version"]["sha256"]
    assert q_after["model"]["sha256"] != before[("quality", anchor)]["model"]["sha256"]


def test_unknown_trainer_is_404(server):
    r = server.post("/train/gleason", json={})
    assert r.status_code == 404 and "gleason" in r.text
    assert server.alive()


def test_gpu_plan_follows_multi_gpu_and_gpus(monkeypatch):
    """How a classifier trainer picks DDP from MONAI Label's ``multi_gpu``/``gpus`` options (in-process;
    the number of CUDA devices is patched, this machine may have none)."""
    import torch
    from proqual.errors import ValidationError

    from monailabel_app.trainers import gpu_plan

    def gpus(n: int) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: n > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: n)

    gpus(0)
    plan = gpu_plan({"multi_gpu": True}, "cpu", 10)
    assert not plan["used"] and plan["world_size"] == 1 and "no CUDA device" in plan["note"]
    assert "one process" in plan["note"]
    gpus(4)
    plan = gpu_plan({}, "cuda", 10)  # multi_gpu defaults to true, gpus to "all", as in MONAI Label
    assert plan["used"] and plan["devices"] == [f"cuda:{i}" for i in range(4)] and plan["backend"] == "nccl"
    assert gpu_plan({"gpus": "1,3"}, "cuda", 10)["devices"] == ["cuda:1", "cuda:3"]
    assert gpu_plan({"gpus": "all"}, "cuda", 5)["world_size"] == 2  # 2 studies per GPU at least
    assert not gpu_plan({"gpus": "all"}, "cuda", 3)["used"]
    assert not gpu_plan({"gpus": "2"}, "cuda", 10)["used"]
    assert not gpu_plan({"multi_gpu": "false"}, "cuda", 10)["used"]
    assert "--conf device is cpu" in gpu_plan({"multi_gpu": "true"}, "cpu", 10)["note"]
    for bad in ({"gpus": "0,7"}, {"gpus": "a,b"}, {"gpus": "1,1"}, {"multi_gpu": "maybe"}):
        with pytest.raises(ValidationError):
            gpu_plan(bad, "cuda", 10)
