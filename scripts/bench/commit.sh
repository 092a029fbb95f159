#!/usr/bin/env bash
# The commit latency the coordinator adds to a step, on loopback with 3 real
# node processes (the pure-Go test node): per step, the shortest of the
# ranks' commit_wait_ms (from a rank's reduced report to its commit: the
# last rank to report waits only for the coordinator and two loopback
# hops), median over 204 steps (BenchmarkCommitLatency). The peer, measured
# in the same run, is another coordinator binary, e.g. one built from an
# older commit:
#   scripts/bench.sh commit [--peer /path/to/coordinator]
# Without --peer the peer is the same binary run again (the run-to-run noise).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
peer=""
[ "${1:-}" = "--peer" ] && peer=$2
if [ -z "$peer" ]; then
  peer=$(mktemp -d)/coordinator
  go build -o "$peer" ./cmd/coordinator
fi
out=$(go test -count=1 -run '^$' -bench BenchmarkCommitLatency -benchtime 1x ./coordinator -commit.peer="$peer")
echo "$out" | grep '^Benchmark' >&2
metric() { awk -v s="BenchmarkCommitLatency/$1-" -v u="$2" 'index($1,s)==1 { for (i = 2; i < NF; i++) if ($(i+1) == u) print $i }' <<<"$out"; }
c=$(metric coordinator commit-ms-median); p=$(metric peer commit-ms-median)
echo "bench: commit nodes=3 steps=$(metric coordinator steps) commit_ms_median=$c peer_commit_ms_median=$p ratio=$(awk -v a="$c" -v b="$p" 'BEGIN{printf "%.3f", a/b}')"
