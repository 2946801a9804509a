# Every target creates .venv on first use (and refreshes it when pyproject.toml changes).
PY      := python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
DATA    ?= data
DEMO_PATIENTS ?= 120
CXR     := $(BIN)/cxr

.PHONY: demo test lint venv demo-data verify manifest verify-manifest reports preprocess train \
	demo-train evaluate clean-demo download-metadata download-subset

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

## The whole pipeline on synthetic data, on the CPU (a few minutes on 2 cores).
demo: $(STAMP)
	$(MAKE) --no-print-directory demo-data verify manifest verify-manifest preprocess demo-train evaluate
	@echo "open file://$(abspath reports/demo/report.html)"

demo-data: $(STAMP)
	$(CXR) demo --out $(DATA)/raw --n-patients $(DEMO_PATIENTS) --seed 0

verify: $(STAMP)
	$(CXR) verify --raw $(DATA)/raw

manifest: $(STAMP)
	$(CXR) manifest --raw $(DATA)/raw --out $(DATA)/processed/manifest.parquet

verify-manifest: $(STAMP)
	$(CXR) verify --raw $(DATA)/raw --manifest $(DATA)/processed/manifest.parquet --deep

preprocess: $(STAMP)
	$(CXR) --data-dir $(DATA) preprocess --size 256

reports: $(STAMP)
	$(CXR) reports --raw $(DATA)/raw

# Training; TRAIN_CONFIG=configs/densenet121-224.toml for the reference recipe on a GPU.
TRAIN_CONFIG ?= configs/demo.toml
train: $(STAMP)
	$(CXR) --data-dir $(DATA) train --config $(TRAIN_CONFIG)

# The demo's run starts over each time (cxr train refuses to overwrite a run's checkpoints).
demo-train: $(STAMP)
	rm -rf models/demo
	$(CXR) --data-dir $(DATA) train --config configs/demo.toml --out models/demo

CHECKPOINT ?= models/demo/best.pt
EVAL_OUT   ?= reports/demo
SUBGROUPS  ?= sex,age_group,race_group,insurance,view_position
evaluate: $(STAMP)
	$(CXR) --data-dir $(DATA) evaluate --checkpoint $(CHECKPOINT) --out $(EVAL_OUT) --split test \
		$(if $(SUBGROUPS),--subgroups $(SUBGROUPS))

# Real data (PhysioNet credentials in PHYSIONET_USERNAME / PHYSIONET_PASSWORD or ~/.netrc).
download-metadata: $(STAMP)
	$(CXR) download metadata --dest $(DATA)/raw

download-subset: $(STAMP)
	$(CXR) download subset --dest $(DATA)/raw --manifest $(DATA)/processed/manifest.parquet

test: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

clean-demo:
	rm -rf $(DATA)/raw $(DATA)/processed $(DATA)/interim models/demo reports/demo
