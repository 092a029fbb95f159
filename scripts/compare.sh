#!/usr/bin/env bash
# scripts/compare.sh [--pretrain-steps N | --pretrained DIR] [--pos-sentences S] [--pos-steps M] [--nodes K] [--skip-sentiment]
#
# What pre-training buys, measured: fine-tunes sentiment classification
# (the demo's 3 epochs) and part-of-speech tagging with the same budget
# twice each, from random weights and from the checkpoint
# scripts/pretrain.sh --steps N made (default 1500; run that first), on a
# local cluster of K nodes (default 2), and prints the final evaluation of
# each run. The POS budget is small in labelled data, where pre-training
# matters: M steps (default 300) of 16 sentences drawn from a fixed sample
# of S labelled sentences (default 200) of pos_train.jsonl, lr 1e-3,
# sentences cut to 32 tokens; evaluation on all of pos_eval.jsonl.
# --pretrained DIR compares against any masked-LM checkpoint of the demo's
# architecture instead (e.g. one TestPretrainedBeatsRandomOnPOS wrote). Logs
# are in runs/compare-TASK-INIT. Both makers mark their checkpoints so that
# sentiment fine-tuning draws the attention query and key afresh
# (config.json ringtune_sequence_head_redraw; README, "Why the checkpoint
# loses on sentiment"); an unmarked checkpoint loads them, and under-fits.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
pt=1500
P=""
pos_sents=200
pos=300
nodes=2
tasks=(sentiment pos)
while [ $# -gt 0 ]; do
  case "$1" in
    --pretrain-steps) pt=$2; shift ;;
    --pretrained) P=$2; shift ;;
    --pos-sentences) pos_sents=$2; shift ;;
    --pos-steps) pos=$2; shift ;;
    --nodes) nodes=$2; shift ;;
    --skip-sentiment) tasks=(pos) ;;
    -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
    *) echo "compare: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
  shift
done
for v in "$pt" "$pos_sents" "$pos" "$nodes"; do
  case "$v" in ''|*[!0-9]*|0) echo "compare: counts must be positive integers, got '$v'" >&2; exit 2 ;; esac
done
if [ -z "$P" ]; then
  P=$(scripts/pretrain.sh --print-dir --steps "$pt")
  [ -s "$P/model.safetensors" ] || { echo "compare: no checkpoint at $P; run scripts/pretrain.sh --steps $pt first" >&2; exit 2; }
fi
[ -s "$P/model.safetensors" ] && [ -s "$P/config.json" ] || { echo "compare: $P holds no model.safetensors and config.json" >&2; exit 2; }
P=$(cd "$P" && pwd)
# The labelled POS sample: S sentences of pos_train.jsonl, fixed by seed.
mkdir -p "$root/runs"
sample=$root/runs/compare-pos-train-$pos_sents.jsonl
python3 - "$root/.data/corpus/pos_train.jsonl" "$sample" "$pos_sents" <<'PY'
import random, sys
src, dst, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
lines = open(src, encoding="utf-8").readlines()
if n < len(lines):
    lines = [lines[i] for i in sorted(random.Random(9).sample(range(len(lines)), n))]
open(dst, "w", encoding="utf-8").writelines(lines)
PY
results=()
for task in "${tasks[@]}"; do
  budget=()
  if [ "$task" = pos ]; then
    # Enough epochs for M steps of 16; max_steps ends the run there.
    budget=(--data.train_file "$sample" --data.max_length 32 --train.global_batch 16 --train.micro_batch 8
      --train.max_steps "$pos" --train.epochs $(( (pos * 16 + pos_sents - 1) / pos_sents )))
  fi
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
