# One entry point for people and CI. `make test` and `make demo` build .venv on
# first use; a GPU cluster overrides TORCH_SPEC (e.g. TORCH_SPEC="torch==2.13.0
# --index-url https://download.pytorch.org/whl/cu128").
PYTHON     ?= python3
VENV       ?= .venv
TORCH_SPEC ?= torch==2.13.0
BIN        := $(VENV)/bin
PY         := $(BIN)/python
STAMP      := $(VENV)/.installed
DEMO_DIR   ?= runs/demo
DEMO_USERS ?= 4000
export PYTHONHASHSEED := 0

.PHONY: install test demo lint bench clean

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
	$(BIN)/qanchor synth --out $(DEMO_DIR)/raw --users $(DEMO_USERS) --seed 0
	$(BIN)/qanchor build --raw $(DEMO_DIR)/raw --out $(DEMO_DIR)/data
	$(BIN)/qanchor encode --data $(DEMO_DIR)/data --encoder hash
	$(BIN)/qanchor bench data --data $(DEMO_DIR)/data --json
	$(BIN)/qanchor pretrain --config recipes/pretrain/tiny-cpu.yaml --data.data $(DEMO_DIR)/data \
		--run_dir $(DEMO_DIR)/pretrain/base --ckpt_path last
	$(BIN)/qanchor export --ckpt $(DEMO_DIR)/pretrain/base/checkpoints/last.ckpt \
		--out $(DEMO_DIR)/export/base --overwrite

lint: $(STAMP)
	$(BIN)/ruff check qanchor_pl data_modules callbacks tests
	$(BIN)/ruff format --check qanchor_pl data_modules callbacks tests

bench: $(STAMP)
	$(BIN)/qanchor synth --out runs/bench/raw --users 4000 --seed 0
	$(BIN)/qanchor build --raw runs/bench/raw --out runs/bench/data
	$(BIN)/qanchor encode --data runs/bench/data --encoder hash
	$(BIN)/qanchor bench data --data runs/bench/data --json
	$(BIN)/qanchor bench data --data runs/bench/data --workers 2 --json
	$(BIN)/qanchor bench train --config recipes/pretrain/tiny-cpu.yaml --data.data runs/bench/data --json
	$(BIN)/qanchor bench kv-cache --json

clean:
	rm -rf runs lightning_logs .pytest_cache
