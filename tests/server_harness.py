"""Start real servers for tests: MONAI Label with the ProQual app, and Orthanc with the repository config.

Both run as subprocesses on free loopback ports and are stopped cleanly (SIGTERM, then SIGKILL) when
the ``with`` block ends. Their output goes to a log file; when a server does not come up, or when a
test calls :meth:`RunningServer.explain`, the tail of that log is shown.

Usage (module-scoped fixtures keep one server per test module; starting MONAI Label takes seconds)::

    @pytest.fixture(scope="module")
    def server(tmp_path_factory):
        with monailabel_server(studies_dir, conf={"store": str(tmp / "store")}) as srv:
            yield srv

    def test_info(server):
        r = server.get("/info/")
        assert r.status_code == 200, server.explain(r)
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import requests
from proqual.classify.distributed import free_port  # noqa: F401 (used here and by the tests)

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # the tests import the app package (monailabel_app/) from the repository
    sys.path.append(str(REPO))
APP_DIR = REPO / "monailabel_app"
ORTHANC_CONFIG_SCRIPT = REPO / "orthanc" / "make_config.py"
ORTHANC_BINARY = os.environ.get("ORTHANC_BINARY", "Orthanc")
ORTHANC_DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")


def orthanc_available() -> bool:
    """True when the Orthanc binary and its DICOMweb plugin are installed (``make system-deps``)."""
    from shutil import which

    return which(ORTHANC_BINARY) is not None and ORTHANC_DICOMWEB_PLUGIN.exists()


def _tail(path: Path, lines: int = 60) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return "(no log)"
    return "\n".join(text[-lines:])


def _stop(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=timeout)


@dataclass
class RunningServer:
    """A started server: its base URL, process and log file, with small HTTP helpers."""

    url: str
    process: subprocess.Popen
    log_path: Path
    extra: dict = field(default_factory=dict)

    def log_tail(self, lines: int = 60) -> str:
        return _tail(self.log_path, lines)

    def explain(self, response: requests.Response | None = None, lines: int = 40) -> str:
        """Text for an assertion message: the response and the end of the server log."""
        head = ""
        if response is not None:
            head = f"{response.request.method} {response.url} -> {response.status_code}: {response.text[:2000]}\n"
        return f"{head}--- server log ({self.log_path}) ---\n{self.log_tail(lines)}"

    def alive(self) -> bool:
        return self.process.poll() is None

    def request(self, method: str, path: str, **kwargs) -> requests.Response:
        kwargs.setdefault("timeout", 60)
        return requests.request(method, f"{self.url}{path}", **kwargs)

    def get(self, path: str, **kwargs) -> requests.Response:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs) -> requests.Response:
        return self.request("POST", path, **kwargs)

    def put(self, path: str, **kwargs) -> requests.Response:
        return self.request("PUT", path, **kwargs)

    def delete(self, path: str, **kwargs) -> requests.Response:
        return self.request("DELETE", path, **kwargs)


def _wait_until_up(proc: subprocess.Popen, url: str, log: Path, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with code {proc.returncode} before answering\n{_tail(log)}")
        with contextlib.suppress(requests.RequestException):
            if requests.get(url, timeout=2).status_code == 200:
                return
        time.sleep(0.2)
    _stop(proc)
    raise RuntimeError(f"{what} did not answer {url} within {timeout:.0f} s\n{_tail(log)}")


@contextlib.contextmanager
def monailabel_server(
    studies: str | os.PathLike,
    *,
    conf: dict[str, str] | None = None,
    app_dir: str | os.PathLike = APP_DIR,
    log_dir: str | os.PathLike | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 120.0,
) -> Iterator[RunningServer]:
    """Run ``monailabel start_server --app <app_dir> --studies <studies>`` on a free loopback port.

    ``conf`` becomes ``--conf key value`` pairs. Yields once ``GET /info/`` answers 200; a server that
    exits or does not answer raises ``RuntimeError`` with the end of its log. MONAI Label sessions (and
    the log, unless ``log_dir`` is given) go to a temporary folder removed at the end.
    """
    port = free_port()
    tmp = Path(tempfile.mkdtemp(prefix="proqual-monailabel-"))
    log_dir = Path(log_dir) if log_dir else tmp
    log_dir.mkdir(parents=True, exist_ok=True)
    log = log_dir / f"monailabel-{port}.log"
    cmd = [
        sys.executable,
        "-m",
        "monailabel.main",
        "start_server",
        "--app",
        str(app_dir),
        "--studies",
        str(studies),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    for key, value in (conf or {}).items():
        cmd += ["--conf", str(key), str(value)]
    full_env = {
        **os.environ,
        "MONAI_LABEL_SESSION_PATH": str(tmp / "sessions"),
        "PYTHONUNBUFFERED": "1",
        **(env or {}),
    }
    with open(log, "wb") as fh:
        proc = subprocess.Popen(
            cmd, stdout=fh, stderr=subprocess.STDOUT, env=full_env, cwd=str(REPO), start_new_session=True
        )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_until_up(proc, f"{url}/info/", log, timeout, "monailabel start_server")
        yield RunningServer(url=url, process=proc, log_path=log, extra={"port": port, "tmp": tmp})
    finally:
        _stop(proc)
        shutil.rmtree(tmp, ignore_errors=True)  # sessions (and the log, unless log_dir was given)


@contextlib.contextmanager
def orthanc_server(
    *, storage_dir: str | os.PathLike | None = None, timeout: float = 30.0
) -> Iterator[RunningServer]:
    """Run Orthanc with the repository's ``orthanc/orthanc.json`` on free HTTP and DICOM ports.

    ``storage_dir`` defaults to a temporary folder removed at the end. ``extra["dicomweb"]`` is the
    DICOMweb root URL.
    """
    http_port, dicom_port = free_port(), free_port()
    tmp = Path(tempfile.mkdtemp(prefix="proqual-orthanc-"))
    storage = Path(storage_dir) if storage_dir else tmp / "storage"
    config = tmp / "orthanc.json"
    subprocess.run(
        [
            sys.executable,
            str(ORTHANC_CONFIG_SCRIPT),
            "--out",
            str(config),
            "--http-port",
            str(http_port),
            "--dicom-port",
            str(dicom_port),
            "--storage",
            str(storage),
        ],
        check=True,
        capture_output=True,
    )
    log = tmp / "orthanc.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen(
            [ORTHANC_BINARY, str(config)], stdout=fh, stderr=subprocess.STDOUT, start_new_session=True
        )
    url = f"http://127.0.0.1:{http_port}"
    try:
        _wait_until_up(proc, f"{url}/system", log, timeout, "Orthanc")
        yield RunningServer(
            url=url,
            process=proc,
            log_path=log,
            extra={"dicomweb": f"{url}/dicom-web", "dicom_port": dicom_port, "storage": storage},
        )
    finally:
        _stop(proc)
        shutil.rmtree(tmp, ignore_errors=True)  # configuration, log and (default) storage


def upload_dicom(orthanc: RunningServer, files) -> list[str]:
    """POST DICOM files to Orthanc's REST API (``/instances``); returns the Orthanc instance ids."""
    ids = []
    for f in files:
        r = requests.post(f"{orthanc.url}/instances", data=Path(f).read_bytes(), timeout=30)
        r.raise_for_status()
        body = r.json()
        ids.append(body["ID"])
    return ids


