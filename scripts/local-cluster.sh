#!/usr/bin/env bash
# scripts/local-cluster.sh [N] [--config FILE] [--task sentiment|pos] [--no-setup] [--device DEV] [-- COORDINATOR FLAGS...]
#
# Runs a real ringtune cluster on this machine: one coordinator and N nodes
# (default 3), each a separate process talking gossip, gRPC and the ring
# all-reduce over 127.0.0.1. By default it fine-tunes a small BERT from
# scratch on the 3,000 labelled sentences of npm sentiment@5.0.2 and writes
# the trained Hugging Face model directory to runs/local/model.
#
# No pretrained weights can be downloaded here, so the default model is
# initialised at random (model.init: random). To fine-tune a real checkpoint,
# point model.path at a Hugging Face directory (config.json,
# model.safetensors or pytorch_model.bin, tokenizer files) and set
# model.init: pretrained, e.g.
#   scripts/local-cluster.sh 3 -- --model.path /models/bert-base-uncased --model.init pretrained
#
# --device (default cpu) is every node's device, e.g. cuda:0: the nodes
# then share that GPU (scripts/gpu/check.sh).
#
# --task pos trains part-of-speech tagging (token_classification, 12 coarse
# tags) on the Brown corpus instead (see scripts/pretrain.sh for a
# pre-trained start).
#
# Environment: RINGTUNE_RUN_DIR replaces runs/local; RINGTUNE_JOIN_TIMEOUT
# (default 30s) is how long nodes wait for the coordinator to listen.
#
# Logs: runs/local/coordinator.log and runs/local/node-K.log; a live
# dashboard and Prometheus /metrics are served while it runs (their URLs are
# in the log). Ctrl-C stops every process this script started.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

n=3
task=sentiment
config=""
setup=1
device=cpu
extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    --config) config=$2; shift ;;
    --no-setup) setup=0 ;;
    --device) [ $# -ge 2 ] || { echo "local-cluster: --device needs a value (cpu, cuda:N)" >&2; exit 2; }; device=$2; shift ;;
    --task) task=$2; shift ;;
    --) shift; extra=("$@"); break ;;
    -h|--help) sed -n '2,30p' "$0"; exit 0 ;;
    [0-9]*) n=$1 ;;
    *) echo "local-cluster: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
  shift
done
[ "$n" -ge 1 ] || { echo "local-cluster: need at least 1 node" >&2; exit 2; }

[ "$setup" = 1 ] && scripts/setup.sh
# shellcheck source=scripts/env.sh
. scripts/env.sh
go build -o .build/coordinator ./cmd/coordinator
go build -o .build/node ./cmd/node

# RINGTUNE_RUN_DIR moves the logs, key and default config elsewhere (so
# that scripts/pretrain.sh and the demo do not share runs/local).
run=${RINGTUNE_RUN_DIR:-$root/runs/local}
mkdir -p "$run"
rm -rf "$run/model"

if [ -z "$config" ]; then
  # The demo model: a 2-layer BERT (hidden 128) in Hugging Face layout with
  # the BERT-uncased tokenizer; weights are initialised from the seed.
  mdir=$root/.data/models/bert-mini
  mkdir -p "$mdir"
  cat > "$mdir/config.json" <<'JSON'
{
  "architectures": ["BertForSequenceClassification"],
  "model_type": "bert",
  "vocab_size": 30522,
  "hidden_size": 128,
  "num_hidden_layers": 2,
  "num_attention_heads": 2,
  "intermediate_size": 512,
  "hidden_act": "gelu",
  "hidden_dropout_prob": 0.1,
  "attention_probs_dropout_prob": 0.1,
  "max_position_embeddings": 512,
  "type_vocab_size": 2,
  "initializer_range": 0.02,
  "layer_norm_eps": 1e-12,
  "pad_token_id": 0
}
JSON
  cp .data/tokenizers/bert-base-uncased/tokenizer.json "$mdir/tokenizer.json"
  # Free loopback ports for gossip and control.
  read -r gport cport mport dport < <(python3 -c '
import socket
s=[socket.socket() for _ in range(4)]
[x.bind(("127.0.0.1",0)) for x in s]
print(*[x.getsockname()[1] for x in s])')
  config=$run/cluster.yaml
  case "$task" in
    sentiment)
      taskyaml="model:
  path: $mdir
  task: classification
  labels: [negative, positive]
  init: random
data:
  train_file: $root/.data/sentiment/train.jsonl
  eval_file: $root/.data/sentiment/eval.jsonl
  text_field: text
  label_field: label
  max_length: 64
  tokenizer: $mdir/tokenizer.json" ;;
    pos)
      taskyaml="model:
  path: $mdir
  task: token_classification
  labels: [NOUN, VERB, ADJ, ADV, PRON, DET, ADP, NUM, CONJ, PRT, \".\", X]
  init: random
data:
  train_file: $root/.data/corpus/pos_train.jsonl
  eval_file: $root/.data/corpus/pos_eval.jsonl
  text_field: words
  label_field: tags
  max_length: 64
  tokenizer: $mdir/tokenizer.json" ;;
    *) echo "local-cluster: --task $task: want sentiment or pos" >&2; exit 2 ;;
  esac
  cat > "$config" <<YAML
# Written by scripts/local-cluster.sh: $n nodes on this machine.
cluster:
  bind: 127.0.0.1:$gport
  grpc: 127.0.0.1:$cport
  key_file: cluster.key
  min_nodes: $n
  max_nodes: $n
  settle: 1s
  label: ringtune-local
$taskyaml
train:
  epochs: 3
  global_batch: 32
  micro_batch: 16
  optimizer: adamw
  lr: 1.0e-3
  schedule: linear
  warmup_ratio: 0.1
  weight_decay: 0.01
  max_grad_norm: 1.0
  seed: 42
  threads: 1
  digest_every: 20
allreduce:
  timeout: 60s
checkpoint:
  dir: checkpoints
  every: 50
  keep: 2
metrics:
  address: 127.0.0.1:$mport
  dashboard: 127.0.0.1:$dport
output:
  dir: model
YAML
  rm -f "$run/cluster.key"
  .build/coordinator keygen "$run/cluster.key"
fi

label=$(sed -n 's/^ *label: *\([^ #]*\).*/\1/p' "$config" | head -1)
keyfile=$(sed -n 's/^ *key_file: *\([^ #]*\).*/\1/p' "$config" | head -1)
case "$keyfile" in /*) ;; *) keyfile=$(dirname "$config")/$keyfile ;; esac
gossip=$(sed -n 's/^ *bind: *\([^ #]*\).*/\1/p' "$config" | head -1)
gossip=${gossip/0.0.0.0/127.0.0.1}

pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM

echo "local-cluster: coordinator + $n nodes, config $config, logs in $run"
.build/coordinator --config "$config" "${extra[@]}" > >(tee "$run/coordinator.log") 2>&1 &
coord=$!
pids+=("$coord")
for k in $(seq 1 "$n"); do
  .build/node join --coordinator "$gossip" --key-file "$keyfile" --label "$label" \
    --bind 127.0.0.1:0 --name "local-$k" --device "$device" --join-timeout "${RINGTUNE_JOIN_TIMEOUT:-30s}" > "$run/node-$k.log" 2>&1 &
  pids+=("$!")
done
set +e
wait "$coord"
rc=$?
set -e
if [ "$rc" -eq 0 ]; then
  echo "local-cluster: done; model written to $(dirname "$config")/model (loads with transformers' from_pretrained)"
else
  echo "local-cluster: coordinator exited with status $rc; see $run/*.log" >&2
fi
exit "$rc"
