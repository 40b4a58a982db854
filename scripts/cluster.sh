#!/usr/bin/env bash
# A real Kubernetes control plane on loopback, for the test tier (README, "Testing"):
#   scripts/cluster.sh up      build what is missing, start etcd, kube-apiserver,
#                              kube-controller-manager, kube-scheduler and the node agent,
#                              wait until the node is Ready, print the admin kubeconfig's path
#   scripts/cluster.sh down    stop everything `up` started; no process is left behind
#   scripts/cluster.sh status  one line per component
#   scripts/cluster.sh restart-apiserver   stop and start kube-apiserver alone (fault tests)
#   scripts/cluster.sh expire-watches      the same, compacting etcd while it is down, so no
#                                          watch can resume (410 Gone) (fault tests)
#   scripts/cluster.sh compact             compact etcd past every revision a client has seen
# `up` is idempotent: a component that is already running and healthy is left alone.
# The servers are upstream Kubernetes and etcd (tests/controlplane); the node runs pods as local
# processes (tests/src/node_agent), which is all that is not real here.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
dir=${CLUSTER_DIR:-$root/target/cluster}
pki=$dir/pki run=$dir/run logs=$dir/logs
bin=$dir/bin/controlplane
etcd_port=${CLUSTER_ETCD_PORT:-23790}
api_port=${CLUSTER_API_PORT:-16443}
kcm_port=${CLUSTER_KCM_PORT:-10357}
sched_port=${CLUSTER_SCHEDULER_PORT:-10359}
node=${CLUSTER_NODE_NAME:-sluice-node}
server=https://127.0.0.1:$api_port
kubeconfig=$dir/kubeconfig

say() { echo "cluster: $*" >&2; }
die() { say "$*"; exit 1; }

# shellcheck disable=SC1091 # make validate checks it on its own
source "$root/scripts/cluster-pki.sh"

# --- processes ---------------------------------------------------------------------------
pid_of() { local f=$run/$1.pid; [[ -f $f ]] && kill -0 "$(cat "$f")" 2>/dev/null && cat "$f"; }

# start NAME CMD...: a session leader of its own, so `down` can signal its whole group.
start() {
  local name=$1; shift
  mkdir -p "$run" "$logs"
  setsid "$@" >>"$logs/$name.log" 2>&1 < /dev/null &
  echo $! > "$run/$name.pid"
}

stop() {
  local name=$1 pid
  pid=$(pid_of "$name") || { rm -f "$run/$name.pid"; return 0; }
  kill -TERM -- "-$pid" 2>/dev/null || true
  for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -KILL -- "-$pid" 2>/dev/null || true
  rm -f "$run/$name.pid"
}

# wait_for NAME SECONDS CHECK...: until CHECK succeeds, the process dies, or time runs out.
wait_for() {
  local name=$1 secs=$2; shift 2
  for _ in $(seq 1 $((secs * 5))); do
    "$@" >/dev/null 2>&1 && return 0
    pid_of "$name" >/dev/null || { tail -n 20 "$logs/$name.log" >&2; die "$name exited; log: $logs/$name.log"; }
    sleep 0.2
  done
  tail -n 20 "$logs/$name.log" >&2
  die "$name not healthy after ${secs}s; log: $logs/$name.log"
}

# Health checks print nothing: each only answers by its exit status.
healthz() { curl -fsS --max-time 2 --cacert "$pki/ca.crt" --cert "$pki/$1.crt" --key "$pki/$1.key" "$2" >/dev/null 2>&1; }
etcd_ok() { curl -fsS --max-time 2 "http://127.0.0.1:$etcd_port/health" 2>/dev/null | grep -q '"health":"true"'; }
api_ok() { healthz admin "$server/readyz"; }
kcm_ok() { curl -fsSk --max-time 2 "https://127.0.0.1:$kcm_port/healthz" >/dev/null 2>&1; }
sched_ok() { curl -fsSk --max-time 2 "https://127.0.0.1:$sched_port/healthz" >/dev/null 2>&1; }
node_ok() {
  kubectl --kubeconfig "$kubeconfig" get node "$node" \
    -o 'jsonpath={.status.conditions[?(@.type=="Ready")].status} {.spec.taints}' 2>/dev/null |
    grep -qx 'True '
}

