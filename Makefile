# sluice: two commands matter. `make demo` brings the system up and runs its main job;
# `make test` runs every check and test. See README.md.
SHELL := /bin/bash
CARGO ?= cargo
VENV := .venv
# The validators and the pika producer come from PyPI into a project-local virtualenv;
# target/services/bin holds the rabbitmqctl of a broker that scripts/services.sh started.
export PATH := $(CURDIR)/target/services/bin:$(CURDIR)/$(VENV)/bin:$(PATH)

N ?= 100
KERNEL ?= modsum
INPUT ?=

.PHONY: all build release demo demo-local demo-kind demo-python examples test bench setup services \
        services-down tools \
        validate image-check deny cluster cluster-down fmt lint kind-up publish results kind-down clean

all: build

build:
	@scripts/setup.sh rust
	$(CARGO) build --workspace --bins

release:
	@scripts/setup.sh rust
	$(CARGO) build --release --workspace --bins

## What make test needs and a fresh machine lacks (scripts/setup.sh; a second run installs nothing).
setup:
	@scripts/setup.sh services rust cargo-tools python kubectl cluster

## RabbitMQ and Redis on loopback: healthy ones are reused, else the project starts its own
## (Debian's packages, installed if missing; state in target/services). services-down stops them.
services:
	@scripts/setup.sh services
	@scripts/services.sh up

services-down:
	@scripts/services.sh down

## The main job: on kind when docker and kind are here, else with the local launcher.
demo:
	@if command -v docker >/dev/null && docker info >/dev/null 2>&1 && command -v kind >/dev/null; then \
	  $(MAKE) --no-print-directory demo-kind; \
	else \
	  echo "demo: no docker engine or kind here; running with the local launcher"; \
	  $(MAKE) --no-print-directory demo-local; \
	fi

## Build, start the dispatcher with the local launcher, push 200 messages of every kernel,
## wait for every result, print a summary and the redis-cli commands that show them.
demo-local: services release
	@scripts/demo.sh

## A plain Python function, unchanged, as an exec kernel: the pool manager's cpu_intensive_task
## published as plain text by a pika producer, run by the local launcher (examples/python).
demo-python: services tools release
	@scripts/demo-python.sh

## kind maps host ports 5672/6379, so the local services this checkout started are stopped first.
demo-kind: services-down kind-up release
	@scripts/kind.sh publish 200 modsum
	@scripts/kind.sh wait 200
	@scripts/kind.sh check 200
	@scripts/kind.sh results

## Formatting, lints, dependency policy, manifest and image validation, the image's build stage
## replayed, module cycles, then every test against real services, ending with the reliability
## figures and one summary line.
test: setup services validate image-check deny examples
	scripts/module-cycles.py contract/src dispatcher/src runner/src
	python -m pytest sdk/python -q
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO) build --workspace --bins
	scripts/cluster.sh up
	@# The build's settings, so vet reuses its compiled packages (tests/controlplane/build.sh).
	cd tests/controlplane && test -z "$$(gofmt -l .)" && GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-trimpath go vet ./...
	@rm -f target/reliability.tsv target/outages.tsv
	@set -o pipefail; $(CARGO) test --workspace --no-fail-fast 2>&1 | tee target/test.log; \
	  status=$$?; echo; scripts/reliability-table.sh target/reliability.tsv || status=1; \
	  if [ -f target/outages.tsv ]; then echo "outages: case, seconds from the fix to the last result, batches retried, extra Jobs for the poison message"; \
	    sed 's/^/  /' target/outages.tsv; fi; \
	  scripts/test-summary.sh target/test.log; exit $$status

## A user's own runner crate (examples/rust-textstats: the runner library and one kernel), tested
## and built as its users would, from its own manifest; the users_work suite runs it end to end.
examples:
	@scripts/setup.sh rust
	CARGO_TARGET_DIR=$(CURDIR)/target/examples $(CARGO) test --locked --manifest-path examples/rust-textstats/Cargo.toml
	CARGO_TARGET_DIR=$(CURDIR)/target/examples $(CARGO) build --locked --manifest-path examples/rust-textstats/Cargo.toml

## The test cluster: upstream kube-apiserver, controller manager, scheduler and etcd built from
## their Go modules (cached in target/cluster), and the node agent; the kube_real suite uses it.
cluster:
	@scripts/setup.sh rust kubectl cluster
	@scripts/cluster.sh up

cluster-down:
	@scripts/cluster.sh down

