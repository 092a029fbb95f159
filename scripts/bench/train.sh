#!/usr/bin/env bash
# scripts/bench.sh train [--sizes 1,2,4] [--steps 12] [--warmup 3] [--repeats 1] [--tls on|off|both]
#
# Training throughput of a ringtune cluster on this machine against PyTorch
# DDP (gloo) running ../shared/bench/ddp_train.py in the same run, on the same
# model: a BERT-style classifier with vocab 8192, hidden 256, 4 layers,
# 4 heads, FFN 1024, sequence 128, dropout 0.1, micro-batch 8 per node,
# 1 thread per node, synthetic tokens, AdamW. ringtune runs a coordinator and
# N `node join` processes over loopback; the global batch is 8·N, so every
# node computes one micro-batch per step as a DDP rank does.
#
# samples/s for ringtune = samples of the steps after warm-up, over the
# slowest node's time for them: the sum of its step cycles (the nodes'
# debug "step timing" line: idle, compute, all-reduce, commit wait and
# apply, one after another from the previous step's end), which are
# measured on the monotonic clock, as DDP's perf_counter steps are. The
# coordinator's wall-clock commit times (the figure before 2026-12-01) ran
# 0.5% fast against it on this host, and a 3.4 s stall of the virtual
# machine once showed in them but in neither monotonic clock. For DDP, the
# script's synced-step figure. The old figure (the coordinator's commit
# times) is printed beside it, with its ratio, so the two clocks can be
# compared. One line per N:
#   bench: train n=N samples_per_s=X ddp_samples_per_s=Y ratio=X/Y commit_clock_samples_per_s=Z commit_clock_ratio=Z/Y
#
# --tls off runs ringtune with cluster.tls.enabled: false. --tls both
# measures, interleaved, TLS on (default: the ring's gRPC streams encrypted,
# its raw TCP gradient path not), TLS off, and TLS on with the ring on gRPC
# (gradients encrypted too), and adds one line per N:
#   bench: train_tls n=N tls_samples_per_s=A plain_samples_per_s=B tls_cost=1-A/B tls_grpc_samples_per_s=C encrypted_gradients_cost=1-C/A
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$(pwd)
sizes=1,2,4
steps=12
warmup=3
repeats=1
tls=on
while [ $# -gt 0 ]; do
  case "$1" in
    --sizes) sizes=$2; shift ;;
    --steps) steps=$2; shift ;;
    --warmup) warmup=$2; shift ;;
    --repeats) repeats=$2; shift ;;
    --tls) tls=$2; shift ;;
    *) echo "bench train: unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
ddp=${RINGTUNE_DDP_SCRIPT:-$root/../shared/bench/ddp_train.py} # override from a git worktree
[ -f "$ddp" ] || { echo "bench train: $ddp not found (../shared/bench)" >&2; exit 2; }
/usr/bin/python3 -c 'import torch' 2>/dev/null || { echo "bench train: /usr/bin/python3 lacks torch: scripts/setup.sh installs python3-torch" >&2; exit 2; }

. scripts/env.sh
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1
go build -o .build/coordinator ./cmd/coordinator
go build -o .build/node ./cmd/node

work=$(mktemp -d /tmp/ringtune-bench-train.XXXXXX)
trap 'rm -rf "$work"' EXIT
# Synthetic data: a WordPiece vocabulary of 8192 whole words, so each word is
# one token and max_length 128 gives sequences of exactly 128 tokens.
/usr/bin/python3 - "$work" <<'PY'
import json, os, random, sys
d = sys.argv[1]
os.makedirs(d + "/model", exist_ok=True)
special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
words = ["w%d" % i for i in range(8192 - len(special))]
open(d + "/model/vocab.txt", "w").write("\n".join(special + words) + "\n")
rng = random.Random(1234)
with open(d + "/train.jsonl", "w") as f:
    for _ in range(4096):
        f.write(json.dumps({"text": " ".join(rng.choice(words) for _ in range(140)), "label": rng.randrange(2)}) + "\n")
with open(d + "/eval.jsonl", "w") as f:
    for _ in range(8):
        f.write(json.dumps({"text": " ".join(rng.choice(words) for _ in range(140)), "label": rng.randrange(2)}) + "\n")
