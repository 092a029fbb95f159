#!/usr/bin/env bash
# Ring all-reduce (allreduce/, via cmd/ringbench: one OS process per rank on
# 127.0.0.1) against gloo (../shared/bench/gloo_allreduce.py) and the raw
# loopback TCP ring ceiling (../shared/bench/tcp_loopback.go).
#
# usage: scripts/bench.sh allreduce [--quick] [--repeats R] [--sizes-mib 1,16,64,256] [--n 2,3,4]
#                                   [--transport tcp,shm] (any of default, tcp, grpc, shm)
#
# ringbench (once per transport) and gloo are interleaved world size by world
# size within each repeat (A/B/C/A/B/C) so that the machine's speed drift and
# foreign load hit all alike. Prints one line per (transport, n, size):
#   bench: allreduce transport=T n=N bytes=B busbw_gbps=X gloo_busbw_gbps=Y ratio=X/Y
#          vs_tcp_transport=X/X_tcp tcp_gbps=Z correct=... repeats=R
# transport names the data path measured ("shm-fallback" if shm was asked
# for but a link carried TCP payloads). busbw = bytes/time * 2(n-1)/n
# (nccl-tests), GB = 1e9 B, medians over repeats.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
repeats=3 sizes=1,16,64,256 ns=2,3,4 scale=1 tcp_seconds=2 transports=tcp,shm
while [ $# -gt 0 ]; do
  case $1 in
    --quick) repeats=1 sizes=1,16 ns=2,4 scale=0.5 tcp_seconds=1 ;;
    --repeats) repeats=$2; shift ;;
    --sizes-mib) sizes=$2; shift ;;
    --n) ns=$2; shift ;;
    --transport) transports=$2; shift ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    *) echo "allreduce.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
shared=${RINGTUNE_SHARED_BENCH:-$root/../shared/bench} # override from a git worktree
gloo=$shared/gloo_allreduce.py
tcp=$shared/tcp_loopback.go
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

(cd "$root" && go build -o "$tmp/ringbench" ./cmd/ringbench)
have_gloo=1
if [ ! -f "$gloo" ]; then
  echo "allreduce.sh: $gloo not found; gloo columns will be NA" >&2; have_gloo=0
elif ! /usr/bin/python3 -c 'import torch.distributed' 2>/dev/null; then
  echo "allreduce.sh: /usr/bin/python3 has no torch (apt-get install python3-torch); gloo columns will be NA" >&2; have_gloo=0
fi

# Interleaved per world size, not per whole pass: on a shared machine the load
# changes within minutes, and a pass over every n takes several.
for rep in $(seq 1 "$repeats"); do
  for n in ${ns//,/ }; do
    for tr in ${transports//,/ }; do
      echo "# repeat $rep/$repeats n=$n: ringbench $tr"
      timeout 900 "$tmp/ringbench" -n "$n" -sizes-mib "$sizes" -iters-scale "$scale" -transport "$tr" -json "$tmp/ring_${tr}_${rep}_$n.json"
    done
    if [ $have_gloo = 1 ]; then
      echo "# repeat $rep/$repeats n=$n: gloo"
      timeout 900 /usr/bin/python3 "$gloo" --world-sizes "$n" --sizes-mib "$sizes" --repeats 1 \
        --iters-scale "$scale" --out "$tmp/gloo_${rep}_$n.json" | grep -v '^$' | tail -n +2 || echo "allreduce.sh: gloo run $rep n=$n failed" >&2
    fi
  done
done

tcp_json=""
if [ -f "$tcp" ]; then
  echo "# loopback TCP ring ceiling"
  (cd "$tmp" && cp "$tcp" . && go build -o tcp_loopback tcp_loopback.go) &&
    timeout 300 "$tmp/tcp_loopback" -streams 1 -bufs 1048576 -ring "$ns" -seconds "$tcp_seconds" \
      -repeats "$repeats" -memcpy-mib 0 -json "$tmp/tcp.json" >/dev/null && tcp_json=$tmp/tcp.json
fi

"$tmp/ringbench" -report -ring-json "$tmp/ring_*.json" -gloo-json "$tmp/gloo_*.json" -tcp-json "$tcp_json"
