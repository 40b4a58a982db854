#!/usr/bin/env bash
# The dependency policy (deny.toml), as `make deny` and `make test` run it:
#   - licenses, bans and sources: always;
#   - advisories: whenever a RustSec database is at hand. cargo-deny keeps it, a git clone
#     of GitHub's RustSec/advisory-db, under $CARGO_HOME/advisory-dbs (the default db-path).
#     GitHub reachable: cargo-deny fetches or updates it, then checks. GitHub unreachable
#     but a copy on disk: it checks against that copy (`--offline`, cargo-deny 0.20's name
#     for the older `--disable-fetch`), after a line giving the copy's date, since an old
#     copy misses newer advisories. Neither: one line says that advisories were not
#     checked and how to check them; the run does not fail for it.
set -euo pipefail
cd "$(dirname "$0")/.."

DB_URL=https://github.com/RustSec/advisory-db
DB_ROOT="${CARGO_HOME:-$HOME/.cargo}/advisory-dbs"

run() {
  echo "+ $*"
  "$@"
}

# Whether GitHub answers within a few seconds (a blocked network must not stall make test).
reachable() {
  curl --silent --head --fail --max-time 5 --output /dev/null "$DB_URL"
}

# The database fetched here before, if any: a clone with a crates/ directory.
local_db() {
  local crates
  for crates in "$DB_ROOT"/*/crates; do
    [[ -d $crates ]] && echo "${crates%/crates}" && return 0
  done
  return 1
}

run cargo deny check licenses bans sources

if reachable; then
  run cargo deny check advisories
elif db=$(local_db); then
  echo "deny: GitHub unreachable; checking advisories against the copy in $db, last updated $(git -C "$db" log -1 --format=%cs 2>/dev/null || echo '(date unknown)')"
  run cargo deny --offline check advisories
else
  echo "deny: advisories NOT checked: the RustSec database ($DB_URL) cannot be fetched here and none is in $DB_ROOT; run \`cargo deny check advisories\` on a machine that reaches GitHub"
fi
