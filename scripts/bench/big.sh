#!/usr/bin/env bash
# scripts/bench.sh big [--steps 4] [--warmup 2] [--checkpoint [--paused-checkpoints]] [--export-timeout 300]
#                      [--overlap both|on|off]
#                      [--nodes 2] [--shard none|zero1]
#
# GPT-2 124M (n_embd 768, 12 layers, 12 heads, vocab 50257), random init,
# causal LM, --nodes `node join` processes (default 2) with 1 thread each,
# global batch 4 per node, micro-batch 4, sequence 128, train.shard_optimizer
# --shard (default none; zero1 shards AdamW's moments over the ranks), AdamW, clipping 1.0, against PyTorch DDP
# (gloo) running the same model in plain torch (scripts/bench/ddp_big.py),
# in the same run, one after the other; with --checkpoint, DDP's window
# holds the same saves (torch.save of the checkpoints and the model). The text is synthetic: lines of
# 150 words that are one GPT-2 token each, so every sequence is 128 tokens,
# as in the DDP peer.
#
# samples/s for ringtune: the samples committed after warm-up, over the
# time from the last warm-up commit to the end of the export ("model
# written"), so a checkpoint (--checkpoint: one at the middle of the timed
# steps, plus the final one) and the export are inside the window. When the
# export does not finish within --export-timeout seconds, the coordinator is
# stopped and samples/s covers the steps only (window=steps). Peak RSS is
# the larger node's VmHWM over the whole run, train_peak_rss_mb the same at
# the last commit (training only); apply_ms the median of the nodes' timed steps'
# apply (debug log); torch_adamw_ms is torch.optim.AdamW with the same
# scale, clip and zero-grad on one flat tensor of the same size, 1 thread
# (scripts/bench/adamw_torch.py), measured in the same run.
#
# The ringtune cluster runs once per --overlap setting (default: off, then
# on, with allreduce.bucket_bytes at its default), DDP once. exposed_comm_ms
# is the median over the nodes' timed steps of the wait from the end of
# backward to the last bucket reduced (debug "step timing"), comm_ms the
# ring's busy time, overlapped_comm_ms the part of it before the end of
# backward. The overlap=on line compares its exposed_comm_ms with the
# overlap=off run's (there every byte is reduced after backward):
# exposed_ratio = exposed_comm_ms / noover_allreduce_ms. On a loaded
# machine that median also holds the ranks' skew (a rank that ends
# backward first waits for the others), so last_rank_exposed_ms is, per
# timed step, the smallest exposed time over the nodes (the wait of the
# rank that ended backward last: the comm left once every rank is done),
# the median over the steps; last_rank_ratio compares it with the
# overlap=off run's.
#
#   bench: big n=N shard=none|zero1 overlap=off|on params=… optimizer_mb=… samples_per_s=… ddp_samples_per_s=… ratio=…
# optimizer_mb is the optimizer state a node holds (the largest over the
# nodes; the nodes' step log's optimizer_bytes): 8 bytes per parameter
# under none, (2/N)·8 under zero1 (own slice and buddy copy).
#
#   bench: big n=N shard=none|zero1 params=… optimizer_mb=… samples_per_s=… ddp_samples_per_s=… ratio=…
#     peak_rss_mb=… ddp_peak_rss_mb=… rss_ratio=… train_peak_rss_mb=… apply_ms=… torch_adamw_ms=…
#     apply_ratio=… checkpoint_s=… export_s=… checkpoints=on|off
#     ckpt_background=on|off ckpt_held_s=… window=…
#     exposed_comm_ms=… overlapped_comm_ms=… comm_ms=… buckets=… last_rank_exposed_ms=…
#     steps_samples_per_s=… ddp_steps_samples_per_s=… steps_ratio=…
# (the steps alone: ringtune's commits' span less the checkpoints inside
# it, DDP's steps without its saves). ringtune writes its checkpoints with
# checkpoint.background (the default; --paused-checkpoints turns it off):
# the mid-run one while the next step runs, the final one beside the
# export, so the window ends with the later of the two; ckpt_held_s is
# the time commits waited for a checkpoint, which is all a background
# checkpoint takes from the steps alone. checkpoint_s is still each
# transfer's own length.
#     [noover_allreduce_ms=… exposed_ratio=… noover_last_rank_ms=… last_rank_ratio=…]
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$(pwd)
steps=4
warmup=2
ckpt=0
ckpt_bg=true
export_timeout=300
overlap_modes=both
nodes=2
shard=none
while [ $# -gt 0 ]; do
  case "$1" in
    --nodes) nodes=$2; shift ;;
    --shard) shard=$2; shift ;;
    --steps) steps=$2; shift ;;
    --warmup) warmup=$2; shift ;;
    --checkpoint) ckpt=1 ;;
    --paused-checkpoints) ckpt_bg=false ;;
    --export-timeout) export_timeout=$2; shift ;;
    --overlap) overlap_modes=$2; shift ;;
    *) echo "bench big: unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
