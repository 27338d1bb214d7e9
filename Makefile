# ProQual developer entry points. Every target installs what it needs first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
# Torch build: the default takes the CPU wheel. With a GPU, set TORCH_INDEX_URL to the PyTorch
# wheel index of your CUDA version (and TORCH_VERSION if you need another release).
TORCH_VERSION ?= 2.13.0
TORCH_INDEX_URL ?=
STAMP := $(VENV)/.proqual-installed
HOST ?= 127.0.0.1
PORT ?= 8000
STUDIES ?= sample-data/picai
PYTEST_ARGS ?=
# extra app settings for `make serve`, e.g. CONF="--conf models quality --conf device cpu"
CONF ?=
ORTHANC_HTTP_PORT ?= 8042
ORTHANC_DICOM_PORT ?= 4242

.PHONY: install system-deps test lint format serve orthanc sample-data bench clean

install: $(STAMP)

$(STAMP): requirements.txt constraints.txt setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade "pip<27"
	$(PIP) install -q "torch==$(TORCH_VERSION)" $(if $(TORCH_INDEX_URL),--index-url $(TORCH_INDEX_URL))
	$(PIP) install -q --no-deps monailabel==0.8.5
	$(PIP) install -q -r requirements.txt -c constraints.txt
	$(PIP) install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

# Debian packages the tests and `make orthanc` need (Orthanc with its DICOMweb plugin).
system-deps:
	@if ! command -v Orthanc >/dev/null 2>&1 || [ ! -e /usr/share/orthanc/plugins/libOrthancDicomWeb.so ]; then \
	  echo "installing Orthanc (Debian packages orthanc, orthanc-dicomweb)"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq orthanc orthanc-dicomweb >/dev/null; \
	fi

test: install system-deps
	$(VENV)/bin/pytest $(PYTEST_ARGS)

# only the folders that exist (the Slicer extension is not started yet)
LINT_PATHS := $(wildcard lib tests monailabel_app slicer_extension bench)

lint: install
	$(VENV)/bin/ruff check $(LINT_PATHS)
	$(VENV)/bin/ruff format --check $(LINT_PATHS)

format: install
	$(VENV)/bin/ruff check --fix $(LINT_PATHS)
	$(VENV)/bin/ruff format $(LINT_PATHS)

# The MONAI Label server with the ProQual app on $(STUDIES) (a folder or a DICOMweb URL such as
# http://127.0.0.1:8042/dicom-web), at http://$(HOST):$(PORT). Models without weights are reported
# as unavailable; the server starts anyway.
serve: install
	PATH="$(abspath $(VENV))/bin:$$PATH" monailabel start_server --app monailabel_app --studies $(STUDIES) --host $(HOST) --port $(PORT) $(CONF)

# A local DICOMweb server (Orthanc, config in orthanc/) on 127.0.0.1:$(ORTHANC_HTTP_PORT), DICOM port
# $(ORTHANC_DICOM_PORT), storage under .orthanc/, in the foreground (Ctrl-C stops it).
orthanc: system-deps
	$(PYTHON) orthanc/make_config.py --out .orthanc/orthanc.json --http-port $(ORTHANC_HTTP_PORT) --dicom-port $(ORTHANC_DICOM_PORT)
	Orthanc .orthanc/orthanc.json

# Regenerate sample-data/ byte for byte (see README): 8 PI-CAI phantom studies and study 0 as DICOM.
sample-data: install
	rm -rf sample-data/picai sample-data/dicom .sample-dicom-tmp
	$(VENV)/bin/proqual phantom --out sample-data/picai --n 8 --seed 2026 --preset sample
	$(VENV)/bin/proqual phantom --out .sample-dicom-tmp --n 1 --seed 2026 --preset sample --dicom
	mv .sample-dicom-tmp/dicom sample-data/dicom && rm -rf .sample-dicom-tmp

clean:
	rm -rf $(VENV) build *.egg-info lib/*.egg-info .pytest_cache .ruff_cache