start_etcd() {
  etcd_ok && return 0
  stop etcd
  start etcd "$bin" etcd --name sluice --data-dir "$dir/etcd" \
    --listen-client-urls "http://127.0.0.1:$etcd_port" --advertise-client-urls "http://127.0.0.1:$etcd_port" \
    --listen-peer-urls "http://127.0.0.1:$((etcd_port + 1))" \
    --initial-advertise-peer-urls "http://127.0.0.1:$((etcd_port + 1))" \
    --initial-cluster "sluice=http://127.0.0.1:$((etcd_port + 1))" \
    --listen-metrics-urls "" --log-level warn
  wait_for etcd 30 etcd_ok
}

# Admission: the defaults (NamespaceLifecycle, LimitRanger, ServiceAccount, PodSecurity,
# ResourceQuota, ...) plus NodeRestriction; authorization: Node and RBAC, as kubeadm sets them.
# The endpoint reconciler is off: the `kubernetes` Service cannot point at a loopback address,
# and pods reach the API server through KUBERNETES_SERVICE_HOST, which the node agent sets.
start_apiserver() {
  api_ok && return 0
  stop kube-apiserver
  start kube-apiserver "$bin" kube-apiserver \
    --etcd-servers "http://127.0.0.1:$etcd_port" \
    --bind-address 127.0.0.1 --advertise-address 127.0.0.1 --secure-port "$api_port" \
    --tls-cert-file "$pki/apiserver.crt" --tls-private-key-file "$pki/apiserver.key" \
    --client-ca-file "$pki/ca.crt" \
    --service-account-issuer https://kubernetes.default.svc.cluster.local \
    --service-account-key-file "$pki/sa.pub" --service-account-signing-key-file "$pki/sa.key" \
    --service-cluster-ip-range 10.96.0.0/16 --endpoint-reconciler-type none \
    --authorization-mode Node,RBAC --enable-admission-plugins NodeRestriction \
    --allow-privileged=false --profiling=false --v 1
  wait_for kube-apiserver 120 api_ok
}

# Every controller the defaults run (job, garbage collector, ttl-after-finished, namespace,
# serviceaccount and its tokens, resourcequota, node lifecycle, root CA publisher, ...),
# each with its own ServiceAccount's credentials as in a kubeadm cluster.
start_controller_manager() {
  kcm_ok && return 0
  stop kube-controller-manager
  start kube-controller-manager "$bin" kube-controller-manager \
    --kubeconfig "$dir/kube-controller-manager.kubeconfig" \
    --authentication-kubeconfig "$dir/kube-controller-manager.kubeconfig" \
    --authorization-kubeconfig "$dir/kube-controller-manager.kubeconfig" \
    --bind-address 127.0.0.1 --secure-port "$kcm_port" --leader-elect=false \
    --controllers '*' --use-service-account-credentials \
    --service-account-private-key-file "$pki/sa.key" --root-ca-file "$pki/ca.crt" \
    --profiling=false --v 1
  wait_for kube-controller-manager 60 kcm_ok
}

start_scheduler() {
  sched_ok && return 0
  stop kube-scheduler
  start kube-scheduler "$bin" kube-scheduler \
    --kubeconfig "$dir/kube-scheduler.kubeconfig" \
    --authentication-kubeconfig "$dir/kube-scheduler.kubeconfig" \
    --authorization-kubeconfig "$dir/kube-scheduler.kubeconfig" \
    --bind-address 127.0.0.1 --secure-port "$sched_port" --leader-elect=false --v 1
  wait_for kube-scheduler 60 sched_ok
}

