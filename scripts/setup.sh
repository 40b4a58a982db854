#!/usr/bin/env bash
# Installs what `make demo` and `make test` need and a fresh machine lacks, one line per step.
# Each step checks first, so a second run installs nothing:
#   scripts/setup.sh services     Debian's rabbitmq-server, redis-server and redis-tools
#   scripts/setup.sh rust         the rustfmt and clippy components
#   scripts/setup.sh cargo-tools  cargo-deny, pinned (CARGO_DENY_VERSION below)
#   scripts/setup.sh python       the project virtualenv (.venv) with scripts/requirements-tools.txt,
#                                 every dependency pinned by scripts/constraints-tools.txt, and the
#                                 Python SDK (sdk/python) installed editable
#   scripts/setup.sh kubectl      checks kubectl (kustomize); it cannot be installed from here
# A tool that cannot be installed automatically gets one line naming it and how to get it.
set -euo pipefail
cd "$(dirname "$0")/.."

CARGO_DENY_VERSION=0.20.2
VENV=.venv
LOG_DIR=target/setup

say() { echo "setup: $*"; }
die() {
  echo "setup: $*" >&2
  exit 1
}
# CI shows only what a run printed, so a failed step prints the end of its log before dying.
die_with_log() { # log message...
  local log=$1
  shift
  [[ -f $log ]] && tail -n 15 "$log" | sed "s|^|setup: ${log##*/}: |" >&2
  die "$@"
}

# apt-get as root, or through passwordless sudo; otherwise say what to run.
apt_install() { # package...
  local sudo=()
  if ((EUID != 0)); then
    if command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
      sudo=(sudo -n)
    else
      die "missing $*; install them with: sudo apt-get install -y $* (macOS: brew install rabbitmq redis)"
    fi
  fi
  command -v apt-get >/dev/null ||
    die "missing $*; no apt-get here: install RabbitMQ and Redis with your package manager (macOS: brew install rabbitmq redis)"
  mkdir -p "$LOG_DIR"
  say "installing $* from Debian's packages (log: $LOG_DIR/apt.log)"
  export DEBIAN_FRONTEND=noninteractive
  {
    "${sudo[@]}" apt-get update -qq &&
      "${sudo[@]}" apt-get install -y -qq --no-install-recommends "$@"
  } >"$LOG_DIR/apt.log" 2>&1 || die_with_log "$LOG_DIR/apt.log" "apt-get install $* failed; see $LOG_DIR/apt.log"
}

