#!/usr/bin/env bash
# One of the miniImageNet runs behind docs/RESULTS.md: train recipe NAME into RUNS/NAME on the GPU
# CUDA_VISIBLE_DEVICES picks, stopped (with a checkpoint) after $SECONDS_PER_CALL seconds or at the
# end of its schedule, then evaluate it on $EPISODES fixed test episodes (5-way, $EVAL_QUERIES or 15 queries per class):
# 1-shot and 5-shot for the model-based runs, their own shot count for the MAML family (also with K
# queries a class at K shots, as the MAML paper's code tests, NAME.eval-Kshot-Kq.json). A run that
# already exists is resumed (from its checkpoint, or from step 0 if it stopped before its first).
# Several recipes run side by side on one GPU as separate calls.
# WEIGHTS=best scores the run's best-validated weights (best.pt, RUNS/NAME.eval-Kshot-best.json),
# WEIGHTS=ensemble the weights of its best scores together (--keep-best runs, NAME.eval-Kshot-ensemble.json;
# mamlpp-ref's default, as its code scores), WEIGHTS=last the last weights (the others' default).
# EXTRA_FLAGS are added to a new run's training command (e.g. "--cosine-lr --steps 8000"; later flags win);
# a resumed run keeps its settings and length (60,000 steps unless EXTRA_FLAGS said otherwise).
# PRETRAIN_FLAGS are added to a new pre-training run's command in the same way.
# Usage: benchmarks/miniimagenet_results.sh RUNS NAME, NAME one of ALGORITHM-1shot or ALGORITHM-5shot
# (ALGORITHM: maml fomaml metasgd anil mamlpp reptile protonet protonet-bn protonet-ref maml-ref metasgd-ref mamlpp-ref
# reptile-ref weightpred hypernet leo; protonet-ref-trainval after protonet-ref, or with TRAINVAL_STEPS), resnet12-pretrain, metabaseline or metabaseline-5shot, classifier-ref, then
# metabaseline-ref-1shot or metabaseline-ref-5shot (PRETRAIN_WIDTH: the ResNet-12's width, 1).
# The *-ref recipes and metabaseline-5shot take the settings of the papers' reference code (docs/RESULTS.md,
# "Ablations"). PYTHON: the interpreter that has fewsight (default python3).
set -u
runs=${1:?RUNS}; name=${2:?NAME}
python=${PYTHON:-python3}
limit=${SECONDS_PER_CALL:-600}; episodes=${EPISODES:-1000}; batch=${EVAL_BATCH:-10}; queries=${EVAL_QUERIES:-15}
weights=${WEIGHTS:-last}; [[ -z ${WEIGHTS:-} && $name = mamlpp-ref-* ]] && weights=ensemble
suffix=""; [ "$weights" = last ] || suffix=-$weights
common=(--dataset miniimagenet --queries 15 --log-every 100 --val-every 1000
        --val-episodes 200 --checkpoint-every 500 --quiet)
