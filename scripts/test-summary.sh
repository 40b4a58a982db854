#!/usr/bin/env bash
# One closing line for a whole `cargo test` run: the sum of every "test result:" line.
awk '/^test result:/ {
       for (i = 1; i <= NF; i++) {
         if ($(i+1) ~ /^passed/)  passed  += $i
         if ($(i+1) ~ /^failed/)  failed  += $i
         if ($(i+1) ~ /^ignored/) ignored += $i
       }
     }
     END { printf "tests: %d passed, %d failed, %d skipped\n", passed, failed, ignored }' "$1"
