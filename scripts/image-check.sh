#!/usr/bin/env bash
# The image's build stage without a Docker engine (make test runs it; the CI machine has none).
# scripts/image_context.py copies exactly the files the Dockerfile's COPY lines take from the
# build context, filtered by .dockerignore as Docker filters it, into target/image-context, and
# runs the stage's RUN lines there: the stub (dependency layer) build, then the real one. Then
# the binaries the final stage copies must exist, be the real programs rather than the stubs,
# and the runner must have no test kernels compiled in.
set -euo pipefail
cd "$(dirname "$0")/.."

fail() {
  echo "image-check: FAIL: $*" >&2
  exit 1
}

# A target dir that persists between runs, unlike the image build's empty one: registry
# dependencies are compiled once (the first run takes many minutes on two cores), later runs
# rebuild the workspace crates only, and nothing when nothing the build stage depends on has
# changed (its RUN lines are then reported CACHED, as Docker's layer cache would report them;
# IMAGE_CHECK_NO_CACHE=1 runs them anyway).
export CARGO_TARGET_DIR="$PWD/target/image-check"
started=$SECONDS

python3 -B scripts/image_context.py replay Dockerfile . target/image-context

artifacts=$(python3 -B scripts/image_context.py artifacts Dockerfile)
while IFS=$'\t' read -r built dest; do
  [[ -x $CARGO_TARGET_DIR/$built ]] || fail "$built (copied to $dest by the final stage) was not built"
done <<<"$artifacts"

runner=$CARGO_TARGET_DIR/release/runner
dispatcher=$CARGO_TARGET_DIR/release/dispatcher
# The dependency layer builds `fn main() {}` stubs; without newer mtimes on the real sources
# cargo would keep them. Each marker is a string only the real program has.
grep -qF 'unknown kernel' "$runner" || fail "$runner is the dependency-layer stub"
grep -qF 'render-job' "$dispatcher" || fail "$dispatcher is the dependency-layer stub"

# The test kernels' panic message, read from the source so that renaming it cannot silently
# turn this check into a no-op.
marker=$(sed -n 's/^pub const PANIC_MESSAGE: &str = "\(.*\)";$/\1/p' runner/src/kernel/testing.rs)
[[ -n $marker ]] || fail "PANIC_MESSAGE is gone from runner/src/kernel/testing.rs; update this check"
if grep -qF -- "$marker" "$runner"; then
  fail "$runner has the test kernels compiled in (\"$marker\"): the image must build without the test-kernels feature"
fi

echo "image-check: ok in $((SECONDS - started))s: the build stage builds from its context;" \
  "dispatcher and runner are real, the runner has no test kernels"
