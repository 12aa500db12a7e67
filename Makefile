# Bootstraps .venv on first use; every target works on a machine with only python3 and pip.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test bench lint clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)          ## the main job: an example, then the benchmark report (quick mode, ~2-3 min)
	$(BIN)/python examples/quickstart.py
	$(BIN)/python bench/report.py --quick

test: $(STAMP)          ## the whole test suite
	$(BIN)/python -m pytest

bench: $(STAMP)         ## the full benchmarks (20-30 minutes on 2 cores)
	$(BIN)/python bench/report.py
	$(BIN)/python bench/overhead.py
	$(BIN)/python bench/build_memory.py
	$(BIN)/python bench/imap_memory.py
	$(BIN)/python -m pytest bench/test_hotpaths.py -p no:cacheprovider

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy dagexec

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache
