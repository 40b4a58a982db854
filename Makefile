# sluice: two commands matter. `make demo` brings the system up and runs its main job;
# `make test` runs every check and test. See README.md.
SHELL := /bin/bash
CARGO ?= cargo

.PHONY: all build release demo test services fmt lint unit clean

all: build

build:
	$(CARGO) build --workspace --bins

release:
	$(CARGO) build --release --workspace --bins

## Bring RabbitMQ and Redis up if needed (running ones, installed ones, or Docker).
services:
	@scripts/services.sh

## Build, start the dispatcher with the local launcher, push 200 messages of every kernel,
## wait for every result, print a summary and the redis-cli commands that show them.
demo: services release
	@scripts/demo.sh

## Formatting, lints, then every test (unit, integration, end to end) against real services.
test: services
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO) build --workspace --bins
	@mkdir -p target
	@set -o pipefail; $(CARGO) test --workspace --no-fail-fast 2>&1 | tee target/test.log; \
	  status=$$?; scripts/test-summary.sh target/test.log; exit $$status

fmt:
	$(CARGO) fmt --all

lint:
	$(CARGO) clippy --workspace --all-targets -- -D warnings

clean:
	$(CARGO) clean
