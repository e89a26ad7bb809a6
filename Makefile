# One vocabulary: install, proto, serve, test, lint, bench, clients.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# The server alone (the `postgres` extra, which includes `server`), for `make serve`; the
# dev install includes it.
SERVER_STAMP := $(VENV)/.installed-server

.PHONY: install proto proto-check serve test lint bench bench-quick clean

$(STAMP): pyproject.toml setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP) $(SERVER_STAMP)

$(SERVER_STAMP): pyproject.toml setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[postgres]'
	touch $(SERVER_STAMP)

## install: create .venv and install sessiond with its development tools
install: $(STAMP)

# The Python code that `make proto` generates: the protobuf/gRPC modules and the
# blocking client's methods (unasync from the asyncio ones).
GENERATED_PY := client/sessiond/v1 client/sessiond/_methods_sync.py

## proto: regenerate client/sessiond/v1 from protos/, and the sync client's methods from the async ones
proto: $(STAMP)
	PYTHON=$(PY) bash scripts/genproto.sh
	$(PY) scripts/gen_sync_methods.py

## proto-check: fail when the committed generated code is stale
proto-check: proto
	git diff --exit-code --stat -- $(GENERATED_PY)
	test -z "$$(git status --porcelain -- $(GENERATED_PY))"

## serve: install the server only (no dev tools) and start it on SQLite (127.0.0.1:50051)
serve: $(SERVER_STAMP)
	$(VENV)/bin/sessiond serve

## test: the whole test suite against real servers (the image test runs in test-image)
test: $(STAMP)
	$(PY) -m pytest -q -m 'not image'

## lint: ruff and mypy --strict
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

## bench: the benchmark suite (see bench/README.md)
bench: $(STAMP)
	$(PY) -m bench

## bench-quick: the benchmark suite with small sizes (< 3 minutes)
bench-quick: $(STAMP)
	$(PY) -m bench --quick

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

.PHONY: clients clients-check interop
## clients: lint and breaking-check the protos, regenerate the Go/TypeScript/Rust clients and docs/api.md
clients: $(STAMP)
	PYTHON=$(PY) bash scripts/gen_clients.sh

## clients-check: fail when the generated clients or docs/api.md are stale
clients-check: $(STAMP)
	PYTHON=$(PY) bash scripts/gen_clients.sh --check

## interop: Go, TypeScript and Rust clients against a real server, compared with Python
interop: $(STAMP)
	bash scripts/interop.sh

.PHONY: serve-pg bench-replicas
## serve-pg: two replicas (50051, 50052) on a throwaway PostgreSQL; Ctrl-C stops all
serve-pg: $(SERVER_STAMP)
	set -e; eval "$$(bash scripts/postgres.sh start)"; \
	trap 'kill $$a $$b 2>/dev/null; bash scripts/postgres.sh stop' EXIT; \
	$(VENV)/bin/sessiond serve --database "$$SESSIOND_TEST_POSTGRES_URL" --address 127.0.0.1:50051 & a=$$!; \
	$(VENV)/bin/sessiond serve --database "$$SESSIOND_TEST_POSTGRES_URL" --address 127.0.0.1:50052 & b=$$!; \
	wait

## bench-replicas: appends/s, CPU and watch delay: SQLite 1/2/4 workers, PostgreSQL 1/2/4 replicas (+0.5 ms)
bench-replicas: $(STAMP)
	set -e; eval "$$(bash scripts/postgres.sh start)"; trap 'bash scripts/postgres.sh stop' EXIT; \
	$(PY) -m bench.replicas

.PHONY: image test-image deploy-check
## image: build the container image localhost/sessiond (debootstrap + buildah; root, no registry)
image:
	bash scripts/build_image.sh

## test-image: build the image, run it with podman, check health and one RPC
test-image: $(STAMP)
	$(PY) -m pytest -q -m image tests/test_image.py

## deploy-check: validate deploy/kubernetes with kubeconform (offline schemas) and the systemd unit
deploy-check:
	bash scripts/check_deploy.sh
