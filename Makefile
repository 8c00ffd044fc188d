# One entry point for people and CI. `make test` and `make demo` build .venv on
# first use; a GPU cluster overrides TORCH_SPEC (e.g. TORCH_SPEC="torch==2.13.0
# --index-url https://download.pytorch.org/whl/cu128").
PYTHON     ?= python3
VENV       ?= .venv
TORCH_SPEC ?= torch==2.13.0
BIN        := $(VENV)/bin
PY         := $(BIN)/python
STAMP      := $(VENV)/.installed
DEMO_DIR   ?= $(if $(FAST),runs/demo-fast,runs/demo)
export PYTHONHASHSEED := 0

.PHONY: install test demo lint bench clean gpu-check

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH_SPEC)
	$(PY) -m pip freeze | grep -i '^torch==' > $(VENV)/constraints.txt
	DS_BUILD_OPS=0 $(PY) -m pip install --quiet -c $(VENV)/constraints.txt -e ".[dev]"
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/pytest -q tests

demo: $(STAMP)
	$(BIN)/qanchor demo --out $(DEMO_DIR) $(if $(FAST),--fast,)

# The one prepared check for a lent GPU (< 8 min, no network): runs/gpu-check/gpu-check.json
gpu-check: $(STAMP)
	$(BIN)/qanchor bench gpu --out runs/gpu-check

lint: $(STAMP)
	$(BIN)/ruff check qanchor_pl data_modules callbacks tests
	$(BIN)/ruff format --check qanchor_pl data_modules callbacks tests

bench: $(STAMP)
	$(BIN)/qanchor synth --out runs/bench/raw --users 4000 --seed 0
	$(BIN)/qanchor build --raw runs/bench/raw --out runs/bench/data
	$(BIN)/qanchor encode --data runs/bench/data --encoder hash
	$(BIN)/qanchor bench data --data runs/bench/data --json
	$(BIN)/qanchor bench data --data runs/bench/data --workers 2 --json
	$(BIN)/qanchor bench train --recipe '[pretrain/tiny-cpu]' --overrides '{data.data: runs/bench/data}' --json
	$(BIN)/qanchor bench kv-cache --json
	$(BIN)/qanchor bench qa-synth --json

clean:
	rm -rf runs lightning_logs .pytest_cache
