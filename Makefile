# One command each for a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
# The PyTorch build to install. The default is the CPU build that lies on these
# machines' disk; GPU users override it, e.g. make test TORCH_SPEC='torch==2.13.0'
# with their CUDA index: PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cu128
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_DIR ?= results/demo

.PHONY: install test test-fast lint format demo clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

## the whole suite, slow crash-safety tests included (what CI runs)
test: $(STAMP)
	$(PY) -m pytest

## everything but the tests marked slow
test-fast: $(STAMP)
	$(PY) -m pytest -m "not slow"

lint: $(STAMP)
	$(VENV)/bin/ruff check cobra_eval tests migrations
	$(VENV)/bin/ruff format --check cobra_eval tests migrations
	$(VENV)/bin/mypy

format: $(STAMP)
	$(VENV)/bin/ruff format cobra_eval tests migrations
	$(VENV)/bin/ruff check --fix cobra_eval tests migrations

## a whole run on a small synthetic dataset, then resume it, list runs and read a checkpoint with jq
demo: $(STAMP)
	$(PY) -m tests.stand_in build/demo-data 60 >/dev/null
	PYTHONPATH=. $(PY) -m cobra_eval --backend tests.stand_in:EchoBackend \
		--dataset build/demo-data/captions.json --method all --num_samples 50 \
		--checkpoint_interval 10 --output_dir $(DEMO_DIR) --run_id demo
	$(PY) -m cobra_eval runs --output_dir $(DEMO_DIR)
	@command -v jq >/dev/null && jq '.checkpoint_info' \
		$(DEMO_DIR)/demo/scratchpad/checkpoint_scratchpad_latest.json || true

clean:
	rm -rf build dist $(DEMO_DIR) .pytest_cache .ruff_cache .mypy_cache
