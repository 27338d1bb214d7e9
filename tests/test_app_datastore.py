"""The app's datastores: a PI-CAI folder and a flat folder (in-process and over HTTP), and DICOMweb from a
real Orthanc. Servers are real subprocesses on loopback (tests/server_harness.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from proqual.errors import InputError
from proqual.io import Volume, read_volume, write_volume
from proqual.io.layouts import load_studies
from server_harness import (
    monailabel_server,
    orthanc_available,
    orthanc_server,
    upload_dicom,
    write_dicom_studies,
    write_mr_series,
    write_picai_studies,
)

from monailabel_app.datastore import LocalStudyDatastore
from monailabel_app.errors import ImageNotFound


@pytest.fixture(scope="module")
def picai_dir(tmp_path_factory) -> Path:
    return write_picai_studies(tmp_path_factory.mktemp("picai"), n=3, drop_last="hbv")


@pytest.fixture(scope="module")
def expected(picai_dir):
    """What the folder holds, from proqual's own loader: study id -> {sequence: file}."""
    return {
        s.study_id: {seq.value: Path(ref.path) for seq, ref in s.sequences.items()}
        for s in load_studies(picai_dir)
    }


def _image_id(path: Path) -> str:
    name = path.name
    for suffix in (".nii.gz", ".nii", ".mha", ".nrrd"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    raise AssertionError(name)


# ------------------------------------------------------------------------------------ in-process
def test_local_datastore_lists_every_sequence_with_study_and_anchor(picai_dir, expected, tmp_path):
    ds = LocalStudyDatastore(picai_dir, store=tmp_path / "store")
    all_files = sorted(f for seqs in expected.values() for f in seqs.values())
    assert sorted(ds.list_images()) == sorted(_image_id(f) for f in all_files)
    assert len(ds.anchor_ids()) == len(expected)
    for study_id, seqs in expected.items():
        anchor = _image_id(seqs["T2W"])
        for seq, f in seqs.items():
            info = ds.get_image_info(_image_id(f))
            assert info["study_id"] == study_id
            assert info["sequence"] == seq
            assert info["anchor"] == anchor
            assert Path(ds.get_image_uri(_image_id(f))) == f.resolve()
            # any sequence id maps to its study
            assert ds.study_for(_image_id(f)).study_id == study_id
        assert ds.get_image_info(anchor)["is_anchor"] is True
    incomplete = [s for s, seqs in expected.items() if "HBV" not in seqs]
    assert len(incomplete) == 1
    anchor = _image_id(expected[incomplete[0]]["T2W"])
    assert ds.get_image_info(anchor)["missing"] == ["HBV"]
    assert ds.missing(anchor) == ["HBV"]
    # nothing is labeled yet; active learning sees anchors only
    assert ds.get_labeled_images() == []
    assert sorted(ds.get_unlabeled_images()) == sorted(ds.anchor_ids())
    with pytest.raises(ImageNotFound):
        ds.get_image_info("no_such_image")
    # the default store is the folder's labels/ (MONAI Label's place); here it was given
    assert not (picai_dir / "labels").exists()


def test_flat_folder_and_default_store(tmp_path):
    flat = tmp_path / "flat"
    rng = np.random.default_rng(1)
    for study in ("caseA", "caseB"):
        for seq in ("t2w", "adc", "hbv"):
            vol = Volume(rng.random((12, 12, 3), dtype=np.float32) + 1, (1.0, 1.0, 3.0), (0.0, 0.0, 0.0))
            write_volume(vol, flat / f"{study}_{seq}.nii.gz")
    ds = LocalStudyDatastore(flat)
    assert sorted(ds.anchor_ids()) == ["caseA_t2w", "caseB_t2w"]
    assert ds.get_image_info("caseB_adc")["sequences"] == {
        "T2W": "caseB_t2w",
        "ADC": "caseB_adc",
        "HBV": "caseB_hbv",
    }
    assert ds.store == (flat / "labels").resolve()
    # the store folder inside the studies folder is not mistaken for studies on refresh
    ds.refresh()
    assert len(ds.list_images()) == 6


def test_a_folder_without_studies_is_a_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError) as err:
        LocalStudyDatastore(tmp_path / "empty")
    assert "empty" in str(err.value)


# ------------------------------------------------------------------------------------ over HTTP
@pytest.fixture(scope="module")
def server(picai_dir, tmp_path_factory):
    store = tmp_path_factory.mktemp("store")
    with monailabel_server(picai_dir, conf={"store": str(store), "device": "cpu"}) as srv:
        yield srv


@pytest.mark.server
def test_server_lists_studies_and_images(server, expected):
    r = server.get("/datastore/", params={"output": "stats"})
    assert r.status_code == 200, server.explain(r)
    stats = r.json()
    n_images = sum(len(s) for s in expected.values())
    assert (stats["total"], stats["completed"]) == (len(expected), 0)
    assert stats["images"] == n_images and stats["incomplete_studies"] == 1
    r = server.get("/datastore/", params={"output": "all"})
    objects = r.json()["objects"]
    assert sorted(objects) == sorted(_image_id(f) for s in expected.values() for f in s.values())
    r = server.get("/proqual/studies")
    rows = {row["study_id"]: row for row in r.json()}
    assert set(rows) == set(expected)
    for study_id, seqs in expected.items():
        assert rows[study_id]["anchor"] == _image_id(seqs["T2W"])
        assert rows[study_id]["sequences"] == {k: _image_id(v) for k, v in seqs.items()}
        assert rows[study_id]["missing"] == ([] if "HBV" in seqs else ["HBV"])


