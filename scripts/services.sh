#!/usr/bin/env bash
# Make sure RabbitMQ and Redis are reachable: use running ones; else start installed
# rabbitmq-server/redis-server; else Docker containers; else say exactly what to install.
set -euo pipefail

AMQP_URL=${AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}
REDIS_URL=${REDIS_URL:-redis://127.0.0.1:6379/}
RABBITMQ_IMAGE=rabbitmq:3.13-management
REDIS_IMAGE=redis:7.4

# host and port of a URL such as amqp://user:pass@host:5672/vhost
host_of() { sed -E 's#^[a-z]+://([^@/]*@)?([^/:]+).*#\2#' <<<"$1"; }
port_of() { local p; p=$(sed -nE 's#^[a-z]+://([^@/]*@)?[^/:]+:([0-9]+).*#\2#p' <<<"$1"); echo "${p:-$2}"; }

reachable() { timeout 2 bash -c "exec 3<>/dev/tcp/$1/$2" 2>/dev/null; }

wait_for() { # name host port seconds
  local i
  for ((i = 0; i < $4 * 2; i++)); do
    reachable "$2" "$3" && { echo "services: $1 is up at $2:$3"; return 0; }
    sleep 0.5
  done
  echo "services: $1 did not come up at $2:$3 within $4s" >&2
  return 1
}

is_local() { [[ $1 == 127.0.0.1 || $1 == localhost ]]; }

have_docker() { command -v docker >/dev/null && docker info >/dev/null 2>&1; }

ensure() { # name host port local-start-command docker-args...
  local name=$1 host=$2 port=$3 start=$4
  shift 4
  if reachable "$host" "$port"; then
    echo "services: $name already running at $host:$port"
    return 0
  fi
  if ! is_local "$host"; then
    echo "services: $name is not reachable at $host:$port (not a local address, so not starting one)" >&2
    return 1
  fi
  if command -v "${start%% *}" >/dev/null; then
    echo "services: starting $name ($start)"
    eval "$start" >/dev/null
    wait_for "$name" "$host" "$port" 90
  elif have_docker; then
    echo "services: starting $name in Docker"
    docker run -d --rm --name "sluice-$name" "$@" >/dev/null
    wait_for "$name" "$host" "$port" 90
  else
    cat >&2 <<MSG
services: $name is not running at $host:$port and cannot be started here.
  Install it:   sudo apt-get install -y rabbitmq-server redis-server   (Debian/Ubuntu)
                brew install rabbitmq redis                              (macOS)
  or run it:    docker run -d -p 5672:5672 -p 15672:15672 $RABBITMQ_IMAGE
                docker run -d -p 6379:6379 $REDIS_IMAGE
MSG
    return 1
  fi
}

ensure rabbitmq "$(host_of "$AMQP_URL")" "$(port_of "$AMQP_URL" 5672)" \
  "rabbitmq-server -detached" -p 5672:5672 -p 15672:15672 "$RABBITMQ_IMAGE"
ensure redis "$(host_of "$REDIS_URL")" "$(port_of "$REDIS_URL" 6379)" \
  "redis-server --daemonize yes --port $(port_of "$REDIS_URL" 6379) --save '' --appendonly no" \
  -p 6379:6379 "$REDIS_IMAGE"

# The broker's port opens before it accepts AMQP logins; wait until it answers for real.
if command -v rabbitmqctl >/dev/null && is_local "$(host_of "$AMQP_URL")"; then
  timeout 90 rabbitmqctl await_startup >/dev/null 2>&1 || true
fi
