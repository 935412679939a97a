# Set-up, tests and the end-to-end quickstart. Everything installs into .venv (created here if missing).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
RUN_DIR ?= runs/quickstart
# The quickstart's serving port; 0 picks a free one.
PORT ?= 0
# ONNX Runtime flavour: gpu when nvidia-smi sees a GPU, else cpu; override with `make setup ORT=cpu`.
ORT ?= $(shell nvidia-smi -L >/dev/null 2>&1 && echo gpu || echo cpu)
# onnxruntime and onnxruntime-gpu write the same folder: switching flavours removes both before installing one.
OTHER_ORT := $(if $(filter gpu,$(ORT)),onnxruntime,onnxruntime-gpu)

.PHONY: setup test test-fast typecheck lint quickstart clean grpc-front grpc-deps

setup: $(VENV)/.installed-$(ORT)

$(VENV)/.installed-$(ORT): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	@if $(BIN)/python -m pip show -q $(OTHER_ORT) >/dev/null 2>&1; then \
		$(BIN)/python -m pip uninstall -q -y onnxruntime onnxruntime-gpu; fi
	@echo "installing pih2t-deploy[all,$(ORT)] into $(VENV)"
	$(BIN)/python -m pip install -q -e '.[all,$(ORT)]'
	rm -f $(VENV)/.installed-*
	touch $@

# The native gRPC front end (pih2t-serve --grpc-front native), built into the venv: g++ and gRPC's C++ library.
FRONT := $(BIN)/pih2t-grpc-front
grpc-front: $(FRONT)

$(FRONT): native/grpc_front/front.cc | $(VENV)/.installed-$(ORT)
	@pkg-config --exists grpc++ 2>/dev/null || $(MAKE) --no-print-directory grpc-deps
	g++ -O2 -std=c++17 -Wall -Wextra -o $@.tmp $< $$(pkg-config --cflags --libs grpc++)
	mv $@.tmp $@

# gRPC's C++ headers and libraries from Debian's packages (as root), else a line saying what to install
grpc-deps:
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing libgrpc++-dev and pkg-config (apt-get)"; \
		apt-get install -y -q libgrpc++-dev pkg-config >/dev/null 2>&1 || \
		{ apt-get update -q >/dev/null && apt-get install -y -q libgrpc++-dev pkg-config >/dev/null; }; \
	else echo "pih2t-grpc-front needs gRPC's C++ library: apt-get install libgrpc++-dev pkg-config" >&2; exit 1; fi

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# mypy over pih2t_deploy/ (configured in pyproject.toml: strict on the core packages)
typecheck: setup
	$(BIN)/mypy

test: setup grpc-front lint typecheck
	$(BIN)/python -m pytest -q -p no:cacheprovider

# the unit tier: hand-made numbers and a fake classifier, no trained model, no processes (well under a minute)
test-fast: setup
	$(BIN)/python -m pytest -q -p no:cacheprovider -m "not integration"

quickstart: setup
	$(BIN)/python scripts/quickstart.py --run-dir $(RUN_DIR) --port $(PORT)

clean:
	rm -rf $(RUN_DIR) .pytest_cache .ruff_cache
