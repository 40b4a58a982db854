#!/usr/bin/env bash
# Builds the control plane binary into target/cluster/bin/controlplane, once: a stamp holds the
# hash of this module's sources, so a second run with nothing changed returns at once. Go's own
# build cache (GOCACHE) makes a rebuild after a small change take a link step, not a full build.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
out=$root/target/cluster/bin
export GOTOOLCHAIN=local GOFLAGS=-mod=readonly CGO_ENABLED=0

release=$(cat "$here/RELEASE")
minor=${release#v1.}; minor=${minor%%.*}
stamp=$(cat "$here"/go.mod "$here"/go.sum "$here"/*.go "$here/build.sh" | sha256sum | cut -c1-16)
if [[ -x $out/controlplane && "$(cat "$out/controlplane.stamp" 2>/dev/null)" == "$stamp" ]]; then
  exit 0
fi
command -v go >/dev/null || { echo "cluster: Go is needed to build the control plane (https://go.dev/dl)" >&2; exit 1; }

# Without these the servers report v0.0.0, and clients' version skew checks misfire.
ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ldflags+=" -X $pkg.gitVersion=$release -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
  ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
done
mkdir -p "$out"
echo "cluster: building Kubernetes $release and etcd from their Go modules (the first build takes a while)"
start=$SECONDS
(cd "$here" && go build -trimpath -ldflags "$ldflags" -o "$out/controlplane.new" .)
mv "$out/controlplane.new" "$out/controlplane"
echo "$stamp" > "$out/controlplane.stamp"
echo "cluster: built target/cluster/bin/controlplane in $((SECONDS - start)) s"