# MAML as in Finn et al.: Conv4 with 32 channels, 5 inner steps of 0.01 (10 at test), transductive
# batch norm, 4 tasks a meta-batch (the paper uses 2 for 5-shot).
maml=(--ways 5 --inner-lr 0.01 --inner-steps 5 --eval-inner-steps 10 --meta-batch 4)
shots=${name##*-}; shots=${shots%shot}  # NAME is ALGORITHM-1shot or ALGORITHM-5shot for most recipes
episodic=(--ways 30 --shots 1 --meta-batch 1); [ "$shots" = 5 ] && episodic=(--ways 20 --shots 5 --meta-batch 1)
case $name in
  # ProtoNet as in Snell et al.: 30-way 1-shot and 20-way 5-shot training, one task a step; it
  # normalises with the support set's statistics (non-transductive), as the bundled model must.
  # Weight prediction and the hypernetwork train the same way (their heads start as ProtoNet's).
  protonet-[15]shot|weightpred-[15]shot|hypernet-[15]shot)
    flags=(train --algorithm "${name%-*}" --non-transductive "${episodic[@]}") ;;
  # Close to the paper's protocol: trained transductively (support and query images each normalised
  # with their own statistics; protonet-ref normalises them together, as the paper's code), its
  # learning rate halved every 2,000 episodes, scored with fixed statistics (below), as its network in
  # eval mode.
  protonet-bn-[15]shot)
    flags=(train --algorithm protonet "${episodic[@]}" --lr-halve-every 2000) ;;
  # The same as Snell et al.'s code runs it: batch-norm scales drawn from U(0, 1), an episode's support
  # and query images normalised as one batch, 20,000 episodes, the best weights by validation loss.
  protonet-ref-[15]shot)
    flags=(train --algorithm protonet "${episodic[@]}" --lr-halve-every 2000 --norm-scale-init uniform
           --joint-statistics --best-by loss --steps 20000) ;;
  # Snell et al.'s final model: protonet-ref trained again on the training and validation classes for
  # as many steps as its best-validated weights had (RUNS/protonet-ref-Kshot/best.pt's step, or
  # TRAINVAL_STEPS where that run's folder is elsewhere: docs/RESULTS.md gives its best steps).
  protonet-ref-trainval-[15]shot)
    best=$runs/protonet-ref-${shots}shot/best.pt
    steps=${TRAINVAL_STEPS:-}
    if [ -z "$steps" ]; then
      [ -f "$best" ] || { echo "$best is missing: run recipe protonet-ref-${shots}shot first, or set TRAINVAL_STEPS" >&2; exit 2; }
      steps=$("$python" -c "import sys, torch; print(torch.load(sys.argv[1], weights_only=True)['step'])" "$best")
    fi
    flags=(train --algorithm protonet "${episodic[@]}" --lr-halve-every 2000 --norm-scale-init uniform
           --joint-statistics --trainval --steps "$steps")
    weights=last; suffix="" ;;  # no validation classes are left to pick best weights by
  # The MAML family with MAML's settings (MAML++ is --algorithm mamlpp with all its switches).
  maml-[15]shot|fomaml-[15]shot|metasgd-[15]shot|anil-[15]shot|mamlpp-[15]shot)
    flags=(train --algorithm "${name%-*}" "${maml[@]}" --shots "$shots") ;;
  # MAML as its reference code (cbfinn/maml) runs it: its inner step of 0.01 is taken on a loss summed
  # over the 5 classes (0.05 on fewsight's mean), meta-gradients clipped to [-10, 10], Xavier weights
  # and zero biases, batch norm with a shift but no scale, meta-learned and not adapted, 2 tasks a
  # meta-batch at 5 shots, 60,000 steps. EXTRA_FLAGS undo one factor (e.g. --adapt-norm).
  maml-ref-[15]shot)
    tasks=4; [ "$shots" = 5 ] && tasks=2
    flags=(train --algorithm maml "${maml[@]}" --shots "$shots" --inner-lr 0.05 --meta-grad-clip 10
           --weight-init xavier --norm-scale-init fixed --no-adapt-norm
           --meta-batch "$tasks" --steps 60000) ;;
  # Meta-SGD as its paper adapts: in one step (Li et al. 2017, "in just one step"), at training and at
  # test, where the metasgd recipe takes MAML's 5 (10 at test); otherwise MAML's settings. The per-entry
  # rates still start at 0.01 (the paper's initialisation of them is not confirmed here).
  metasgd-ref-[15]shot)
    flags=(train --algorithm metasgd "${maml[@]}" --shots "$shots" --inner-steps 1 --eval-inner-steps 1) ;;
  # MAML++ as its reference code runs it: 48 channels, 2 tasks a meta-batch, learned inner rates
  # starting at 0.1, second order from the first step, the multi-step loss annealed over 15 of its 100
  # epochs of 500 steps, a constant meta learning rate (its cosine's floor equals its start in the
  # miniImageNet configurations), 50,000 steps, tested with its 5 steps (the per-step rates and
  # batch-norm weights exist for 5), Xavier weights with zero biases, meta-gradient elements clipped
  # at 10, validated on 600 tasks every 500 steps, keeping the weights of its 5 best validation scores,
  # which its code scores as one model, averaging their logits (the default WEIGHTS here: ensemble).
  mamlpp-ref-[15]shot)
    flags=(train --algorithm mamlpp "${maml[@]}" --shots "$shots" --width 1.5 --meta-batch 2 --inner-lr 0.1
           --eval-inner-steps 5 --first-order-steps 1 --multi-step-loss 7500 --cosine-floor 1 --keep-best 5
           --weight-init xavier --meta-grad-clip 10 --steps 50000) ;;
  # LEO (Rusu et al. 2019) on a Conv4 learned jointly (the paper uses fixed WRN-28-10 features):
  # 5 latent steps of 1.0 (meta-learned), 4 tasks a meta-batch.
  leo-[15]shot) flags=(train --algorithm leo --ways 5 --shots "$shots" --meta-batch 4 --inner-steps 5 --inner-lr 1.0) ;;
  # Reptile (Nichol et al. 2018: 8 inner steps, 50 at test, 5 tasks a meta-batch) with fewsight's
  # update: plain SGD steps of 0.01 on support and query images, Adam on theta - mean(phi). Not tuned.
  # Reptile as its reference code (openai/supervised-reptile) runs it on miniImageNet: 8 inner Adam
  # steps (beta1 = 0) of 0.001 on mini-batches of 10 of a task's 15 images a class (the support set and
  # 15 - K queries), 5 tasks a meta-batch, a meta step of 1 falling linearly to 0 (plain SGD on
  # theta - mean phi), 100,000 steps, 50 inner steps on the support set at test (its code: mini-batches
  # of 15 at 5 shots), validated every 5,000 steps; its code scores 1 query a class (NAME.eval-Kshot-1q.json).
  reptile-ref-[15]shot)
    flags=(train --algorithm reptile --ways 5 --shots "$shots" --meta-batch 5 --inner-steps 8
           --inner-optimizer adam --inner-lr 0.001 --inner-batch 10 --eval-inner-steps 50
           --meta-optimizer sgd --meta-momentum 0 --meta-lr 1 --linear-lr --steps 100000) ;;
  reptile-1shot) flags=(train --algorithm reptile --ways 5 --shots 1 --inner-lr 0.01 --inner-steps 8
                        --eval-inner-steps 50 --meta-batch 5) ;;
  reptile-5shot) flags=(train --algorithm reptile --ways 5 --shots 5 --inner-lr 0.01 --inner-steps 8
                        --eval-inner-steps 50 --meta-batch 5) ;;
  # ResNet-12 pre-trained on the 64 training classes (the recipe behind RFS and Meta-Baseline),
  # scored as a cosine nearest-centroid classifier (Classifier-Baseline); $PRETRAIN_EPOCHS epochs.
  resnet12-pretrain) flags=(pretrain --dataset miniimagenet --backbone resnet12 --epochs "${PRETRAIN_EPOCHS:-30}"
                            --width "${PRETRAIN_WIDTH:-1}"
                            --batch-size 128 --augment --bf16 --metric cosine --quiet) ;;
  # Meta-Baseline's second stage: the pre-trained backbone meta-trained as a cosine ProtoNet on 5-way
  # 1-shot tasks, 4 a meta-batch, for $META_STEPS steps (Adam, cosine-annealed from 1e-4).
  metabaseline) flags=(train --algorithm protonet --metric cosine --backbone resnet12 --init "$runs/resnet12-pretrain"
                       --width "${PRETRAIN_WIDTH:-1}"
                       --ways 5 --shots 1 --meta-batch 4 --meta-lr 1e-4 --cosine-lr --bf16) ;;
  # Meta-Baseline's stage as its reference code runs it for 5 shots: trained on 5-shot tasks with SGD
  # (1e-3, momentum 0.9, weight decay 5e-4, constant) for 4,000 steps; scored from its best-validated weights.
  metabaseline-5shot) flags=(train --algorithm protonet --metric cosine --backbone resnet12 --init "$runs/resnet12-pretrain"
                       --width "${PRETRAIN_WIDTH:-1}"
                             --ways 5 --shots 5 --meta-batch 4 --meta-optimizer sgd --meta-lr 1e-3
                             --weight-decay 5e-4 --bf16 --steps 4000) ;;
  # Classifier-Baseline as Meta-Baseline's code trains it: a ResNet-12 of 64-128-256-512 channels
  # without DropBlock, on 80-pixel images normalised with ImageNet's statistics, random resized crops
  # of the 84-pixel images and flip (no colour jitter), SGD at 0.1 dropped tenfold after epoch 90 of
  # 100, batches of 128 that batch norm normalises in groups of 32 (the code trains on 4 GPUs under
  # nn.DataParallel, each normalising its own quarter of the batch); bf16 autocast, for speed, where
  # the code runs float32 (PRETRAIN_FLAGS=--no-bf16 runs float32).
  classifier-ref) flags=(pretrain --dataset miniimagenet --backbone resnet12-512 --width "${PRETRAIN_WIDTH:-1}"
                         --image-size 80 --input-norm imagenet --epochs "${PRETRAIN_EPOCHS:-100}"
                         --lr-drop-epoch 90 --batch-size 128 --bn-batch 32 --augment --crop-from 84
                         --no-jitter --bf16 --metric cosine --quiet) ;;
  # Meta-Baseline's stage on it, as its code: 5-way tasks of its shot count, 4 a meta-batch, the images
  # of 2 tasks normalised as one batch (its code runs the stage on 2 GPUs, 2 of a step's 4 tasks on
  # each), SGD (1e-3, momentum 0.9, weight decay 5e-4, constant), 4,000 steps, scored from its
  # best-validated weights.
  metabaseline-ref-[15]shot)
    flags=(train --algorithm protonet --metric cosine --backbone resnet12-512 --width "${PRETRAIN_WIDTH:-1}"
           --init "$runs/classifier-ref" --image-size 80 --input-norm imagenet --ways 5 --shots "$shots"
           --meta-batch 4 --step-statistics --step-statistics-tasks 2 --meta-optimizer sgd --meta-lr 1e-3
           --weight-decay 5e-4 --bf16
           --steps 4000) ;;
  *) echo "unknown recipe $name" >&2; exit 2 ;;
