#!/usr/bin/env bash
# Attention-mask construction per batch for GPT-2 124M's structure, batch 4,
# seq 128/512/1024: built on the device from per-token vectors (ringtune now)
# against the B×T×T host mask it replaced, in the same run, one thread.
#   scripts/bench.sh mask [--benchtime 200x]
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
bt=200x
[ "${1:-}" = "--benchtime" ] && bt=$2
export OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1
# shellcheck source=/dev/null
source "$root/scripts/env.sh"
out=$(cd "$root" && go test -count=1 -run '^$' -bench 'BenchmarkAttnMask' -benchtime "$bt" -benchmem ./model/hf)
echo "$out" | grep '^Benchmark' >&2
for seq in 128 512 1024; do
  d=$(echo "$out" | awk -v s="device/seq=$seq-" 'index($1,s) {print $3, $5}')
  h=$(echo "$out" | awk -v s="host/seq=$seq-" 'index($1,s) {print $3, $5}')
  set -- $d $h
  echo "bench: mask batch=4 seq=$seq device_us=$(awk -v a="$1" 'BEGIN{printf "%.1f", a/1000}') host_us=$(awk -v a="$3" 'BEGIN{printf "%.1f", a/1000}') ratio=$(awk -v a="$1" -v b="$3" 'BEGIN{printf "%.3f", a/b}') device_go_bytes=$2 host_go_bytes=$4"
done
