# Two entry points on a fresh machine: `make demo` and `make test` (see README).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# Stamp files re-run the install when pyproject.toml changes.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@ $(VENV)/.installed

# The main job on the embedded default: train cvt_tiny on scikit-learn's digits, evaluate, predict.
DEMO := runs/demo
demo: $(VENV)/.installed
	$(BIN)/cvtlab models
	rm -rf $(DEMO)
	$(BIN)/cvtlab train --output $(DEMO)
	$(BIN)/cvtlab eval --checkpoint $(DEMO) --data digits
	$(BIN)/cvtlab predict $(DEMO)/samples --checkpoint $(DEMO) --top-k 3

test: $(VENV)/.installed-test
	$(BIN)/python -m pytest -q --durations=10

clean:
	rm -rf $(VENV) runs .pytest_cache