# ------------------------------------------------------------------------------------------------ data
def write_picai_studies(root: str | os.PathLike, *, n: int = 3, drop_last: str | None = "hbv") -> Path:
    """A small PI-CAI folder under ``root``: the phantom's (``proqual.phantom.write_picai``, preset
    "test") when it exists, else tiny random volumes. ``drop_last`` removes that sequence of the last
    study so one study is incomplete."""
    import numpy as np
    from proqual.io import Volume, write_volume

    root = Path(root)
    write_picai = _phantom_writer(dicom=False)
    if write_picai is not None:
        write_picai(root, n=n, seed=0, preset="test")
    else:
        rng = np.random.default_rng(0)
        for i in range(n):
            patient, study = f"{10000 + i}", f"{1000000 + i}"
            for seq, spacing in (
                ("t2w", (0.5, 0.5, 3.0)),
                ("adc", (2.0, 2.0, 3.0)),
                ("hbv", (2.0, 2.0, 3.0)),
            ):
                shape = (24, 24, 6) if seq == "t2w" else (8, 8, 6)
                vol = Volume(rng.random(shape, dtype=np.float32) + 1.0, spacing, (0.0, 0.0, 0.0))
                write_volume(vol, root / "images" / patient / f"{patient}_{study}_{seq}.mha")
    if drop_last:
        t2w = sorted((root / "images").rglob("*_t2w.*"))[-1]
        for f in t2w.parent.glob(t2w.name.replace("_t2w.", f"_{drop_last}.")):
            f.unlink()
    return root


