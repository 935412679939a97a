# Set-up, tests and the end-to-end quickstart. Everything installs into .venv (created here if missing).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
RUN_DIR ?= runs/quickstart

.PHONY: setup test lint quickstart clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[all]'
	touch $@

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: setup lint
	$(BIN)/python -m pytest -q -p no:cacheprovider

quickstart: setup
	$(BIN)/python scripts/quickstart.py --run-dir $(RUN_DIR)

clean:
	rm -rf $(RUN_DIR) .pytest_cache .ruff_cache