services() {
  local missing=()
  [[ -x /usr/lib/rabbitmq/bin/rabbitmq-server ]] || command -v rabbitmq-server >/dev/null ||
    missing+=(rabbitmq-server)
  command -v redis-server >/dev/null || missing+=(redis-server)
  command -v redis-cli >/dev/null || missing+=(redis-tools)
  if ((${#missing[@]})); then apt_install "${missing[@]}"; fi
}

rust() {
  command -v cargo >/dev/null ||
    die "cargo is missing; install Rust with rustup (https://rustup.rs), then run make again"
  local missing=()
  cargo fmt --version >/dev/null 2>&1 || missing+=(rustfmt)
  cargo clippy --version >/dev/null 2>&1 || missing+=(clippy)
  ((${#missing[@]})) || return 0
  say "adding the Rust components ${missing[*]} (rustup component add)"
  rustup component add "${missing[@]}" >/dev/null 2>&1 ||
    die "could not add ${missing[*]}; run: rustup component add ${missing[*]}"
}

# Installed into CARGO_HOME/bin, where cargo finds subcommands, so every checkout reuses it.
cargo_tools() {
  [[ $(cargo deny --version 2>/dev/null) == "cargo-deny $CARGO_DENY_VERSION" ]] && return 0
  mkdir -p "$LOG_DIR"
  say "installing cargo-deny $CARGO_DENY_VERSION (cargo install --locked; a few minutes, once per machine)"
  cargo install --locked --force --quiet cargo-deny --version "$CARGO_DENY_VERSION" \
    >"$LOG_DIR/cargo-deny.log" 2>&1 ||
    die_with_log "$LOG_DIR/cargo-deny.log" "could not install cargo-deny $CARGO_DENY_VERSION (see $LOG_DIR/cargo-deny.log); run: cargo install --locked cargo-deny --version $CARGO_DENY_VERSION"
}

# The stamp records the requirements and their pins, so an edited list reinstalls. Every
# transitive package is pinned (scripts/constraints-tools.txt): a fresh machine gets exactly
# what was tested, not whatever PyPI published since.
python() {
  local stamp=$VENV/.installed req=scripts/requirements-tools.txt pins=scripts/constraints-tools.txt
  [[ -f $stamp ]] && cmp -s "$stamp" <(cat "$req" "$pins") && return 0
  command -v python3 >/dev/null || die "python3 is missing; install it: sudo apt-get install -y python3 python3-venv"
  if [[ ! -x $VENV/bin/pip ]]; then
    python3 -c 'import venv, ensurepip' 2>/dev/null || apt_install python3-venv
    say "creating the virtualenv $VENV"
    python3 -m venv "$VENV"
  fi
  mkdir -p "$LOG_DIR"
  say "installing the Python tools into $VENV (pika, validators; log: $LOG_DIR/pip.log)"
  local attempt
  for attempt in 1 2 3; do
    "$VENV/bin/pip" install --disable-pip-version-check --retries 10 --timeout 60 \
      -r "$req" -c "$pins" >>"$LOG_DIR/pip.log" 2>&1 && break
    # A registry hiccup is worth another try; a real failure fails the same way three times.
    ((attempt < 3)) ||
      die_with_log "$LOG_DIR/pip.log" "pip install -r $req failed three times; see $LOG_DIR/pip.log"
    say "pip install failed (attempt $attempt of 3); retrying in $((attempt * 10)) s"
    sleep $((attempt * 10))
  done
  cat "$req" "$pins" >"$stamp"
}

# The Python SDK, editable from this checkout: the exec-kernel demo and tests run workers with
# the virtualenv's python3, as a user's own pip install would.
python_sdk() {
  local here
  here=$("$VENV/bin/python" -c 'import os, sluice_worker; print(os.path.dirname(sluice_worker.__file__))' 2>/dev/null) || here=
  [[ $here == "$PWD/sdk/python/src/sluice_worker" ]] && return 0
  mkdir -p "$LOG_DIR"
  say "installing the Python SDK (sdk/python) into $VENV, editable"
  "$VENV/bin/pip" install --disable-pip-version-check --retries 10 --no-deps -e ./sdk/python \
    >>"$LOG_DIR/pip.log" 2>&1 ||
    die_with_log "$LOG_DIR/pip.log" "pip install -e ./sdk/python failed; see $LOG_DIR/pip.log"
}

kubectl_check() {
  command -v kubectl >/dev/null ||
    die "kubectl is missing (make test renders the manifests with 'kubectl kustomize'); install kubectl 1.32 or newer: https://kubernetes.io/docs/tasks/tools/"
}

# The test cluster's control plane is built from Kubernetes' Go modules (scripts/cluster.sh);
# its go.mod asks for Go 1.24 or newer, and GOTOOLCHAIN=local keeps Go from fetching another.
cluster_tools() {
  command -v go >/dev/null ||
    die "Go is missing (make test builds the test cluster's control plane from Kubernetes' Go modules); install Go 1.24 or newer: https://go.dev/dl"
  local version
  version=$(go env GOVERSION)
  version=${version#go}
  [[ $(printf '%s\n1.24\n' "${version%.*}" | sort -V | head -n1) == 1.24 ]] ||
    die "Go $version is too old for Kubernetes 1.33's modules; install Go 1.24 or newer: https://go.dev/dl"
  local tool
  for tool in openssl curl; do
    command -v "$tool" >/dev/null || apt_install "$tool"
  done
}

(($#)) || die "usage: scripts/setup.sh services|rust|cargo-tools|python|kubectl|cluster..."
for step in "$@"; do
  case $step in
  services) services ;;
  rust) rust ;;
  cargo-tools) cargo_tools ;;
  python) python && python_sdk ;;
  kubectl) kubectl_check ;;
  cluster) cluster_tools ;;
  *) die "unknown step '$step' (services, rust, cargo-tools, python, kubectl, cluster)" ;;
  esac
done
