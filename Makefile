# Every target creates .venv on first use (and refreshes it when pyproject.toml changes).
PY      := python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
DATA    ?= data
DEMO_PATIENTS ?= 160
CXR     := $(BIN)/cxr

.PHONY: demo test test-fast lint venv demo-data verify manifest verify-manifest reports preprocess \
	train demo-train evaluate demo-probe clean-demo real-data download-metadata download-subset

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,models]'
	touch $(STAMP)

## The whole pipeline on synthetic data, on the CPU (a few minutes on 2 cores).
demo: $(STAMP)
	$(MAKE) --no-print-directory demo-data verify manifest verify-manifest preprocess demo-train evaluate
	@echo "open file://$(abspath reports/demo/report.html)"
	@echo "browse its errors: $(CXR) --data-dir $(DATA) view reports/demo"

demo-data: $(STAMP)
	$(CXR) demo --out $(DATA)/raw --n-patients $(DEMO_PATIENTS) --seed 0

verify: $(STAMP)
	$(CXR) verify --raw $(DATA)/raw

manifest: $(STAMP)
	$(CXR) manifest --raw $(DATA)/raw --out $(DATA)/processed/manifest.parquet

verify-manifest: $(STAMP)
	$(CXR) verify --raw $(DATA)/raw --manifest $(DATA)/processed/manifest.parquet --deep

preprocess: $(STAMP)
	$(CXR) --data-dir $(DATA) preprocess

reports: $(STAMP)
	$(CXR) reports --raw $(DATA)/raw

# Training into RUN (models/<config name>); a RUN that already holds a run is resumed, so a run
# that was stopped completes and a finished one says so. TRAIN_CONFIG=configs/densenet121-224.toml
# for the reference recipe on a GPU. The run trained last is what `make evaluate` scores.
TRAIN_CONFIG ?= configs/demo.toml
RUN ?= models/$(basename $(notdir $(TRAIN_CONFIG)))
LAST_RUN := models/.last-run
train: $(STAMP)
	$(CXR) --data-dir $(DATA) train --config $(TRAIN_CONFIG) --out $(RUN) $(if $(wildcard $(RUN)/last.pt),--resume)
	@mkdir -p models && echo $(RUN) > $(LAST_RUN)

# The demo's run starts over each time.
demo-train: $(STAMP)
	rm -rf models/demo
	$(CXR) --data-dir $(DATA) train --config configs/demo.toml --out models/demo
	@mkdir -p models && echo models/demo > $(LAST_RUN)

# Scores the run trained last (read when the recipe runs, so `make train evaluate` works).
CHECKPOINT ?= $(shell cat $(LAST_RUN) 2>/dev/null || echo models/demo)/best.pt
EVAL_OUT   ?= reports/$(notdir $(patsubst %/,%,$(dir $(CHECKPOINT))))
SPLIT      ?= test
SUBGROUPS  ?= sex,age_group,race_group,insurance,view_position
evaluate: $(STAMP)
	$(CXR) --data-dir $(DATA) evaluate --checkpoint $(CHECKPOINT) --out $(EVAL_OUT) --split $(SPLIT) \
		$(if $(SUBGROUPS),--subgroups $(SUBGROUPS))

# Pretrained features on the demo (after make demo): the demo model's penultimate features,
# linear probes on 10%, 30% and all of the training patients, the full probe next to the model.
demo-probe: $(STAMP)
	$(CXR) --data-dir $(DATA) embed --model cxr:models/demo/best.pt
	$(CXR) --data-dir $(DATA) probe --embeddings cxr-demo --fractions 0.1,0.3,1.0 --out reports/probe-demo
	$(CXR) --data-dir $(DATA) compare reports/probe-demo/fraction-1.0 reports/demo

# Real data, the data guide's order (PhysioNet credentials in PHYSIONET_USERNAME /
# PHYSIONET_PASSWORD or ~/.netrc): the CSVs, the subset's manifest, its images and reports, the
# checks, then the manifest again with the reports' sections. Then: make preprocess train evaluate.
real-data: $(STAMP)
	$(MAKE) --no-print-directory download-metadata manifest download-subset verify-manifest
	$(MAKE) --no-print-directory manifest

download-metadata: $(STAMP)
	$(CXR) download metadata --dest $(DATA)/raw

download-subset: $(STAMP)
	$(CXR) download subset --dest $(DATA)/raw --manifest $(DATA)/processed/manifest.parquet

# Every test, the slow end-to-end ones included (what CI runs).
test: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/python -m pytest -q

# The same without the tests marked slow (whole-pipeline runs, kills, DDP): for quick iterations.
test-fast: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/python -m pytest -q -m "not slow"

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

clean-demo:
	rm -rf $(DATA)/raw $(DATA)/processed $(DATA)/interim models/demo reports/demo reports/probe-demo $(LAST_RUN)