json.dump({"architectures": ["BertForSequenceClassification"], "model_type": "bert", "vocab_size": 8192,
           "hidden_size": 256, "num_hidden_layers": 4, "num_attention_heads": 4, "intermediate_size": 1024,
           "hidden_act": "gelu", "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1,
           "max_position_embeddings": 128, "type_vocab_size": 2, "initializer_range": 0.02,
           "layer_norm_eps": 1e-12, "pad_token_id": 0}, open(d + "/model/config.json", "w"))
PY
.build/coordinator keygen "$work/cluster.key"

case "$tls" in on|off|both) ;; *) echo "bench train: --tls must be on, off or both, got $tls" >&2; exit 2 ;; esac

ours() { # N [on|off|off-grpc] -> samples/s
  local n=$1 mode=${2:-on} dir=$work/run$1-${2:-on}
  local tlsyaml="" transport=default
  case "$mode" in
    off) tlsyaml=$'  tls:\n    enabled: false' ;;
    on-grpc) transport=grpc ;;
  esac
  mkdir -p "$dir"
  cat > "$dir/cluster.yaml" <<YAML
cluster:
$tlsyaml
  bind: 127.0.0.1:0
  grpc: 127.0.0.1:0
  key_file: $work/cluster.key
  min_nodes: $n
  max_nodes: $n
  settle: 500ms
  label: bench-train
model:
  path: $work/model
  task: classification
  num_labels: 2
  init: random
data:
  train_file: $work/train.jsonl
  eval_file: $work/eval.jsonl
  max_length: 128
  tokenizer: $work/model/vocab.txt
train:
  epochs: 1
  max_steps: $((steps + warmup))
  global_batch: $((8 * n))
  micro_batch: 8
  optimizer: adamw
  lr: 1.0e-4
  weight_decay: 0.01
  schedule: constant
  max_grad_norm: 0
  seed: 1234
  threads: 1
  digest_every: 1000
allreduce:
  timeout: 120s
  transport: $transport
checkpoint:
  dir: ckpt
  every: 0
output:
  dir: out
YAML
  (cd "$dir" && "$root/.build/coordinator" --config cluster.yaml --log-level debug > coord.log 2>&1) &
  local cpid=$! gossip=""
  for _ in $(seq 1200); do # up to 2 minutes: tokenizing is slow on a loaded machine
    gossip=$(sed -n 's/.*gossip=\([^ ]*\).*/\1/p' "$dir/coord.log" | head -1)
    [ -n "$gossip" ] && break
    sleep 0.1
  done
  [ -n "$gossip" ] || { echo "bench train: coordinator did not start:" >&2; cat "$dir/coord.log" >&2; kill $cpid; return 1; }
  local pids=()
  for k in $(seq "$n"); do
    .build/node join --coordinator "$gossip" --key-file "$work/cluster.key" --label bench-train --log-level debug \
      --bind 127.0.0.1:0 --name "bench-$n-$k" --cache-dir "$dir/cache" > "$dir/node$k.log" 2>&1 &
    pids+=("$!")
  done
  if ! wait $cpid; then
    echo "bench train: n=$n run failed:" >&2; tail -20 "$dir/coord.log" >&2
    kill "${pids[@]}" 2>/dev/null || true
    return 1
  fi
  wait "${pids[@]}" 2>/dev/null || true
  /usr/bin/python3 - "$dir" "$warmup" "$n" "$((steps + warmup))" <<'PY'
import datetime, glob, re, sys
d, warm, n, total = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
slowest = 0.0
for f in glob.glob(d + "/node*.log"):
    cyc = {}
    for line in open(f):
        if 'msg="step timing"' not in line:
            continue
        kv = dict(re.findall(r'(\w+)=(\S+)', line))
        cyc[int(kv["step"])] = sum(float(kv[k]) for k in ("idle_ms", "compute_ms", "allreduce_ms", "commit_wait_ms", "apply_ms"))
    timed = [cyc.get(s) for s in range(warm, total)]
    if None in timed:
        sys.exit("bench train: %s lacks the step timing of some of steps %d-%d (a node left or the run was cut short)" % (f, warm, total - 1))
    slowest = max(slowest, sum(timed) / 1000)
