#!/usr/bin/env bash
# The coordinator's protocol cost per step: coordinator/machine driven with
# 10 and 1,000 nodes that answer at once (one op = one step: N step
# messages out, N reduced reports in, the commit), against the same per-step
# bookkeeping in the event loop of coordinator.go (Round, Report per rank,
# commit rule, Schedule.Begin/Commit), measured in the same run. Part 1 is
# pure Go: no processes, no network.
#   scripts/bench.sh control [--benchtime 2000x]
#
# Part 2, the commit latency added per step with 3 real nodes: a coordinator
# process and 3 node processes (the pure-Go test node: the real agent,
# control plane and ring) on loopback, 210 steps of the bag-of-words model.
# Each node logs (debug) the wall clock of sending reduced and of taking the
# commit; a step's latency runs from the last rank's reduced to the last
# node's commit (the reduced's way up, the coordinator's handling, the
# commit's way down). Median and 90th percentile over 200 steps, against the
# raw round trip of the same messages on a control session over loopback
# gRPC between two processes (authentication and TLS as the cluster's),
# measured in the same run (coordinator/commitlat_bench_test.go). Needs the
# demo data (scripts/fetch-data.sh):
#   bench: control commit_latency_ms=M commit_latency_p90_ms=P raw_rtt_ms=R raw_rtt_p90_ms=Q ratio=M/R steps=200
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
bt=2000x
[ "${1:-}" = "--benchtime" ] && bt=$2
cd "$root"
m=$(go test -count=1 -run '^$' -bench 'BenchmarkControl$' -benchtime "$bt" ./coordinator/machine)
p=$(go test -count=1 -run '^$' -bench 'BenchmarkControlLoopLogic' -benchtime "$bt" ./coordinator)
echo "$m" | grep '^Benchmark' >&2
echo "$p" | grep '^Benchmark' >&2
# metric VALUE precedes its unit in go test -bench output.
metric() { awk -v s="nodes=$2-" -v u="$3" 'index($1,s) { for (i = 2; i < NF; i++) if ($(i+1) == u) print $i }' <<<"$1"; }
for n in 10 1000; do
  mc=$(metric "$m" "$n" cpu-s/1000steps); mn=$(metric "$m" "$n" cpu-ns/node-step); mw=$(metric "$m" "$n" wall-ns/node-step)
  pc=$(metric "$p" "$n" cpu-s/1000steps); pn=$(metric "$p" "$n" cpu-ns/node-step); pw=$(metric "$p" "$n" wall-ns/node-step)
  echo "bench: control nodes=$n machine_cpu_s_per_1000_steps=$mc machine_cpu_ns_per_node_step=$mn machine_wall_ns_per_node_step=$mw loop_logic_cpu_s_per_1000_steps=$pc loop_logic_cpu_ns_per_node_step=$pn loop_logic_wall_ns_per_node_step=$pw ratio_wall=$(awk -v a="$mw" -v b="$pw" 'BEGIN{printf "%.3f", a/b}')"
done
c=$(go test -count=1 -run '^$' -bench 'BenchmarkCommitLatency$' -benchtime 1x ./coordinator)
echo "$c" | grep '^Benchmark' >&2
one() { awk -v u="$1" '/^BenchmarkCommitLatency/ { for (i = 2; i < NF; i++) if ($(i+1) == u) print $i }' <<<"$c"; }
echo "bench: control commit_latency_ms=$(one commit-ms) commit_latency_p90_ms=$(one commit-p90-ms) raw_rtt_ms=$(one rtt-ms) raw_rtt_p90_ms=$(one rtt-p90-ms) ratio=$(one ratio) steps=$(printf %.0f "$(one steps)")"
