"""Write an Orthanc configuration from orthanc/orthanc.json with ports and storage overridden.

Orthanc reads integer options only as JSON numbers and resolves relative paths against the folder of
the configuration file, so ``make orthanc`` and the tests write a copy next to the storage folder::

    python3 orthanc/make_config.py --out .orthanc/orthanc.json --http-port 8042 --dicom-port 4242

The copy keeps the repository settings: loopback only (``RemoteAccessAllowed`` false, DICOM stores
accepted only from 127.0.0.1), no authentication, DICOMweb plugin at ``/dicom-web/``.
Standard library only (runs with any Python 3).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

BASE = Path(__file__).resolve().parent / "orthanc.json"


def make_config(
    out: str | Path, *, http_port: int = 8042, dicom_port: int = 4242, storage: str | Path | None = None
) -> Path:
    """Write the configuration to ``out``; storage defaults to ``<folder of out>/storage``."""
    out = Path(out).resolve()
    config = json.loads(BASE.read_text())
    config["HttpPort"] = int(http_port)
    config["DicomPort"] = int(dicom_port)
    storage = Path(storage).resolve() if storage else out.parent / "storage"
    config["StorageDirectory"] = str(storage)
    config["IndexDirectory"] = str(storage)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(config, indent=2) + "\n")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="configuration file to write")
    parser.add_argument("--http-port", type=int, default=8042)
    parser.add_argument("--dicom-port", type=int, default=4242)
    parser.add_argument("--storage", default=None, help="storage folder (default: next to --out)")
    args = parser.parse_args()
    print(make_config(args.out, http_port=args.http_port, dicom_port=args.dicom_port, storage=args.storage))


if __name__ == "__main__":
    main()
