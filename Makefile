# surgitwin: two commands on a fresh clone.
#   make demo   run the whole pipeline on the shipped sample scan -> out/demo
#   make test   lint (ruff, mypy on the typed contracts) and run the whole test suite
#   make test-fast   lint and the tests not marked slow (the edit loop: under a minute)
# Both bootstrap .venv (torch pinned first, then the project) and the Debian packages.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
APT_PACKAGES := dcm2niix dicom3tools dcmtk openssl orthanc orthanc-dicomweb xvfb xdotool \
	chromium libegl1 libgl1 libegl-mesa0 libgl1-mesa-dri imagemagick
export EGL_PLATFORM ?= surfaceless

.PHONY: demo test test-fast lint wheel wheel-demo wheel-check bench venv system clean-venv

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

system:
	@bash .ci/system-packages.sh $(APT_PACKAGES)

demo: venv system
	$(BIN)/surgitwin demo --out out/demo

lint: venv
	$(BIN)/python -m ruff check pipeline viewer tests benchmarks setup.py
	@if $(BIN)/python -c "import mypy" 2>/dev/null; then $(BIN)/python -m mypy; \
	else echo "lint: mypy is not installed in $(VENV): type check skipped (pip install -e '.[dev]')"; fi

test: lint system
	$(BIN)/python -m pytest -q tests

test-fast: lint
	$(BIN)/python -m pytest -q -m "not slow and not real" -p no:cacheprovider tests

# A self-contained wheel under one top-level package, surgitwin (surgitwin.pipeline,
# surgitwin.viewer; configs, model weights and the sample scan as package data), installed
# non-editable into a fresh venv and run from another directory: no source tree on the path.
WHEEL_VENV := build/wheel-venv
wheel: venv
	rm -rf dist build/lib
	$(BIN)/python -m pip wheel -q --no-deps --no-build-isolation -w dist .
	$(BIN)/python -c "import sys, zipfile, glob; (w,) = glob.glob('dist/surgitwin-*.whl'); \
	top = sorted({n.split('/')[0] for n in zipfile.ZipFile(w).namelist()}); print(w, top); \
	sys.exit(any(t != 'surgitwin' and not t.endswith('.dist-info') for t in top))"

wheel-demo: wheel system
	rm -rf $(WHEEL_VENV) && $(PY) -m venv $(WHEEL_VENV)
	$(WHEEL_VENV)/bin/python -m pip install -q torch==2.13.0
	$(WHEEL_VENV)/bin/python -m pip install -q dist/surgitwin-*.whl
	$(MAKE) wheel-check

# The installed wheel in $(WHEEL_VENV), from an empty folder: no top-level pipeline/viewer,
# `surgitwin --help`, the demo (with its snapshot subprocess) and a batch with a pool worker.
wheel-check:
	d=$$(mktemp -d) && cd $$d && unset PYTHONPATH && py=$(abspath $(WHEEL_VENV))/bin/python && \
	st=$(abspath $(WHEEL_VENV))/bin/surgitwin && $$st --help > /dev/null && \
	! $$py -c "import pipeline" 2>/dev/null && ! $$py -c "import viewer" 2>/dev/null && \
	$$st demo --out $$d/demo && test -f $$d/demo/scene.json && test -f $$d/demo/snapshots/overview.png && \
	sample=$$($$py -c "from surgitwin.pipeline.config import find_data; print(find_data('sample_scans/phantom_ct/dicom'))") && \
	$$st batch $$sample --out $$d/batch --workers 1 --progress none --case-fn pipeline.batch.testing:digest_case && \
	test -f $$d/batch/cases/dicom/digest.json && \
	echo "wheel-check: the installed wheel ran --help, demo and a batch worker in $$d"

bench: venv
	for b in benchmarks/bench_*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

clean-venv:
	rm -rf $(VENV)
