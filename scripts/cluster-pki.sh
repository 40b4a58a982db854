# shellcheck shell=bash
# shellcheck disable=SC2154 # pki, dir, server, node and kubeconfig are set by scripts/cluster.sh
# Sourced by scripts/cluster.sh: the test cluster's certificates and kubeconfigs, made once.
# A CA; the API server's serving certificate for every name and address a client uses; the
# ServiceAccount token signing key pair; and one client certificate per identity, named the way
# Kubernetes' bootstrap RBAC and Node authorizer expect (as kubeadm makes them).

# cert NAME SUBJECT [SAN]: a key and a certificate signed by the CA, valid for a year.
cert() {
  local name=$1 subject=$2 san=${3:-} ext
  [[ -f $pki/$name.crt ]] && return 0
  ext=$(mktemp)
  if [[ -n $san ]]; then
    printf 'subjectAltName=%s\nextendedKeyUsage=serverAuth\nkeyUsage=digitalSignature,keyEncipherment\n' "$san" > "$ext"
  else
    printf 'extendedKeyUsage=clientAuth\nkeyUsage=digitalSignature,keyEncipherment\n' > "$ext"
  fi
  openssl req -new -newkey rsa:2048 -nodes -keyout "$pki/$name.key" -subj "$subject" \
    -out "$pki/$name.csr" 2>/dev/null
  openssl x509 -req -in "$pki/$name.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" \
    -CAcreateserial -days 365 -sha256 -extfile "$ext" -out "$pki/$name.crt" 2>/dev/null
  rm -f "$ext" "$pki/$name.csr"
}

# kubeconfig NAME: a kubeconfig that authenticates with NAME's client certificate.
kubeconfig_for() {
  local name=$1 file=$2
  [[ -f $file ]] && return 0
  cat > "$file" <<EOF
apiVersion: v1
kind: Config
clusters:
  - name: sluice-testbed
    cluster: {server: "$server", certificate-authority: "$pki/ca.crt"}
users:
  - name: $name
    user: {client-certificate: "$pki/$name.crt", client-key: "$pki/$name.key"}
contexts:
  - name: $name@sluice-testbed
    context: {cluster: sluice-testbed, user: $name}
current-context: $name@sluice-testbed
EOF
}

pki_all() {
  mkdir -p "$pki"
  if [[ ! -f $pki/ca.crt ]]; then
    openssl req -x509 -new -newkey rsa:2048 -nodes -keyout "$pki/ca.key" -days 365 -sha256 \
      -subj "/CN=sluice-testbed-ca" -out "$pki/ca.crt" 2>/dev/null
  fi
  if [[ ! -f $pki/sa.key ]]; then
    openssl genrsa -out "$pki/sa.key" 2048 2>/dev/null
    openssl rsa -in "$pki/sa.key" -pubout -out "$pki/sa.pub" 2>/dev/null
  fi
  # 10.96.0.1 is the `kubernetes` Service's address in --service-cluster-ip-range.
  cert apiserver "/CN=kube-apiserver" \
    "IP:127.0.0.1,IP:10.96.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
  cert admin "/O=system:masters/CN=sluice-testbed-admin"
  cert kube-controller-manager "/CN=system:kube-controller-manager"
  cert kube-scheduler "/CN=system:kube-scheduler"
  cert node "/O=system:nodes/CN=system:node:$node"
  kubeconfig_for admin "$kubeconfig"
  kubeconfig_for kube-controller-manager "$dir/kube-controller-manager.kubeconfig"
  kubeconfig_for kube-scheduler "$dir/kube-scheduler.kubeconfig"
  kubeconfig_for node "$dir/node.kubeconfig"
}
