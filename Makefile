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
TEST_EXTRAS ?= course,serve,bench,llama,dev
LAB_ARGS ?=
# JupyterLab refuses to start as root (containers, WSL set up as root, CI) unless told it is fine.
ROOT_ARGS := $(if $(filter 0,$(shell id -u)),--allow-root,)
PYTEST_ARGS ?=
NOTEBOOK_WORKERS ?= 2

.PHONY: lab test venv install-lab install-test data model lint unit notebooks strip test-gpu clean help

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

lab: install-lab data
	$(PY) -m lazymoe doctor || true
	$(VENV)/bin/jupyter lab --ServerApp.root_dir="$(CURDIR)" $(ROOT_ARGS) $(LAB_ARGS) course/00_start_here.ipynb

lint: install-test
	$(VENV)/bin/ruff check .
	$(PY) -m lazymoe.quiz

unit: install-test
	$(VENV)/bin/pytest -m "not notebook and not gpu" $(PYTEST_ARGS)

notebooks: install-test
	$(VENV)/bin/pytest -m notebook -n $(NOTEBOOK_WORKERS) $(PYTEST_ARGS)

test: install-test data lint unit notebooks

# On a machine with a CUDA GPU (the device machine): GPU tests and the doctor.
test-gpu:
	$(PY) -m lazymoe doctor
	$(VENV)/bin/pytest -m gpu $(PYTEST_ARGS)

# Strip outputs from every notebook (also run by the test that checks it).
strip:
	$(PY) -m lazymoe.nbtools strip course labs

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
