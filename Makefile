# The two commands: `make demo` runs the main job on the embedded default (no servers);
# `make test` runs the test suite. Each creates .venv and installs what it needs.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# the CPU build of torch, pinned: an open range may pull a multi-GB CUDA build
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[worker,ops,dev,diffusers,timeline]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/genfarm demo

test: $(STAMP)
	bash tests/services.sh
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/pytest

bench: $(STAMP)
	bash tests/services.sh
	$(BIN)/python benchmarks/overhead.py

clean:
	rm -rf $(VENV) genfarm-data .services .pytest_cache