case "$overlap_modes" in
  both) overlap_modes="off on" ;;
  on|off) ;;
  *) echo "bench big: --overlap $overlap_modes: want both, on or off" >&2; exit 2 ;;
esac
case "$shard" in none|zero1) ;; *) echo "bench big: --shard $shard: want none or zero1" >&2; exit 2 ;; esac
[ "$nodes" -ge 1 ] 2>/dev/null || { echo "bench big: --nodes $nodes: want a positive count" >&2; exit 2; }
gbatch=$((4 * nodes))
/usr/bin/python3 -c 'import torch' 2>/dev/null || { echo "bench big: /usr/bin/python3 lacks torch: scripts/setup.sh installs python3-torch" >&2; exit 2; }
tok=$root/.data/tokenizers/gpt2
if [ ! -f "$tok/vocab.json" ] || [ ! -f "$tok/merges.txt" ]; then
  scripts/fetch-data.sh >&2
fi

. scripts/env.sh
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1
go build -o .build/coordinator ./cmd/coordinator
go build -o .build/node ./cmd/node
go build -o .build/torchbench ./internal/torchbench

work=$(mktemp -d /tmp/ringtune-bench-big.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  # BENCH_LOGS=DIR keeps the coordinator's and nodes' logs.
  if [ -n "${BENCH_LOGS:-}" ]; then mkdir -p "$BENCH_LOGS" && for d in "$work"/run-*; do [ -d "$d" ] && mkdir -p "$BENCH_LOGS/${d##*/}" && cp "$d"/*.log "$BENCH_LOGS/${d##*/}"/; done 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT
mkdir -p "$work/model"
cp "$tok/vocab.json" "$tok/merges.txt" "$work/model/"
/usr/bin/python3 - "$work" <<'PY'
import json, random, sys
d = sys.argv[1]
json.dump({"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "vocab_size": 50257, "n_positions": 1024,
           "n_ctx": 1024, "n_embd": 768, "n_layer": 12, "n_head": 12, "n_inner": None, "activation_function": "gelu_new",
           "resid_pdrop": 0.1, "embd_pdrop": 0.1, "attn_pdrop": 0.1, "layer_norm_epsilon": 1e-5,
           "initializer_range": 0.02, "bos_token_id": 50256, "eos_token_id": 50256}, open(d + "/model/config.json", "w"))
vocab = json.load(open(d + "/model/vocab.json"))
# "Ġword" is " word" in byte-level BPE: one token each.
words = sorted(w[1:] for w in vocab if w.startswith("\u0120") and w[1:].isalpha() and w[1:].islower() and len(w) > 3)
rng = random.Random(1234)
with open(d + "/train.jsonl", "w") as f:
    for _ in range(512):
        f.write(json.dumps({"text": " ".join(rng.choice(words) for _ in range(150))}) + "\n")
PY
.build/coordinator keygen "$work/cluster.key"

# The peer's optimizer step on the same number of parameters, first, on a
# quiet machine.
numel=124439808
tadam=$(/usr/bin/python3 scripts/bench/adamw_torch.py "$numel" 3 1 1.0 | /usr/bin/python3 -c 'import json,sys; print("%.1f" % json.load(sys.stdin)["median_ms"])')
echo "bench big: torch.optim.AdamW at $numel parameters: ${tadam} ms" >&2

