#!/usr/bin/env bash
# zero1 re-slice of a GPT-2 124M-sized block (124,439,808 floats of
# plain-memory state per rank; real loopback rings, every rank in one
# process): Reslice, which moves only what changed hands, against moving
# all of the state (three float32 all-reduces of the block in 16 MiB pieces,
# as Reslice did before), A/B alternated 3 times in the same run
# (node/agent/reslice_bench_test.go). Cases: 3->2 (rank 1 lost, clean
# survivors) and 2->3 (a joiner). Needs ~6 GB of memory.
#   bench: reslice case=C seconds=S full_seconds=F ratio=S/F moved_bytes=M full_bytes=B sent_bytes=X full_sent_bytes=Y
# moved_bytes: state that changed hands, each element once; sent_bytes: what
# each rank sends on the ring for it.
set -euo pipefail
cd "$(dirname "$0")/../.."
out=$(go test -count=1 -run '^$' -bench 'BenchmarkReslice$' -benchtime 1x -timeout 30m ./node/agent)
echo "$out" | grep '^Benchmark' >&2
awk '/^BenchmarkReslice\// {
  split($1, a, "/"); sub(/-[0-9]+$/, "", a[2]); line = "bench: reslice case=" a[2]
  for (i = 2; i < NF; i++) v[$(i+1)] = $i
  printf "%s seconds=%s full_seconds=%s ratio=%s moved_bytes=%.0f full_bytes=%.0f sent_bytes=%.0f full_sent_bytes=%.0f\n", line, v["s"], v["full-s"], v["ratio"], v["moved-bytes"], v["full-bytes"], v["sent-bytes"], v["full-sent-bytes"]
}' <<<"$out"
