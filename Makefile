# Thin wrappers; `make help` lists the targets.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PROTO_DIR := protos
PROTOS := $(wildcard $(PROTO_DIR)/routee/callbacks/v1/*.proto)
GENERATED := $(PROTOS:.proto=_pb2.py) $(PROTOS:.proto=_pb2.pyi) $(PROTOS:.proto=_pb2_grpc.py) $(PROTOS:.proto=_pb2_grpc.pyi)

.PHONY: help install run test lint protos check-protos bench clean

help:  ## List the targets.
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

$(BIN)/routee-callbacks: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	@touch $@

install: $(BIN)/routee-callbacks  ## Create .venv and install the service with its development tools.

run: install  ## Start the service on embedded defaults (HTTP :8080, gRPC :50051, ./routee-callbacks.db), local posts allowed.
	$(BIN)/routee-callbacks serve --allow-cidr 127.0.0.1/32 --allow-cidr ::1/128

test: install  ## Run the whole test suite.
	$(BIN)/pytest

lint: install  ## ruff, mypy and buf lint.
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/buf lint $(PROTO_DIR)

protos: $(GENERATED)  ## Regenerate the Python code and typed stubs from protos/.

$(GENERATED) &: $(PROTOS) | install
	$(BIN)/python -m grpc_tools.protoc -I $(PROTO_DIR) \
		--python_out=$(PROTO_DIR) --grpc_python_out=$(PROTO_DIR) \
		--plugin=protoc-gen-mypy=$(BIN)/protoc-gen-mypy --mypy_out=$(PROTO_DIR) \
		--plugin=protoc-gen-mypy_grpc=$(BIN)/protoc-gen-mypy_grpc --mypy_grpc_out=$(PROTO_DIR) \
		$(PROTOS)

check-protos: install  ## Fail when the committed generated code is stale.
	touch $(PROTOS) && $(MAKE) --no-print-directory protos
	git diff --exit-code -- $(PROTO_DIR)

bench: install  ## Run the benchmarks.
	$(BIN)/python -m bench

clean:  ## Remove the virtualenv and caches.
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
