#!/usr/bin/env bash
# Meta-Baseline's own code (yinboc/few-shot-meta-baseline), unchanged, on the images fewsight reads:
# Classifier-Baseline trained with its miniImageNet configuration (ResNet-12 64-128-256-512, 100 epochs,
# SGD at 0.1 dropped tenfold at 90, batches of 128, on one GPU), then its test script at 1 and 5 shots
# (8,000 test episodes each, running statistics) on the last weights, as its README scores
# Classifier-Baseline. It separates the data from fewsight's code for the Classifier-Baseline gap in
# docs/RESULTS.md: its paper reports 58.91 / 77.76 from this code on Gidaris et al.'s pickles.
# On one GPU the code's batch norm normalises all 128 images of a step (on its 4 GPUs, 32 each): compare
# it with fewsight's `classifier-ref` run with PRETRAIN_FLAGS="--bn-batch 0".
#
# Usage: benchmarks/metabaseline_reference.sh REF_DIR DATA_ROOT OUT_DIR
#   REF_DIR    a checkout of yinboc/few-shot-meta-baseline (its Python needs torchvision, pyyaml,
#              tensorboardX, scipy and scikit-learn)
#   DATA_ROOT  the folder holding miniimagenet/ (images/ and the csv files)
#   OUT_DIR    its logs (train.log, test-1shot.log, test-5shot.log) and the configurations it ran
# EVAL_FS_EPOCH: how often the code's training loop scores few-shot test episodes (its configuration:
# every 5 epochs; a monitor that changes no weight). PYTHON: the interpreter (default python3).
set -euo pipefail
ref=$(realpath "${1:?REF_DIR}"); data=${2:?DATA_ROOT}; out=$(realpath -m "${3:?OUT_DIR}")
python=${PYTHON:-python3}
here=$(dirname "$(realpath "$0")")
name=classifier-fewsight-images
mkdir -p "$out"
if [ ! -f "$ref/materials/mini-imagenet/miniImageNet_category_split_test.pickle" ]; then
  "$python" "$here/meta_baseline_pickles.py" "$data" "$ref/materials/mini-imagenet"
fi
sed "s/^eval_fs_epoch: .*/eval_fs_epoch: ${EVAL_FS_EPOCH:-5}/" "$ref/configs/train_classifier_mini.yaml" \
  >"$out/train_classifier_mini.yaml"
printf 'dataset: mini-imagenet\ndataset_args: {split: test}\nload_encoder: ./save/%s/epoch-last.pth\n' \
  "$name" >"$out/test_few_shot.yaml"
cd "$ref"
[ -d "save/$name" ] && { echo "$ref/save/$name exists: move it away first (the code asks before overwriting)" >&2; exit 2; }
start=$SECONDS
"$python" train_classifier.py --config "$out/train_classifier_mini.yaml" --name "$name" --gpu 0 >"$out/train.log" 2>&1
echo "trained for $((SECONDS - start)) s" >>"$out/train.log"
for shot in 1 5; do
  start=$SECONDS
  "$python" test_few_shot.py --config "$out/test_few_shot.yaml" --shot "$shot" --gpu 0 >"$out/test-${shot}shot.log" 2>&1
  echo "tested for $((SECONDS - start)) s" >>"$out/test-${shot}shot.log"
done
grep -h "test epoch 10" "$out"/test-*shot.log
