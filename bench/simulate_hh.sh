#!/usr/bin/env bash
# Active-learning acceptance run: random vs the app's default strategy on the HH-RLHF
# harmless-base test file, 10 seeds, 32 seed labels, batches of 32, budget 1000.
# Usage: bench/simulate_hh.sh [OUT_DIR] [extra prefloop simulate options...]
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-.prefloop/simulate-hh}"
shift || true
data=../shared/data/hh-rlhf-harmless-base-test.jsonl.gz
[ -f "$data" ] || data=tests/data/hh-rlhf-harmless-base-test.jsonl.gz
/usr/bin/time -f "wall %e s, max RSS %M KB" \
  .venv/bin/python -m annotate.simulate --data "$data" --strategy random --strategy default \
  --seed-labels 32 --batch 32 --budget 1000 --seeds 10 --out "$out" "$@"
