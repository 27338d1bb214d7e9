"""Active learning over real HTTP: the strategies (first, random, uncertainty, quality_aware) answer the
anchor id plus the study's other sequence ids; quality_aware picks the most uncertain study of the
stratum the finetune set is short of; the scoring methods fill image info for unscored studies."""

from __future__ import annotations

import json

import pytest
from server_harness import monailabel_server, write_picai_studies
from test_app_infer import make_checkpoints

QUIET = {"MONAI_LABEL_AUTO_UPDATE_SCORING": "false"}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("al")
    studies = write_picai_studies(tmp / "studies", n=5, drop_last="hbv")
    conf = make_checkpoints(tmp / "model")
    conf.update(store=str(tmp / "store"), device="cpu", hq_threshold="0.8", target_hq_fraction="0.5")
    with monailabel_server(studies, conf=conf, env=QUIET) as srv:
        yield srv, srv.get("/proqual/studies").json()


def nxt(srv, strategy: str, **params) -> dict:
    r = srv.post(f"/activelearning/{strategy}", json=params)
    assert r.status_code == 200, srv.explain(r)
    return r.json()


def set_info(srv, anchor: str, **info):
    r = srv.put("/datastore/image/info", params={"image": anchor}, data={"info": json.dumps(info)})
    assert r.status_code == 200, srv.explain(r)


def test_first_and_random_answer_anchor_and_other_sequences(setup):
    srv, studies = setup
    first = nxt(srv, "first")
    assert first["id"] == studies[0]["anchor"]
    assert first["sequences"] == studies[0]["sequences"] and first["sequences"]["T2W"] == first["id"]
    assert sorted(first["other_ids"]) == sorted(v for k, v in first["sequences"].items() if k != "T2W")
    assert first["path"]  # MONAI Label adds the image URI
    anchors = {s["anchor"] for s in studies}
    picks = {nxt(srv, "random", seed=s)["id"] for s in range(6)}
    assert picks <= anchors and len(picks) >= 2
    assert nxt(srv, "random", seed=3)["id"] == nxt(srv, "random", seed=3)["id"]


def test_scoring_methods_fill_image_info(setup):
    srv, studies = setup
    r = srv.post("/scoring/quality", params={"run_sync": "true"})
    assert r.status_code == 200, srv.explain(r)
    assert sorted(r.json()["scored"]) == sorted(s["anchor"] for s in studies)
    for s in studies:
        info = srv.get("/datastore/image/info", params={"image": s["anchor"]}).json()
        assert 0.0 <= info["quality_score"] <= 1.0 and info["study_piqual"] in (1, 2, 3)
    r = srv.post("/scoring/uncertainty", params={"run_sync": "true"})
    assert r.status_code == 200, srv.explain(r)
    out = r.json()
    incomplete = [s["anchor"] for s in studies if s["missing"]]
    assert list(out["skipped"]) == incomplete and "HBV" in next(iter(out["skipped"].values()))
    assert len(out["scored"]) == len(studies) - 1
    info = srv.get("/datastore/image/info", params={"image": out["scored"][0]}).json()
    assert 0.0 <= info["uncertainty"] <= 1.0
    # a second run leaves scored studies alone
    again = srv.post("/scoring/quality", params={"run_sync": "true"}).json()
    assert again["scored"] == [] and again["already_scored"] == len(studies)


def test_uncertainty_and_quality_aware(setup):
    srv, studies = setup
    a, b, c, d, e = (s["anchor"] for s in studies)
    for anchor, q, u in ((a, 0.9, 0.1), (b, 0.95, 0.6), (c, 0.3, 0.9), (d, 0.2, 0.4), (e, 0.1, 0.0)):
        set_info(srv, anchor, quality_score=q, uncertainty=u)
    assert nxt(srv, "uncertainty")["id"] == c
    # nothing labeled, target 0.5: start with HQ, the most uncertain HQ study
    pick = nxt(srv, "quality_aware")
    assert (pick["id"], pick["wanted_stratum"], pick["stratum"]) == (b, "HQ", "HQ")
    assert pick["sequences"]["T2W"] == b and len(pick["other_ids"]) == 2
    # label it (expert HQ): the finetune set is all HQ, so the next pick is the most uncertain LQ study
    files = {
        "label": (
            "a.json",
            json.dumps({"pirads": 4, "isup": 2, "piqual": {"study": 3}, "annotator": "dr_a"}),
            "application/json",
        )
    }
    r = srv.put("/datastore/label", params={"image": b, "tag": "final"}, files=files)
    assert r.status_code == 200, srv.explain(r)
    pick = nxt(srv, "quality_aware")
    assert (pick["id"], pick["wanted_stratum"], pick["hq_fraction"]) == (c, "LQ", 1.0)
    # the target is a request option: asking for an all-HQ set gives the remaining HQ study
    pick = nxt(srv, "quality_aware", target_hq_fraction=1.0)
    assert (pick["id"], pick["wanted_stratum"]) == (a, "HQ")
    # labeled studies are never proposed
    assert nxt(srv, "uncertainty")["id"] == c and b not in {
        nxt(srv, "random", seed=s)["id"] for s in range(8)
    }


def test_unknown_strategy_and_scoring_method_are_404(setup):
    srv, _ = setup
    r = srv.post("/activelearning/most_beautiful", json={})
    assert r.status_code == 404 and "most_beautiful" in r.text and "quality_aware" in r.text
    r = srv.post("/scoring/dice", params={"run_sync": "true"})
    assert r.status_code == 404 and "dice" in r.text
    assert srv.alive()
