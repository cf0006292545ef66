# e-mage — two commands: `make run` (the whole platform locally) and `make test` (every test).
# Both install what they need from the package registries; downloads are cached in ~/.cache/emage
# (EMAGE_CACHE), per-checkout state in .local/ (git-ignored).

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

export UV_PYTHON_DOWNLOADS := never
export UV_PROJECT_ENVIRONMENT := $(CURDIR)/.venv
UV_VERSION := 0.13.8
UV := $(CURDIR)/.local/tools/bin/uv
PY := $(CURDIR)/.venv/bin/python

.PHONY: help run test bootstrap provision dicom-tools browser lint typecheck unit integration bench clean

help:
	@echo "make run    start Kafka, MongoDB, S3, Keycloak, the five services and demo data (Ctrl-C stops all)"
	@echo "make test   lint, type-check and run every test (unit, static, integration on real servers)"

$(UV):
	python3 -m venv $(CURDIR)/.local/tools
	$(CURDIR)/.local/tools/bin/pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)

bootstrap: $(UV)
	$(UV) sync --frozen --all-packages

provision: bootstrap
	$(PY) -m emage_devstack provision

# dcmtk (echoscu, storescu, dcmcjpeg…): the third-party DIMSE SCUs of the integration tests, and Orthanc with
# its DICOMweb plugin: the hospital PACS acquisition events pull from. All from Debian.
dicom-tools:
	command -v storescu >/dev/null && test -x /usr/sbin/Orthanc && test -e /usr/share/orthanc/plugins/libOrthancDicomWeb.so \
	  || { apt-get update -qq && apt-get install -y -qq --no-install-recommends dcmtk orthanc orthanc-dicomweb; }

# Debian's chromium for the browser tests of the viewer and the portal (Playwright drives it; its own browser
# download is not reachable from here and not needed).
browser:
	test -x /usr/bin/chromium || { apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium; }

run: provision
	exec $(PY) -m emage_devstack up --profile run

lint: bootstrap
	$(UV) run --frozen ruff check .
	$(UV) run --frozen ruff format --check .

typecheck: bootstrap
	$(UV) run --frozen mypy libs/common/src services/*/src deploy/local/src tools/cli/src

test: provision dicom-tools browser lint typecheck
	$(PY) -m pytest

unit: bootstrap
	$(PY) -m pytest -m "not integration" --ignore=tests/integration

integration: provision dicom-tools browser
	$(PY) -m pytest tests/integration

# Benchmarks side by side with Orthanc (issue 8), written to docs/benchmarks.md; not part of `make test`.
# The issue's scale by default (hours: bulk-loading 1,000,000 instances dominates); BENCH_SCALE=small: a trial.
bench: provision dicom-tools
	$(UV) sync --frozen --all-packages --group bench
	$(PY) -m bench

clean:
	rm -rf .local .venv
