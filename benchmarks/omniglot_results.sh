#!/usr/bin/env bash
# The Omniglot runs behind docs/RESULTS.md, side by side on one GPU, each stopped (with a
# checkpoint) after $SECONDS_PER_CALL seconds so that they resume across calls of a time-limited
# machine. Usage: benchmarks/omniglot_results.sh RUNS_DIR [--resume]
set -u
runs=${1:?RUNS_DIR}; resume=${2:-}
limit=${SECONDS_PER_CALL:-480}
common=(--dataset omniglot --protocol maml --trainval --steps 60000 --queries 15 --log-every 100
        --checkpoint-every 500 --quiet)
launch() {  # name, flags...
  local name=$1; shift
  timeout -s INT "$limit" python3 -m fewsight train "${common[@]}" "$@" --out "$runs/$name" $resume \
    >"$runs/$name.log" 2>&1 &
}
mkdir -p "$runs"
# MAML paper settings: 5-way with 1 inner step of 0.4 and 32 tasks, tested with 3 steps;
# 20-way with 5 inner steps of 0.1 and 16 tasks, tested with 5 steps.
launch maml-5w1s --algorithm maml --ways 5 --shots 1 --meta-batch 32 --inner-lr 0.4 --inner-steps 1 --eval-inner-steps 3
launch maml-20w1s --algorithm maml --ways 20 --shots 1 --meta-batch 16 --inner-lr 0.1 --inner-steps 5 --eval-inner-steps 5
launch fomaml-5w1s --algorithm fomaml --ways 5 --shots 1 --meta-batch 32 --inner-lr 0.4 --inner-steps 1 --eval-inner-steps 3
launch metasgd-5w1s --algorithm metasgd --ways 5 --shots 1 --meta-batch 32 --inner-lr 0.4 --inner-steps 1 --eval-inner-steps 3
launch anil-5w1s --algorithm anil --ways 5 --shots 1 --meta-batch 32 --inner-lr 0.4 --inner-steps 1 --eval-inner-steps 3
wait
for log in "$runs"/*.log; do echo "== $log"; tail -c 400 "$log"; done
for run in "$runs"/*/; do echo "== $run"; tail -n 1 "$run/metrics.jsonl"; done
