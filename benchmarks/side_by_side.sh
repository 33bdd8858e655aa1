#!/usr/bin/env bash
# Several miniImageNet recipes of benchmarks/miniimagenet_results.sh trained side by side on one GPU,
# each for at most SECONDS of training (a checkpoint is saved when time is up; the next call resumes
# every run where it stopped), then scored as that script scores them. Prints each run's last log
# lines and scores. The environment variables of miniimagenet_results.sh apply to every run.
# Usage: benchmarks/side_by_side.sh RUNS SECONDS NAME [NAME...]
set -u
runs=${1:?RUNS}; seconds=${2:?SECONDS}; shift 2
here=$(dirname "$0")
mkdir -p "$runs"
for name in "$@"; do
  rm -f "$runs/$name.done"
  SECONDS_PER_CALL=$seconds bash "$here/miniimagenet_results.sh" "$runs" "$name" &
done
wait
for name in "$@"; do
  echo "== $name"
  tail -n 3 "$runs/$name.log"
  for scored in "$runs/$name".eval-*.json; do
    [ -f "$scored" ] && echo "$(basename "$scored"): $(head -c 300 "$scored")"
  done
done
