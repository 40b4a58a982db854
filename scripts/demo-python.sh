#!/usr/bin/env bash
# make demo-python: the pool manager's plain Python function, unchanged, run by sluice. A pika
# producer publishes plain text (examples/python/publish.py), the dispatcher (local launcher)
# batches it, and each runner serves cpu_intensive_task through the exec protocol with the
# Python SDK (KERNELS_FILE=examples/python/kernels.toml, DEFAULT_KERNEL=seed).
set -euo pipefail
cd "$(dirname "$0")/.."

export QUEUE=${QUEUE:-jobs}
export KEY_PREFIX=${KEY_PREFIX:-sluice}
export LAUNCHER=local
export KERNELS_FILE=$PWD/examples/python/kernels.toml
export DEFAULT_KERNEL=seed
export RUNNER_CPU=${RUNNER_CPU:-$(nproc)}
export METRICS_ADDR=${METRICS_ADDR:-127.0.0.1:9090}
export RUNNER_BIN=${RUNNER_BIN:-$PWD/target/release/runner}
export RUST_LOG=${RUST_LOG:-warn,sluice_dispatcher=info}
DISPATCHER=target/release/dispatcher
N=${N:-40}

redis() { redis-cli -u "${REDIS_URL:-redis://127.0.0.1:6379/}" "$@"; }

# Results are written once per id: clear this demo's own ids from an earlier run.
for ((i = 1; i <= N; i++)); do echo "DEL $KEY_PREFIX:result:seed-$i"; done | redis >/dev/null

"$DISPATCHER" serve 2>target/demo-python-dispatcher.log &
pid=$!
trap 'kill -TERM $pid 2>/dev/null || true' EXIT

started=$(date +%s.%N)
python3 examples/python/publish.py "$QUEUE" "$N"
echo "waiting for $N results..."
present() { for ((i = 1; i <= N; i++)); do echo "EXISTS $KEY_PREFIX:result:seed-$i"; done | redis | grep -c '^1$' || true; }
done_count=0
for ((i = 0; i < 900; i++)); do
  done_count=$(present)
  [[ $done_count == "$N" ]] && break
  sleep 0.2
done
finished=$(date +%s.%N)
kill -TERM $pid
wait $pid || true
trap - EXIT

echo
echo "=== sluice: a plain Python function as an exec kernel ==="
awk -v ok="$done_count" -v all="$N" -v s="$started" -v f="$finished" \
  'BEGIN { printf "results: %d of %d in %.1fs\n", ok, all, f - s }'
echo "Read them with redis-cli:"
echo "  redis-cli HGETALL $KEY_PREFIX:result:seed-1"
redis HGETALL "$KEY_PREFIX:result:seed-1" | paste - - | sed 's/^/  /'
[[ $done_count == "$N" ]] || { echo "demo-python: $((N - done_count)) results missing (see target/demo-python-dispatcher.log)" >&2; exit 1; }
