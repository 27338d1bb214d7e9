"""Inference tasks over real HTTP: quality, pirads and isup on phantom studies, the shared study cache,
model versions, hot reload of a republished checkpoint, and the 4xx answers (unknown model/image 404,
a study missing a sequence 422)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from server_harness import monailabel_server, write_picai_studies


def make_checkpoints(folder: Path, *, seed: int = 0) -> dict[str, str]:
    """Small untrained quality, PI-RADS (pirads_ge4) and ISUP (cspca) checkpoints; --conf pairs."""
    import torch
    from proqual.checkpoints import save_checkpoint
    from proqual.classify.data import INPUTS
    from proqual.classify.infer import build_classifier, classifier_config
    from proqual.labels import get_scheme
    from proqual.nets.quality_net import QualityNet, QualityNetConfig
    from proqual.quality.training import save_quality_checkpoint

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    save_quality_checkpoint(QualityNet(QualityNetConfig()), folder / "quality.pt", meta={"test": True})
    conf = {"quality_checkpoint": str(folder / "quality.pt")}
    for name, scheme in (("pirads", "pirads_ge4"), ("isup", "cspca")):
        config = classifier_config(preset="small-cpu", scheme=get_scheme(scheme), inputs=INPUTS["small"])
        model = build_classifier(config)
        save_checkpoint(model, folder / f"{name}.pt", meta={"test": True}, config=config)
        conf[f"{name}_checkpoint"] = str(folder / f"{name}.pt")
    return conf


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("infer")
    studies = write_picai_studies(tmp / "studies", n=3, drop_last="hbv")
    conf = make_checkpoints(tmp / "model")
    conf.update(store=str(tmp / "store"), device="cpu", cache_size="2")
    with monailabel_server(studies, conf=conf) as srv:
        studies_list = srv.get("/proqual/studies").json()
        yield srv, studies_list, conf


def _complete(studies):
    return [s for s in studies if not s.get("missing")]


def _anchor(s):
    return s.get("anchor") or s.get("anchor_id") or s["id"]


def test_info_lists_the_three_models(setup):
    srv, _, _ = setup
    info = srv.get("/info/").json()
    assert {"quality", "pirads", "isup"} <= set(info["models"]), srv.explain()
    for m in ("quality", "pirads", "isup"):
        assert info["models"][m]["type"] == "classification"


def test_three_tasks_share_one_read_and_preprocessing(setup):
    srv, studies, _ = setup
    study = _complete(studies)[0]
    anchor = _anchor(study)
    other = next(i for seq, i in study["sequences"].items() if seq != "T2W")
    r = srv.post("/infer/quality", params={"image": anchor, "output": "json"})
    assert r.status_code == 200, srv.explain(r)
    q = r.json()
    assert set(q["sequences"]) >= {"T2W", "ADC", "HBV"}
    t2w = q["sequences"]["T2W"]
    assert 0.0 <= t2w["score"] <= 1.0 and t2w["piqual"] in (1, 2, 3)
    assert len(t2w["salient_slice"]["position_lps"]) == 3 and t2w["salient_slice"]["index"] >= 0
    assert q["study_piqual"] in (1, 2, 3) and len(q["model"]["sha256"]) == 12
    assert q["cache"]["volume_reads"] == 3, q["cache"]
    # any sequence id of the study resolves to the study; the volumes are not read again
    r = srv.post("/infer/pirads", params={"image": other, "output": "json"})
    assert r.status_code == 200, srv.explain(r)
    p = r.json()
    assert p["anchor"] == anchor and p["scheme"] == "pirads_ge4"
    assert set(p["probabilities"]) == {"PI-RADS<4", "PI-RADS>=4"}
    assert abs(sum(p["probabilities"].values()) - 1) < 1e-3
    assert 0 <= p["pirads_ge4_probability"] <= 1 and p["model"]["sha256"]
    assert p["cache"] == {"volume_reads": 0, "volume_hits": 3, "preprocess_runs": 1, "preprocess_hits": 0}
    r = srv.post("/infer/isup", params={"image": anchor, "output": "json"})
    assert r.status_code == 200, srv.explain(r)
    i = r.json()
    assert i["scheme"] == "cspca" and 0 <= i["cspca_probability"] <= 1
    assert i["cache"]["volume_reads"] == 0 and i["cache"]["preprocess_runs"] == 0, i["cache"]
    assert i["cache"]["preprocess_hits"] == 1
    stats = srv.get("/info/").json()["proqual"]["cache"]
    assert stats["studies"] >= 1 and stats["preprocess_runs"] >= 1
    # the quality score is kept in the anchor's image info
    info = srv.get("/datastore/image/info", params={"image": anchor}).json()
    assert info.get("quality_score") == q["quality_score"]


def test_missing_sequence_is_422_naming_it(setup):
    srv, studies, _ = setup
    incomplete = next(s for s in studies if s.get("missing"))
    r = srv.post("/infer/pirads", params={"image": _anchor(incomplete), "output": "json"})
    assert r.status_code == 422, srv.explain(r)
    assert "HBV" in r.text and r.json()["missing"] == ["HBV"]
    # quality scores what is there
    r = srv.post("/infer/quality", params={"image": _anchor(incomplete), "output": "json"})
    assert r.status_code == 200, srv.explain(r)
    assert "HBV" not in r.json()["sequences"]


def test_unknown_model_and_image_are_404(setup):
    srv, studies, _ = setup
    r = srv.post("/infer/gleason", params={"image": _anchor(studies[0]), "output": "json"})
    assert r.status_code == 404 and "gleason" in r.text
    r = srv.post("/infer/pirads", params={"image": "no-such-image", "output": "json"})
    assert r.status_code == 404 and "no-such-image" in r.text
    assert srv.alive()


def test_republished_checkpoint_is_hot_reloaded(setup, tmp_path):
    srv, studies, conf = setup
    anchor = _anchor(_complete(studies)[0])
    before = srv.post("/infer/isup", params={"image": anchor, "output": "json"}).json()
    path = Path(conf["isup_checkpoint"])
    fresh = make_checkpoints(tmp_path / "new", seed=7)
    time.sleep(0.01)
    os.replace(fresh["isup_checkpoint"], path)
    r = srv.post("/infer/isup", params={"image": anchor, "output": "json"})
    assert r.status_code == 200, srv.explain(r)
    after = r.json()
    assert after["model"]["sha256"] != before["model"]["sha256"]
    assert after["probabilities"] != before["probabilities"]


# ------------------------------------------------------------------------------------ the study cache
def _phantom_study(root: Path, index: int):
    from proqual.study import Sequence, SeriesRef, Study

    write_picai_studies(root, n=index + 1, drop_last=None)
    t2w = sorted((root / "images").rglob("*_t2w.*"))[index]
    seqs = {}
    for seq in (Sequence.T2W, Sequence.ADC, Sequence.HBV):
        path = t2w.with_name(t2w.name.replace("_t2w.", f"_{seq.value.lower()}."))
        seqs[seq] = SeriesRef(sequence=seq, paths=[str(path)])
    return Study(study_id=t2w.name.split("_t2w")[0], sequences=seqs)


def test_study_cache_reads_and_preprocesses_once(tmp_path):
    import threading

    import torch
    from proqual.cache import StudyCache
    from proqual.classify.data import INPUTS, study_tensor

    study = _phantom_study(tmp_path, 0)
    cache = StudyCache(2)
    small = INPUTS["small"]
    results = []
    threads = [
        threading.Thread(
            target=lambda: results.append(cache.tensor(study, roi=small.roi, spacing=small.spacing))
        )
        for _ in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stats = cache.stats()
    assert stats["volume_reads"] == 3 and stats["preprocess_runs"] == 1 and stats["preprocess_hits"] == 3
    assert all(r is results[0] for r in results)
    expected = study_tensor(study, small)
    assert results[0].shape == (3, *small.roi) and torch.allclose(results[0], expected, atol=1e-5)
    vols = cache.volumes(study, ["t2w"])
    assert cache.stats()["volume_reads"] == 3 and list(vols) == [next(iter(study.sequences))]


def test_study_cache_is_bounded_and_sees_changed_files(tmp_path):
    import os

    from proqual.cache import StudyCache
    from proqual.errors import MissingSequenceError
    from proqual.study import Sequence

    a, b = _phantom_study(tmp_path, 0), _phantom_study(tmp_path, 1)
    cache = StudyCache(1)
    cache.volumes(a)
    cache.volumes(b)  # evicts a
    assert cache.stats()["evictions"] == 1 and cache.stats()["studies"] == 1
    cache.volumes(a)
    assert cache.stats()["volume_reads"] == 9
    # a rewritten file (new mtime) is read again, the stale entry replaced
    path = a.sequences[Sequence.ADC].paths[0]
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    cache.volumes(a)
    assert cache.stats()["volume_reads"] == 12 and cache.stats()["studies"] == 1
    del a.sequences[Sequence.HBV]
    with pytest.raises(MissingSequenceError) as err:
        cache.tensor(a, roi=(8, 16, 16), spacing=(4.0, 2.0, 2.0), task="pirads")
    assert err.value.missing == ["HBV"]
    off = StudyCache(0)
    off.volumes(b)
    off.volumes(b)
    assert off.stats()["volume_reads"] == 6 and off.stats()["studies"] == 0
