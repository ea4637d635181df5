# Everything a fresh machine needs goes through `make install`:
# the venv at .venv, the package (editable) and its C extension.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
RUN_SECONDS ?= 60

.PHONY: install run test bench lint check clean distclean

install: $(STAMP)

$(STAMP): pyproject.toml setup.py shm/_atomic.c
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade pip setuptools wheel
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test,bench,campaign]'
	$(BIN)/python -c "import shm._atomic"
	touch $(STAMP)

# The main job: every scenario's correct policies, on all CPUs, about a minute in all.
run: install
	$(BIN)/mmtorture run --all --duration $(RUN_SECONDS)

test: install
	$(BIN)/python -m pytest -n auto -q

# Benchmarks: JSON in bench/; then the README's figures and chart are rendered from it (docs/figures.py).
bench: install
	mkdir -p bench
	$(BIN)/mmtorture bench primitives --json bench/primitives.json
	$(BIN)/mmtorture bench scheduler --json bench/scheduler.json
	$(BIN)/mmtorture bench vma --json bench/vma.json --plot bench/vma.png
	cp bench/vma.png docs/bench-vma.png
	$(BIN)/mmtorture bench pte_ref --json bench/pte_ref.json --plot bench/pte_ref.png
	cp bench/pte_ref.png docs/bench-pte_ref.png
	$(BIN)/mmtorture bench detection --json bench/detection.json --plot bench/detection.png
	cp bench/detection.png docs/bench-detection.png
	$(BIN)/mmtorture bench campaign --json bench/campaign.json --plot bench/campaign.png
	cp bench/campaign.png docs/bench-campaign.png
	$(BIN)/python docs/figures.py bench

lint: install
	$(BIN)/ruff check shm policies stress tests docs
	$(BIN)/ruff format --check shm policies stress tests docs

# The static checks CI runs before the tests: lint, types, and the layering contract.
check: lint
	$(BIN)/mypy
	$(BIN)/lint-imports

clean:
	test -x $(BIN)/mmtorture && $(BIN)/mmtorture clean || true

distclean:
	rm -rf $(VENV) build *.egg-info shm/*.so
