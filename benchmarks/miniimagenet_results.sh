#!/usr/bin/env bash
# The miniImageNet runs behind docs/RESULTS.md, side by side on two GPUs, each stopped (with a
# checkpoint) after $SECONDS_PER_CALL seconds, then evaluated on 1,000 test episodes (5-way, 15
# queries per class): 1-shot and 5-shot for the model-based runs, their own shot count for the
# MAML family. Usage: benchmarks/miniimagenet_results.sh RUNS_DIR [--resume]
set -u
runs=${1:?RUNS_DIR}; resume=${2:-}
limit=${SECONDS_PER_CALL:-600}
common=(--dataset miniimagenet --queries 15 --steps 60000 --log-every 100 --val-every 1000
        --val-episodes 200 --checkpoint-every 1000 --quiet)
names=()
launch() {  # gpu, name, flags...
  local gpu=$1 name=$2; shift 2
  names+=("$name")
  CUDA_VISIBLE_DEVICES=$gpu timeout -s INT "$limit" python3 -m fewsight train "${common[@]}" "$@" \
    --out "$runs/$name" $resume >"$runs/$name.log" 2>&1 &
}
mkdir -p "$runs"
# ProtoNet as in Snell et al.: 30-way 1-shot and 20-way 5-shot training, one task a step; it
# normalises with the support set's statistics (non-transductive), as the bundled model must.
launch 0 protonet-1shot --algorithm protonet --non-transductive --ways 30 --shots 1 --meta-batch 1
launch 0 protonet-5shot --algorithm protonet --non-transductive --ways 20 --shots 5 --meta-batch 1
# MAML as in Finn et al.: Conv4 with 32 channels, 5 inner steps of 0.01 (10 at test), transductive
# batch norm, 4 tasks a meta-batch (the paper uses 2 for 5-shot).
maml=(--ways 5 --inner-lr 0.01 --inner-steps 5 --eval-inner-steps 10 --meta-batch 4)
launch 0 maml-1shot --algorithm maml "${maml[@]}" --shots 1
launch 0 maml-5shot --algorithm maml "${maml[@]}" --shots 5
launch 0 mamlpp-1shot --algorithm mamlpp "${maml[@]}" --shots 1
launch 0 mamlpp-5shot --algorithm mamlpp "${maml[@]}" --shots 5
# ResNet-12 pre-trained on the 64 training classes (the recipe behind RFS and Meta-Baseline), scored
# as a nearest-centroid classifier; on GPU 1, stopped by its epoch count ($PRETRAIN_EPOCHS).
names+=(resnet12-pretrain)
CUDA_VISIBLE_DEVICES=1 timeout -s INT "$limit" python3 -m fewsight pretrain --dataset miniimagenet \
  --backbone resnet12 --epochs "${PRETRAIN_EPOCHS:-30}" --batch-size 128 --augment --bf16 --quiet \
  --out "$runs/resnet12-pretrain" $resume >"$runs/resnet12-pretrain.log" 2>&1 &
wait
evaluate() {  # name, shots
  python3 -m fewsight eval "$runs/$1" --ways 5 --shots "$2" --queries 15 --episodes 1000 --json --quiet \
    >"$runs/$1.eval-${2}shot.json" 2>>"$runs/$1.log"
}
for name in "${names[@]}"; do
  case $name in
    protonet-*|resnet12-*) evaluate "$name" 1 & evaluate "$name" 5 & ;;
    *-1shot) evaluate "$name" 1 & ;;
    *-5shot) evaluate "$name" 5 & ;;
  esac
done
wait
for name in "${names[@]}"; do
  echo "== $name: $(tail -n 1 "$runs/$name/metrics.jsonl")"
  cat "$runs/$name".eval-*.json; tail -c 300 "$runs/$name.log"; echo
done
touch "$runs.done"
