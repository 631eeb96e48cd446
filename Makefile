# The two commands a new user needs: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench install clean

# Create the virtual environment and install the project with its dev extras,
# again whenever pyproject.toml changes.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# Lint first (ruff on everything, mypy on the library; config in pyproject.toml), then the tests.
test: $(STAMP) lint
	$(PY) -m pytest -n 2 -q

lint: $(STAMP)
	$(PY) -m ruff check src tests benchmarks
	$(PY) -m mypy

demo: $(STAMP)
	$(VENV)/bin/einsearch search --task regression --preset demo --out runs/demo --jobs 2

# make bench: the CPU sections; make bench DEVICE=cuda: the accelerator section on a GPU.
DEVICE ?= cpu
bench: $(STAMP)
	$(PY) benchmarks/run.py --device $(DEVICE)

clean:
	rm -rf $(VENV) runs build *.egg-info src/*.egg-info