@pytest.mark.server
def test_server_image_info_and_download(server, expected, tmp_path):
    study_id, seqs = next(iter(expected.items()))
    adc = _image_id(seqs["ADC"])
    r = server.get("/datastore/image/info", params={"image": adc})
    assert r.status_code == 200, server.explain(r)
    info = r.json()
    assert (info["study_id"], info["sequence"], info["anchor"]) == (study_id, "ADC", _image_id(seqs["T2W"]))
    assert info["is_anchor"] is False and info["missing"] == []
    assert info["metadata"]["spacing_mm"] is not None
    r = server.get("/datastore/image", params={"image": adc})
    assert r.status_code == 200, server.explain(r)
    assert r.content == seqs["ADC"].read_bytes()
    assert server.request("HEAD", "/datastore/image", params={"image": adc}).status_code == 200
    # the downloaded file is the image
    out = tmp_path / seqs["ADC"].name
    out.write_bytes(r.content)
    np.testing.assert_array_equal(read_volume(out).array, read_volume(seqs["ADC"]).array)


@pytest.mark.server
def test_server_info_reports_models_without_weights_as_unavailable(server):
    r = server.get("/info/")
    assert r.status_code == 200, server.explain(r)
    pq = r.json()["proqual"]
    assert pq["device"] == "cpu"
    for name, model in pq["models"].items():
        if not Path(model["checkpoint"]).is_file():
            assert model["available"] is False
            assert model["checkpoint"] in model["reason"]
            assert name not in r.json()["models"]


# ------------------------------------------------------------------------------------ DICOMweb
def _dicom_ready() -> str | None:
    if not orthanc_available():
        return "Orthanc with the DICOMweb plugin is not installed (make system-deps)"
    try:
        from proqual.io.dicom import identify_sequence  # noqa: F401
    except ImportError:
        return "proqual.io.dicom.identify_sequence has not landed yet"
    return None


dicom_skip = pytest.mark.skipif(_dicom_ready() is not None, reason=str(_dicom_ready()))


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory):
    import pydicom
    from pydicom.uid import generate_uid

    root = tmp_path_factory.mktemp("dicom")
    files = write_dicom_studies(root, n=2)
    # plus a localizer in the first study: listed as unidentified, never an image
    first = pydicom.dcmread(files[0], stop_before_pixels=True)
    files += write_mr_series(
        root / "extra" / "localizer",
        study_uid=first.StudyInstanceUID,
        series_uid=generate_uid(),
        patient_id=str(first.PatientID),
        description="localizer",
        series_number=99,
        n=3,
    )
    with orthanc_server() as srv:
        upload_dicom(srv, files)
        srv.extra["files"] = files
        yield srv


def _series_by_study(files):
    import pydicom

    out: dict[str, set[str]] = {}
    for f in files:
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        out.setdefault(ds.StudyInstanceUID, set()).add(ds.SeriesInstanceUID)
    return out


@dicom_skip
@pytest.mark.server
def test_dicomweb_datastore_groups_series_into_studies(orthanc, tmp_path):
    from monailabel_app.dicomweb import DICOMwebStudyDatastore

    ds = DICOMwebStudyDatastore(orthanc.extra["dicomweb"], store=tmp_path / "store")
    truth = _series_by_study(orthanc.extra["files"])
    assert sorted(ds.study_ids()) == sorted(truth)
    for study_uid, series in truth.items():
        anchor = next(a for a in ds.anchor_ids() if ds.entry(a).study_id == study_uid)
        seqs = ds.sequence_ids(anchor)
        assert {"T2W", "ADC", "HBV"} <= set(seqs)
        assert set(seqs.values()) <= series  # image ids are SeriesInstanceUIDs of that study
        assert seqs["T2W"] == anchor
        info = ds.get_image_info(seqs["ADC"])
        assert (info["study_id"], info["sequence"], info["anchor"]) == (study_uid, "ADC", anchor)
        # every series is either a sequence image or listed as unidentified, with the reason
        unidentified = ds.get_image_info(anchor).get("unidentified", [])
        assert all(u["reason"] for u in unidentified)
        assert set(seqs.values()) | {u["series_uid"] for u in unidentified} == series
    localizers = [u for a in ds.anchor_ids() for u in ds.get_image_info(a).get("unidentified", [])]
    assert [u["description"] for u in localizers] == ["localizer"]
    assert "localizer" in localizers[0]["reason"]
    # nothing was fetched at start; an image is fetched and converted on demand
    assert not (tmp_path / "store" / "cache").exists()
    uri = Path(ds.get_image_uri(ds.anchor_ids()[0]))
    assert uri.name.endswith(".nii.gz") and read_volume(uri).array.ndim == 3
    study = ds.study_for(ds.anchor_ids()[0])
    assert all(Path(p).is_file() for ref in study.sequences.values() for p in ref.paths)


@dicom_skip
@pytest.mark.server
def test_server_on_orthanc_lists_mr_studies_without_internet(orthanc, tmp_path):
    truth = _series_by_study(orthanc.extra["files"])
    with monailabel_server(orthanc.extra["dicomweb"], conf={"store": str(tmp_path / "store")}) as srv:
        r = srv.get("/proqual/studies")
        assert r.status_code == 200, srv.explain(r)
        assert sorted(row["study_id"] for row in r.json()) == sorted(truth)
        row = r.json()[0]
        r = srv.get("/datastore/image", params={"image": row["sequences"]["ADC"]})
        assert r.status_code == 200 and len(r.content) > 100, srv.explain(r)
        assert "dcmqi" not in srv.log_tail(1000)
    assert not list(
        (Path(__file__).resolve().parent.parent / "monailabel_app" / "bin").glob("itkimage2segimage*")
    )
