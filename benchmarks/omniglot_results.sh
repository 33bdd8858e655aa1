#!/usr/bin/env bash
# The Omniglot runs behind docs/RESULTS.md, side by side on one GPU, each stopped (with a
# checkpoint) after $SECONDS_PER_CALL seconds so that they resume across calls of a time-limited
# machine, then evaluated on 1,000 test episodes. A run whose folder exists is resumed (its settings
# and length kept; from step 0 if it stopped before its first checkpoint).
# Usage: benchmarks/omniglot_results.sh {maml-family|model-based|five-shot|reptile|reptile-ref|rest-light|rest-heavy|mamlpp}
# RUNS_DIR
# ONLY="name name ..." launches only those runs of the family (e.g. ONLY="hypernet-5w1s").
set -u
family=${1:?family}; runs=${2:?RUNS_DIR}
limit=${SECONDS_PER_CALL:-480}
common=(--dataset omniglot --protocol maml --trainval --queries 15 --log-every 100 --checkpoint-every 500
        --quiet)
names=()
launch() {  # name, flags...
  local name=$1; shift
  [ -n "${ONLY:-}" ] && [[ " $ONLY " != *" $name "* ]] && return
  names+=("$name")
  local new_or_resume=(--steps 60000); [ -f "$runs/$name/config.json" ] && new_or_resume=(--resume)
  timeout -s INT "$limit" python3 -m fewsight train "${common[@]}" "${new_or_resume[@]}" "$@" --out "$runs/$name" \
    >"$runs/$name.log" 2>&1 &
}
mkdir -p "$runs"
five=(--ways 5 --shots 1 --meta-batch 32)
twenty=(--ways 20 --shots 1 --meta-batch 16)
case $family in
  maml-family)
    # MAML paper settings: 5-way with 1 inner step of 0.4, tested with 3 steps;
    # 20-way with 5 inner steps of 0.1, tested with 5 steps.
    gradient5=(--inner-lr 0.4 --inner-steps 1 --eval-inner-steps 3)
    launch maml-5w1s --algorithm maml "${five[@]}" "${gradient5[@]}"
    launch maml-20w1s --algorithm maml "${twenty[@]}" --inner-lr 0.1 --inner-steps 5 --eval-inner-steps 5
    launch fomaml-5w1s --algorithm fomaml "${five[@]}" "${gradient5[@]}"
    launch metasgd-5w1s --algorithm metasgd "${five[@]}" "${gradient5[@]}"
    launch anil-5w1s --algorithm anil "${five[@]}" "${gradient5[@]}"
    ;;
  model-based)
    for algorithm in protonet weightpred hypernet; do
      launch "$algorithm-5w1s" --algorithm "$algorithm" "${five[@]}"
      launch "$algorithm-20w1s" --algorithm "$algorithm" "${twenty[@]}"
    done
    launch leo-5w1s --algorithm leo "${five[@]}" --inner-steps 5 --inner-lr 1.0
    launch leo-20w1s --algorithm leo "${twenty[@]}" --inner-steps 5 --inner-lr 1.0
    ;;
  five-shot)
    # The 5-shot cells of the MAML family's and the model-based family's leading methods.
    launch maml-5w5s --algorithm maml --ways 5 --shots 5 --meta-batch 32 --inner-lr 0.4 --inner-steps 1 \
      --eval-inner-steps 3
    launch maml-20w5s --algorithm maml --ways 20 --shots 5 --meta-batch 16 --inner-lr 0.1 --inner-steps 5 \
      --eval-inner-steps 5
    for algorithm in protonet hypernet; do
      launch "$algorithm-5w5s" --algorithm "$algorithm" --ways 5 --shots 5 --meta-batch 32
      launch "$algorithm-20w5s" --algorithm "$algorithm" --ways 20 --shots 5 --meta-batch 16
    done
    ;;
  rest-light)
    # The remaining cells that fit many to a card: Meta-SGD and ANIL at 5-way 5-shot (MAML's settings),
    # weight prediction and LEO at 5 shots.
    for algorithm in metasgd anil; do
      launch "$algorithm-5w5s" --algorithm "$algorithm" --ways 5 --shots 5 --meta-batch 32 --inner-lr 0.4 \
        --inner-steps 1 --eval-inner-steps 3
    done
    launch weightpred-5w5s --algorithm weightpred --ways 5 --shots 5 --meta-batch 32
    launch weightpred-20w5s --algorithm weightpred --ways 20 --shots 5 --meta-batch 16
    launch leo-5w5s --algorithm leo --ways 5 --shots 5 --meta-batch 32 --inner-steps 5 --inner-lr 1.0
    launch leo-20w5s --algorithm leo --ways 20 --shots 5 --meta-batch 16 --inner-steps 5 --inner-lr 1.0
    ;;
  rest-heavy)
    # First-order MAML, Meta-SGD and ANIL at 20 ways (MAML's settings: 5 inner steps of 0.1); about
    # 10 GB of GPU memory each.
    for algorithm in fomaml metasgd anil; do
      launch "$algorithm-20w1s" --algorithm "$algorithm" "${twenty[@]}" --inner-lr 0.1 --inner-steps 5 \
        --eval-inner-steps 5
      launch "$algorithm-20w5s" --algorithm "$algorithm" --ways 20 --shots 5 --meta-batch 16 --inner-lr 0.1 \
        --inner-steps 5 --eval-inner-steps 5
    done
    ;;
  mamlpp)
    # MAML++ (Antoniou et al. 2019), all its switches (fewsight's mamlpp preset, schedules over a
    # 20,000-step run), 5 inner steps of 0.1; the MAML paper's meta-batches.
    mamlpp=(--algorithm mamlpp --inner-lr 0.1 --inner-steps 5 --eval-inner-steps 5 --steps 20000)
    launch mamlpp-5w1s "${mamlpp[@]}" "${five[@]}"
    launch mamlpp-5w5s "${mamlpp[@]}" --ways 5 --shots 5 --meta-batch 32
    launch mamlpp-20w1s "${mamlpp[@]}" "${twenty[@]}"
    launch mamlpp-20w5s "${mamlpp[@]}" --ways 20 --shots 5 --meta-batch 16
    ;;
  reptile)
    # Reptile (Nichol et al. 2018) with fewsight's update: 5 plain SGD steps on each task's support and
    # query images, Adam on the pseudo-gradient theta - mean(phi); tested with 10 steps on the support.
    reptile=(--algorithm reptile --inner-lr 0.1 --inner-steps 5 --eval-inner-steps 10)
    launch reptile-5w1s "${reptile[@]}" "${five[@]}"
    launch reptile-5w5s "${reptile[@]}" --ways 5 --shots 5 --meta-batch 32
    launch reptile-20w1s "${reptile[@]}" "${twenty[@]}"
    launch reptile-20w5s "${reptile[@]}" --ways 20 --shots 5 --meta-batch 16
    ;;
  reptile-ref)
    # Reptile as its reference code (openai/supervised-reptile) runs it on Omniglot: Adam inner steps
    # (beta1 = 0) on mini-batches of a task's 10 images a class (support set and 10 - K queries), 5 tasks
    # a meta-batch, a plain meta step of 1 towards mean(phi) falling linearly to 0, 50 inner steps on the
    # support set at test (its code: mini-batches of 10 at 20 ways); 5-way: 5 steps of 0.001 on batches
    # of 10, 100,000 meta-steps; 20-way: 10 steps of 0.0005 on batches of 20, 200,000. Also scored with
    # 1 query a class, as its code scores (NAME.eval-1q.json).
    ref=(--algorithm reptile --inner-optimizer adam --meta-batch 5 --meta-optimizer sgd --meta-momentum 0
         --meta-lr 1 --linear-lr --eval-inner-steps 50)
    five_ref=(--ways 5 --inner-steps 5 --inner-lr 0.001 --inner-batch 10 --steps 100000)
    twenty_ref=(--ways 20 --inner-steps 10 --inner-lr 0.0005 --inner-batch 20 --steps 200000)
    launch reptile-ref-5w1s "${ref[@]}" "${five_ref[@]}" --shots 1 --queries 9
    launch reptile-ref-5w5s "${ref[@]}" "${five_ref[@]}" --shots 5 --queries 5
    launch reptile-ref-20w1s "${ref[@]}" "${twenty_ref[@]}" --shots 1 --queries 9
    launch reptile-ref-20w5s "${ref[@]}" "${twenty_ref[@]}" --shots 5 --queries 5
    ;;
  *) echo "unknown family $family" >&2; exit 2 ;;
esac
wait
for name in "${names[@]}"; do
  python3 -m fewsight eval "$runs/$name" --episodes 1000 --json --quiet >"$runs/$name.eval.json" 2>>"$runs/$name.log" &
  [[ $name = reptile-ref-* ]] && python3 -m fewsight eval "$runs/$name" --episodes 1000 --queries 1 --json --quiet \
    >"$runs/$name.eval-1q.json" 2>>"$runs/$name.log" &
done
wait
for name in "${names[@]}"; do
  echo "== $name: $(tail -n 1 "$runs/$name/metrics.jsonl")"
  cat "$runs/$name.eval.json"; tail -c 300 "$runs/$name.log"; echo
done
touch "$runs.done"
