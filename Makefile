# Every target creates .venv if missing and installs the project into it.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export PYTHONUNBUFFERED := 1

.PHONY: install demo test test-all lint typecheck bench bench-full clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch/torchvision first, pinned to the builds this workplace ships (see README "Installing").
	$(BIN)/python -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
	$(BIN)/python -m pip install -q -e ".[search,dev]"
	touch $(STAMP)

install: $(STAMP)

# A fresh run directory each time, so `make demo` can be run again; the newest is also linked as runs/quickstart.
DEMO_RUN := runs/quickstart-$(shell date +%Y%m%d-%H%M%S)
demo: $(STAMP)
	$(BIN)/python -m search.run spaces/quickstart.yaml --storage $(DEMO_RUN)
	test -e runs/quickstart -a ! -L runs/quickstart || ln -sfn $(notdir $(DEMO_RUN)) runs/quickstart

lint: $(STAMP)
	$(BIN)/ruff check cellnet search tests bench
	$(BIN)/ruff format --check cellnet search tests bench
	# declared dependencies = imported ones (pyproject [tool.deptry])
	$(BIN)/deptry cellnet search

typecheck: $(STAMP)
	$(BIN)/mypy cellnet search

test: lint typecheck
	$(BIN)/python -m pytest -q -x --timeout=900 tests

test-all: test

bench: $(STAMP)
	$(BIN)/python -m bench.run --quick

bench-full: $(STAMP)
	$(BIN)/python -m bench.run

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
