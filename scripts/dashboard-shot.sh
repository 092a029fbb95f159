#!/usr/bin/env bash
# scripts/dashboard-shot.sh [OUT.png]
#
# Takes the README's screenshot of the live dashboard (default
# docs/dashboard.png) during a real demo run: scripts/local-cluster.sh with
# 2 nodes (evaluating every 20 steps), a third node that joins mid-run and
# is then killed, so the page shows three generations, a lost node and the
# evaluation history. Headless Chromium (Debian's chromium, which
# scripts/setup.sh installs) renders the page at 1280x900.
#
# Logs go to runs/dashboard-shot. Every process it starts is stopped at the
# end (by its process id).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
out=${1:-docs/dashboard.png}
run=$root/runs/dashboard-shot
say() { echo "dashboard-shot: $*" >&2; }
die() { say "error: $*"; exit 1; }

chromium=${RINGTUNE_CHROMIUM:-$(command -v chromium || true)}
[ -n "$chromium" ] || die "no chromium on PATH: run scripts/setup.sh (it installs Debian's chromium)"

rm -rf "$run" && mkdir -p "$run"
pids=()
cleanup() {
  local p
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT

RINGTUNE_RUN_DIR=$run scripts/local-cluster.sh 2 --no-setup -- --cluster.max_nodes 3 --train.eval_every 20 >"$run/local-cluster.out" 2>&1 &
pids+=("$!")

# status KEY: a field of the dashboard's /status (python3 reads the JSON).
status() {
  curl -fsS "$url/status" | python3 -c "import json,sys; s=json.load(sys.stdin); print(eval(sys.argv[1], {}, s))" "$1"
}
# wait_for EXPR WHAT: poll until the Python expression over /status holds.
wait_for() {
  local i
  for i in $(seq 1 900); do
    if [ "$(status "$1" 2>/dev/null || echo False)" = True ]; then return 0; fi
    kill -0 "${pids[0]}" 2>/dev/null || die "the local cluster ended before $2; see $run/*.log"
    sleep 1
  done
  die "no $2 after 15 minutes; see $run/*.log"
}

url=""
for i in $(seq 1 300); do
  url=$(sed -n 's/.*msg=dashboard url=\(http[^ ]*\).*/\1/p' "$run/coordinator.log" 2>/dev/null | head -1 || true)
  [ -n "$url" ] && break
  kill -0 "${pids[0]}" 2>/dev/null || die "the local cluster ended early; see $run/local-cluster.out"
  sleep 1
done
[ -n "$url" ] || die "no dashboard URL in $run/coordinator.log"
url=${url%/}
say "dashboard at $url"

wait_for "applied >= 30" "30 committed steps"
config=$run/cluster.yaml
gossip=$(sed -n 's/^ *bind: *\([^ #]*\).*/\1/p' "$config" | head -1)
.build/node join --coordinator "$gossip" --key-file "$run/cluster.key" --label ringtune-local \
  --bind 127.0.0.1:0 --name local-3 --device cpu >"$run/node-3.log" 2>&1 &
late=$!
pids+=("$late")
say "started a third node (pid $late)"
wait_for "world_size == 3 and applied >= generations[-1]['step'] + 30" "world of 3"
kill -9 "$late"
say "killed the third node"
wait_for "generation >= 3 and world_size == 2 and applied >= generations[-1]['step'] + 40 and eval_step > generations[-1]['step']" "generation after the kill"

"$chromium" --headless --no-sandbox --disable-gpu --hide-scrollbars --user-data-dir="$run/chromium" \
  --window-size=1280,900 --virtual-time-budget=3000 --screenshot="$out" "$url/" 2>"$run/chromium.log" \
  || die "chromium failed; see $run/chromium.log"
say "wrote $out ($(wc -c <"$out") bytes)"
