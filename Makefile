# The two commands a newcomer needs. Each creates .venv if missing and installs
# torch 2.13.0 (CPU build) first, so that no extra can pull another torch.
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
TORCH  := torch==2.13.0

.PHONY: demo test install-cli install-dev docs docs-check

# The documentation site: every warning (broken reference, docstring that does not parse) fails
# the build with its file and line; -E re-reads every page so no warning is hidden by a cache.
DOCS_OUT := docs/_build
SPHINX   := $(PY) -m sphinx -b html -W --keep-going -n -E -q -j 1 -w $(DOCS_OUT)/warnings.txt -d $(DOCS_OUT)/doctrees docs $(DOCS_OUT)/html

$(PY):
	python3 -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet $(TORCH)

# Editable installs, redone only when pyproject.toml changes (a stamp file per extra set).
$(VENV)/.installed-cli: pyproject.toml | $(PY)
	$(PIP) install --quiet $(TORCH) -e ".[cli]"
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(PY)
	$(PIP) install --quiet $(TORCH) -e ".[cli,dev,docs]"
	$(PY) -c "import torch, sys; v = torch.__version__; print('torch', v); sys.exit(0 if v.startswith('2.13.0') else 'torch was replaced: ' + v)"
	touch $@ $(VENV)/.installed-cli

install-cli: $(VENV)/.installed-cli

install-dev: $(VENV)/.installed-dev

demo: install-cli
	$(VENV)/bin/losslab run noisy-labels

test: install-dev
	$(PY) -m ruff check src tests benchmarks scripts
	mkdir -p $(DOCS_OUT) && $(SPHINX)
	LOSSLAB_DOCS_HTML=$(DOCS_OUT)/html $(PY) -m pytest -q

# `make docs`, then open docs/_build/html/index.html (no network needed to build or view it).
docs: install-dev
	mkdir -p $(DOCS_OUT) && $(SPHINX)
	@echo "site: $(DOCS_OUT)/html/index.html"

# Looks at the built site in headless Chromium (Debian's package; no browser download):
# fails on raw TeX, missing rendered math or a console error; screenshots in _screenshots/.
docs-check: docs
	test -x /usr/bin/chromium || (apt-get update && apt-get install -y chromium)
	PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 $(PIP) install --quiet "playwright>=1.40"
	$(PY) scripts/docs_check.py $(DOCS_OUT)/html
