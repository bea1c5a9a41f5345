# Two commands on a fresh machine: `make demo` (the main job on SmolLM2) and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.surgeon-installed

.PHONY: install demo test test-slow test-runtimes bench lint clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# torch first, pinned: the local CPU build; a bare `torch` would pull gigabytes of CUDA wheels.
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev,eval]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/surgeon demo

test: $(STAMP)
	$(PY) -m pytest -q

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

# the downstream runtimes, each in its own venv in the machine's cache (setup.sh --root; built once per pin set)
test-runtimes: $(STAMP)
	bash benchmarks/runtimes/setup.sh
	$(PY) -m pytest -q -m runtimes -s

bench: $(STAMP)
	for b in benchmarks/[a-z]*.py; do $(PY) $$b || exit 1; done

lint: $(STAMP)
	$(VENV)/bin/ruff check surgeon tests examples benchmarks

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
