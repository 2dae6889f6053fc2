# Every target creates .venv on first use and reuses it after.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
# torch first and pinned: this pip takes the CPU build that lies on disk here, where an
# unpinned torch would pull a multi-GB CUDA build.
TORCH  ?= torch==2.13.0

.PHONY: run test lint bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)  ## a real D-PSGD run: 16 nodes, digits, 2-shard non-IID
	$(VENV)/bin/dlactor launch configs/quickstart.toml

test: $(STAMP)  ## the whole test suite
	$(PY) -m pytest

lint: $(STAMP)  ## ruff + mypy
	$(VENV)/bin/ruff check dlactor tests experiments
	$(VENV)/bin/ruff format --check dlactor tests experiments
	$(VENV)/bin/mypy

bench: $(STAMP)  ## benchmarks -> BENCHMARKS.md
	$(PY) experiments/bench/run_bench.py --out BENCHMARKS.md

clean:
	rm -rf $(VENV) runs .pytest_cache .mypy_cache .ruff_cache