## The image's build stage without Docker: its context as .dockerignore leaves it, both cargo
## builds, and a runner without test kernels (scripts/image-check.sh; README, Testing).
image-check:
	@scripts/setup.sh rust
	scripts/image-check.sh

## Licenses, banned crates and sources (deny.toml); advisories too when the RustSec database
## can be fetched or is already on disk, else one line says they were not checked.
deny:
	@scripts/setup.sh cargo-tools
	@scripts/deny.sh

## The benchmark: criterion kernel benches, then every end-to-end scenario, one table.
## Figures are ratios measured side by side in this one run (docs/PERFORMANCE.md).
bench: services tools release
	$(CARGO) bench -p sluice-runner --bench kernels
	$(CARGO) build --release -p sluice-bench
	target/release/sluice-bench | tee target/bench.md

## Python tools: pika (foreign-producer suite) and the offline validators.
tools:
	@scripts/setup.sh python

## The manifests, the rendered Job and the Dockerfile, checked offline.
validate: tools build
	@scripts/setup.sh kubectl
	@mkdir -p target
	@scripts/credentials.sh
	kubectl kustomize manifests > target/manifests.yaml
	@# The Job as the manifests configure it: the ConfigMap's values and the Deployment's memory
	@# limit pass the dispatcher's start-up checks, then the validators see the rendered Job.
	scripts/configured-env.py target/manifests.yaml > target/configured.env
	env $$(cat target/configured.env) JOB_TEMPLATE=manifests/job-template.yaml \
	  target/debug/dispatcher render-job > target/job.yaml
	@# The same for the external-services overlay. Missing files in its git-ignored secrets/
	@# become placeholders (example hosts, a throwaway CA), to be replaced before applying.
	@d=manifests/overlays/external-services/secrets; mkdir -p $$d; \
	  for f in rabbitmq.env redis.env; do [[ -f $$d/$$f ]] || \
	    { cp $$d/../$$f.example $$d/$$f && echo "validate: placeholder $$d/$$f"; }; done; \
	  [[ -f $$d/ca.pem ]] || { openssl req -x509 -newkey rsa:2048 -nodes -keyout /dev/null \
	    -days 30 -subj "/CN=sluice placeholder CA (make validate)" -out $$d/ca.pem 2>/dev/null && \
	    echo "validate: placeholder $$d/ca.pem"; }
	kubectl kustomize manifests/overlays/external-services > target/manifests-external.yaml
	@# Nothing bundled is left: services.yaml replaced the egress to those pods (by position).
	! grep -n 'app.kubernetes.io/name: \(rabbitmq\|redis\)' target/manifests-external.yaml
	scripts/configured-env.py target/manifests-external.yaml > target/configured-external.env
	env $$(cat target/configured-external.env) \
	  JOB_TEMPLATE=manifests/overlays/external-services/job-template.yaml \
	  target/debug/dispatcher render-job > target/job-external.yaml
	kubernetes-validate --strict --kubernetes-version 1.33 target/manifests.yaml target/job.yaml \
	  target/manifests-external.yaml target/job-external.yaml
	kubernetes-validate --strict target/manifests.yaml target/job.yaml \
	  target/manifests-external.yaml target/job-external.yaml
	hadolint Dockerfile examples/rust-textstats/Dockerfile examples/python/Dockerfile
	checkov --config-file .checkov.yaml -f target/manifests.yaml
	checkov --config-file .checkov.yaml -f target/manifests-external.yaml
	@# The rendered Jobs alone: their NetworkPolicy (sluice-runner) is in the manifests, which
	@# checkov cannot link to a Job rendered separately.
	checkov --config-file .checkov.yaml --skip-check CKV_K8S_43,CKV_K8S_15,CKV_K8S_35,CKV2_K8S_6 -f target/job.yaml
	checkov --config-file .checkov.yaml --skip-check CKV_K8S_43,CKV_K8S_15,CKV_K8S_35,CKV2_K8S_6 -f target/job-external.yaml
	shellcheck scripts/*.sh tests/controlplane/*.sh .ci/run

## The kind path (needs docker, kind, kubectl, redis-cli): see README.
kind-up:
	@scripts/kind.sh up

publish: release
	@scripts/kind.sh publish $(N) $(KERNEL) '$(INPUT)'

results:
	@scripts/kind.sh results

kind-down:
	@scripts/kind.sh down

fmt:
	$(CARGO) fmt --all

lint:
	$(CARGO) clippy --workspace --all-targets -- -D warnings

clean:
	$(CARGO) clean
	rm -rf $(VENV)
