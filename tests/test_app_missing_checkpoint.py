"""A model whose checkpoint does not exist when the server starts, over real HTTP: it is still served
(its task and trainer are registered), inference answers 503 naming the model and the missing file,
``/info/`` reports it unavailable with the reason, and as soon as the file exists -- copied there, or
published by a trainer that starts from scratch -- the next inference loads it, without a restart."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from server_harness import REPO, monailabel_server, write_picai_studies
from test_app_train import QUIET, annotate, wait_for_training


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("missing")
    studies = write_picai_studies(tmp / "studies", n=3, drop_last=None)
    later = tmp / "not-yet" / "weights"  # does not exist at start
    conf = {
        "models": "pirads,isup",
        "pirads_checkpoint": str(later / "pirads.pt"),
        "isup_checkpoint": str(later / "isup.pt"),
        "store": str(tmp / "store"),
        "device": "cpu",
    }
    with monailabel_server(studies, conf=conf, env=QUIET) as srv:
        srv.extra["anchors"] = [s["anchor"] for s in srv.get("/proqual/studies").json()]
        srv.extra["conf"] = conf
        yield srv


def _infer(srv, model: str, image: str):
    return srv.post(f"/infer/{model}", params={"image": image, "output": "json"})


def _assert_unavailable(srv, model: str, path: str) -> None:
    info = srv.get("/info/").json()
    entry = info["proqual"]["models"][model]
    assert entry["available"] is False and path in entry["reason"], entry
    assert info["models"][model]["available"] is False  # the task is registered, marked unavailable
    assert model in info["trainers"]
    r = _infer(srv, model, srv.extra["anchors"][0])
    assert r.status_code == 503, srv.explain(r)
    body = r.json()
    assert model in body["detail"] and path in body["detail"], body
    assert body["checkpoint"] == path and body["name"] == model and body["available"] is False


def test_checkpoint_copied_after_start_is_served_without_restart(server):
    srv = server
    path = srv.extra["conf"]["pirads_checkpoint"]
    _assert_unavailable(srv, "pirads", path)
    assert not Path(path).exists()
    # the uncertainty scoring method (the PI-RADS model) says why it scores nothing, once
    r = srv.post("/scoring/uncertainty", params={"run_sync": "true"})
    assert r.status_code == 200, srv.explain(r)
    assert r.json()["scored"] == [] and path in r.json()["note"], r.json()

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "model" / "pirads.pt", path)
    r = _infer(srv, "pirads", srv.extra["anchors"][0])
    assert r.status_code == 200, srv.explain(r)
    out = r.json()
    assert set(out["probabilities"]) == {"PI-RADS<4", "PI-RADS>=4"}
    assert abs(sum(out["probabilities"].values()) - 1) < 1e-3
    assert 0 <= out["pirads_ge4_probability"] <= 1
    from proqual.checkpoints import checkpoint_version

    assert out["model"]["sha256"] == checkpoint_version(path)["sha256"]
    entry = srv.get("/info/").json()["proqual"]["models"]["pirads"]
    assert entry["available"] is True and "reason" not in entry
    # the other model is still missing and still says so
    _assert_unavailable(srv, "isup", srv.extra["conf"]["isup_checkpoint"])
    assert srv.alive() and "Traceback" not in srv.log_tail(2000), srv.explain()


def test_trainer_from_scratch_publishes_the_first_checkpoint(server):
    """No ISUP checkpoint: the trainer starts from a new small-cpu classifier and publishes one, which
    the next inference loads. ``multi_gpu`` on a machine without two GPUs trains on one process and
    says so in the train stats."""
    srv = server
    path = srv.extra["conf"]["isup_checkpoint"]
    _assert_unavailable(srv, "isup", path)
    a, b = srv.extra["anchors"][:2]
    annotate(srv, a, {"pirads": 5, "isup": 3, "piqual": {"study": 3}, "annotator": "dr_a"})
    annotate(srv, b, {"pirads": 2, "isup": 0, "piqual": {"study": 1}, "annotator": "dr_a"})
    r = srv.post("/train/isup", json={"max_epochs": 1, "batch_size": 2, "multi_gpu": True, "gpus": "all"})
    assert r.status_code == 200, srv.explain(r)
    status = wait_for_training(srv)
    assert status["status"] == "DONE", "\n".join(status.get("details", []))[-3000:]
    stats = srv.get("/info/").json()["train_stats"]["isup"]
    assert stats["started_from"] == "scratch" and stats["published"] == path
    assert stats["n_train"] == 2 and stats["composition"]["n_drawn"] == 2
    # --conf device cpu: never DDP, whatever GPUs the machine has
    multi = stats["multi_gpu"]
    assert multi["requested"] is True and multi["used"] is False and multi["world_size"] == 1, multi
    assert "one process" in multi["note"], multi
    assert any("one process" in line for line in status["details"]), "\n".join(status["details"])

    r = _infer(srv, "isup", a)
    assert r.status_code == 200, srv.explain(r)
    out = r.json()
    assert out["scheme"] == "cspca" and 0 <= out["cspca_probability"] <= 1
    assert out["model"]["sha256"] == stats["version"]["sha256"]
    assert srv.get("/info/").json()["proqual"]["models"]["isup"]["available"] is True