# run_ringtune MODE: one ringtune run with allreduce.overlap MODE (on|off)
# in $work/run-MODE; leaves "peak_kB train_peak_kB status" in its result file.
run_ringtune() {
local overlap=false
[ "$1" = on ] && overlap=true
every=0
[ "$ckpt" = 1 ] && every=$((warmup + steps / 2))
dir=$work/run-$1
mkdir -p "$dir"
cat > "$dir/cluster.yaml" <<YAML
cluster:
  bind: 127.0.0.1:0
  grpc: 127.0.0.1:0
  key_file: $work/cluster.key
  min_nodes: $nodes
  max_nodes: $nodes
  settle: 500ms
  label: bench-big
model:
  path: $work/model
  task: causal_lm
  init: random
data:
  train_file: $work/train.jsonl
  max_length: 128
  tokenizer: $work/model
train:
  epochs: 1
  max_steps: $((steps + warmup))
  global_batch: $gbatch
  micro_batch: 4
  optimizer: adamw
  lr: 1.0e-4
  weight_decay: 0.01
  schedule: constant
  max_grad_norm: 1.0
  shard_optimizer: $shard
  seed: 1234
  threads: 1
  digest_every: 1000
allreduce:
  timeout: 600s
  overlap: $overlap
checkpoint:
  dir: ckpt
  every: $every
  background: $ckpt_bg
output:
  dir: out
YAML
(cd "$dir" && exec "$root/.build/coordinator" --config cluster.yaml --log-level debug > coord.log 2>&1) &
cpid=$!
pids+=("$cpid")
gossip=""
for _ in $(seq 300); do
  gossip=$(sed -n 's/.*gossip=\([^ ]*\).*/\1/p' "$dir/coord.log" | head -1)
  [ -n "$gossip" ] && break
  sleep 0.2
done
[ -n "$gossip" ] || { echo "bench big: coordinator did not start:" >&2; cat "$dir/coord.log" >&2; exit 1; }
npids=()
for k in $(seq "$nodes"); do
  .build/node join --coordinator "$gossip" --key-file "$work/cluster.key" --label bench-big --log-level debug \
    --bind 127.0.0.1:0 --name "big-$k" --cache-dir "$dir/cache" > "$dir/node$k.log" 2>&1 &
  npids+=("$!")
  pids+=("$!")
done
# Peak RSS: VmHWM is the high-water mark, so the last reading before a
# node exits is its peak.
# train_hwm is the peak at the last commit: training alone, before the
# final checkpoint and the export.
hwm=0
train_hwm=0
seen=0
status=running
deadline=""
while kill -0 "$cpid" 2>/dev/null; do
  rss=""
  for p in "${npids[@]}"; do
    v=$(awk '/^VmHWM:/ {print $2}' "/proc/$p/status" 2>/dev/null || true)
    [ -n "$v" ] && [ "$v" -gt "$hwm" ] && hwm=$v
    rss="$rss $(awk '/^VmRSS:/ {print $2}' "/proc/$p/status" 2>/dev/null || true)"
  done
  c=$(grep -c 'msg="step committed"' "$dir/coord.log" || true)
  if [ "$c" != "$seen" ]; then
    seen=$c
    echo "bench big: $c steps committed; nodes' RSS kB:$rss; peak so far ${hwm} kB" >&2
  fi
  if [ -z "$deadline" ] && [ "$c" -ge $((steps + warmup)) ]; then
    train_hwm=$hwm
    deadline=$(( $(date +%s) + export_timeout ))
  fi
  if [ -n "$deadline" ] && [ "$(date +%s)" -gt "$deadline" ]; then
    status=timeout
    echo "bench big: no export within ${export_timeout}s of the last step; stopping the run" >&2
    kill "$cpid" "${npids[@]}" 2>/dev/null || true
    break
  fi
  sleep 0.5
done
wait "$cpid" 2>/dev/null && status=ok || { [ $status = timeout ] || status=failed; }
for p in "${npids[@]}"; do kill "$p" 2>/dev/null || true; done
wait "${npids[@]}" 2>/dev/null || true
if [ "$(grep -c 'msg="step committed"' "$dir/coord.log" || true)" -lt $((steps + warmup)) ]; then
  echo "bench big: the run did not train $((steps + warmup)) steps:" >&2
  tail -30 "$dir/coord.log" >&2
  tail -5 "$dir"/node*.log >&2
  exit 1
fi
[ $status = ok ] || { echo "bench big: run ended: $status; coordinator log tail:" >&2; tail -8 "$dir/coord.log" >&2; }
echo "$hwm $train_hwm $status" > "$dir/result"

}
for mode in $overlap_modes; do
  run_ringtune "$mode"
