#!/usr/bin/env bash
# scripts/bench.sh leak [OPS] [STEPS]: memory growth of the torch layer over
# OPS op calls (default 100,000) and STEPS training steps of the tiny model
# (default 2,000), measured after a 10% warm-up, against the same op calls
# through gotch's own tensor API (the peer). Goal: < 1% growth for ours.
set -euo pipefail
cd "$(dirname "$0")/../.."
ops=${1:-100000}
steps=${2:-2000}
. scripts/env.sh
go build -o .build/torchbench ./internal/torchbench
ours=$(.build/torchbench -mode leak -ops "$ops" -steps "$steps")
peer=$(.build/torchbench -mode leak -gotch -ops "$ops")
python3 - "$ours" "$peer" <<'PY'
import json, sys
o, p = json.loads(sys.argv[1]), json.loads(sys.argv[2])
print("bench: leak ops=%d steps=%d rss_growth_pct=%.3f c_heap_growth_pct=%.3f ops_rss_growth_pct=%.3f ops_c_heap_growth_pct=%.3f steps_rss_growth_pct=%.3f steps_c_heap_growth_pct=%.3f gotch_ops_rss_growth_pct=%.3f gotch_ops_c_heap_growth_pct=%.3f rss_mb=%.1f" % (
    o["Ops"], o["Steps"], o["RSSGrowthPct"], o["HeapGrowthPct"], o["OpsRSSGrowthPct"], o["OpsHeapPct"],
    o["StepRSSGrowthPct"], o["StepHeapPct"], p["OpsRSSGrowthPct"], p["OpsHeapPct"], o["RSSMB"]))
PY
