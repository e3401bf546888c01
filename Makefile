# lazymoe: two commands.
#   make lab    set up .venv, prepare the bundled model, start JupyterLab on course/00_start_here.ipynb
#   make test   everything CI runs: lint, unit tests, every notebook headless on the CPU
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# The PyTorch build to install when none is there yet. On a machine with an NVIDIA GPU the
# default PyPI wheel for Linux is a CUDA build; see README "CPU-only vs CUDA" for the small CPU one.
TORCH_SPEC ?= torch==2.13.0
LAB_EXTRAS ?= course,serve,bench
TEST_EXTRAS ?= course,serve,bench,llama,hub,dev
LAB_ARGS ?=
PYTEST_ARGS ?=
NOTEBOOK_WORKERS ?= 2
# unit tests in two processes (CI has 2 cores: ~13 min instead of ~16; UNIT_WORKERS=0 for one)
UNIT_WORKERS ?= 2

.PHONY: lab test venv install-lab install-test data model lint unit notebooks strip test-gpu test-browser clean help hub hub-proxy test-hub

help:
	@sed -n '1,4p' Makefile

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

venv: $(VENV)/bin/python
	@$(PY) -c "import torch" 2>/dev/null || { echo ">> installing $(TORCH_SPEC)"; $(PIP) install -q "$(TORCH_SPEC)"; }

# Reinstall only when pyproject.toml changes (stamp per extras set).
$(VENV)/.stamp-lab: pyproject.toml | venv
	$(PIP) install -q -e ".[$(LAB_EXTRAS)]"
	@$(PIP) install -q -e ".[llama]" || echo ">> llama-cpp-python did not build: lab09's llama.cpp comparison will be skipped (see README, Troubleshooting)"
	@touch $@

$(VENV)/.stamp-test: pyproject.toml | venv
	$(PIP) install -q -e ".[$(TEST_EXTRAS)]"
	@touch $@

install-lab: $(VENV)/.stamp-lab
install-test: $(VENV)/.stamp-test

# The bundled tiny MoE model: shipped in data/models; rebuilt by its recipe only if missing.
data model:
	$(PY) -m lazymoe.models.prepare

# `lazymoe lab` checks the model, runs the doctor and starts JupyterLab (adding --allow-root as root):
# the same steps work without make (README, "Windows without make").
lab: install-lab
	$(PY) -m lazymoe lab $(LAB_ARGS)

lint: install-test
	$(VENV)/bin/ruff check .
	$(PY) -m lazymoe.quiz

unit: install-test hub-proxy
	$(VENV)/bin/pytest -m "not notebook and not gpu and not browser" -n $(UNIT_WORKERS) $(PYTEST_ARGS)

notebooks: install-test
	$(VENV)/bin/pytest -m notebook -n $(NOTEBOOK_WORKERS) $(PYTEST_ARGS)

test: install-test data lint unit notebooks

# Module 01, English and Korean, in JupyterLab in headless Chromium (Debian's package; the playwright
# Python package drives it, its own browser download is not used). Installs Chromium, and a font with
# Hangul for the Korean module (fonts-noto-cjk), when absent and we are root; otherwise says so and skips,
# or fails under CI (CI=true), where the browser tests must run.
CHROMIUM ?= /usr/bin/chromium
test-browser: install-test
	@if [ ! -x "$(CHROMIUM)" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo ">> installing Chromium (apt-get install chromium)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  elif [ "$$CI" = true ]; then \
	    echo ">> FAILED: CI=true but no Chromium at $(CHROMIUM), and not root to install it (apt-get install chromium)"; exit 1; \
	  else \
	    echo ">> SKIPPED the browser test: no Chromium at $(CHROMIUM). Install it (sudo apt-get install chromium)"; \
	    echo ">> or point CHROMIUM= at one, then run: make test-browser"; exit 0; \
	  fi; \
	fi; \
	if command -v fc-list >/dev/null && [ -z "$$(fc-list :lang=ko family)" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo ">> installing a font with Hangul (apt-get install fonts-noto-cjk)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq fonts-noto-cjk >/dev/null; \
	  elif [ "$$CI" = true ]; then \
	    echo ">> FAILED: CI=true but no font with Hangul (fc-list :lang=ko is empty), and not root to install one"; \
	    echo ">> (apt-get install fonts-noto-cjk)"; exit 1; \
	  else \
	    echo ">> no font with Hangul (fc-list :lang=ko is empty): the Korean module's browser test will be"; \
	    echo ">> SKIPPED. Install one (sudo apt-get install fonts-noto-cjk), then run: make test-browser"; \
	  fi; \
	fi; \
	LAZYMOE_CHROMIUM="$(CHROMIUM)" $(VENV)/bin/pytest tests/browser -m browser -p no:cacheprovider $(PYTEST_ARGS)

# On a machine with a CUDA GPU (the device machine): GPU tests and the doctor.
test-gpu:
	$(PY) -m lazymoe doctor
	$(VENV)/bin/pytest -m gpu $(PYTEST_ARGS)

# The group's JupyterHub (docs/instructor.md): its proxy comes from npm, JupyterHub from PyPI.
# `make hub HUB_ARGS="--keys keys.json --api-base http://SERVER:8000/v1"`
HUB_ARGS ?= --keys keys.json
hub-proxy:
	@command -v configurable-http-proxy >/dev/null || { \
	  if ! command -v npm >/dev/null && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo ">> installing nodejs and npm (apt-get) for JupyterHub's proxy"; \
	    apt-get update -qq >/dev/null && apt-get install -y -qq nodejs npm >/dev/null; fi; \
	  if command -v npm >/dev/null; then echo ">> installing configurable-http-proxy (npm)"; \
	    npm install -g --silent configurable-http-proxy; \
	  else echo ">> no npm: tests/test_hub.py will be skipped (apt-get install nodejs npm)"; fi; }

hub: install-lab hub-proxy
	$(PIP) install -q -e ".[hub]"
	$(PY) -m lazymoe hub $(HUB_ARGS)

# Only the hub test (also part of `make unit`): two members log in on loopback, about a minute.
test-hub: install-test hub-proxy
	$(VENV)/bin/pytest tests/test_hub.py -p no:cacheprovider $(PYTEST_ARGS)

# Strip outputs from every notebook (also run by the test that checks it).
strip:
	$(PY) -m lazymoe.nbtools strip course labs instructor

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
