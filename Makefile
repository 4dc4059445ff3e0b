# Two commands: `make run` (set up, then run the workflow on the demo data with an embedded
# dask cluster) and `make test` (set up, then run the test suite).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup run test test-serial test-unit lint benchmark

setup: $(VENV)/.installed $(VENV)/libexec/dp3batch/DP3 $(VENV)/lib/dp3batch/libdp3batch_stat_lines.so \
	$(VENV)/.bytecode

# The package's bytecode, made again whenever a source changes: where Python may not write it
# itself (PYTHONDONTWRITEBYTECODE, which container images often set, or a checkout the user
# cannot write) every snakemake run and every central job would compile the modules it
# imports, 0.15-0.2 s a run. Python still reads it there, and ignores it once out of date.
$(VENV)/.bytecode: $(VENV)/.installed $(shell find scripts -name '*.py')
	$(BIN)/python -m compileall -q scripts
	touch $@

# DP3 started without Python (scripts/dp3batch/dp3/native.py): a C++ compiler builds it;
# without one, DP3 starts through the wheel's DP3.py (0.1 s slower per run).
$(VENV)/libexec/dp3batch/DP3: $(VENV)/.installed scripts/dp3batch/dp3/dp3_launcher.cc
	$(BIN)/python -m dp3batch.dp3.native

# The rerun's stat of each listed file made in C (scripts/dp3batch/books/native_stat.py): a
# C compiler builds it; without one, Python makes the same lines (a no-op rerun over 10,000
# MSs of the chain, alternated: 4.98-5.46 s, against 4.12-4.64 s with it).
$(VENV)/lib/dp3batch/libdp3batch_stat_lines.so: $(VENV)/.installed scripts/dp3batch/books/stat_lines.c
	$(BIN)/python -m dp3batch.books.native_stat

# `pip install -e .` adds the `DP3` command (the dp3 wheel's DP3.py in the environment it needs).
$(VENV)/.installed: requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.txt
	$(BIN)/pip install --quiet --no-deps -e .
	touch $@

run: setup
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/snakemake --cores 1

# The suite in two processes, each taking whole test files (a file's tests share its
# fixtures, and Slurm's session): about 12 minutes on 2 cores, where most end-to-end tests
# wait on deadlines; 17 to 19 in one process (`make test-serial`).
test: lint
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/pytest -n 2 --dist loadfile

test-serial: lint
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/pytest

# Seconds, no DP3 and no dask processes: the pure functions only (tests/unit/).
test-unit: setup
	$(BIN)/pytest tests/unit

lint: setup
	$(BIN)/ruff check scripts tests benchmarks
	$(BIN)/ruff format --check scripts tests benchmarks
	$(BIN)/snakefmt --check .
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/snakemake --lint

benchmark: setup
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python benchmarks/benchmark.py all
