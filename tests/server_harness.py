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
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parent.parent
APP_DIR = REPO / "monailabel_app"
ORTHANC_CONFIG_SCRIPT = REPO / "orthanc" / "make_config.py"
ORTHANC_BINARY = os.environ.get("ORTHANC_BINARY", "Orthanc")
ORTHANC_DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
    exits or does not answer raises ``RuntimeError`` with the end of its log. MONAI Label sessions go
    to a temporary folder.
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


@contextlib.contextmanager
def orthanc_server(
    *, storage_dir: str | os.PathLike | None = None, timeout: float = 30.0
) -> Iterator[RunningServer]:
    """Run Orthanc with the repository's ``orthanc/orthanc.json`` on free HTTP and DICOM ports.

    ``storage_dir`` defaults to a new temporary folder. ``extra["dicomweb"]`` is the DICOMweb root URL.
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


def upload_dicom(orthanc: RunningServer, files) -> list[str]:
    """POST DICOM files to Orthanc's REST API (``/instances``); returns the Orthanc instance ids."""
    ids = []
    for f in files:
        r = requests.post(f"{orthanc.url}/instances", data=Path(f).read_bytes(), timeout=30)
        r.raise_for_status()
        body = r.json()
        ids.append(body["ID"])
    return ids