# The image table maps the manifests' image to the binaries cargo built, the way `kind load
# docker-image` would. This image is a test build: its runner has the test kernels, and its ENV
# enables them, so suites can send a poison message.
write_images() {
  local target=${CARGO_TARGET_DIR:-$root/target}/debug
  cat > "$dir/images.json" <<EOF
{"sluice:0.1.0": {"entrypoint": ["/usr/local/bin/dispatcher"], "cmd": ["serve"], "user": "65532:65532",
  "env": {"SLUICE_TEST_KERNELS": "1"},
  "files": {"/usr/local/bin/dispatcher": "$target/dispatcher", "/usr/local/bin/runner": "$target/runner"}}}
EOF
}

start_node() {
  local agent=${CARGO_TARGET_DIR:-$root/target}/debug/node-agent
  # A rebuilt agent replaces the running one; its pods' processes go with it, as on a kubelet
  # restart without a runtime, and the new agent reports them as it finds them.
  if pid_of node-agent >/dev/null && [[ ! $agent -nt $run/node-agent.pid ]]; then
    wait_for node-agent 90 node_ok
    return 0
  fi
  stop node-agent
  write_images
  mkdir -p "$dir/node"
  start node-agent env KUBECONFIG="$dir/node.kubeconfig" NODE_NAME="$node" \
    NODE_STATE_DIR="$dir/node" NODE_IMAGES="$dir/images.json" \
    API_HOST=127.0.0.1 API_PORT="$api_port" RUST_LOG="${NODE_LOG:-info}" "$agent"
  wait_for node-agent 90 node_ok
}

# Writes one key outside Kubernetes' /registry (so the revision moves past everything any
# client has seen, even one that saw the last write), then compacts etcd at that revision: no
# watch can resume from an older one, and the API server answers each with 410 Gone.
compact() {
  local key value rev
  key=$(printf 'sluice-testbed/compact' | base64 -w0)
  value=$(date +%s%N | base64 -w0)
  rev=$(curl -fsS -X POST "http://127.0.0.1:$etcd_port/v3/kv/put" \
    -d "{\"key\":\"$key\",\"value\":\"$value\"}" |
    sed -n 's/.*"revision":"\([0-9]*\)".*/\1/p')
  [[ -n $rev ]] || die "etcd: no revision to compact at"
  curl -fsS -X POST "http://127.0.0.1:$etcd_port/v3/kv/compaction" \
    -d "{\"revision\":\"$rev\",\"physical\":true}" >/dev/null
  say "etcd compacted at revision $rev"
}

build() {
  "$root/tests/controlplane/build.sh"
  (cd "$root" && cargo build --quiet -p sluice-tests --bin node-agent \
    -p sluice-dispatcher -p sluice-runner)
}

up() {
  command -v kubectl >/dev/null || die "kubectl is needed (https://kubernetes.io/docs/tasks/tools/)"
  command -v openssl >/dev/null || die "openssl is needed (Debian: apt-get install openssl)"
  local began=$SECONDS
  build
  pki_all
  start_etcd
  start_apiserver
  start_controller_manager
  start_scheduler
  start_node
  say "up in $((SECONDS - began)) s: kubectl --kubeconfig $kubeconfig get nodes"
  echo "$kubeconfig"
}

down() {
  local name
  for name in node-agent kube-scheduler kube-controller-manager kube-apiserver etcd; do stop "$name"; done
  say "down"
}

status() {
  local name
  for name in etcd kube-apiserver kube-controller-manager kube-scheduler node-agent; do
    if pid=$(pid_of "$name"); then echo "$name: running (pid $pid)"; else echo "$name: stopped"; fi
  done
}

case ${1:-} in
  up) up ;;
  down) down ;;
  status) status ;;
  restart-apiserver) stop kube-apiserver; start_apiserver ;;
  expire-watches) stop kube-apiserver; compact; start_apiserver ;;
  compact) compact ;;
  *) echo "usage: scripts/cluster.sh up|down|status|restart-apiserver|expire-watches|compact" >&2; exit 2 ;;
esac
