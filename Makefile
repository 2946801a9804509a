# Every target creates .venv on first use (and refreshes it when pyproject.toml changes).
PY      := python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
DATA    ?= data
DEMO_PATIENTS ?= 120
CXR     := $(BIN)/cxr

.PHONY: demo test lint venv demo-data verify manifest clean-demo

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

## The whole pipeline on synthetic data, on the CPU.
demo: $(STAMP) demo-data verify manifest

demo-data: $(STAMP)
	$(CXR) demo --out $(DATA)/raw --n-patients $(DEMO_PATIENTS) --seed 0

verify: $(STAMP)
	$(CXR) verify --raw $(DATA)/raw

manifest: $(STAMP)
	$(CXR) manifest --raw $(DATA)/raw --out $(DATA)/processed/manifest.parquet

test: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

clean-demo:
	rm -rf $(DATA)/raw $(DATA)/processed $(DATA)/interim models/demo reports/demo
