#!/usr/bin/env bash
# scripts/soak.sh [--kills K] [--every SECONDS] [--nodes N] [--epochs E] [--timeout SECONDS]
#
# A soak of the elastic protocol (issue 11), bounded in time and not run in
# CI: one run of the demo (the sentiment fine-tune of scripts/demo.sh, with
# more epochs) on N real node processes (default 3), during which K random
# `kill -9`s (default 20) land about every SECONDS (default 6, jittered):
# each kills a random node, which is restarted under the same name a moment
# later, and once, half-way, the coordinator, which is restarted with
# --resume on the same addresses while the nodes keep running.
#
# The last line is the summary, e.g.
#   soak: kills=20 coordinator_restarts=1 lost_samples=0 doubled_samples=0 hangs=0 replicas_identical=yes done=yes seconds=212
# lost/doubled samples come from the coordinators' per-epoch ledgers (the
# newest report of each epoch), hangs counts processes that did not end
# within --timeout (default 1200 s), replicas_identical is the digest check
# after the last step. Exit status 0 only when all of it holds.
#
# Logs: runs/soak/coordinator.log (both instances) and runs/soak/node-K.log.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

kills=20 every=6 n=3 epochs=8 timeout=1200
while [ $# -gt 0 ]; do
  case "$1" in
    --kills) kills=$2; shift ;;
    --every) every=$2; shift ;;
    --nodes) n=$2; shift ;;
    --epochs) epochs=$2; shift ;;
    --timeout) timeout=$2; shift ;;
    -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
    *) echo "soak: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
  shift
done
[ "$n" -ge 2 ] || { echo "soak: need at least 2 nodes (one must survive each kill)" >&2; exit 2; }

scripts/setup.sh >/dev/null
# shellcheck source=scripts/env.sh
. scripts/env.sh
go build -o .build/coordinator ./cmd/coordinator
go build -o .build/node ./cmd/node

run=$root/runs/soak
rm -rf "$run"
mkdir -p "$run"
cd "$run"
mdir=$root/.data/models/bert-mini
[ -f "$mdir/config.json" ] || { echo "soak: $mdir/config.json missing: run scripts/fetch-data.sh" >&2; exit 2; }
read -r gport cport < <(python3 -c '
import socket
s=[socket.socket() for _ in range(2)]
[x.bind(("127.0.0.1",0)) for x in s]
print(*[x.getsockname()[1] for x in s])')
"$root/.build/coordinator" keygen cluster.key >/dev/null
cat > cluster.yaml <<YAML
# Written by scripts/soak.sh.
cluster:
  bind: 127.0.0.1:$gport
  grpc: 127.0.0.1:$cport
  key_file: cluster.key
  min_nodes: $n
  max_nodes: $n
  settle: 1s
  label: ringtune-soak
model:
  path: $mdir
  task: classification
  labels: [negative, positive]
  init: random
data:
  train_file: $root/.data/sentiment/train.jsonl
  eval_file: $root/.data/sentiment/eval.jsonl
  max_length: 64
  tokenizer: $mdir/tokenizer.json
train:
  epochs: $epochs
  global_batch: 32
  micro_batch: 16
  optimizer: adamw
  lr: 1.0e-3
  schedule: linear
  warmup_ratio: 0.1
  seed: 42
  threads: 1
  digest_every: 1
checkpoint:
  dir: ckpt
  every: 20
output:
  dir: model
YAML

pids=()
cleanup() { kill -9 "${pids[@]}" 2>/dev/null || true; }
trap cleanup EXIT INT TERM

coord_pid=""
start_coord() {
  "$root/.build/coordinator" --config cluster.yaml "$@" >>coordinator.log 2>&1 &
  coord_pid=$!
  pids+=("$coord_pid")
}
declare -A node_pid
start_node() {
  "$root/.build/node" join --coordinator "127.0.0.1:$gport" --key-file cluster.key --bind 127.0.0.1:0 \
    --name "soak-$1" --label ringtune-soak --cache-dir "$run/cache-$1" >>"node-$1.log" 2>&1 &
  node_pid[$1]=$!
  pids+=("${node_pid[$1]}")
}

t0=$(date +%s)
start_coord
for ((i = 0; i < n; i++)); do start_node "$i"; done
# Kills start once training does.
until grep -q 'replicas identical' coordinator.log 2>/dev/null; do
  kill -0 "$coord_pid" 2>/dev/null || break
  sleep 1
done

done_kills=0 restarts=0
while [ "$done_kills" -lt "$kills" ] && kill -0 "$coord_pid" 2>/dev/null; do
  sleep "$(python3 -c "import random; print(round($every*random.uniform(0.5,1.5),1))")"
  kill -0 "$coord_pid" 2>/dev/null || break
  if [ "$restarts" = 0 ] && [ "$done_kills" -ge $((kills / 2)) ] && ls ckpt/*.ckpt >/dev/null 2>&1; then
    echo "soak: kill -9 the coordinator (kill $((done_kills + 1)))"
    kill -9 "$coord_pid"
    wait "$coord_pid" 2>/dev/null || true
    sleep 2
    start_coord --resume
    restarts=1
  else
    v=$((RANDOM % n))
    echo "soak: kill -9 node soak-$v (kill $((done_kills + 1)))"
    kill -9 "${node_pid[$v]}" 2>/dev/null || true
    wait "${node_pid[$v]}" 2>/dev/null || true
    sleep 1
    start_node "$v"
  fi
  done_kills=$((done_kills + 1))
done

hangs=0
deadline=$((t0 + timeout))
while kill -0 "$coord_pid" 2>/dev/null; do
  if [ "$(date +%s)" -ge "$deadline" ]; then hangs=$((hangs + 1)); break; fi
  sleep 2
done
coord_rc=0
wait "$coord_pid" 2>/dev/null || coord_rc=$?
for ((i = 0; i < n; i++)); do
  p=${node_pid[$i]}
  for _ in $(seq 60); do kill -0 "$p" 2>/dev/null || break; sleep 1; done
  if kill -0 "$p" 2>/dev/null; then hangs=$((hangs + 1)); fi
done

# The newest ledger report of each epoch, from both coordinator instances.
read -r lost doubled epochs_seen < <(python3 - "$epochs" <<'PY'
import re, sys
last = {}
for line in open("coordinator.log", errors="replace"):
    m = re.search(r'epoch complete" epoch=(\d+) committed=(\d+) missing=(\d+) samples=(\d+)', line)
    if m:
        last[int(m[1])] = tuple(int(x) for x in m.groups()[1:])
lost = sum(mi for c, mi, s in last.values()) + sum(1 for e in range(int(sys.argv[1])) if e not in last)
doubled = sum(max(0, c - s) for c, mi, s in last.values())
print(lost, doubled, len(last))
PY
)
total=$(sed -n 's/.*coordinator up.* steps=\([0-9]*\).*/\1/p' coordinator.log | tail -1)
identical=no
grep -q "replicas identical\" applied=$total " coordinator.log && identical=yes
finished=no
[ "$coord_rc" = 0 ] && grep -q 'msg=done' coordinator.log && finished=yes
echo "soak: kills=$done_kills coordinator_restarts=$restarts lost_samples=$lost doubled_samples=$doubled epochs_reported=$epochs_seen hangs=$hangs replicas_identical=$identical done=$finished seconds=$(($(date +%s) - t0))"
[ "$lost" = 0 ] && [ "$doubled" = 0 ] && [ "$hangs" = 0 ] && [ "$identical" = yes ] && [ "$finished" = yes ]