def write_mr_series(
    folder: str | os.PathLike,
    *,
    study_uid: str,
    series_uid: str,
    patient_id: str,
    description: str,
    series_number: int,
    image_type: tuple[str, ...] = ("ORIGINAL", "PRIMARY", "M", "ND"),
    b_value: float | None = None,
    n: int = 4,
    size: int = 16,
    spacing: float = 0.5,
    thickness: float = 3.0,
) -> list[Path]:
    """Write one small MR series (MR Image Storage, one file per slice) with pydicom; returns its files."""
    import numpy as np
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(series_number)
    frame_uid = generate_uid(entropy_srcs=[study_uid])
    files = []
    for k in range(n):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = MRImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        path = folder / f"{series_number:03d}_{k:03d}.dcm"
        ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.is_little_endian, ds.is_implicit_VR = True, False
        ds.SOPClassUID = MRImageStorage
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
        ds.FrameOfReferenceUID = frame_uid
        ds.PatientID, ds.PatientName = patient_id, f"Phantom^{patient_id}"
        ds.StudyDate, ds.StudyTime = "20260101", "120000"
        ds.Modality, ds.Manufacturer, ds.MagneticFieldStrength = "MR", "SIEMENS", 3
        ds.SeriesDescription, ds.ProtocolName = description, description
        ds.SeriesNumber, ds.InstanceNumber = series_number, k + 1
        ds.ImageType = list(image_type)
        ds.Rows = ds.Columns = size
        ds.PixelSpacing = [spacing, spacing]
        ds.SliceThickness = thickness
        ds.ImagePositionPatient = [0.0, 0.0, k * thickness]
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        if b_value is not None:
            ds.DiffusionBValue = float(b_value)
        ds.PixelData = (rng.random((size, size)) * 1000).astype(np.uint16).tobytes()
        ds.save_as(str(path), write_like_original=False)
        files.append(path)
    return files


def write_dicom_studies(root: str | os.PathLike, *, n: int = 2) -> list[Path]:
    """DICOM files of ``n`` bi-parametric MR studies: the phantom's (``write_picai(..., dicom=True)``)
    when it exists, else Siemens-like T2W, ADC, calculated b1400 and a localizer written here.
    Returns every DICOM file."""
    from pydicom.uid import generate_uid

    root = Path(root)
    write_picai = _phantom_writer(dicom=True)
    if write_picai is not None:
        write_picai(root, n=n, seed=0, preset="test", dicom=True)
        return sorted(p for p in root.rglob("*") if p.is_file() and _is_dicom(p))
    files: list[Path] = []
    for i in range(n):
        study = generate_uid()
        series = [
            ("t2_tse_tra", 2, ("ORIGINAL", "PRIMARY", "M", "ND"), None, 16),
            ("ep2d_diff_tra_ADC", 5, ("DERIVED", "PRIMARY", "DIFFUSION", "ADC"), None, 8),
            ("ep2d_diff_tra_CALC_BVAL", 6, ("DERIVED", "PRIMARY", "DIFFUSION", "CALC_BVALUE"), 1400, 8),
            ("localizer", 1, ("ORIGINAL", "PRIMARY", "M", "ND"), None, 8),
        ]
        for desc, number, itype, b, size in series:
            files += write_mr_series(
                root / f"study{i}" / desc,
                study_uid=study,
                series_uid=generate_uid(),
                patient_id=f"P{i:03d}",
                description=desc,
                series_number=number,
                image_type=itype,
                b_value=b,
                size=size,
                spacing=0.5 if size == 16 else 1.0,
            )
    return files


def _phantom_writer(*, dicom: bool):
    """``proqual.phantom.write_picai`` when it and what it needs are there (its marksheet is read with
    ``proqual.labels``; its DICOM is written by ``proqual.io.dicom.write_series``), else None."""
    import importlib

    def have(module: str, name: str | None = None) -> bool:
        try:
            mod = importlib.import_module(module)
        except ImportError:
            return False
        return name is None or hasattr(mod, name)

    if not (have("proqual.phantom", "write_picai") and have("proqual.labels")):
        return None
    if dicom and not have("proqual.io.dicom", "write_series"):
        return None
    from proqual.phantom import write_picai

    return write_picai


def _is_dicom(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            fh.seek(128)
            return fh.read(4) == b"DICM"
    except OSError:
        return False
