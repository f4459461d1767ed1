# Two entry points on a fresh machine: `make demo` and `make test` (see README).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test test-all clean browser

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# Stamp files re-run the install when pyproject.toml changes.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[test]'
	$(BIN)/python -m pip install -q --no-deps animal-mnist  # data only; its code would pull in TensorFlow
	touch $@ $(VENV)/.installed

# The main job on the embedded default: train cvt_tiny_stem on scikit-learn's digits, evaluate, predict.
DEMO := runs/demo
demo: $(VENV)/.installed
	$(BIN)/cvtlab models
	rm -rf $(DEMO)
	$(BIN)/cvtlab train --output $(DEMO)
	$(BIN)/cvtlab eval --checkpoint $(DEMO) --data digits
	$(BIN)/cvtlab predict $(DEMO)/samples --checkpoint $(DEMO) --top-k 3

# Test files run in parallel processes (one thread each; a file's tests stay together so that its module
# fixtures run once): 5 min on a 2-core machine against 8.5 min in one process.
# Tests marked slow repeat the kind of another test (one of each kind always runs); test-all runs them too.
test: $(VENV)/.installed-test browser
	$(BIN)/python -m pytest -q --durations=10 -n auto --maxprocesses 4 --dist loadfile -m "not slow"

test-all: $(VENV)/.installed-test browser
	$(BIN)/python -m pytest -q --durations=10 -n auto --maxprocesses 4 --dist loadfile

# The serve page's test drives Debian's chromium; installed here when missing and we may (root, apt-get).
# Without it that one test skips and says why.
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	{ [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && export DEBIAN_FRONTEND=noninteractive && \
	  { apt-get install -y -q chromium chromium-driver >/dev/null 2>&1 || \
	    { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium chromium-driver >/dev/null 2>&1; }; } \
	  || echo '* chromium not installed: the browser test will skip'; }

clean:
	rm -rf $(VENV) runs .pytest_cache
