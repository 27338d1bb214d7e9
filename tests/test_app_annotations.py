"""Annotation intake over HTTP: MONAI Label's own PUT /datastore/label with the annotation JSON, the
labeled count, validation (422 naming the field, nothing stored), two annotators, history and the
finetune-set summary. One real server for the module."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from server_harness import monailabel_server

pytest.importorskip("proqual.labels", reason="proqual.labels (annotation schema) not landed yet")

pytestmark = pytest.mark.server


def annotation(annotator: str, pirads: int = 4, isup=2, study_q: int = 3, **extra) -> dict:
    data = {
        "pirads": pirads,
        "isup": isup,
        "piqual": {"T2W": 3, "ADC": 2, "HBV": 2, "study": study_q},
        "annotator": annotator,
        "comment": "",
    }
    data.update(extra)
    return data


@pytest.fixture(scope="module")
def env(phantom_picai_dir, tmp_path_factory):
    """The shared phantom folder (tests/conftest.py), read-only here: the store is elsewhere."""
    studies = phantom_picai_dir
    store = tmp_path_factory.mktemp("store")
    with monailabel_server(studies, conf={"store": str(store), "target_hq_fraction": "0.6"}) as srv:
        rows = srv.get("/proqual/studies").json()
        yield srv, store, rows


def submit(srv, image: str, data, *, tag: str = "final", params: dict | None = None):
    body = data if isinstance(data, bytes) else json.dumps(data).encode()
    files = {"label": ("annotation.json", body, "application/json")}
    form = {"params": json.dumps(params)} if params is not None else None
    return srv.put("/datastore/label", params={"image": image, "tag": tag}, files=files, data=form)


def stats(srv) -> dict:
    return srv.get("/datastore/", params={"output": "stats"}).json()


def history(srv, image: str) -> dict:
    r = srv.get(f"/proqual/annotations/{image}")
    assert r.status_code == 200, srv.explain(r)
    return r.json()


def test_submit_counts_the_study_as_labeled(env):
    srv, store, rows = env
    anchor = rows[0]["anchor"]
    before = stats(srv)["completed"]
    r = submit(srv, anchor, annotation("dr_a"))
    assert r.status_code == 200, srv.explain(r)
    body = r.json()
    assert (body["label"], body["revision"], body["annotator"], body["conflict"]) == (
        anchor,
        1,
        "dr_a",
        False,
    )
    assert stats(srv)["completed"] == before + 1
    assert anchor in srv.get("/datastore/", params={"output": "all"}).json()["objects"]
    # MONAI Label's own label routes see it
    r = srv.get("/datastore/label", params={"label": anchor, "tag": "final"})
    assert r.status_code == 200, srv.explain(r)
    final = r.json()
    assert final["anchor"] == anchor and final["annotators"]["dr_a"]["pirads"] == 4
    assert (store / "final" / f"{anchor}.json").is_file()
    assert (store / "annotations" / "revisions" / anchor / "1.json").is_file()
    info = srv.get("/datastore/image/info", params={"image": anchor}).json()
    assert info["labeled"] is True
    train = srv.get("/datastore/", params={"output": "train"}).json()
    assert any(item["anchor"] == anchor and Path(item["label"]).is_file() for item in train)


@pytest.mark.parametrize(
    ("bad", "field"),
    [
        ({"pirads": 9}, "pirads"),
        ({"isup": 7}, "isup"),
        ({"piqual": {"T2W": 4, "study": 2}}, "piqual"),
    ],
)
def test_invalid_values_are_422_naming_the_field_and_store_nothing(env, bad, field):
    srv, store, rows = env
    anchor = rows[1]["anchor"]
    revisions_before = len(history(srv, anchor)["revisions"])
    completed_before = stats(srv)["completed"]
    final_before = (
        (store / "final" / f"{anchor}.json").read_bytes()
        if (store / "final" / f"{anchor}.json").exists()
        else None
    )
    data = annotation("dr_x")
    data.update(bad)
    r = submit(srv, anchor, data)
    assert r.status_code == 422, srv.explain(r)
    assert field in r.json()["field"] and field in r.json()["detail"]
    assert len(history(srv, anchor)["revisions"]) == revisions_before
    assert stats(srv)["completed"] == completed_before
    final_path = store / "final" / f"{anchor}.json"
    assert (final_path.read_bytes() if final_path.exists() else None) == final_before


def test_garbage_label_is_422_and_stores_nothing(env):
    srv, store, rows = env
    anchor = rows[1]["anchor"]
    before = len(history(srv, anchor)["revisions"])
    r = submit(srv, anchor, b"\x00\x01 not json")
    assert r.status_code == 422, srv.explain(r)
    assert r.json()["field"] == "label"
    assert len(history(srv, anchor)["revisions"]) == before


def test_two_annotators_two_revisions_history_and_conflict(env):
    srv, store, rows = env
    anchor = rows[2]["anchor"]
    other_sequence = rows[2]["sequences"]["ADC"]
    assert submit(srv, anchor, annotation("dr_a", pirads=3, isup=1)).status_code == 200
    # a sequence id of the same study lands on the study's anchor
    r = submit(srv, other_sequence, annotation("dr_b", pirads=5, isup=1))
    assert r.status_code == 200, srv.explain(r)
    assert r.json()["label"] == anchor and r.json()["revision"] == 2 and r.json()["conflict"] is True
    h = history(srv, anchor)
    assert [(rev["revision"], rev["annotator"]) for rev in h["revisions"]] == [(1, "dr_a"), (2, "dr_b")]
    assert set(h["current"]) == {"dr_a", "dr_b"}
    assert h["conflict"] is True and h["disagreements"]["pirads"] == {"dr_a": 3, "dr_b": 5}
    assert h["agreed"]["isup"] == 1
    # the history is the same whichever sequence id asks
    assert history(srv, other_sequence)["revisions"] == h["revisions"]
    # dr_a changes their mind: a third revision, nothing overwritten, conflict resolved
    assert submit(srv, anchor, annotation("dr_a", pirads=5, isup=1)).json()["conflict"] is False
    h = history(srv, anchor)
    assert len(h["revisions"]) == 3 and h["current"]["dr_a"]["revision"] == 3
    assert h["revisions"][0]["annotation"]["pirads"] == 3
    final = srv.get("/datastore/label", params={"label": anchor, "tag": "final"}).json()
    assert final["revision"] == 3 and final["conflict"] is False


def test_annotator_from_params_and_missing_annotator(env):
    srv, store, rows = env
    anchor = rows[0]["anchor"]
    data = annotation("x")
    data.pop("annotator")
    r = submit(srv, anchor, data, params={"annotator": "dr_p"})
    assert r.status_code == 200, srv.explain(r)
    assert r.json()["annotator"] == "dr_p"
    r = submit(srv, anchor, data)
    assert r.status_code == 422 and r.json()["field"] == "annotator", srv.explain(r)


def test_finetune_set_summary(env):
    srv, store, rows = env
    r = srv.get("/proqual/finetune-set")
    assert r.status_code == 200, srv.explain(r)
    s = r.json()
    labeled = [row for row in rows if history(srv, row["anchor"])["revisions"]]
    assert s["labeled"] == len(labeled)
    assert sum(s["pirads"].values()) == s["labeled"]
    assert sum(s["strata"].values()) == s["labeled"]
    assert s["target_hq_fraction"] == 0.6
    # every annotation here rates the study PI-QUAL v2 = 3 (optimal): HQ by the expert rule
    assert s["strata"]["HQ"] == s["labeled"] > 0
    assert {row["stratum_source"] for row in s["studies"]} == {"expert"}
    assert s["hq_fraction"] == 1.0
    known = s["strata"]["HQ"] + s["strata"]["LQ"]
    if known:
        assert s["hq_fraction"] == pytest.approx(s["strata"]["HQ"] / known)
        assert s["hq_fraction_gap"] == pytest.approx(s["hq_fraction"] - 0.6)


def test_unknown_image_is_404(env):
    srv, _, _ = env
    r = submit(srv, "no_such_study_t2w", annotation("dr_a"))
    assert r.status_code == 404 and "no_such_study_t2w" in r.json()["detail"], srv.explain(r)
    assert srv.get("/proqual/annotations/no_such_study_t2w").status_code == 404


def test_stratum_from_the_quality_score_without_expert_piqual(env):
    srv, _, rows = env
    anchor = rows[3]["anchor"]
    data = annotation("dr_q", pirads=2, isup=0)
    data["piqual"] = {}
    assert submit(srv, anchor, data).status_code == 200
    for score, stratum in ((0.95, "HQ"), (0.2, "LQ")):
        r = srv.put(
            "/datastore/image/info",
            params={"image": anchor},
            data={"info": json.dumps({"quality_score": score})},
        )
        assert r.status_code == 200, srv.explain(r)
        row = next(s for s in srv.get("/proqual/finetune-set").json()["studies"] if s["anchor"] == anchor)
        assert (row["stratum"], row["stratum_source"], row["quality_score"]) == (stratum, "model", score)
