#!/usr/bin/env bash
# Generate the git-ignored credential files the manifests' secretGenerator reads, with random
# passwords, unless they exist. Prints nothing secret.
set -euo pipefail
dir="$(dirname "$0")/../manifests/secrets"
mkdir -p "$dir"
random() { head -c 24 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' | head -c 24; }

if [[ ! -f $dir/rabbitmq.env ]]; then
  pass=$(random)
  cat >"$dir/rabbitmq.env" <<ENV
username=sluice
password=$pass
url=amqp://sluice:$pass@rabbitmq.sluice.svc:5672/%2f
ENV
  echo "credentials: wrote manifests/secrets/rabbitmq.env"
fi
if [[ ! -f $dir/redis.env ]]; then
  pass=$(random)
  cat >"$dir/redis.env" <<ENV
password=$pass
url=redis://:$pass@redis.sluice.svc:6379/
redis.conf=requirepass $pass
ENV
  echo "credentials: wrote manifests/secrets/redis.env"
fi
