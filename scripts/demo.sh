#!/usr/bin/env bash
# make demo without a cluster: the local launcher, 200 messages of every kernel, a summary.
set -euo pipefail
cd "$(dirname "$0")/.."

export QUEUE=${QUEUE:-jobs}
export KEY_PREFIX=${KEY_PREFIX:-sluice}
export LAUNCHER=local
export METRICS_ADDR=${METRICS_ADDR:-127.0.0.1:9090}
export RUNNER_BIN=${RUNNER_BIN:-$PWD/target/release/runner}
export RUST_LOG=${RUST_LOG:-warn,sluice_dispatcher=info}
DISPATCHER=target/release/dispatcher
RUN_ID=demo-$(date +%s)
N=200

redis() { redis-cli -u "${REDIS_URL:-redis://127.0.0.1:6379/}" "$@"; }

"$DISPATCHER" serve 2>target/demo-dispatcher.log &
pid=$!
trap 'kill -TERM $pid 2>/dev/null || true' EXIT

declare -A inputs=(
  [modsum]='{"n":10000000,"m":997}'
  [pow]='{"data":"sluice","difficulty":16}'
  [primes]='{"n":1000000}'
  [echo]='{"hello":"world"}'
)
started=$(date +%s.%N)
for kernel in modsum pow primes echo; do
  echo "publishing $N $kernel messages"
  "$DISPATCHER" publish -n "$N" -k "$kernel" -i "${inputs[$kernel]}" --id-prefix "$RUN_ID-$kernel"
done

total=$((N * 4))
# Every id, as EXISTS commands: batches finish out of order, so all of them are counted.
exists_commands() {
  local kernel j
  for kernel in modsum pow primes echo; do
    for ((j = 0; j < N; j++)); do echo "EXISTS $KEY_PREFIX:result:$RUN_ID-$kernel-$j"; done
  done
}
present() { exists_commands | redis | grep -c '^1$' || true; }

echo "waiting for $total results..."
done_count=0
for ((i = 0; i < 600; i++)); do
  done_count=$(present)
  [[ $done_count == "$total" ]] && break
  sleep 0.2
done
finished=$(date +%s.%N)
missing=$((total - done_count))

kill -TERM $pid
wait $pid || true
trap - EXIT

echo
echo "=== sluice demo ==="
"$DISPATCHER" status
awk -v ok=$((total - missing)) -v all="$total" -v s="$started" -v f="$finished" \
  'BEGIN { printf "results: %d of %d in %.1fs (%.0f messages/s)\n", ok, all, f - s, ok / (f - s) }'
echo
echo "Read them with redis-cli:"
echo "  redis-cli HGETALL $KEY_PREFIX:result:$RUN_ID-modsum-0"
echo "  redis-cli HGETALL $KEY_PREFIX:result:$RUN_ID-pow-0"
echo "  redis-cli XREVRANGE $KEY_PREFIX:results + - COUNT 5"
echo "  redis-cli HGETALL $KEY_PREFIX:stats"
echo
redis HGETALL "$KEY_PREFIX:result:$RUN_ID-modsum-0" | paste - - | sed 's/^/  /'
[[ $missing == 0 ]] || { echo "demo: $missing results missing (see target/demo-dispatcher.log)" >&2; exit 1; }
