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

.PHONY: install test test-fast lint format demo demo-model bench clean

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
	$(VENV)/bin/ruff check cobra_eval tests migrations benchmarks
	$(VENV)/bin/ruff format --check cobra_eval tests migrations benchmarks
	$(VENV)/bin/mypy

format: $(STAMP)
	$(VENV)/bin/ruff format cobra_eval tests migrations benchmarks
	$(VENV)/bin/ruff check --fix cobra_eval tests migrations benchmarks

## every method on 50 held-out images of the bundled demo world with the bundled demo model;
## run it again and it resumes the finished run (nothing left to generate)
demo: $(STAMP)
	$(PY) -m cobra_eval --method all --num_samples 50 --output_dir $(DEMO_DIR) \
		--resume_from_checkpoint
	$(PY) -m cobra_eval runs --output_dir $(DEMO_DIR)

## retrain the bundled demo model (a few minutes on 2 cores, fixed seed)
demo-model: $(STAMP)
	$(PY) -m cobra_eval.demo.train

## measured benchmarks (figures for the README's table)
bench: $(STAMP)
	$(PY) -m benchmarks.report

clean:
	rm -rf build dist $(DEMO_DIR) .pytest_cache .ruff_cache .mypy_cache
