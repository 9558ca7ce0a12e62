#!/usr/bin/env bash
# The documented fuzz run: every target for RUNS executions (default 10
# million), one after another on one core, each with the committed corpus,
# a 2 s budget per input and a 2 GiB memory limit. Prints one line per
# target: executions, time, coverage, corpus size, crashes. Needs the
# nightly toolchain and cargo-fuzz; see docs/security.md.
set -euo pipefail
cd "$(dirname "$0")"
runs="${RUNS:-10000000}"
targets="${*:-event command node_config envelope enrol_token front desired logs}"
cargo +nightly fuzz build -O >/dev/null
for target in $targets; do
  log="$(mktemp)"
  start=$(date +%s)
  status=0
  cargo +nightly fuzz run -O "$target" -- -runs="$runs" -timeout=2 -rss_limit_mb=2048 \
    -max_len=65536 -print_final_stats=1 >"$log" 2>&1 || status=$?
  took=$(( $(date +%s) - start ))
  execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo 0)
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | grep -o '[0-9]*$' || echo 0)
  corpus=$(ls "corpus/$target" | wc -l)
  crashes=$(ls "artifacts/$target" 2>/dev/null | wc -l)
  echo "$target: ${execs} executions in ${took} s, coverage ${cov}, corpus ${corpus}, crashes ${crashes}, exit ${status}"
  if [ "$status" -ne 0 ]; then tail -40 "$log"; fi
  rm -f "$log"
done
