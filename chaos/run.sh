#!/usr/bin/env bash
# Runs the chaos test for N seeds (default 10); stops at the first failure and prints its seed.
set -euo pipefail
cd "$(dirname "$0")/.."
runs="${1:-10}"
cargo test --features fault-injection --test integration --no-run
for i in $(seq 1 "$runs"); do
  seed=$(( (RANDOM << 15) | RANDOM ))
  echo "chaos run $i/$runs: CHAOS_SEED=$seed"
  CHAOS_SEED=$seed CHAOS_ROUNDS="${CHAOS_ROUNDS:-12}" \
    cargo test --features fault-injection --test integration chaos -- --nocapture >/tmp/chaos-$seed.log 2>&1 \
    || { echo "FAILED with CHAOS_SEED=$seed; log: /tmp/chaos-$seed.log"; exit 1; }
done
echo "all $runs chaos runs converged"
