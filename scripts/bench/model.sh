#!/usr/bin/env bash
# Step time (forward + backward + AdamW) of BERT, GPT-2 and Llama at a tiny
# size in ringtune (model/hf) against the same model in PyTorch, one thread
# each, run interleaved A/B/A/B and reported as medians.
#   scripts/bench.sh model [--steps N] [--rounds R] [--arch "bert gpt2 llama"]
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
steps=2000 rounds=3 archs="bert gpt2 llama"
while [ $# -gt 0 ]; do
  case "$1" in
    --steps) steps=$2; shift 2 ;;
    --rounds) rounds=$2; shift 2 ;;
    --arch) archs=$2; shift 2 ;;
    *) echo "model.sh: unknown option $1 (--steps N, --rounds R, --arch LIST)" >&2; exit 2 ;;
  esac
done
export OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1
# shellcheck source=/dev/null
source "$root/scripts/env.sh"
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
(cd "$root" && go build -o "$tmp/hfbench" ./model/hf/cmd/hfbench)
median() { sort -g | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
field() { sed -n "s/.*$1=\([-0-9.e]*\).*/\1/p"; }
for arch in $archs; do
  task=causal_lm; [ "$arch" = bert ] && task=classification
  /usr/bin/python3 "$root/model/hf/testdata/hf_ref.py" make "$arch" "$task" "$tmp/$arch" >/dev/null
  : > "$tmp/go" ; : > "$tmp/py"; : > "$tmp/rss"
  for _ in $(seq "$rounds"); do
    out=$("$tmp/hfbench" --dir "$tmp/$arch" --steps "$steps")
    echo "$out" | field ms_per_step >> "$tmp/go"
    echo "$out" | field rss_growth_pct >> "$tmp/rss"
    /usr/bin/python3 "$root/scripts/bench/model_torch.py" "$tmp/$arch" "$steps" | field ms_per_step >> "$tmp/py"
  done
  g=$(median < "$tmp/go"); p=$(median < "$tmp/py"); r=$(median < "$tmp/rss")
  echo "bench: model arch=$arch ms_per_step=$g torch_ms_per_step=$p ratio=$(awk -v a="$g" -v b="$p" 'BEGIN{printf "%.3f", a/b}') rss_growth_pct=$r"
done
