#!/usr/bin/env bash
# RabbitMQ and Redis for `make demo` and `make test`, on loopback.
#   scripts/services.sh up      reuse a healthy service at AMQP_URL / REDIS_URL, else start the
#                               project's own (state, logs and pid files in target/services/)
#   scripts/services.sh down    stop only what `up` started; leave everything else alone
#   scripts/services.sh status  one line per service
# A port that is taken by something that does not answer as the expected service is an error,
# never a second server on the same port.
set -euo pipefail
cd "$(dirname "$0")/.."

AMQP_URL=${AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}
REDIS_URL=${REDIS_URL:-redis://127.0.0.1:6379/}
STATE=$PWD/target/services
RABBIT_NODE=sluice@localhost
RABBIT_BIN=/usr/lib/rabbitmq/bin # Debian's; its /usr/sbin wrappers would switch user
# The node's Erlang cookie lives in one per-user place, so every checkout's rabbitmqctl can
# reach a broker that another checkout started and this one reuses.
COOKIE_HOME=${XDG_CACHE_HOME:-$HOME/.cache}/sluice/rabbitmq

say() { echo "services: $*"; }
die() {
  echo "services: $*" >&2
  exit 1
}

# host and port of a URL such as amqp://user:pass@host:5672/vhost
host_of() { sed -E 's#^[a-z]+://([^@/]*@)?([^/:]+).*#\2#' <<<"$1"; }
port_of() {
  local p
  p=$(sed -nE 's#^[a-z]+://([^@/]*@)?[^/:]+:([0-9]+).*#\2#p' <<<"$1")
  echo "${p:-$2}"
}
is_local() { [[ $1 == 127.0.0.1 || $1 == localhost ]]; }
listening() { timeout 2 bash -c "exec 3<>/dev/tcp/$1/$2" 2>/dev/null; }

redis_healthy() { [[ $(timeout 3 redis-cli -u "$REDIS_URL" PING 2>/dev/null) == PONG ]]; }

# An AMQP 0-9-1 server answers the protocol header with a Connection.Start frame (type 1).
amqp_healthy() {
  local first
  first=$(timeout 3 bash -c "exec 3<>/dev/tcp/$1/$2; printf 'AMQP\x00\x00\x09\x01' >&3; head -c1 <&3 | od -An -tx1" 2>/dev/null)
  [[ ${first// /} == 01 ]]
}

pid_alive() { [[ -f $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

wait_until() { # seconds description command...
  local seconds=$1 what=$2 i
  shift 2
  for ((i = 0; i < seconds * 4; i++)); do
    "$@" && return 0
    sleep 0.25
  done
  die "$what did not become healthy within ${seconds}s"
}

rabbit_env() {
  export RABBITMQ_NODENAME=$RABBIT_NODE RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 \
    RABBITMQ_NODE_PORT=$1 ERL_EPMD_ADDRESS=127.0.0.1 HOME=$COOKIE_HOME \
    RABBITMQ_MNESIA_BASE=$STATE/rabbitmq/mnesia RABBITMQ_LOG_BASE=$STATE/rabbitmq/log \
    RABBITMQ_CONFIG_FILE=$STATE/rabbitmq/rabbitmq \
    RABBITMQ_ENABLED_PLUGINS_FILE=$STATE/rabbitmq/enabled_plugins \
    RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS='-kernel inet_dist_use_interface {127,0,0,1}'
}

# The tests and users call rabbitmqctl; this one reaches the node scripts/services.sh started.
write_rabbitmqctl() {
  mkdir -p "$STATE/bin"
  cat >"$STATE/bin/rabbitmqctl" <<EOF
#!/bin/sh
# rabbitmqctl for the RabbitMQ node $RABBIT_NODE that scripts/services.sh started.
HOME='$COOKIE_HOME' exec $RABBIT_BIN/rabbitmqctl -n $RABBIT_NODE "\$@"
EOF
  chmod +x "$STATE/bin/rabbitmqctl"
}

start_rabbitmq() { # port
  [[ -x $RABBIT_BIN/rabbitmq-server ]] ||
    die "rabbitmq-server is not installed; run: scripts/setup.sh services"
  mkdir -p "$STATE/rabbitmq/log" "$COOKIE_HOME"
  touch "$STATE/rabbitmq/enabled_plugins"
  pgrep -x epmd >/dev/null || touch "$STATE/epmd.ours"
  say "starting RabbitMQ on 127.0.0.1:$1 (node $RABBIT_NODE, log: target/services/rabbitmq/log)"
  (
    rabbit_env "$1"
    setsid "$RABBIT_BIN/rabbitmq-server" >"$STATE/rabbitmq/log/console.log" 2>&1 </dev/null &
    echo $! >"$STATE/rabbitmq.pid"
  )
  write_rabbitmqctl
  wait_until 90 RabbitMQ amqp_healthy 127.0.0.1 "$1"
  # The port opens before the broker accepts logins.
  timeout 90 "$STATE/bin/rabbitmqctl" await_startup >/dev/null 2>&1 ||
    die "RabbitMQ did not finish starting; see target/services/rabbitmq/log"
}

start_redis() { # port
  command -v redis-server >/dev/null || die "redis-server is not installed; run: scripts/setup.sh services"
  mkdir -p "$STATE/redis"
  say "starting Redis on 127.0.0.1:$1 (log: target/services/redis/redis.log)"
  redis-server --bind 127.0.0.1 --port "$1" --daemonize yes --pidfile "$STATE/redis.pid" \
    --dir "$STATE/redis" --logfile "$STATE/redis/redis.log" --save '' --appendonly no >/dev/null
  wait_until 30 Redis redis_healthy
}

ensure() { # name url default-port health-fn start-fn
  local name=$1 host port
  host=$(host_of "$2")
  port=$(port_of "$2" "$3")
  if $4 "$host" "$port"; then
    if pid_alive "$STATE/$name.pid"; then
      say "$name is running at $host:$port (started by this checkout)"
    else
      say "$name is running at $host:$port (reusing it)"
      # Started by another checkout of sluice: reach it with the shared cookie.
      if [[ $name == rabbitmq && -f $COOKIE_HOME/.erlang.cookie ]] &&
        epmd -names 2>/dev/null | grep -q "^name ${RABBIT_NODE%@*} "; then
        write_rabbitmqctl
      fi
    fi
    return 0
  fi
  listening "$host" "$port" &&
    die "$host:$port is taken by something that does not answer as $name; stop it, or point the URL (AMQP_URL / REDIS_URL) elsewhere"
  is_local "$host" || die "$name is not reachable at $host:$port (not a local address, so not starting one)"
  $5 "$port"
}

stop_pid() { # name pid-file seconds
  local pid i
  pid=$(cat "$2")
  if kill -0 "$pid" 2>/dev/null; then
    say "stopping $1 (pid $pid)"
    kill -TERM "$pid"
    for ((i = 0; i < $3 * 4; i++)); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.25
    done
    kill -0 "$pid" 2>/dev/null && { say "$1 did not stop in $3s; killing it" && kill -KILL "$pid"; }
  fi
  rm -f "$2"
}

up() {
  mkdir -p "$STATE"
  ensure rabbitmq "$AMQP_URL" 5672 amqp_healthy start_rabbitmq
  ensure redis "$REDIS_URL" 6379 redis_healthy start_redis
}

down() {
  local stopped=0
  if [[ -f $STATE/rabbitmq.pid ]]; then
    # The start script traps TERM and stops the node gracefully before it exits.
    stop_pid rabbitmq "$STATE/rabbitmq.pid" 60
    stopped=1
  fi
  if [[ -f $STATE/redis.pid ]]; then
    stop_pid redis "$STATE/redis.pid" 20
    stopped=1
  fi
  # epmd outlives the Erlang node that started it; stop it if it was ours and serves no one.
  if [[ -f $STATE/epmd.ours ]]; then
    if ! epmd -names 2>/dev/null | grep -q '^name '; then epmd -kill >/dev/null 2>&1 || true; fi
    rm -f "$STATE/epmd.ours"
  fi
  rm -f "$STATE/bin/rabbitmqctl"
  ((stopped)) || say "nothing to stop: this checkout started no services"
}

status() {
  local name ahost aport
  for name in rabbitmq redis; do
    if pid_alive "$STATE/$name.pid"; then say "$name: started by this checkout (pid $(cat "$STATE/$name.pid"))"; fi
  done
  ahost=$(host_of "$AMQP_URL")
  aport=$(port_of "$AMQP_URL" 5672)
  if amqp_healthy "$ahost" "$aport"; then say "rabbitmq: healthy at $ahost:$aport"; else say "rabbitmq: not answering at $ahost:$aport"; fi
  if redis_healthy; then say "redis: healthy at $(host_of "$REDIS_URL"):$(port_of "$REDIS_URL" 6379)"; else say "redis: not answering"; fi
}

case ${1:-up} in
up) up ;;
down) down ;;
status) status ;;
*) die "usage: scripts/services.sh up|down|status" ;;
esac