done

ddp_ckpt=()
[ "$ckpt" = 1 ] && ddp_ckpt=(--checkpoint)
/usr/bin/python3 scripts/bench/ddp_big.py "$work/model" "$work/ddp.json" --world "$nodes" --batch 4 --seq 128 \
  --steps "$steps" --warmup "$warmup" --max-norm 1.0 "${ddp_ckpt[@]}" > "$work/ddp.log" 2>&1 || { cat "$work/ddp.log" >&2; exit 1; }

noover=""
noover_tail=""
for mode in $overlap_modes; do
dir=$work/run-$mode
read -r hwm train_hwm status < "$dir/result"
/usr/bin/python3 - "$dir" "$warmup" "$hwm" "$tadam" "$work/ddp.json" "$ckpt" "$status" "$train_hwm" "$mode" "$noover" "$nodes" "$shard" "$noover_tail" "$ckpt_bg" > "$dir/line" <<'PY'
import datetime, json, re, statistics, sys
d, warm, hwm_kb, tadam, ddp_path, ckpt, status = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), sys.argv[5], sys.argv[6] == "1", sys.argv[7]
train_kb = int(sys.argv[8])
mode, noover = sys.argv[9], sys.argv[10]
nodes, shard = int(sys.argv[11]), sys.argv[12]
noover_tail = sys.argv[13]
ckpt_bg = sys.argv[14]

def ts(line):
    m = re.search(r'time=(\S+)', line)
    return datetime.datetime.fromisoformat(m.group(1).replace("Z", "+00:00")).timestamp()

commits, ckpts, written, params, waits = {}, [], None, None, {}
for line in open(d + "/coord.log"):
    m = re.search(r'msg="step committed" step=(\d+)', line)
    if m:
        commits[int(m.group(1))] = ts(line)
    # checkpoint.background: a step whose commit waited for the checkpoint.
    m = re.search(r'note="commit of step (\d+) waits for the checkpoint', line)
    if m:
        waits[int(m.group(1))] = ts(line)
    if 'msg="checkpoint written"' in line:
        s = re.search(r'seconds=([0-9.]+)', line)
        ckpts.append((ts(line), float(s.group(1)) if s else None))
    if 'msg="model written"' in line:
        written = ts(line)
    m = re.search(r'params=(\d+)', line)
    if m and params is None:
        params = int(m.group(1))
apply, optb, phases = [], 0, {"exposed_comm_ms": [], "overlapped_comm_ms": [], "comm_ms": [], "allreduce_ms": [], "buckets": []}
tail = {}  # timed step -> the smallest exposed_comm_ms over the nodes
for k in range(1, nodes + 1):
    for line in open("%s/node%d.log" % (d, k)):
        m = re.search(r'msg="step timing".* step=(\d+) .*apply_ms=([0-9.]+)', line)
        if m and int(m.group(1)) >= warm:
            apply.append(float(m.group(2)))
            for key in phases:
                v = re.search(r' ' + key + r'=([0-9.]+)', line)
                if v:
                    phases[key].append(float(v.group(1)))
            v = re.search(r' exposed_comm_ms=([0-9.]+)', line)
            if v:
                st = int(m.group(1))
                tail[st] = min(tail.get(st, float("inf")), float(v.group(1)))
        m = re.search(r'msg="step timing".* optimizer_bytes=(\d+)', line)
        if m:
            optb = max(optb, int(m.group(1)))
