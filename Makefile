# Thin wrappers; `make help` lists the targets.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PROTO_DIR := protos
PROTOS := $(wildcard $(PROTO_DIR)/routee/callbacks/v1/*.proto)
GENERATED := $(PROTOS:.proto=_pb2.py) $(PROTOS:.proto=_pb2.pyi) $(PROTOS:.proto=_pb2_grpc.py) $(PROTOS:.proto=_pb2_grpc.pyi)
PY_CLIENT := clients/python/src/routee/callbacks/v1
TS_CLIENT := clients/typescript/gen/routee/callbacks/v1

# Python code and typed stubs for every proto, into the directory $(1).
protoc_python = $(BIN)/python -m grpc_tools.protoc -I $(PROTO_DIR) \
	--python_out=$(1) --grpc_python_out=$(1) \
	--plugin=protoc-gen-mypy=$(BIN)/protoc-gen-mypy --mypy_out=$(1) \
	--plugin=protoc-gen-mypy_grpc=$(BIN)/protoc-gen-mypy_grpc --mypy_grpc_out=$(1) \
	$(PROTOS)

DIST := dist
# The wheel installed as users install it (not editable), into a venv of its own: what the end-to-end tests run.
WHEEL_VENV := .venv-wheel

IMAGE := localhost/routee-callbacks
VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
# The host's CA bundle: pip inside the build needs it where a proxy stands between the build and the index.
HOST_CA := /etc/ssl/certs/ca-certificates.crt

.PHONY: help install run cluster test lint breaking protos check-protos clients bench bench-smoke stress clean dist wheel-venv image image-test

help:  ## List the targets.
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

$(BIN)/routee-callbacks: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	@touch $@

install: $(BIN)/routee-callbacks  ## Create .venv and install the service with its development tools.

run: install  ## Start the service on embedded defaults on loopback (HTTP 127.0.0.1:8080, gRPC 127.0.0.1:50051, ./routee-callbacks.db), local posts allowed.
	$(BIN)/routee-callbacks serve --http-bind 127.0.0.1:8080 --grpc-bind 127.0.0.1:50051 \
		--allow-cidr 127.0.0.1/32 --allow-cidr ::1/128

cluster: install  ## Two instances on a throwaway PostgreSQL behind haproxy (HTTP :8080, gRPC :50051); needs postgresql, haproxy.
	deploy/local-cluster.sh

dist: install  ## Build the sdist and the wheel into dist/ and check the wheel's contents.
	rm -rf $(DIST)
	$(BIN)/python -m build --outdir $(DIST) .
	$(BIN)/check-wheel-contents $(DIST)/*.whl

wheel-venv: dist  ## Install the wheel of dist/ into a fresh venv, as users install it.
	rm -rf $(WHEEL_VENV)
	$(PYTHON) -m venv $(WHEEL_VENV)
	$(WHEEL_VENV)/bin/pip install --quiet --disable-pip-version-check $(DIST)/*.whl

image: dist  ## Build the container image $(IMAGE):<version> and :latest with buildah (no daemon, no registry needed).
	base=$$(deploy/container/base-image.sh) && \
	buildah bud --isolation chroot --layers=false --quiet -f deploy/container/Containerfile \
		--build-arg BASE="$$base" --build-arg VERSION=$(VERSION) \
		--build-arg SOURCE="$$(git remote get-url origin 2>/dev/null || echo local)" \
		--build-arg REVISION="$$(git rev-parse HEAD)" \
		$(if $(wildcard $(HOST_CA)),--build-arg PIP_CERT=/run/host-ca.crt --volume $(HOST_CA):/run/host-ca.crt:ro) \
		--tag $(IMAGE):$(VERSION) --tag $(IMAGE):latest $(DIST)
	@buildah images --format '{{.Name}}:{{.Tag}} {{.Size}}' $(IMAGE):$(VERSION)

image-test: image  ## Run the image as its user: a callback in over HTTP and out over gRPC, health, SIGTERM, its configuration.
	ROUTEE_TEST_IMAGE=$(IMAGE):$(VERSION) $(BIN)/pytest tests/image

test: install wheel-venv  ## Run the whole test suite, end to end against the installed wheel (installs PostgreSQL, haproxy, promtool from Debian where missing).
	.ci/system-packages
	ROUTEE_TEST_EXECUTABLE=$(abspath $(WHEEL_VENV))/bin/routee-callbacks $(BIN)/pytest

lint: install  ## ruff, mypy, the import rule (import-linter) and buf lint.
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports --no-logo
	$(BIN)/buf lint $(PROTO_DIR)
	$(MAKE) --no-print-directory breaking

# The API must stay compatible with the first published v1 and with the previous commit.
FIRST_V1 = $(shell git log --diff-filter=A --format=%H -- $(PROTO_DIR)/routee/callbacks/v1/message_status_service.proto | tail -1)

breaking: install  ## buf breaking against the first v1 and the previous commit.
	@for ref in $(FIRST_V1) HEAD~1; do \
		if git rev-parse -q --verify "$$ref^{commit}" >/dev/null; then \
			echo "buf breaking against $$ref"; \
			$(BIN)/buf breaking $(PROTO_DIR) --against ".git#ref=$$ref,subdir=$(PROTO_DIR)" || exit 1; \
		fi; \
	done

protos: $(GENERATED)  ## Regenerate the Python code and typed stubs from protos/.

$(GENERATED) &: $(PROTOS) | install
	$(call protoc_python,$(PROTO_DIR))

clients: $(PY_CLIENT)/message_status_service_pb2.py $(TS_CLIENT)/message_status_service_pb.js  ## Generate the Python and TypeScript clients under clients/ from protos/.

$(PY_CLIENT)/message_status_service_pb2.py: $(PROTOS) | install
	mkdir -p $(PY_CLIENT)
	$(call protoc_python,clients/python/src)
	for dir in routee routee/callbacks routee/callbacks/v1; do touch clients/python/src/$$dir/__init__.py; done
	touch $(PY_CLIENT)/py.typed

clients/typescript/node_modules: clients/typescript/package.json clients/typescript/package-lock.json
	cd clients/typescript && npm ci --no-audit --no-fund --loglevel=error
	@touch $@

$(TS_CLIENT)/message_status_service_pb.js: $(PROTOS) clients/typescript/buf.gen.yaml clients/typescript/node_modules
	cd clients/typescript && rm -rf gen && npx --no-install buf generate ../../protos --template buf.gen.yaml

check-protos: install  ## Fail when the committed generated code is stale.
	touch $(PROTOS) && $(MAKE) --no-print-directory protos
	git diff --exit-code -- $(PROTO_DIR)

bench: install  ## Run every benchmark (about 35 minutes, needs wrk and PostgreSQL); results in bench/results/latest.json.
	$(BIN)/python -m bench

bench-smoke: install  ## A few seconds of each benchmark, to keep them working (CI); no timing assertions.
	$(BIN)/python -m bench --quick --out bench/results/quick.json

stress: install  ## The crash test with 25 SIGKILLs under load instead of CI's 3.
	ROUTEE_CALLBACKS_CRASH_ROUNDS=25 $(BIN)/pytest tests/e2e/test_crash.py -s --timeout 1200

clean:  ## Remove the virtualenv, generated clients and caches.
	rm -rf $(VENV) $(WHEEL_VENV) $(DIST) build *.egg-info .pytest_cache .mypy_cache .ruff_cache .hypothesis
	rm -rf clients/python/src clients/python/build clients/typescript/gen clients/typescript/node_modules
