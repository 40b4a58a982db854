#!/usr/bin/env bash
# The kind path: `scripts/kind.sh up|publish|results|down`. Needs docker, kind and kubectl.
set -euo pipefail
cd "$(dirname "$0")/.."

CLUSTER=sluice
IMAGE=sluice:0.1.0
NS=sluice

need() {
  for tool in "$@"; do
    command -v "$tool" >/dev/null || { echo "kind: '$tool' is required (see README: The kind path)" >&2; exit 1; }
  done
}

# Each publish uses a fresh id prefix (ids already done are skipped by design), remembered for
# results/wait/check.
PREFIX_FILE=target/kind-last-prefix
prefix() { echo "${ID_PREFIX:-$(cat "$PREFIX_FILE" 2>/dev/null || echo kind)}"; }

secret() { sed -n "s/^$2=//p" "manifests/secrets/$1.env"; }
host_amqp_url() { echo "amqp://sluice:$(secret rabbitmq password)@127.0.0.1:5672/%2f"; }
host_redis() { redis-cli -h 127.0.0.1 -p 6379 --no-auth-warning -a "$(secret redis password)" "$@"; }

up() {
  need docker kind kubectl
  if ! kind get clusters 2>/dev/null | grep -qx "$CLUSTER"; then
    kind create cluster --config kind-config.yaml --wait 120s
  fi
  kubectl config use-context "kind-$CLUSTER" >/dev/null
  docker build -t "$IMAGE" .
  kind load docker-image "$IMAGE" --name "$CLUSTER"
  scripts/credentials.sh
  kubectl apply -k manifests
  kubectl -n "$NS" rollout status statefulset/rabbitmq --timeout=300s
  kubectl -n "$NS" rollout status statefulset/redis --timeout=180s
  kubectl -n "$NS" rollout status deployment/sluice-dispatcher --timeout=180s
  echo "kind: sluice is up. RabbitMQ at 127.0.0.1:5672, Redis at 127.0.0.1:6379 (password in manifests/secrets/redis.env)"
}

publish() {
  local n=${1:-100} kernel=${2:-modsum} input=${3:-}
  need cargo
  cargo build --release --bin dispatcher >/dev/null
  local id_prefix=${ID_PREFIX:-kind-$(date +%s)}
  mkdir -p target && echo "$id_prefix" >"$PREFIX_FILE"
  echo "kind: message ids are $id_prefix-0 … $id_prefix-$((n - 1))"
  local args=(publish -n "$n" -k "$kernel" --id-prefix "$id_prefix")
  [[ -n $input ]] && args+=(-i "$input")
  AMQP_URL=$(host_amqp_url) QUEUE=jobs target/release/dispatcher "${args[@]}"
}

results() {
  need redis-cli
  echo "--- sluice:stats"
  host_redis HGETALL sluice:stats | paste - -
  echo "--- the 5 latest results (sluice:results stream)"
  host_redis XREVRANGE sluice:results + - COUNT 5
  echo "--- sluice:result:$(prefix)-0"
  host_redis HGETALL "sluice:result:$(prefix)-0" | paste - -
  echo "--- jobs"
  kubectl -n "$NS" get jobs -l app.kubernetes.io/managed-by=sluice-dispatcher
}

# Waits until PREFIX-0 … PREFIX-(N-1) all have a result.
wait_for() {
  local n=$1 id_prefix missing
  id_prefix=$(prefix)
  for _ in $(seq 1 300); do
    missing=$(for ((i = 0; i < n; i++)); do echo "EXISTS sluice:result:$id_prefix-$i"; done | host_redis | grep -c '^0$' || true)
    (( missing == 0 )) && { echo "kind: all $n results are in"; return 0; }
    sleep 1
  done
  echo "kind: $missing of $n results still missing after 300s" >&2
  return 1
}

# Fails unless PREFIX-0 … PREFIX-(N-1) all have status ok.
check() {
  local n=$1 bad=0 id_prefix
  id_prefix=$(prefix)
  for ((i = 0; i < n; i++)); do
    local status
    status=$(host_redis HGET "sluice:result:$id_prefix-$i" status)
    [[ $status == ok ]] || { echo "kind: $id_prefix-$i has status '${status:-none}'" >&2; bad=$((bad + 1)); }
  done
  (( bad == 0 )) && echo "kind: all $n results are ok"
  (( bad == 0 ))
}

down() {
  need kind
  kind delete cluster --name "$CLUSTER"
}

case ${1:-} in
  up) up ;;
  publish) shift; publish "$@" ;;
  results) results ;;
  wait) wait_for "${2:?count}" ;;
  check) check "${2:?count}" ;;
  down) down ;;
  *) echo "usage: scripts/kind.sh up|publish [N] [KERNEL] [INPUT]|results|wait N|check N|down" >&2; exit 2 ;;
esac
