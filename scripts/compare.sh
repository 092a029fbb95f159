#!/usr/bin/env bash
# scripts/compare.sh [--pretrain-steps N] [--pos-steps M] [--nodes K]
#
# What pre-training buys, measured: fine-tunes sentiment classification
# (the demo's 3 epochs) and part-of-speech tagging (M steps of 32
# sentences, default 200) with the same budget twice each, from random
# weights and from the checkpoint scripts/pretrain.sh --steps N made
# (default 600; run that first), on a local cluster of K nodes (default
# 2), and prints the final evaluation of each run. Logs are in
# runs/compare-TASK-INIT.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
pt=600
pos=200
nodes=2
while [ $# -gt 0 ]; do
  case "$1" in
    --pretrain-steps) pt=$2; shift ;;
    --pos-steps) pos=$2; shift ;;
    --nodes) nodes=$2; shift ;;
    -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
    *) echo "compare: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
  shift
done
P=$(scripts/pretrain.sh --print-dir --steps "$pt")
[ -s "$P/model.safetensors" ] || { echo "compare: no checkpoint at $P; run scripts/pretrain.sh --steps $pt first" >&2; exit 2; }
results=()
for task in sentiment pos; do
  budget=()
  [ "$task" = pos ] && budget=(--train.max_steps "$pos")
  for init in random pretrained; do
    from=()
    [ "$init" = pretrained ] && from=(--model.path "$P" --model.init pretrained)
    run=$root/runs/compare-$task-$init
    echo "compare: $task from $init weights (logs in $run)"
    RINGTUNE_JOIN_TIMEOUT=15m RINGTUNE_RUN_DIR=$run scripts/local-cluster.sh "$nodes" --task "$task" --no-setup -- "${budget[@]}" "${from[@]}" > "$run.out" 2>&1 ||
      { echo "compare: the $task/$init run failed; see $run.out" >&2; exit 1; }
    results+=("$task from $init: $(grep 'eval after step' "$run.out" | tail -1)")
  done
done
echo "compare: pre-trained checkpoint $P"
printf 'compare: %s\n' "${results[@]}"
