#!/usr/bin/env bash
# Private RabbitMQ and Redis instances for suites whose settings would disturb other tests
# (TLS listeners with a CA the suite made, a short consumer_timeout), on loopback.
#   scripts/test-server.sh rabbitmq DIR PORT TLS_PORT DIST_PORT [CONF_LINE...]
#       a RabbitMQ node named sluice-test-PORT@localhost with its state in DIR, plain AMQP on
#       PORT and AMQPS on TLS_PORT with DIR/tls/{ca,server}.pem (scripts/tls-certs.sh);
#       clients may present a certificate, and one that is presented must verify. Each
#       CONF_LINE is added to its rabbitmq.conf (such as consumer_timeout = 20000).
#       DIR/bin/rabbitmqctl reaches it.
#   scripts/test-server.sh redis DIR PORT TLS_PORT [REDIS_ARG...]
#       a Redis server with plain TCP on PORT (0: none) and TLS on TLS_PORT with the same
#       files, client certificates optional.
#   scripts/test-server.sh stop DIR      stops what the script started in DIR
set -euo pipefail
cd "$(dirname "$0")/.."
RABBIT_BIN=/usr/lib/rabbitmq/bin

die() {
  echo "test-server: $*" >&2
  exit 1
}
wait_for() { # seconds what command...
  local seconds=$1 what=$2 i
  shift 2
  for ((i = 0; i < seconds * 4; i++)); do
    "$@" >/dev/null 2>&1 && return 0
    sleep 0.25
  done
  die "$what did not start within ${seconds}s (logs in $dir)"
}

rabbitmq() {
  local port=$1 tls_port=$2 dist_port=$3 line
  shift 3
  [[ -x $RABBIT_BIN/rabbitmq-server ]] || die "rabbitmq-server is not installed; run: scripts/setup.sh services"
  mkdir -p "$dir/log" "$dir/bin" "$dir/home"
  touch "$dir/enabled_plugins"
  {
    echo "listeners.tcp.default = 127.0.0.1:$port"
    echo "listeners.ssl.default = 127.0.0.1:$tls_port"
    echo "ssl_options.cacertfile = $dir/tls/ca.pem"
    echo "ssl_options.certfile = $dir/tls/server.pem"
    echo "ssl_options.keyfile = $dir/tls/server.key"
    echo "ssl_options.verify = verify_peer"
    echo "ssl_options.fail_if_no_peer_cert = false"
    echo "loopback_users = none"
    for line in "$@"; do echo "$line"; done
  } >"$dir/rabbitmq.conf"
  local node=sluice-test-$port@localhost
  cat >"$dir/bin/rabbitmqctl" <<CTL
#!/bin/sh
HOME='$dir/home' exec $RABBIT_BIN/rabbitmqctl -n $node "\$@"
CTL
  chmod +x "$dir/bin/rabbitmqctl"
  (
    export RABBITMQ_NODENAME=$node RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 RABBITMQ_NODE_PORT=$port \
      RABBITMQ_DIST_PORT=$dist_port ERL_EPMD_ADDRESS=127.0.0.1 HOME=$dir/home \
      RABBITMQ_MNESIA_BASE=$dir/mnesia RABBITMQ_LOG_BASE=$dir/log \
      RABBITMQ_CONFIG_FILE=$dir/rabbitmq RABBITMQ_ENABLED_PLUGINS_FILE=$dir/enabled_plugins \
      RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS='-kernel inet_dist_use_interface {127,0,0,1}'
    setsid "$RABBIT_BIN/rabbitmq-server" >"$dir/log/console.log" 2>&1 </dev/null &
    echo $! >"$dir/rabbitmq.pid"
  )
  wait_for 120 "RabbitMQ on $port" timeout 100 "$dir/bin/rabbitmqctl" await_startup
  echo "test-server: RabbitMQ $node on 127.0.0.1:$port, TLS on $tls_port"
}

redis() {
  local port=$1 tls_port=$2
  shift 2
  command -v redis-server >/dev/null || die "redis-server is not installed; run: scripts/setup.sh services"
  redis-server --bind 127.0.0.1 --port "$port" --tls-port "$tls_port" \
    --tls-cert-file "$dir/tls/server.pem" --tls-key-file "$dir/tls/server.key" \
    --tls-ca-cert-file "$dir/tls/ca.pem" --tls-auth-clients optional \
    --daemonize yes --pidfile "$dir/redis.pid" --dir "$dir" --logfile "$dir/redis.log" \
    --save '' --appendonly no "$@" >/dev/null
  wait_for 30 "Redis on $tls_port" redis-cli --tls --cacert "$dir/tls/ca.pem" -p "$tls_port" PING
  echo "test-server: Redis on 127.0.0.1:$port, TLS on $tls_port"
}

stop() {
  local pidfile pid i
  for pidfile in "$dir"/rabbitmq.pid "$dir"/redis.pid; do
    [[ -f $pidfile ]] || continue
    pid=$(cat "$pidfile")
    if kill -0 "$pid" 2>/dev/null; then
      kill -TERM "$pid"
      for ((i = 0; i < 120; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.25
      done
      kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
    fi
    rm -f "$pidfile"
  done
}

what=${1:-}
dir=${2:-}
[[ -n $dir ]] || die "usage: scripts/test-server.sh rabbitmq|redis|stop DIR ..."
dir=$(realpath -m "$dir")
shift 2
case $what in
rabbitmq) rabbitmq "$@" ;;
redis) redis "$@" ;;
stop) stop ;;
*) die "usage: scripts/test-server.sh rabbitmq|redis|stop DIR ..." ;;
esac
