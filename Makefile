# The two commands a newcomer needs. Each creates .venv if missing and installs
# torch 2.13.0 (CPU build) first, so that no extra can pull another torch.
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
TORCH  := torch==2.13.0

.PHONY: demo test install-cli install-dev

$(PY):
	python3 -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet $(TORCH)

install-cli: $(PY)
	$(PIP) install --quiet $(TORCH) -e ".[cli]"

install-dev: $(PY)
	$(PIP) install --quiet $(TORCH) -e ".[cli,dev]"
	$(PY) -c "import torch, sys; v = torch.__version__; print('torch', v); sys.exit(0 if v.startswith('2.13.0') else 'torch was replaced: ' + v)"

demo: install-cli
	$(VENV)/bin/losslab run noisy-labels

test: install-dev
	$(PY) -m ruff check src tests benchmarks scripts
	$(PY) -m pytest -q
