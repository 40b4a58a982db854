#!/usr/bin/env bash
# Throughput of N default modsum messages at several batch sizes, one run, side by side.
# Usage: scripts/throughput.sh [N] [batch sizes...]   (needs `make release` and `make services`)
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-1000}
shift || true
SIZES=("${@:-1 10 100 1000}")
read -ra SIZES <<<"${SIZES[*]}"
D=target/release/dispatcher
redis() { redis-cli -u "${REDIS_URL:-redis://127.0.0.1:6379/}" "$@"; }

printf '%-8s %-10s %-10s %s\n' batch seconds msg/s jobs
for b in "${SIZES[@]}"; do
  tag=tp-$b-$$
  export QUEUE=$tag KEY_PREFIX=$tag LAUNCHER=local METRICS_ADDR='' RUST_LOG=warn
  export BATCH_MAX_MESSAGES=$b RUNNER_BIN=$PWD/target/release/runner
  "$D" publish -n "$N" --id-prefix m >/dev/null 2>&1   # queue fills first: measure draining only
  start=$(date +%s.%N)
  "$D" serve 2>/dev/null &
  pid=$!
  until [[ $(redis HGET "$tag:stats" ok) == "$N" ]]; do sleep 0.05; done
  end=$(date +%s.%N)
  kill -TERM $pid; wait $pid || true
  jobs=$(redis HGET "$tag:stats" batches)
  awk -v b="$b" -v s="$start" -v e="$end" -v n="$N" -v j="$jobs" \
    'BEGIN { printf "%-8s %-10.2f %-10.1f %s\n", b, e - s, n / (e - s), j }'
  redis --scan --pattern "$tag:*" | xargs -r redis-cli DEL >/dev/null
  rabbitmqctl delete_queue "$tag" >/dev/null 2>&1 || true
done