esac
[ "${flags[0]}" = train ] && flags+=("${common[@]}")
[[ $name = reptile-ref-* ]] && flags+=(--queries $((15 - shots)) --val-every 5000)
[[ $name = metabaseline* ]] && flags+=(--val-every 500)
[[ $name = mamlpp-ref-* ]] && flags+=(--val-every 500 --val-episodes 600)
# A new run's length and EXTRA_FLAGS; a resumed run keeps its own (so its cosine schedule is unchanged).
length=(--steps 60000); [ "$name" = metabaseline ] && length=(--steps "${META_STEPS:-2000}")
[[ $name = *-ref-* || $name = metabaseline-5shot ]] && length=()  # their recipe sets the length
resume=(); [ -f "$runs/$name/config.json" ] && resume=(--resume)
# shellcheck disable=SC2206  # EXTRA_FLAGS is a list of words
[ -z "${resume[*]}" ] && [ "${flags[0]}" = train ] && flags+=("${length[@]}" ${EXTRA_FLAGS:-})
# shellcheck disable=SC2206
[ -z "${resume[*]}" ] && [ "${flags[0]}" = pretrain ] && flags+=(${PRETRAIN_FLAGS:-})
# A resumed run takes every setting from its config.json: the recipe's flags are not given again, as
# EXTRA_FLAGS may have overridden some of them (e.g. --meta-batch 2), which --resume would refuse.
[ -n "${resume[*]}" ] && flags=("${flags[0]}" --quiet)
mkdir -p "$runs"
start=$SECONDS
timeout -s INT "$limit" "$python" -m fewsight "${flags[@]}" --out "$runs/$name" "${resume[@]}" >>"$runs/$name.log" 2>&1
echo "trained for $((SECONDS - start)) s" >>"$runs/$name.log"
evaluate() {  # shots [norm [queries]]: the model-based runs are also scored with fixed (population)
  local start=$SECONDS norm=${2:-task} count=${3:-$queries} tag=""  # batch-norm statistics,
  [ "$norm" = population ] && tag=-population  # RUNS/NAME.eval-Kshot-population.json
  [ "$count" = "$queries" ] || tag=$tag-${count}q
  "$python" -m fewsight eval "$runs/$name" --ways 5 --shots "$1" --queries "$count" --episodes "$episodes" \
    --batch "$batch" --weights "$weights" --norm "$norm" --json --quiet \
    >"$runs/$name.eval-${1}shot$tag$suffix.json" 2>>"$runs/$name.log"
  echo "evaluated ${1}-shot ($norm statistics, $count queries) in $((SECONDS - start)) s" >>"$runs/$name.log"
}
# The MAML family is also scored as the MAML paper's code scores it: K query images a class at K
# shots (RUNS/NAME.eval-Kshot-Kq.json), which moves a transductive score (docs/RESULTS.md).
case $name in
  protonet-*|weightpred-*|hypernet-*|resnet12-*|classifier-ref|metabaseline*)
    evaluate 1 population; evaluate 5 population; evaluate 1; evaluate 5 ;;  # the cells' first
  reptile-ref-*) evaluate "$shots"; evaluate "$shots" task 1 ;;  # its code: 1 query a class
  *-1shot) evaluate 1; evaluate 1 task 1 ;;
  *-5shot) evaluate 5; evaluate 5 task 5 ;;
esac
touch "$runs/$name.done"
