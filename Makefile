# ember: `make demo` and `make test` each do all of their own set-up on a fresh Debian machine.
SHELL := /bin/bash
PYTHON ?= /usr/bin/python3
VENV := .venv
BIN := $(VENV)/bin
PROTO_OUT := src/ember/proto/api_pb2.py
DEBIAN_PACKAGES := runc debootstrap fuse3 libfuse3-dev pkg-config erofs-utils e2fsprogs util-linux iproute2 docker-registry python3-venv python3-dev
STAMP := $(VENV)/.installed

.PHONY: setup system-packages proto demo test test-unit test-e2e bench lint clean

setup: system-packages $(STAMP) $(PROTO_OUT)

# Install only what is missing, so a prepared machine skips apt entirely.
system-packages:
	@missing=$$(for p in $(DEBIAN_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages: $$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

# Generated from the .proto; never edited by hand.
$(PROTO_OUT): src/ember/proto/api.proto $(STAMP)
	$(BIN)/python -m grpc_tools.protoc -Isrc --python_out=src --grpc_python_out=src src/ember/proto/api.proto

proto: $(PROTO_OUT)

demo: setup
	$(BIN)/ember run examples/hello.py --n 1000

test: setup
	$(BIN)/ruff check src tests benchmarks examples
	$(BIN)/lint-imports
	$(BIN)/pytest

test-unit: setup
	$(BIN)/pytest tests/unit

test-e2e: setup
	$(BIN)/pytest tests/e2e

bench: setup
	$(BIN)/pip install -q -e '.[bench]'
	$(BIN)/python -m benchmarks.run

lint: setup
	$(BIN)/ruff check src tests benchmarks examples
	$(BIN)/lint-imports

clean:
	rm -rf $(VENV) src/*.egg-info $(PROTO_OUT) src/ember/proto/api_pb2_grpc.py