# The figure before 2026-12-01, printed beside it: samples committed after
# warm-up over the coordinator's wall-clock time between those commits.
ts = {}
for line in open(d + "/coord.log"):
    m = re.search(r'time=(\S+) level=DEBUG msg="step committed" step=(\d+)', line)
    if m:
        ts[int(m.group(2))] = datetime.datetime.fromisoformat(m.group(1).replace("Z", "+00:00")).timestamp()
last, first = max(ts), warm - 1
print("%.4f %.4f" % (8 * n * (total - warm) / slowest, 8 * n * (last - first) / (ts[last] - ts[first])))
PY
}

declare -A mine theirs plain tls_grpc commits
# Interleaved per world size (ringtune N, DDP N, next N, ...) so that a burst
# of foreign load lands on both sides alike.
for r in $(seq "$repeats"); do
  for n in ${sizes//,/ }; do
    first=on
    [ "$tls" = off ] && first=off
    read -r v c < <(ours "$n" "$first") || true
    [ -n "${c:-}" ] || { echo "bench train: n=$n: no ringtune figure (see above)" >&2; exit 1; }
    mine[$n]="${mine[$n]:-} $v"
    commits[$n]="${commits[$n]:-} $c"
    echo "bench train: repeat $r ringtune n=$n tls=$first samples/s=$v" >&2
    if [ "$tls" = both ]; then
      read -r v _ < <(ours "$n" off) || true
      [ -n "${v:-}" ] || { echo "bench train: n=$n tls=off: no ringtune figure" >&2; exit 1; }
      plain[$n]="${plain[$n]:-} $v"
      echo "bench train: repeat $r ringtune n=$n tls=off samples/s=$v" >&2
      read -r v _ < <(ours "$n" on-grpc) || true
      [ -n "${v:-}" ] || { echo "bench train: n=$n tls=on-grpc: no ringtune figure" >&2; exit 1; }
      tls_grpc[$n]="${tls_grpc[$n]:-} $v"
      echo "bench train: repeat $r ringtune n=$n tls=on transport=grpc samples/s=$v" >&2
    fi
    /usr/bin/python3 "$ddp" --world-sizes "$n" --repeats 1 --warmup "$warmup" --steps "$steps" --blocks 1 \
      --threads 1 --out "$work/ddp$r-$n.json" > "$work/ddp$r-$n.log" 2>&1 || { cat "$work/ddp$r-$n.log" >&2; exit 1; }
    v=$(/usr/bin/python3 -c 'import json,sys
s=[x for x in json.load(open(sys.argv[1]))["summary"] if x["world_size"]==int(sys.argv[2])][0]
print("%.4f" % s["samples_per_s_sync"]["median"])' "$work/ddp$r-$n.json" "$n")
    theirs[$n]="${theirs[$n]:-} $v"
    echo "bench train: repeat $r ddp n=$n samples/s=$v" >&2
  done
done
for n in ${sizes//,/ }; do
  /usr/bin/python3 - "$n" "${mine[$n]}" "${theirs[$n]}" "${commits[$n]}" <<'PY'
import statistics, sys
n, a, b, c = sys.argv[1], [float(x) for x in sys.argv[2].split()], [float(x) for x in sys.argv[3].split()], [float(x) for x in sys.argv[4].split()]
x, y, z = statistics.median(a), statistics.median(b), statistics.median(c)
print("bench: train n=%s samples_per_s=%.2f ddp_samples_per_s=%.2f ratio=%.3f commit_clock_samples_per_s=%.2f commit_clock_ratio=%.3f repeats=%d" % (n, x, y, x / y, z, z / y, len(a)))
PY
  if [ "$tls" = both ]; then
    /usr/bin/python3 - "$n" "${mine[$n]}" "${plain[$n]}" "${tls_grpc[$n]}" <<'PY'
import statistics, sys
n = sys.argv[1]
a, b, c = (statistics.median(float(x) for x in s.split()) for s in sys.argv[2:5])
print("bench: train_tls n=%s tls_samples_per_s=%.2f plain_samples_per_s=%.2f tls_cost=%.3f tls_grpc_samples_per_s=%.2f encrypted_gradients_cost=%.3f" % (n, a, b, 1 - a / b, c, 1 - c / a))
PY
  fi
done
