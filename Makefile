# Two commands are the contract: `make demo` (set-up + one SICOG cycle) and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.sicog-installed
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup demo test evidence bench compile clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# torch first, pinned: a looser requirement would pull the CUDA build.
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[test]'
	$(BIN)/python -m pip check
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(BIN)/sicog cycle --config configs/demo.yaml --out runs/demo

test: setup
	$(BIN)/python -m pytest

evidence: setup
	$(BIN)/sicog evidence --config configs/demo.yaml --seeds 3 --out runs/evidence

bench: setup
	$(BIN)/python benchmarks/scoring.py
	$(BIN)/python benchmarks/scorer.py
	$(BIN)/python benchmarks/sampling.py
	$(BIN)/python benchmarks/remote_sampling.py
	$(BIN)/python benchmarks/store.py
	$(BIN)/python benchmarks/training.py

compile: setup
	$(BIN)/sicog pipeline compile --config configs/demo.yaml --out build/sicog-cycle.yaml

clean:
	rm -rf runs build
