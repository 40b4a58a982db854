#!/usr/bin/env bash
# Prints the fault and bad-input suites' figures (rows appended by tests/src/guarantee.rs) as a
# Markdown table, with totals. Fails if any row lost or duplicated a message.
file=${1:-target/reliability.tsv}
[[ -s $file ]] || { echo "reliability: no figures recorded"; exit 0; }
sort "$file" | awk -F'\t' '
  BEGIN {
    print "| fault | messages | faults injected | lost | duplicated | dead-lettered |"
    print "|---|---:|---:|---:|---:|---:|"
  }
  { printf "| %s | %d | %d | %d | %d | %d |\n", $1, $2, $3, $4, $5, $6
    m += $2; f += $3; l += $4; d += $5; x += $6 }
  END {
    printf "| **total** | %d | %d | %d | %d | %d |\n", m, f, l, d, x
    exit (l + d > 0)
  }'