med = {k: (statistics.median(v) if v else float("nan")) for k, v in phases.items()}
tail_med = statistics.median(tail.values()) if tail else float("nan")
last, first = max(commits), warm - 1
samples = 4 * nodes * (last - first)
if written is not None:
    # In the background the final checkpoint is written beside the export:
    # the run ends with the later of the two.
    window, end = "steps+checkpoints+export", max([written] + [t for t, _ in ckpts if t > commits[last]])
else:
    window, end = "steps", commits[last]
sps = samples / (end - commits[first])
# The steps alone: the commits' span less the checkpoints inside it, against
# DDP's steps without its saves (both sides' saves left out). A checkpoint
# in the background costs the steps only the time a commit waited for it.
held = sum(commits[st] - t for st, t in waits.items() if st in commits and commits[first] < commits[st] <= commits[last])
if waits or ckpt_bg == "true":
    inside = held
else:
    inside = sum(s or 0 for t, s in ckpts if commits[first] < t <= commits[last])
steps_sps = samples / max(commits[last] - commits[first] - inside, 1e-9)
ddp = json.load(open(ddp_path))
# A checkpoint's time: its own "seconds" when the coordinator logs it,
# else from the commit before it.
cks = []
for t, s in ckpts:
    before = max([c for c in commits.values() if c <= t], default=None)
    cks.append(s if s is not None else (t - before if before else float("nan")))
ck_s = "%.2f" % statistics.median(cks) if cks else "none"
if written is not None:
    start = max([commits[last]] + [t for t, _ in ckpts if commits[last] < t <= written and ckpt_bg != "true"])
    ex_s = "%.2f" % (written - start)
else:
    ex_s = "failed(" + status + ")"
rss = hwm_kb / 1024
am = statistics.median(apply) if apply else float("nan")
extra = ""
if mode == "on" and noover:
    extra = " noover_allreduce_ms=%.0f exposed_ratio=%.3f" % (float(noover), med["exposed_comm_ms"] / float(noover))
    if noover_tail:
        extra += " noover_last_rank_ms=%.0f last_rank_ratio=%.3f" % (float(noover_tail), tail_med / float(noover_tail))
print("bench: big n=%d shard=%s overlap=%s params=%s optimizer_mb=%.0f samples_per_s=%.3f ddp_samples_per_s=%.3f ratio=%.3f peak_rss_mb=%.0f ddp_peak_rss_mb=%.0f "
      "rss_ratio=%.3f train_peak_rss_mb=%.0f apply_ms=%.0f torch_adamw_ms=%.0f apply_ratio=%.3f checkpoint_s=%s export_s=%s checkpoints=%s ckpt_background=%s ckpt_held_s=%.2f window=%s exposed_comm_ms=%.0f overlapped_comm_ms=%.0f comm_ms=%.0f buckets=%.0f last_rank_exposed_ms=%.0f steps_samples_per_s=%.3f ddp_steps_samples_per_s=%.3f steps_ratio=%.3f%s" % (
          nodes, shard, mode, params or ddp["params"], optb / 2**20, sps, ddp["samples_per_s"], sps / ddp["samples_per_s"], rss, ddp["peak_rss_mb"],
          rss / ddp["peak_rss_mb"], train_kb / 1024, am, tadam, am / tadam, ck_s, ex_s, "on" if ckpt else "off",
          "on" if ckpt_bg == "true" else "off", held, window, med["exposed_comm_ms"], med["overlapped_comm_ms"], med["comm_ms"], med["buckets"], tail_med,
          steps_sps, ddp["steps_samples_per_s"], steps_sps / ddp["steps_samples_per_s"], extra))
PY
line=$(cat "$dir/line")
echo "$line"
if [ "$mode" = off ]; then
  noover=$(echo "$line" | sed -n 's/.* exposed_comm_ms=\([0-9.]*\).*/\1/p')
  noover_tail=$(echo "$line" | sed -n 's/.* last_rank_exposed_ms=\([0-9.]*\).*/\1/p')
fi
done
