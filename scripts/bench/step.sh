#!/usr/bin/env bash
# scripts/bench.sh step [STEPS] [ROUNDS]: training-step time (forward,
# backward, clip, AdamW) of the tiny model through ringtune's torch layer
# against the same model in PyTorch (model/tiny/tiny_torch.py), both with one
# intra-op thread and the same OpenBLAS. The two alternate ROUNDS times
# (A/B/A/B, default 5) and the line gives medians. Goal: ratio <= 1.05.
set -euo pipefail
cd "$(dirname "$0")/../.."
steps=${1:-200}
rounds=${2:-5}
. scripts/env.sh
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1
go build -o .build/torchbench ./internal/torchbench
for size in small medium; do
  case $size in
    small)  cfg='{"vocab":1000,"hidden":64,"layers":2,"heads":4,"ffn":256,"max_len":64,"labels":2,"dropout":0.1,"batch":8,"seq":32}' ;;
    medium) cfg='{"vocab":8192,"hidden":256,"layers":4,"heads":4,"ffn":1024,"max_len":128,"labels":2,"dropout":0.1,"batch":8,"seq":128}' ;;
  esac
  n=$steps; [ $size = medium ] && n=$(( steps / 10 > 5 ? steps / 10 : 5 ))
  go_ms=(); torch_ms=(); rss=()
  for r in $(seq "$rounds"); do
    o=$(.build/torchbench -mode step -cfg "$cfg" -steps "$n" -warmup 5)
    p=$(/usr/bin/python3 model/tiny/tiny_torch.py bench "$cfg" "$n" 5)
    go_ms+=("$(echo "$o" | python3 -c 'import json,sys; print(json.load(sys.stdin)["MedianMS"])')")
    rss+=("$(echo "$o" | python3 -c 'import json,sys; print(json.load(sys.stdin)["RSSGrowthPct"])')")
    torch_ms+=("$(echo "$p" | python3 -c 'import json,sys; print(json.load(sys.stdin)["median_ms"])')")
  done
  python3 - "$size" "$n" "${go_ms[*]}" "${torch_ms[*]}" "${rss[*]}" <<'PY'
import statistics, sys
size, n = sys.argv[1], int(sys.argv[2])
g = [float(x) for x in sys.argv[3].split()]
t = [float(x) for x in sys.argv[4].split()]
r = [float(x) for x in sys.argv[5].split()]
mg, mt = statistics.median(g), statistics.median(t)
print("bench: step model=%s steps=%d rounds=%d ms_per_step=%.3f torch_ms_per_step=%.3f ratio=%.3f go_min_max=%.3f-%.3f torch_min_max=%.3f-%.3f rss_growth_pct=%.2f" % (
    size, n, len(g), mg, mt, mg / mt, min(g), max(g), min(t), max(t), statistics.median(r)))
PY
done
