#!/usr/bin/env bash
# scripts/bench.sh adamw [NUMEL] [ROUNDS]: a node's optimizer step (scale by
# 1/8, clip to norm 1, AdamW, zero-grad) over flat blocks of NUMEL
# parameters (default GPT-2 124M's) through torchbench, against
# torch.optim.AdamW doing the same on one flat tensor
# (scripts/bench/adamw_torch.py), both with one thread, alternating ROUNDS
# times (default 3); plus, once, the same step as separate whole-block
# libtorch ops (how a node ran it with clipping before the fused kernel).
#   bench: adamw numel=N ms=… torch_ms=… ratio=… separate_ms=…
set -euo pipefail
cd "$(dirname "$0")/../.."
numel=${1:-124439808}
rounds=${2:-3}
. scripts/env.sh
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1
go build -o .build/torchbench ./internal/torchbench
ours=(); theirs=()
for _ in $(seq "$rounds"); do
  ours+=("$(.build/torchbench -mode adamw -numel "$numel" -steps 5 -warmup 1 | /usr/bin/python3 -c 'import json,sys; print(json.load(sys.stdin)["MedianMS"])')")
  theirs+=("$(/usr/bin/python3 scripts/bench/adamw_torch.py "$numel" 5 1 1.0 | /usr/bin/python3 -c 'import json,sys; print(json.load(sys.stdin)["median_ms"])')")
done
sep=$(.build/torchbench -mode adamw -numel "$numel" -steps 3 -warmup 1 -separate | /usr/bin/python3 -c 'import json,sys; print(json.load(sys.stdin)["MedianMS"])')
/usr/bin/python3 - "$numel" "${ours[*]}" "${theirs[*]}" "$sep" <<'PY'
import statistics, sys
a = [float(x) for x in sys.argv[2].split()]
b = [float(x) for x in sys.argv[3].split()]
x, y = statistics.median(a), statistics.median(b)
print("bench: adamw numel=%s ms=%.0f torch_ms=%.0f ratio=%.3f separate_ms=%.0f rounds=%d ms_min_max=%.0f-%.0f torch_min_max=%.0f-%.0f" % (
    sys.argv[1], x, y, x / y, float(sys.argv[4]), len(a), min(a), max(a), min(b), max(b)))
PY
